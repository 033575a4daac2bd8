//! The script's contract, called directly: a batch decides each check alone, the
//! script decides as the independent oracle does, keys expire on Redis's clock whatever the
//! caller's, and a key at its limit is denied from its header alone.

mod common;

use std::time::Duration;

use common::Backend;
use common::script::{advance, check, decide, far_ahead, owe, random_cost, random_policy, timelines};
use ratelimitd::domain::{Limits, Mode};
use ratelimitd::store::redis::script::{CallOptions, Check, Owed};

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
    let replies: Vec<redis::Value> =
        invocation(&script, &checks, CallOptions::default()).invoke_async(&mut conn).await.unwrap();
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

/// The script and the in-process history both decide as the independent oracle (the list
/// of every counted request, counted window by window: `oracle::Replay`). Random timelines:
/// costs up to the limit, one to four windows, limits and windows changing from check to
/// check (across the unit and counted entry formats and the 3, 4 and 5-byte times), idle
/// spells past the windows, peeks, and batches of one to six checks with a key repeated
/// (each check of a batch decided as if called alone, in order), and owed requests (a
/// failure mode's admissions written back, of any age). Every field compared, over four
/// seeds.
#[tokio::test(flavor = "multi_thread")]
async fn the_script_and_the_in_process_history_decide_as_the_oracle() {
    use rand::Rng;
    use ratelimitd::domain::History;
    use ratelimitd::domain::oracle::Replay;

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let mut now = far_ahead();
    let (mut compared, mut batches, mut owes) = (0, 0, 0);
    let rounds: [&[u32]; 3] = [&[3, 5, 8], &[4094, 4097, 4100], &[1_000, 250_000, 1_000_000]];
    for (seed, round, limits, mut rng) in timelines(&[42, 1, 2, 3], &rounds) {
        let names: Vec<String> = (0..4).map(|key| format!("oracle-{seed}-{round}-{key}")).collect();
        let mut oracles = vec![Replay::default(); names.len()];
        let mut histories = vec![History::default(); names.len()];
        for _ in 0..600 {
            now += advance(&mut rng);
            if rng.random_range(0..8) == 0 {
                // Requests a failure mode admitted, written back: some older than their window.
                let mut owed = Vec::new();
                for _ in 0..rng.random_range(1..=3) {
                    let key = rng.random_range(0..names.len());
                    let policy = random_policy(&mut rng, limits);
                    let cost = random_cost(&mut rng, policy.max_cost());
                    let age = rng.random_range(0..policy.longest_ms() + policy.longest_ms() / 4);
                    oracles[key].owe(now, now - age, &policy, cost);
                    histories[key].record_admitted(now, now - age, &policy, cost);
                    owed.push((key, policy, cost, age));
                }
                let call: Vec<Owed<'_>> = owed
                    .iter()
                    .map(|(k, limits, cost, age_ms)| Owed {
                        key: names[*k].as_bytes(),
                        limits,
                        cost: *cost,
                        age_ms: *age_ms,
                    })
                    .collect();
                owe(&script, &mut conn, &call, now).await;
                owes += call.len();
                continue;
            }
            let mut checks = Vec::new();
            for _ in 0..rng.random_range(1..=6) {
                let key = rng.random_range(0..names.len());
                let policy = random_policy(&mut rng, limits);
                let cost = random_cost(&mut rng, policy.max_cost());
                let mode = if rng.random_range(0..8) == 0 { Mode::Peek } else { Mode::Consume };
                let expected = oracles[key].decide(now, &policy, cost, mode);
                let history = histories[key].check(now, &policy, cost, mode);
                assert_eq!(history, expected, "in process, {seed}/{key} at {now}, {policy:?}, cost {cost}, {mode:?}");
                checks.push((key, policy, cost, mode, expected));
            }
            let call: Vec<_> = checks.iter().map(|(k, p, c, m, _)| check(names[*k].as_bytes(), p, *c, *m)).collect();
            let got = decide(&script, &mut conn, &call, now).await;
            for ((key, policy, cost, mode, expected), got) in checks.iter().zip(got) {
                assert_eq!(&got, expected, "Redis, {seed}/{key} at {now}, {policy:?}, cost {cost}, {mode:?}");
                compared += 1;
            }
            batches += 1;
        }
    }
    println!(
        "{compared} decisions in {batches} batches, {owes} owed requests written back: Lua and the in-process \
         history decide as the oracle"
    );
}

