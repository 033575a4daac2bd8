//! Metrics as an operator sees them: a valid exposition, no raw key anywhere,
//! bounded series however many keys are throttled, and a real Prometheus that
//! finds the most throttled key.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::process::Process;
use common::prometheus::{Prometheus, tool};
use common::{Redis, check, try_check};
use ratelimitd::domain::Fingerprinter;

const SECRET: &str = "metrics-test-secret";

fn fingerprint(key_id: &str) -> String {
    Fingerprinter::new(SECRET.as_bytes()).fingerprint(key_id).to_string()
}

/// The value of the series whose line starts with `series` (name and labels).
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn exposition_passes_promtool_and_never_shows_a_raw_key() {
    let mut server = Process::start(&["--limit", "3", "--fingerprint-secret", SECRET, "--log-format", "json"]);
    let mut client = server.client().await;
    let (alpha, beta) = ("sk_live_alpha_SECRET_91b2", "sk_live_beta_SECRET_77c0");
    for _ in 0..5 {
        check(&mut client, alpha, 1).await;
    }
    for _ in 0..4 {
        check(&mut client, beta, 1).await;
    }
    assert!(try_check(&mut client, "", 1).await.is_err());
    assert!(try_check(&mut client, "sk_live_gamma_SECRET_0000", 4).await.is_err());
    let text = server.scrape();

    let mut promtool = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let verdict = promtool.wait_with_output().unwrap();
    let problems = String::from_utf8_lossy(&verdict.stdout) + String::from_utf8_lossy(&verdict.stderr);
    assert!(verdict.status.success() && problems.trim().is_empty(), "promtool: {problems}\n{text}");

    let decisions = "ratelimitd_decisions_total{result=";
    assert_eq!(value(&text, &format!("{decisions}\"allowed\",policy=\"default\"}}")), Some(6.0), "{text}");
    assert_eq!(value(&text, &format!("{decisions}\"denied\",policy=\"default\"}}")), Some(3.0), "{text}");
    assert_eq!(value(&text, "ratelimitd_invalid_requests_total{field=\"key_id\"}"), Some(1.0));
    assert_eq!(value(&text, "ratelimitd_invalid_requests_total{field=\"cost\"}"), Some(1.0));
    let throttled = |key| format!("ratelimitd_throttled_key_denials{{key=\"{}\"}}", fingerprint(key));
    assert_eq!(value(&text, &throttled(alpha)), Some(2.0), "{text}");
    assert_eq!(value(&text, &throttled(beta)), Some(1.0), "{text}");
    assert_eq!(value(&text, "ratelimitd_throttled_keys"), Some(2.0));
    assert_eq!(value(&text, "ratelimitd_store_up"), Some(1.0));
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
    }
    assert!(!text.contains("SECRET"), "a raw key reached /metrics");

    assert_eq!(server.terminate(), Some(0));
    let logs = server.logs();
    assert!(!logs.contains("SECRET"), "a raw key reached the logs");
    let alpha_denials_logged =
        logs.lines().filter(|l| l.contains("key throttled") && l.contains(&fingerprint(alpha))).count();
    assert_eq!(alpha_denials_logged, 1, "denials are logged once per key per interval");
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_throttled_keys_keep_the_series_at_top_k() {
    const KEYS: usize = 10_000;
    const CALLERS: usize = 32;
    let server = Process::start(&["--limit", "1", "--throttled-top-k", "20", "--fingerprint-secret", SECRET]);
    let client = server.client().await;
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let mut client = client.clone();
        callers.push(tokio::spawn(async move {
            for key in (caller..KEYS).step_by(CALLERS) {
                let key_id = format!("key-{key}");
                assert!(check(&mut client, &key_id, 1).await.allowed);
                assert!(!check(&mut client, &key_id, 1).await.allowed);
            }
        }));
    }
    for caller in callers {
        caller.await.expect("caller");
    }
    let text = server.scrape();
    let series = text.lines().filter(|l| l.starts_with("ratelimitd_throttled_key_denials{")).count();
    assert_eq!(series, 20, "the throttled-keys series must stay at K");
    let distinct = value(&text, "ratelimitd_throttled_keys").expect("ratelimitd_throttled_keys");
    println!("{KEYS} keys throttled: {series} per-key series, ratelimitd_throttled_keys = {distinct}");
    assert!((distinct - KEYS as f64).abs() < 0.05 * KEYS as f64, "estimate {distinct}");
    assert!(value(&text, "ratelimitd_keys_near_limit").is_some_and(|v| (v - KEYS as f64).abs() < 500.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_finds_the_most_throttled_key() {
    let server = Process::start(&["--limit", "5", "--fingerprint-secret", SECRET]);
    let prometheus = Prometheus::start(server.metrics, None);
    let mut client = server.client().await;
    for (key, calls) in [("partner-hot", 100), ("partner-warm", 30)] {
        for _ in 0..calls {
            check(&mut client, key, 1).await;
        }
    }
    for other in 0..10 {
        for _ in 0..8 {
            check(&mut client, &format!("partner-{other}"), 1).await;
        }
    }
    // topk(1, ratelimitd_throttled_key_denials), URL-encoded.
    let query = "topk%281%2Cratelimitd_throttled_key_denials%29";
    let started = Instant::now();
    let top = loop {
        let top = prometheus.query(&format!("/api/v1/query?query={query}"));
        if let Some(key) = top.as_ref().and_then(|json| json["data"]["result"][0]["metric"]["key"].as_str()) {
            break key.to_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "Prometheus never returned the throttled keys");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("Prometheus found the top throttled key after {:?}", started.elapsed());
    assert_eq!(top, fingerprint("partner-hot"));
}

/// Polls `/metrics` until `series` has `expected`, for at most `within`.
async fn wait_for_value(server: &Process, series: &str, expected: f64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if value(&server.scrape(), series) == Some(expected) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{series} never became {expected}: {}", server.scrape());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn store_health_follows_redis_down_and_back() {
    let redis = Redis::start().await;
    let server = Process::start(&["--redis-url", &redis.url(), "--fingerprint-secret", SECRET]);
    let mut client = server.client().await;
    assert!(check(&mut client, "k", 1).await.allowed);
    let limit = Duration::from_secs(15);
    wait_for_value(&server, "ratelimitd_store_up", 1.0, limit).await;
    redis.stop().await;
    let down = wait_for_value(&server, "ratelimitd_store_up", 0.0, limit).await;
    redis.start_again().await;
    let up = wait_for_value(&server, "ratelimitd_store_up", 1.0, limit).await;
    println!("ratelimitd_store_up went to 0 after {down:?} and back to 1 after {up:?}");
    assert!(check(&mut client, "k", 1).await.allowed, "checks work again once Redis is back");
}

/// Every series an operator alerts on exists from start-up, at 0 (per-key series excepted),
/// with the build and process metrics; gRPC calls are counted by method and status.
#[tokio::test(flavor = "multi_thread")]
async fn every_series_exists_from_start_up_and_calls_count_by_method_and_status() {
    let server = Process::start(&["--limit", "5", "--fingerprint-secret", SECRET]);
    let mut client = server.client().await;
    let text = server.scrape();
    for name in ratelimitd::metrics::ALL.iter().filter(|n| **n != ratelimitd::metrics::THROTTLED_KEY_DENIALS) {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} is missing at start-up:\n{text}");
    }
    for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_threads"] {
        assert!(value(&text, &format!("{name} ")).is_some(), "{name} is missing");
    }
    let version = format!("ratelimitd_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(value(&text, &version), Some(1.0));
    let ok = "ratelimitd_grpc_calls_total{method=\"CheckAndConsume\",code=\"OK\"}";
    assert_eq!(value(&text, ok), Some(0.0), "at 0 from start-up");

    check(&mut client, "k", 1).await;
    check(&mut client, "k", 2).await;
    assert!(try_check(&mut client, "k", 6).await.is_err(), "a cost above the limit is refused");
    let text = server.scrape();
    assert_eq!(value(&text, ok), Some(2.0), "{text}");
    let invalid = "ratelimitd_grpc_calls_total{method=\"CheckAndConsume\",code=\"INVALID_ARGUMENT\"}";
    assert_eq!(value(&text, invalid), Some(1.0), "{text}");
}
