//! Calling the script directly: checks, random timelines, one call decoded.

use std::time::Duration;

use ratelimitd::domain::{Limits, Mode};
use ratelimitd::store::redis::script::{CallOptions, Check};

/// A check of a script call.
pub fn check<'a>(key: &'a [u8], limits: &'a Limits, cost: u32, mode: Mode) -> Check<'a> {
    Check { key, limits, cost, mode }
}

/// Far enough ahead of the real clock that the caller's clock is never behind Redis's.
pub fn far_ahead() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        + 10 * 24 * 3600 * 1000
}

/// The random timelines of a property test: each round (its limits) under each seed, each
/// with its own generator, so a failure is reproduced by its seed and round alone. More than
/// one seed: a single timeline can miss a path (one let a script pass whose widened
/// histories' counts were off by one).
pub fn timelines<R: Copy>(seeds: &[u64], rounds: &[R]) -> Vec<(u64, usize, R, rand::rngs::SmallRng)> {
    use rand::SeedableRng;
    let rng = |seed: u64, round: usize| rand::rngs::SmallRng::seed_from_u64(seed * 3 + round as u64);
    seeds.iter().flat_map(|&seed| rounds.iter().enumerate().map(move |(i, &r)| (seed, i, r, rng(seed, i)))).collect()
}

/// Time between two batches: mostly a few hundred ms, sometimes an idle spell past every
/// window, rarely one of hours.
pub fn advance(rng: &mut impl rand::Rng) -> u64 {
    match rng.random_range(0..40) {
        0 => rng.random_range(0..200_000),
        1 => rng.random_range(0..20_000_000),
        _ => rng.random_range(0..600),
    }
}

/// One to four windows, each with a limit from `limits`: windows from 2 s to 60 s, and
/// sometimes a longest one of 80 minutes or 23 days (wider times).
pub fn random_policy(rng: &mut impl rand::Rng, limits: &[u32]) -> Limits {
    use ratelimitd::domain::Window;
    let longest = match rng.random_range(0..10) {
        0 => 4_800_000,
        1 => 2_000_000_000,
        _ => 60_000,
    };
    let mut windows = Vec::new();
    for window in [longest, 20_000u64, 6_000, 2_000] {
        if windows.is_empty() || rng.random_range(0..3) == 0 {
            let limit = limits[rng.random_range(0..limits.len())];
            windows.push(Window::new(limit, Duration::from_millis(window)).unwrap());
        }
    }
    Limits::new(&windows).unwrap()
}

/// Mostly cost 1 (the unit format), sometimes any cost up to `max`.
pub fn random_cost(rng: &mut impl rand::Rng, max: u32) -> u32 {
    if rng.random_range(0..3) == 0 { rng.random_range(1..=max) } else { 1 }
}

/// Decides `checks` in one script call at `now`, as the store does with
/// `--redis-previous-layout read` (a script of the previous release takes only the clock).
pub async fn decide(
    script: &redis::Script,
    conn: &mut redis::aio::MultiplexedConnection,
    checks: &[Check<'_>],
    now: u64,
) -> Vec<ratelimitd::domain::Decision> {
    use ratelimitd::store::redis::script::{decode, invocation, replies_of};
    let current = script.get_hash() == redis::Script::new(include_str!("../../lua/sliding_window.lua")).get_hash();
    let options = CallOptions { clock: Some(now), previous_layout: current, ..CallOptions::default() };
    let values = invocation(script, checks, options).invoke_async(conn).await.expect("the script runs");
    let replies = replies_of(checks, values).expect("one reply per check");
    checks
        .iter()
        .zip(replies)
        .map(|(c, reply)| decode(c.limits, c.cost, &reply.expect("a decision")).expect("a well-formed reply"))
        .collect()
}

/// Counts `owed` requests in one script call at `now` (caller's clock); each must be counted.
pub async fn owe(
    script: &redis::Script,
    conn: &mut redis::aio::MultiplexedConnection,
    owed: &[ratelimitd::store::redis::script::Owed<'_>],
    now: u64,
) {
    use ratelimitd::store::redis::script::{owed_invocation, owed_replies};
    let values = owed_invocation(script, owed, CallOptions::at(now)).invoke_async(conn).await.expect("the script runs");
    for reply in owed_replies(owed.len(), values).expect("one reply per owed request") {
        reply.expect("counted");
    }
}
