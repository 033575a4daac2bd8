//! The script's contract, called directly: a batch decides each check alone, the
//! script decides as the Rust ring does, shares keys exactly with its previous release
//! (a rolling deploy), and denies a key at its limit from its header alone.

mod common;

use std::time::Duration;

use common::Backend;
use ratelimitd::domain::{Limits, Mode};
use ratelimitd::store::redis::script::Check;

/// A check of a script call.
fn check<'a>(key: &'a [u8], limits: &'a Limits, cost: u32, mode: Mode) -> Check<'a> {
    Check { key, limits, cost, mode }
}

/// A batch decides each check on its own: a key of another type, or a check with bad
/// arguments, fails that check alone and changes nothing, and the checks around it
/// are decided. A call whose arguments are malformed fails whole, before any check.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_check_fails_alone_and_a_malformed_call_changes_nothing() {
    use ratelimitd::domain::{Limits, Mode, Window};
    use ratelimitd::store::StoreError;
    use ratelimitd::store::redis::script::{invocation, replies_of};

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let () = redis::cmd("HSET").arg("not-a-ring").arg("field").arg("kept").query_async(&mut conn).await.unwrap();
    let limits = Limits::new(&[Window::new(5, Duration::from_secs(60)).unwrap()]).unwrap();
    let checks = [
        check(b"ring-a", &limits, 2, Mode::Consume),
        check(b"not-a-ring", &limits, 1, Mode::Consume),
        check(b"bad-cost", &limits, 0, Mode::Consume),
        check(b"ring-a", &limits, 3, Mode::Consume),
        check(b"ring-a", &limits, 1, Mode::Consume),
    ];
    let replies: Vec<redis::Value> = invocation(&script, &checks, None).invoke_async(&mut conn).await.unwrap();
    let replies = replies_of(&checks, replies).unwrap();
    let allowed: Vec<Option<bool>> = replies.iter().map(|r| r.as_ref().ok().map(|reply| reply.allowed())).collect();
    assert_eq!(allowed, [Some(true), None, None, Some(true), Some(false)], "{replies:?}");
    let words = |i: usize| match &replies[i] {
        Err(StoreError::Failed(words)) => words.clone(),
        other => panic!("check {i}: {other:?}"),
    };
    assert!(words(1).contains("WRONGTYPE"), "{}", words(1));
    assert!(words(2).contains("invalid arguments"), "{}", words(2));
    let field: String = redis::cmd("HGET").arg("not-a-ring").arg("field").query_async(&mut conn).await.unwrap();
    assert_eq!(field, "kept");
    let exists: u32 = redis::cmd("EXISTS").arg("bad-cost").query_async(&mut conn).await.unwrap();
    assert_eq!(exists, 0);

    // A key without its argument: nothing is decided, not even the first.
    let mut malformed = script.prepare_invoke();
    malformed.arg("").key("ring-b").arg("1 consume 5 60000").key("ring-c");
    let error = malformed.invoke_async::<redis::Value>(&mut conn).await.expect_err("a malformed call fails");
    assert!(error.to_string().contains("invalid arguments"), "{error}");
    let exists: u32 = redis::cmd("EXISTS").arg("ring-b").arg("ring-c").query_async(&mut conn).await.unwrap();
    assert_eq!(exists, 0);

    // Each distinct argument is parsed once per call: a bad one fails every check that
    // repeats it, the next is parsed afresh, and anything but the exact grammar fails its
    // check alone (a window too many, a trailing word, a lone limit, windows not longest
    // first, a cost over a limit, another mode, a window of 2^52 ms).
    let args = [
        ("ring-d", "1 consume 5 0"),
        ("ring-e", "1 consume 5 0"),
        ("ring-f", "1 consume 5 60000"),
        ("ring-g", "6 consume 5 60000"),
        ("ring-h", "1 consume 5 5000 5 4000 5 3000 5 2000 5 1000"),
        ("ring-i", "1 consume 5 60000 extra"),
        ("ring-j", "1 consume 5 60000 5"),
        ("ring-k", "1 consume 5 1000 5 60000"),
        ("ring-l", "1 Consume 5 60000"),
        ("ring-m", "1 consume 5 4503599627370496"),
        ("ring-n", "1  consume 5 60000"),
        ("ring-o", "2 consume 5 60000 3 1000"),
        ("ring-p", "1 consume 5 60000"),
    ];
    let mut repeated = script.prepare_invoke();
    repeated.arg("");
    for (key, arg) in args {
        repeated.key(key).arg(arg);
    }
    let values: Vec<redis::Value> = repeated.invoke_async(&mut conn).await.unwrap();
    let windows = |arg: &str| if arg.ends_with("3 1000") { 2 } else { 1 };
    let shapes: Vec<Limits> = args
        .iter()
        .map(|(_, arg)| {
            let w = Window::new(5, Duration::from_secs(60)).unwrap();
            let short = Window::new(3, Duration::from_secs(1)).unwrap();
            if windows(arg) == 2 { Limits::new(&[w, short]).unwrap() } else { Limits::new(&[w]).unwrap() }
        })
        .collect();
    let calls: Vec<_> =
        args.iter().zip(&shapes).map(|((key, _), l)| check(key.as_bytes(), l, 1, Mode::Consume)).collect();
    let replies = replies_of(&calls, values).unwrap();
    let decided: Vec<bool> = replies.iter().map(Result::is_ok).collect();
    let expected = [false, false, true, false, false, false, false, false, false, false, false, true, true];
    assert_eq!(decided, expected, "{replies:?}");
    let mut exists = Vec::new();
    for (key, _) in args {
        exists.push(redis::cmd("EXISTS").arg(key).query_async::<u32>(&mut conn).await.unwrap() == 1);
    }
    assert_eq!(exists, expected);
    assert_eq!(replies[11].as_ref().unwrap().values()[3..], [5, 0, 3, 0], "two windows, each with its limit spare");
}