/// A caller's clock a day behind Redis's: keys expire relative to the call, so a key lives
/// its window (and an eighth) on Redis and its history still counts; an absolute expiry on
/// that clock would have deleted every key at once, leaving no limit at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_clock_behind_redis_expires_nothing_early() {
    use ratelimitd::domain::Window;

    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let limits = Limits::new(&[Window::new(2, Duration::from_secs(60)).unwrap()]).unwrap();
    let behind = far_ahead() - 11 * 24 * 3600 * 1000;
    let name = b"behind{1}:2";
    for (i, allowed) in [true, true, false].into_iter().enumerate() {
        let got = decide(&script, &mut conn, &[check(name, &limits, 1, Mode::Consume)], behind + i as u64).await;
        assert_eq!(got[0].allowed, allowed, "check {i}: {got:?}");
    }
    let ttl: i64 = redis::cmd("PTTL").arg(&name[..]).query_async(&mut conn).await.unwrap();
    assert!(ttl > 60_000 && ttl <= 67_500, "PTTL {ttl}: the key lives its window on Redis's clock");
}

/// The call's first argument is one of its forms ("[<clock ms>][ previous][ existing][ by
/// <deadline ms>]") or the call fails whole, deciding and writing nothing; ' existing' counts
/// only in a key that has room, and a deadline already past fails the call as LATE.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_argument_is_one_of_its_forms_or_the_call_fails_whole() {
    let backend = Backend::redis().await;
    let mut conn = backend.redis.as_ref().unwrap().conn().await;
    let script = redis::Script::new(include_str!("../lua/sliding_window.lua"));
    let (clock, later) = (far_ahead(), far_ahead() + 3_600_000);
    let call = |first: String, key: &str| {
        let mut call = script.prepare_invoke();
        call.arg(first).key(key).arg("1 consume 5 60000");
        call
    };
    let bad = ["abc", "12x", " previous junk", " existing previous", " by ", " by 12x", " previous by", "1 2"];
    for (i, first) in bad.into_iter().enumerate() {
        let key = format!("bad{{{i}}}:2");
        let error = call(first.into(), &key).invoke_async::<redis::Value>(&mut conn).await.expect_err(first);
        assert!(error.to_string().contains("invalid arguments"), "{first:?}: {error}");
        let exists: u32 = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
        assert_eq!(exists, 0, "{first:?} wrote");
    }
    let error = call(" by 1".into(), "late{1}:2").invoke_async::<redis::Value>(&mut conn).await.expect_err("late");
    assert_eq!(error.code(), Some("LATE"), "{error}");
    let good = [
        (String::new(), true),
        (" previous".into(), true),
        (format!("{clock}"), true),
        (format!("{clock} previous"), true),
        (format!(" by {later}"), true),
        (format!(" previous by {later}"), true),
        (" existing".into(), false),
        (format!("{clock} previous existing by {later}"), false),
    ];
    for (i, (first, counted)) in good.into_iter().enumerate() {
        let key = format!("good{{{i}}}:2");
        let reply: Vec<redis::Value> = call(first.clone(), &key).invoke_async(&mut conn).await.unwrap();
        let exists: u32 = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
        assert_eq!(exists == 1, counted, "{first:?}: {reply:?}");
        if counted {
            assert_eq!(reply.first(), Some(&redis::Value::Int(1)), "{first:?}: {reply:?}");
        } else {
            let words = format!("{reply:?}");
            assert!(words.contains("Redis is full"), "{first:?}: a new key has no room: {words}");
        }
    }
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
        let replies: Vec<redis::Value> =
            invocation(&script, &call, CallOptions::at(at)).invoke_async(&mut conn).await.unwrap();
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
        let values: Vec<redis::Value> =
            group_invocation(&script, checks, CallOptions::default()).invoke_async(&mut conn).await.unwrap();
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
        let values: Vec<redis::Value> =
            invocation(&script, &peek, CallOptions::default()).invoke_async(conn).await.unwrap();
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
            group_invocation(&script, &malformed, CallOptions::default()).invoke_async(&mut conn2).await;
        assert!(result.is_err(), "{malformed:?} must fail whole");
    }
    let mut mixed = script.prepare_invoke();
    mixed.arg("").key("m1").arg("1 all 5 60000").key("m2").arg("1 consume 5 60000");
    assert!(mixed.invoke_async::<redis::Value>(&mut conn2).await.is_err(), "all mixed with consume fails whole");
    let exists: u32 = redis::cmd("EXISTS").arg("a").arg("b").arg("m1").arg("m2").query_async(&mut conn2).await.unwrap();
    assert_eq!(exists, 0, "a call that failed whole wrote nothing");
}
