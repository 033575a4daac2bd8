//! A rolling deploy: this release and the previous one (`tests/fixtures`) sharing a Redis.

mod common;

use std::time::Duration;

use common::Backend;
use common::script::{check, decide, far_ahead, random_cost, random_policy, timelines};
use ratelimitd::domain::{Limits, Mode};
use ratelimitd::store::redis::script::CallOptions;

/// A rolling deploy: replicas of the previous release (`tests/fixtures`, the ring of 8-byte
/// times named `<prefix>{fp}`) and of this one (`<prefix>{fp}:2`) share a Redis. This
/// release counts the units the previous one counted: it allows exactly what the oracle over
/// every unit counted by either allows, with the same fields; its denials are the oracle's
/// too, but (the previous ring being read only for a request that would otherwise fit) with a
/// retry_after and remaining from its own units: a retry_after never later than the oracle's,
/// and a remaining never fewer than the oracle's units left in the window it names (which may
/// be another window than the oracle's). The previous release never reads the new layout: it
/// decides exactly on its own units and never misreads a key. Four seeds.
#[tokio::test(flavor = "multi_thread")]
async fn the_script_and_its_previous_release_share_keys_exactly() {
    use rand::Rng;
    use ratelimitd::domain::oracle::Replay;

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let current = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let previous = redis::Script::new(include_str!("fixtures/sliding_window_26c706c.lua"));
    let mut now = far_ahead();
    let (mut by_current, mut by_previous, mut short_retries) = (0, 0, 0);
    let rounds = [[3u32, 5, 8], [300, 300, 300], [200_000, 1_000_000, 1_000_000]];
    for (seed, round, limits, mut rng) in timelines(&[7, 1, 2, 3], &rounds) {
        // One policy per key (the releases agree on it); the windows stay long enough
        // that the previous release's ring holds every unit they count.
        let policies: Vec<Limits> = (0..3).map(|_| random_policy(&mut rng, &limits)).collect();
        let names: Vec<String> = (0..3).map(|key| format!("deploy-{seed}-{round}-{{{key}}}")).collect();
        let (mut every, mut own) = (vec![Replay::default(); 3], vec![Replay::default(); 3]);
        for _ in 0..500 {
            now += rng.random_range(0..400);
            let key = rng.random_range(0..names.len());
            let policy = &policies[key];
            let cost = random_cost(&mut rng, policy.max_cost());
            let mode = if rng.random_range(0..8) == 0 { Mode::Peek } else { Mode::Consume };
            if rng.random_bool(0.5) {
                // The check alone, or after a peek of another key in the same call (one EXISTS
                // asks after both keys' previous rings).
                let mut batch = vec![(key, cost, mode)];
                if rng.random_bool(0.5) {
                    let other = (key + 1) % names.len();
                    batch.insert(0, (other, random_cost(&mut rng, policies[other].max_cost()), Mode::Peek));
                }
                let named: Vec<String> = batch.iter().map(|(k, ..)| format!("{}:2", names[*k])).collect();
                let expected: Vec<_> =
                    batch.iter().map(|&(k, c, m)| every[k].decide(now, &policies[k], c, m)).collect();
                let call: Vec<_> = batch
                    .iter()
                    .zip(&named)
                    .map(|(&(k, c, m), name)| check(name.as_bytes(), &policies[k], c, m))
                    .collect();
                let got = decide(&current, &mut conn, &call, now).await;
                for (((&(k, cost, mode), name), expected), got) in batch.iter().zip(&named).zip(&expected).zip(&got) {
                    let policy = &policies[k];
                    let what =
                        format!("current, {name} at {now}, {policy:?}, cost {cost}, {mode:?}: {got:?}, {expected:?}");
                    if expected.allowed {
                        assert_eq!(got, expected, "{what}");
                    } else {
                        assert!(!got.allowed && got.decided_at_ms == expected.decided_at_ms, "{what}");
                        assert!(got.retry_after_ms <= expected.retry_after_ms, "{what}");
                        // The oracle's units left in the window this release names.
                        let window = Limits::new(&[policy.windows()[usize::from(got.window)]]).unwrap();
                        let left = every[k].clone().decide(now, &window, cost, Mode::Peek);
                        let left = if left.allowed { left.remaining + cost } else { left.remaining };
                        assert!(got.remaining >= left, "{what}: the oracle has {left} left in window {}", got.window);
                        short_retries += usize::from(got.retry_after_ms < expected.retry_after_ms);
                    }
                    by_current += 1;
                }
            } else {
                let name = &names[key];
                let expected = own[key].decide(now, policy, cost, mode);
                let got = decide(&previous, &mut conn, &[check(name.as_bytes(), policy, cost, mode)], now).await;
                assert_eq!(got[0], expected, "previous, {seed}: {name} at {now}, {policy:?}, cost {cost}, {mode:?}");
                if expected.allowed && mode == Mode::Consume {
                    every[key].count(expected.decided_at_ms, policy, cost);
                }
                by_previous += 1;
            }
        }
    }
    println!(
        "{by_current} decisions by this release, {by_previous} by the previous one, each the oracle's \
         ({short_retries} denials by this release with a shorter retry_after)"
    );
}

/// `--redis-previous-layout`: with `read` (the default) the previous release's units count,
/// with `ignore` only this layout's do.
#[tokio::test(flavor = "multi_thread")]
async fn the_previous_layout_counts_only_when_asked() {
    use ratelimitd::domain::Window;
    use ratelimitd::store::redis::script::{invocation, replies_of};

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let current = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let previous = redis::Script::new(include_str!("fixtures/sliding_window_26c706c.lua"));
    let limits = Limits::new(&[Window::new(5, Duration::from_secs(60)).unwrap()]).unwrap();
    let now = far_ahead();
    let full = decide(&previous, &mut conn, &[check(b"upgrade{1}", &limits, 5, Mode::Consume)], now).await;
    assert!(full[0].allowed, "the previous release counts 5 of 5");
    let name: &[u8] = b"upgrade{1}:2";
    for (previous_layout, allowed) in [(true, false), (false, true)] {
        let call = [check(name, &limits, 1, Mode::Peek)];
        let options = CallOptions { clock: Some(now + 1), previous_layout, ..CallOptions::default() };
        let values = invocation(&current, &call, options).invoke_async(&mut conn).await.unwrap();
        let reply = replies_of(&call, values).unwrap().pop().unwrap().unwrap();
        assert_eq!(reply.allowed(), allowed, "previous layout read: {previous_layout}");
    }
}