/// The Lua script and the Rust ring (the in-process store) must decide alike. This
/// replays random timelines (limits up and down, one to three windows at once, window
/// lengths changing, costs, peeks, both the whole-ring and the slot-by-slot path of the
/// script) on both and compares every field. Checks go to the script in batches of one
/// to six, as the store sends them, a key sometimes twice in one batch: each check of a
/// batch must be decided as if called alone, in order.
#[tokio::test(flavor = "multi_thread")]
async fn the_script_and_the_rust_ring_decide_alike() {
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let (compared, batches) = replay(&[Release::Current(&script)]).await;
    println!("{compared} decisions in {batches} batches identical in Lua and Rust");
}

/// A rolling deploy: replicas running the previous release's script (the one before a
/// full ring remembered its oldest time in the header's mark) and the current one share
/// every key. Batches go to either at random; every decision must still be the Rust
/// ring's, so each reads the other's header rightly.
#[tokio::test(flavor = "multi_thread")]
async fn the_script_and_its_previous_release_share_keys_exactly() {
    let current = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let previous = redis::Script::new(include_str!("fixtures/sliding_window_2fc91eb.lua"));
    let (compared, batches) = replay(&[Release::Current(&current), Release::Previous(&previous)]).await;
    println!("{compared} decisions in {batches} batches, by either script, identical to the Rust ring");
}

