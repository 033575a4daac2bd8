//! Faults, with real Redis containers and the real binary: Redis stopped, paused
//! (a hang) or restarted empty under load, and a replica killed under load. Each
//! outcome is measured (calls, p99 during the fault, time to recover) and printed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::process::Process;
use common::{Backend, Client, Redis, TestServer, check, try_check};
use ratelimitd::domain::oracle::Record;
use ratelimitd::grpc::pb::Fallback;

const SECRET: &str = "faults-test-secret";
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const DEADLINE: Duration = Duration::from_millis(50);
/// What a loaded 2-core machine (service, Redis and callers on it) may add to the deadline.
const MARGIN: Duration = Duration::from_millis(250);

fn start(redis: &Redis, timeout: &str, extra: &[&str]) -> Process {
    let url = redis.url();
    let mut args = vec!["--redis-url", &url, "--fingerprint-secret", SECRET, "--redis-timeout", timeout];
    args.extend(["--request-timeout", "10s"]);
    args.extend(extra);
    // At info, as in production: debug logs every HTTP/2 frame, which slows a debug build a lot.
    Process::start_logging(&args, "info")
}

/// One call as a caller saw it.
#[derive(Clone, Copy)]
struct Call {
    at: Instant,
    took: Duration,
    allowed: bool,
    fallback: bool,
    failed: bool,
}

/// Callers on distinct keys until stopped: every call and how long it took.
fn load(clients: Vec<Client>, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Call>>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(caller, mut client)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut calls = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let answer = try_check(&mut client, &format!("load-{caller}-{}", i % 50), 1).await;
                    let took = at.elapsed();
                    let (allowed, fallback, failed) = match answer {
                        Ok(d) => (d.allowed, d.fallback != Fallback::None as i32, false),
                        Err(_) => (false, false, true),
                    };
                    calls.push(Call { at, took, allowed, fallback, failed });
                    i += 1;
                }
                calls
            })
        })
        .collect()
}

/// A log line's level: the second word once colours are stripped.
fn level(line: &str) -> Option<String> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain.split_whitespace().nth(1).map(str::to_owned)
}

fn p99(mut took: Vec<Duration>) -> Duration {
    took.sort_unstable();
    took.get(took.len() * 99 / 100).copied().unwrap_or_default()
}

