//! Overrides that end by themselves (`until`), through the real binary: a raise falls back
//! to the default and a temporary lowering to its `then` policy at their time, with no
//! reload; each end, and each override a reload starts, writes one audit line (fingerprint,
//! alias, policies before and after, the actor) and is counted; the raw key appears nowhere.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::process::Process;

const SECRET: &str = "expiring-overrides-secret";

fn fingerprint(key: &str) -> String {
    common::process::fingerprint(SECRET, key)
}

/// Polls until `key`'s limit is `wanted`; how long that took.
async fn until_limit(client: &mut common::Client, key: &str, wanted: u32, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if common::peek(client, key, 1).await.limit == wanted {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{key}: limit never became {wanted}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overrides_end_at_their_time_without_a_reload_and_say_so() {
    let end = SystemTime::now() + Duration::from_secs(3);
    let until = humantime::format_rfc3339_seconds(end + Duration::from_secs(1)).to_string();
    let (raised, clamped) = ("sk_live_raised_partner", "sk_live_runaway_key");
    let file = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "default:\n  limit: 5\n  window: 60s\npolicies:\n  raised:\n    limit: 50\n    window: 60s\n  clamp:\n    \
         limit: 2\n    window: 60s\n  gold:\n    limit: 20\n    window: 60s\noverrides:\n  {}:\n    policy: raised\n    \
         alias: Acme Health\n    until: {until}\n  {}:\n    policy: clamp\n    until: {until}\n    then: gold\n",
        fingerprint(raised),
        fingerprint(clamped)
    );
    std::fs::write(file.path(), text).unwrap();
    let path = file.path().to_str().unwrap();
    let mut server = Process::start_logging(
        &["--fingerprint-secret", SECRET, "--limits-file", path, "--log-format", "json"],
        "info",
    );
    let mut client = server.client().await;
    assert_eq!(common::peek(&mut client, raised, 1).await.limit, 50);
    assert_eq!(common::peek(&mut client, clamped, 1).await.limit, 2);
    let text = server.scrape();
    assert!(text.contains("ratelimitd_overrides 2"), "{text}");

    let after = until_limit(&mut client, raised, 5, Duration::from_secs(10)).await;
    until_limit(&mut client, clamped, 20, Duration::from_secs(2)).await;
    println!("the overrides ended {after:?} after the first check (until {until})");
    // The log line and the count follow within the watcher's second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let text = server.scrape();
    assert!(text.contains("ratelimitd_override_changes_total{change=\"ended\"} 2"), "{text}");
    assert!(text.contains("ratelimitd_overrides 0"), "{text}");

    // A reload that adds an override starts it, on the record too.
    let newcomer = "sk_live_new_partner";
    let text = format!(
        "policies:\n  gold:\n    limit: 20\n    window: 60s\noverrides:\n  {}:\n    policy: gold\n    alias: Newcomer\n",
        fingerprint(newcomer)
    );
    std::fs::write(file.path(), text).unwrap();
    server.signal("HUP");
    until_limit(&mut client, newcomer, 20, Duration::from_secs(5)).await;
    assert_eq!(server.terminate(), Some(0));
    let logs = server.logs();
    let ended: Vec<&str> = logs.lines().filter(|l| l.contains("\"audit\":\"override ended\"")).collect();
    assert_eq!(ended.len(), 2, "{logs}");
    let acme = ended.iter().find(|l| l.contains("Acme Health")).unwrap_or_else(|| panic!("{ended:?}"));
    for field in [
        &format!("\"key\":\"{}\"", fingerprint(raised)),
        "\"before\":\"raised\"",
        "\"after\":\"default\"",
        "\"actor\":\"limits file\"",
    ] {
        assert!(acme.contains(field), "{field} missing: {acme}");
    }
    assert!(ended.iter().any(|l| l.contains("\"before\":\"clamp\"") && l.contains("\"after\":\"gold\"")), "{ended:?}");
    let started =
        logs.lines().find(|l| l.contains("\"audit\":\"override started\"")).unwrap_or_else(|| panic!("{logs}"));
    assert!(started.contains("Newcomer") && started.contains("\"after\":\"gold\""), "{started}");
    assert!(!logs.contains("sk_live_"), "a raw key reached the logs");
}