/// A script, and the call format it takes.
#[derive(Clone, Copy)]
enum Release<'a> {
    /// `lua/sliding_window.lua`, called as the store calls it.
    Current(&'a redis::Script),
    /// The previous release's script (`tests/fixtures`), in the format of its time: per
    /// check its window count, cost, mode and (limit, window) pairs as separate arguments,
    /// and one reply (a table, or a string) per check.
    Previous(&'a redis::Script),
}

impl Release<'_> {
    /// Decides `checks` in one call at `now`: a reply per check, as `replies_of` gives them.
    async fn call(
        self,
        conn: &mut redis::aio::MultiplexedConnection,
        checks: &[ratelimitd::store::redis::script::Check<'_>],
        now: u64,
    ) -> Vec<Result<ratelimitd::store::redis::script::Reply, ratelimitd::store::StoreError>> {
        use ratelimitd::store::StoreError;
        use ratelimitd::store::redis::script::{Reply, invocation, mode_arg, replies_of};
        match self {
            Release::Current(script) => {
                let values = invocation(script, checks, Some(now)).invoke_async(conn).await.expect("the script runs");
                replies_of(checks, values).expect("one reply per check")
            }
            Release::Previous(script) => {
                let mut call = script.prepare_invoke();
                call.arg(now);
                for &Check { key, limits, cost, mode } in checks {
                    call.key(key).arg(limits.windows().len()).arg(cost).arg(mode_arg(mode));
                    for window in limits.windows() {
                        call.arg(window.limit()).arg(window.window_ms());
                    }
                }
                let values: Vec<redis::Value> = call.invoke_async(conn).await.expect("the script runs");
                assert_eq!(values.len(), checks.len(), "one reply per check");
                let reply = |value| match value {
                    redis::Value::BulkString(words) => Err(StoreError::Failed(String::from_utf8_lossy(&words).into())),
                    value => Ok(Reply::from_values(redis::from_redis_value(value).expect("a decision's values"))),
                };
                values.into_iter().map(reply).collect()
            }
        }
    }
}

/// Replays the random timelines of the parity tests, each batch by one of `scripts` at
/// random, against the Rust ring; the decisions and batches compared.
async fn replay(scripts: &[Release<'_>]) -> (usize, usize) {
    use rand::{Rng, SeedableRng};
    use ratelimitd::domain::{Limits, Mode, Ring, Window};
    use ratelimitd::store::redis::script::decode;

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    // Far enough ahead of the real clock that no key's TTL runs out during the test.
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        + 10 * 24 * 3600 * 1000;
    let (mut compared, mut batches) = (0, 0);
    for (round, limits) in [[3u32, 5, 8], [4094, 4097, 4100]].into_iter().enumerate() {
        let names: Vec<String> = (0..4).map(|key| format!("parity-{round}-{key}")).collect();
        let mut rings: Vec<Ring> = (0..4).map(|_| Ring::new(limits[0])).collect();
        let mut now = start;
        for _ in 0..700 {
            now += rng.random_range(0..if round == 0 { 30 } else { 200 });
            if rng.random_range(0..20) == 0 {
                now += rng.random_range(0..3_000); // an idle spell: the frontier jumps
            }
            let mut checks = Vec::new();
            for _ in 0..rng.random_range(1..=6) {
                let key = rng.random_range(0..names.len());
                // One to three windows, each with its own limit from the round's set.
                let mut windows = Vec::new();
                for window in [1000u64, 300, 100] {
                    if windows.is_empty() && window == 100 || rng.random_range(0..3) == 0 {
                        let limit = limits[rng.random_range(0..limits.len())];
                        windows.push(Window::new(limit, Duration::from_millis(window)).unwrap());
                    }
                }
                let policy = Limits::new(&windows).unwrap();
                let max = policy.max_cost();
                let cost = if round == 0 { rng.random_range(1..=max) } else { rng.random_range(1..=max / 4) };
                let mode = if rng.random_range(0..8) == 0 { Mode::Peek } else { Mode::Consume };
                let expected = rings[key].check(now, &policy, cost, mode);
                checks.push((key, policy, cost, mode, expected));
            }
            let call: Vec<_> = checks
                .iter()
                .map(|(key, policy, cost, mode, _)| check(names[*key].as_bytes(), policy, *cost, *mode))
                .collect();
            let release = scripts[rng.random_range(0..scripts.len())];
            let replies = release.call(&mut conn, &call, now).await;
            for ((key, policy, cost, mode, expected), reply) in checks.iter().zip(replies) {
                let got = decode(policy, *cost, &reply.expect("a decision")).expect("a well-formed reply");
                let name = &names[*key];
                assert_eq!(&got, expected, "{name} at +{} ms, {policy:?}, cost {cost}, {mode:?}", now - start);
                compared += 1;
            }
            batches += 1;
        }
    }
    (compared, batches)
}

/// A key at its limit is denied from its header alone: one read, no write, however
/// many denials, with the retry_after of its oldest counted unit.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_at_its_limit_is_denied_from_its_header_alone() {
    use ratelimitd::domain::{Limits, Mode, Window};
    use ratelimitd::store::redis::script::{decode, invocation, replies_of};
    use ratelimitd_bench::command_calls;

    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let mut conn = redis.conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let limits = Limits::new(&[Window::new(300, Duration::from_secs(60)).unwrap()]).unwrap();
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut decide = async |at: u64| {
        let call = [check(b"full", &limits, 1, Mode::Consume)];
        let replies: Vec<redis::Value> = invocation(&script, &call, Some(at)).invoke_async(&mut conn).await.unwrap();
        let reply = replies_of(&call, replies).unwrap().pop().unwrap().expect("a decision");
        decode(&limits, 1, &reply).unwrap()
    };
    // 300 units, one per ms from start; then the first denial.
    for at in start..start + 300 {
        assert!(decide(at).await.allowed);
    }
    assert!(!decide(start + 300).await.allowed);

    let reads_before = command_calls(&redis.url(), &["getrange"]).await.unwrap();
    let writes_before = command_calls(&redis.url(), &["setrange", "set", "pexpireat"]).await.unwrap();
    for at in start + 301..start + 351 {
        let denied = decide(at).await;
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_ms, start + 60_000 - at, "the oldest unit leaves the window then");
    }
    let reads = command_calls(&redis.url(), &["getrange"]).await.unwrap() - reads_before;
    let writes = command_calls(&redis.url(), &["setrange", "set", "pexpireat"]).await.unwrap() - writes_before;
    println!("50 denials of a full key: {reads} reads, {writes} writes");
    assert_eq!((reads, writes), (50, 0), "one header read per denial, nothing written");

    // Once the oldest unit has left the window, the key allows again, exactly one unit.
    assert!(decide(start + 60_000).await.allowed);
    assert!(!decide(start + 60_000).await.allowed);
}