/// Stops (or pauses) Redis under load and brings it back; checks every call answered
/// within the deadline plus a margin with the failure mode, the breaker opened and
/// closed, logs stayed quiet, and exact enforcement resumed within 2 s.
async fn outage(kind: &str, down: impl AsyncFnOnce(&Redis), up: impl AsyncFnOnce(&Redis)) {
    // Latency under a fault is measured one fault at a time, not with another fault's
    // containers and callers competing for the same 2 cores.
    let _alone = SERIAL.lock().await;
    let redis = Redis::start().await;
    let service = start(&redis, "50ms", &["--failure-mode", "local"]);
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(service.client().await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let callers = load(clients, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault_from = Instant::now();
    down(&redis).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let breaker_open = service.scrape().contains("ratelimitd_circuit_breaker_open 1");
    let fault_to = Instant::now();
    up(&redis).await;
    let redis_back = Instant::now();
    // Recovered once a fresh key is decided by Redis again (no fallback).
    let mut probe = service.client().await;
    let recovered = loop {
        let d = check(&mut probe, &format!("probe-{}", redis_back.elapsed().as_millis()), 1).await;
        if d.fallback == Fallback::None as i32 {
            break redis_back.elapsed();
        }
        assert!(redis_back.elapsed() < Duration::from_secs(10), "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for caller in callers {
        calls.extend(caller.await.expect("a caller panicked"));
    }
    let during: Vec<&Call> = calls.iter().filter(|c| c.at >= fault_from && c.at < fault_to).collect();
    let failed = calls.iter().filter(|c| c.failed).count();
    let slowest = during.iter().map(|c| c.took).max().unwrap_or_default();
    let fell_back = during.iter().filter(|c| c.fallback).count();
    let admitted = during.iter().filter(|c| c.allowed).count();
    let p99_during = p99(during.iter().map(|c| c.took).collect());
    let logs = service.logs();
    let loud = logs.lines().filter(|l| matches!(level(l).as_deref(), Some("WARN" | "ERROR"))).count();
    println!(
        "Redis {kind}: {} calls ({} during the fault, {fell_back} answered by the local failure mode), {failed} failed, \
         p99 during the fault {p99_during:?}, slowest {slowest:?}, breaker opened: {breaker_open}, \
         {admitted} admitted during it, recovered {recovered:?} after Redis was back, {loud} warning/error log lines",
        calls.len(),
        during.len()
    );
    assert_eq!(failed, 0, "every call is answered (by the failure mode while Redis is {kind})");
    assert!(fell_back > during.len() / 2, "the failure mode answered during the fault");
    assert!(p99_during <= DEADLINE + Duration::from_millis(100), "p99 {p99_during:?} during the fault");
    assert!(slowest <= DEADLINE + MARGIN, "a call took {slowest:?}, over the deadline plus margin");
    assert!(breaker_open, "the circuit breaker opened");
    assert!(recovered < Duration::from_secs(2), "exact enforcement resumed after {recovered:?}");
    assert!(loud < 20, "an error storm in the logs ({loud} lines):\n{logs}");
    assert!(!logs.contains("panicked"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(service.scrape().contains("ratelimitd_circuit_breaker_open 0"), "the breaker closed again");
    // Exact again: a fresh key gets exactly the default 300, from Redis.
    let mut client = service.client().await;
    for _ in 0..300 {
        let d = check(&mut client, "after-the-fault", 1).await;
        assert!(d.allowed && d.fallback == Fallback::None as i32, "{d:?}");
    }
    assert!(!check(&mut client, "after-the-fault", 1).await.allowed);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stopped_under_load() {
    outage("stopped", async |redis: &Redis| redis.stop().await, async |redis: &Redis| redis.start_again().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_paused_under_load() {
    outage("paused", async |redis: &Redis| redis.pause().await, async |redis: &Redis| redis.unpause().await).await;
}

/// Each failure mode, with Redis down: open allows, closed denies, local enforces
/// limit / replicas exactly on its own (the three servers share the Redis); all flagged.
#[tokio::test(flavor = "multi_thread")]
async fn failure_modes_answer_as_configured() {
    let backend = Backend::redis().await;
    let server = |mode: &str| {
        let extra = ["--failure-mode", mode, "--expected-replicas", "3", "--redis-timeout", "50ms"];
        TestServer::start(backend.config_with(12, "60s", &extra))
    };
    let (open, closed, local) = (server("open").await, server("closed").await, server("local").await);
    let (mut open_client, mut closed_client, mut local_client) =
        (open.client().await, closed.client().await, local.client().await);
    backend.redis.as_ref().unwrap().stop().await;
    for _ in 0..20 {
        let d = check(&mut open_client, "k", 1).await;
        assert!(d.allowed && d.fallback == Fallback::Open as i32 && d.headers.is_empty(), "{d:?}");
        let d = check(&mut closed_client, "k", 1).await;
        assert!(!d.allowed && d.fallback == Fallback::Closed as i32 && d.retry_after_ms >= 1_000, "{d:?}");
        assert!(d.headers.iter().any(|h| h.name == "Retry-After"));
    }
    let allowed: Vec<bool> = {
        let mut answers = Vec::new();
        for _ in 0..8 {
            let d = check(&mut local_client, "k", 1).await;
            assert_eq!((d.fallback, d.limit), (Fallback::Local as i32, 4), "{d:?}");
            answers.push(d.allowed);
        }
        answers
    };
    assert_eq!(allowed, [true, true, true, true, false, false, false, false], "12 / 3 replicas = 4, exactly");
}

/// Redis restarted empty mid-run: the script is reloaded (NOSCRIPT), limits resume,
/// and the only error is under-counting, bounded by what Redis lost.
#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_empty_only_under_counts_by_what_it_lost() {
    const LIMIT: u32 = 50;
    let backend = Backend::redis().await;
    // Closed: nothing is admitted while Redis is away, so what the restart lost is the only slack.
    let server = TestServer::start(backend.config_with(LIMIT, "60s", &["--failure-mode", "closed"])).await;
    let mut client = server.client().await;
    let mut before = 0;
    for _ in 0..30 {
        before += u32::from(check(&mut client, "k", 1).await.allowed);
    }
    backend.redis.as_ref().unwrap().restart().await;
    let started = Instant::now();
    let (mut after, mut fell_back) = (0, 0);
    // Until Redis denies the key again: every answer meanwhile is Redis's or closed.
    loop {
        let d = check(&mut client, "k", 1).await;
        assert!(started.elapsed() < Duration::from_secs(10), "Redis never took over again");
        if d.fallback != Fallback::None as i32 {
            assert!(!d.allowed, "closed never admits");
            fell_back += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else if d.allowed {
            after += 1;
        } else {
            break;
        }
    }
    println!(
        "restart: {before} allowed before, {after} after ({fell_back} answered closed while Redis came back, {:?}); \
         lost by Redis: {before}, admitted in the window: {} of {LIMIT}",
        started.elapsed(),
        before + after
    );
    assert_eq!(before, 30);
    // Redis lost the 30 units counted before; the key is counted from empty, exactly,
    // so the window admitted LIMIT + 30: over by exactly what was lost, and no more.
    assert_eq!(after, LIMIT, "after the restart the key is counted from empty, exactly");
}

/// Three replicas on one Redis; one is killed under load. Callers of the killed one
/// move to the others; the exactness check over every decision of the run passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_under_load() {
    let _alone = SERIAL.lock().await;
    const LIMIT: u32 = 50;
    const WINDOW_MS: u64 = 2_000;
    let redis = Redis::start().await;
    let mut replicas: Vec<Process> =
        (0..3).map(|_| start(&redis, "2s", &["--limit", "50", "--window", "2s"])).collect();
    let mut clients = Vec::new();
    for replica in &replicas {
        clients.push(replica.client().await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in 0..30 {
        let mut pool = clients.clone();
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let (mut records, mut failovers) = (Vec::new(), 0);
            let mut target = caller % pool.len();
            let mut i = caller;
            while !stop.load(Ordering::Relaxed) {
                let (key, cost) = (i % 4, 1 + (i / 4 % 2) as u32);
                match try_check(&mut pool[target], &format!("key-{key}"), cost).await {
                    Ok(d) => {
                        assert_eq!(d.fallback, Fallback::None as i32, "Redis is up");
                        records.push((key, Record { allowed: d.allowed, cost, at_ms: d.decided_at_ms }));
                        i += 1;
                    }
                    Err(_) => {
                        // The replica is gone: the gateway retries on another one.
                        failovers += 1;
                        target = (target + 1) % pool.len();
                    }
                }
            }
            (records, failovers)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    replicas[0].kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let (by_key, failovers) = common::gather(callers).await;
    let still_serving = replicas[1..].iter().all(|r| r.scrape().contains("ratelimitd_store_up 1"));
    println!("{failovers} calls failed over after the kill {:?} ago", killed_at.elapsed());
    common::assert_exact("replica killed", &by_key, LIMIT, WINDOW_MS, false);
    assert!(still_serving);
    assert!(failovers <= 30, "at most one failed call per caller of the killed replica: {failovers}");
    replicas.truncate(0);
}