/// A call of 'all' and 'ask' checks is one request over several keys: counted in every
/// key only if every check fits, in none otherwise; 'ask' checks must fit and never
/// count; a key that is not ours fails its check and then nothing counts; a call that
/// mixes them with other checks, or names a key twice, fails whole.
#[tokio::test(flavor = "multi_thread")]
async fn an_all_or_nothing_call_counts_in_every_key_or_in_none() {
    use ratelimitd::domain::Window;
    use ratelimitd::store::redis::script::{group_invocation, invocation, replies_of};

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let five = Limits::new(&[Window::new(5, Duration::from_secs(60)).unwrap()]).unwrap();
    let two = Limits::new(&[Window::new(2, Duration::from_secs(60)).unwrap()]).unwrap();
    let mut conn2 = conn.clone();
    let mut group = async |checks: &[Check<'_>]| {
        let values: Vec<redis::Value> = group_invocation(&script, checks, None).invoke_async(&mut conn).await.unwrap();
        let replies = replies_of(checks, values).unwrap();
        replies.iter().map(|r| r.as_ref().map(|reply| reply.allowed()).ok()).collect::<Vec<_>>()
    };
    let both = [check(b"wide", &five, 1, Mode::Consume), check(b"narrow", &two, 1, Mode::Consume)];
    assert_eq!(group(&both).await, [Some(true), Some(true)]);
    assert_eq!(group(&both).await, [Some(true), Some(true)], "narrow is now full");
    assert_eq!(group(&both).await, [Some(true), Some(false)], "denied by narrow: wide's own answer is allowed");
    let asked = [check(b"wide", &five, 3, Mode::Peek), check(b"other", &five, 1, Mode::Consume)];
    assert_eq!(group(&asked).await, [Some(true), Some(true)], "an ask fits and counts nothing");

    let remaining = async |conn: &mut redis::aio::MultiplexedConnection, key: &'static [u8], limits: &Limits| {
        let peek = [check(key, limits, 1, Mode::Peek)];
        let values: Vec<redis::Value> = invocation(&script, &peek, None).invoke_async(conn).await.unwrap();
        let reply = replies_of(&peek, values).unwrap().pop().unwrap().expect("a decision");
        reply.values()[3]
    };
    assert_eq!(remaining(&mut conn2, b"wide", &five).await, 3, "wide counted twice, not by the denied call");
    assert_eq!(remaining(&mut conn2, b"narrow", &two).await, 0);

    let () = redis::cmd("HSET").arg("not-ours").arg("f").arg("v").query_async(&mut conn2).await.unwrap();
    let with_wrong_type = [check(b"fresh", &five, 1, Mode::Consume), check(b"not-ours", &five, 1, Mode::Consume)];
    assert_eq!(group(&with_wrong_type).await, [Some(true), None]);
    assert_eq!(remaining(&mut conn2, b"fresh", &five).await, 5, "nothing counted when one key cannot be decided");

    for malformed in [
        vec![check(b"a", &five, 1, Mode::Consume), check(b"a", &five, 1, Mode::Consume)],
        vec![check(b"a", &five, 9, Mode::Consume), check(b"b", &five, 1, Mode::Consume)],
    ] {
        let result: Result<redis::Value, _> =
            group_invocation(&script, &malformed, None).invoke_async(&mut conn2).await;
        assert!(result.is_err(), "{malformed:?} must fail whole");
    }
    let mut mixed = script.prepare_invoke();
    mixed.arg("").key("m1").arg("1 all 5 60000").key("m2").arg("1 consume 5 60000");
    assert!(mixed.invoke_async::<redis::Value>(&mut conn2).await.is_err(), "all mixed with consume fails whole");
    let exists: u32 = redis::cmd("EXISTS").arg("a").arg("b").arg("m1").arg("m2").query_async(&mut conn2).await.unwrap();
    assert_eq!(exists, 0, "a call that failed whole wrote nothing");
}
