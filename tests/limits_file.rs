//! The limits file, through the real binary: overrides by fingerprint (as
//! `ratelimitd fingerprint` prints it) with aliases, reload on change and on SIGHUP
//! under load with no failed call, and a broken file kept out.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::{BIN, Process};
use common::{check, try_check};

const SECRET: &str = "limits-file-test-secret";

fn fingerprint(key: &str) -> String {
    common::process::fingerprint(SECRET, key)
}

fn limits(partner: &str, partner_limit: u32) -> String {
    format!(
        "default:\n  limit: 5\n  window: 60s\npolicies:\n  gold:\n    limit: {partner_limit}\n    window: 60s\n  \
         small:\n    limit: 1\n    window: 60s\noverrides:\n  {partner}:\n    policy: gold\n    alias: Acme Health\n  \
         {}:\n    policy: small\n    alias: noisy-partner\n",
        fingerprint("noisy-key")
    )
}

/// Replaces the file in one step (write a sibling, rename), as editors and
/// Kubernetes do, so the service never reads half a file.
fn write(path: &Path, text: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).expect("write the limits file");
    std::fs::rename(&temp, path).expect("replace the limits file");
}

fn start(path: &Path, poll: &str) -> Process {
    let path = path.to_str().expect("UTF-8 path");
    Process::start(&["--fingerprint-secret", SECRET, "--limits-file", path, "--limits-poll-interval", poll])
}

async fn wait_for_limit(client: &mut common::Client, key: &str, wanted: u32) -> Duration {
    let started = Instant::now();
    loop {
        let d = common::peek(client, key, 1).await;
        if d.limit == wanted {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "limit still {} after 5 s, wanted {wanted}", d.limit);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overrides_by_fingerprint_with_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    write(&path, &limits(&fingerprint("partner-key"), 1000));
    let service = start(&path, "100ms");
    let mut client = service.client().await;
    let partner = check(&mut client, "partner-key", 1).await;
    assert_eq!((partner.limit, partner.policy.as_str()), (1000, "gold"));
    let other = check(&mut client, "someone-else", 1).await;
    assert_eq!((other.limit, other.policy.as_str()), (5, "default"), "the file's default wins over --limit");
    assert!(check(&mut client, "noisy-key", 1).await.allowed);
    assert!(!check(&mut client, "noisy-key", 1).await.allowed);
    let metrics = service.scrape();
    let series =
        format!("ratelimitd_throttled_key_denials{{key=\"{}\",alias=\"noisy-partner\"}}", fingerprint("noisy-key"));
    assert!(metrics.contains(&series), "{series} missing from:\n{metrics}");
    assert!(service.logs().contains("noisy-partner"), "the throttled log line names the alias");
    assert!(!service.logs().contains("noisy-key") && !metrics.contains("noisy-key"), "a raw key leaked");
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_without_failing_a_call_and_keeps_a_broken_file_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    let partner = fingerprint("partner-key");
    write(&path, &limits(&partner, 1000));
    let service = start(&path, "100ms");
    let mut client = service.client().await;
    wait_for_limit(&mut client, "partner-key", 1000).await;

    let (stop, calls, failures) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for caller in 0..8 {
        let (stop, calls, failures, mut client) =
            (stop.clone(), calls.clone(), failures.clone(), service.client().await);
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = if i % 2 == 0 { "partner-key".to_owned() } else { format!("caller-{caller}-{i}") };
                if try_check(&mut client, &key, 1).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // Ten reloads under load, each seen within a poll or two.
    for round in 0..10u32 {
        let limit = 1000 + 100 * (round + 1);
        write(&path, &limits(&partner, limit));
        let took = wait_for_limit(&mut client, "partner-key", limit).await;
        assert!(took < Duration::from_secs(2), "reload took {took:?}");
    }
    // A broken file is rejected, counted and logged with its line; the policies stay.
    write(&path, "default:\n  limit: 5\n  window: 60s\npolicies:\n  gold:\n    limit: 0\n    window: 60s\n");
    let started = Instant::now();
    while !service.scrape().contains("ratelimitd_config_valid 0") {
        assert!(started.elapsed() < Duration::from_secs(5), "the broken file was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(service.scrape().contains("ratelimitd_config_loads_total{result=\"failure\"} 1"));
    assert!(service.logs().contains("line 6"), "the log names the line:\n{}", service.logs());
    assert_eq!(common::peek(&mut client, "partner-key", 1).await.limit, 2000, "the last good policies stay");
    write(&path, &limits(&partner, 1234));
    wait_for_limit(&mut client, "partner-key", 1234).await;
    assert!(service.scrape().contains("ratelimitd_config_valid 1"));

    stop.store(true, Ordering::Relaxed);
    for caller in load {
        caller.await.expect("a caller panicked");
    }
    let (calls, failures) = (calls.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    println!("{calls} calls during 12 reloads, {failures} failed");
    assert!(calls > 1000, "the load ran: {calls} calls");
    assert_eq!(failures, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    let partner = fingerprint("partner-key");
    write(&path, &limits(&partner, 1000));
    let mut service = start(&path, "1h"); // no polling to speak of: only SIGHUP reloads
    let mut client = service.client().await;
    write(&path, &limits(&partner, 3000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(common::peek(&mut client, "partner-key", 1).await.limit, 1000, "not polled yet");
    service.signal("HUP");
    let took = wait_for_limit(&mut client, "partner-key", 3000).await;
    println!("SIGHUP applied the new file in {took:?}");
    assert_eq!(service.terminate(), Some(0), "SIGHUP did not stop the service");
}

#[test]
fn a_broken_file_at_start_up_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    std::fs::write(&path, "policies:\n  gold:\n    limit: 10\n    window: 60s\n    burst: 3\n").unwrap();
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--limits-file", path.to_str().unwrap()])
        .output()
        .expect("run ratelimitd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("--limits-file") && first.contains("unknown field `burst`") && first.contains("line 5"),
        "{first}"
    );
}

/// A reload that would drop every override without saying so (an emptied or truncated
/// file) is refused, and so is a file that is not UTF-8; `overrides: {}` drops them.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_drops_every_override_must_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.yaml");
    let partner = fingerprint("partner-key");
    write(&path, &limits(&partner, 3000));
    let mut service = start(&path, "100ms");
    let mut client = service.client().await;
    assert_eq!(common::peek(&mut client, "partner-key", 1).await.limit, 3000);
    let valid = |service: &Process| {
        let text = service.scrape();
        text.lines().find_map(|l| l.strip_prefix("ratelimitd_config_valid ")).map(str::to_owned)
    };
    for refused in [
        b"".as_slice(),
        b"# emptied by mistake\n",
        b"default:\n  limit: 5\n  window: 60s\n",
        b"overrides:\n  \xff: x\n",
    ] {
        std::fs::write(dir.path().join("next.yaml"), refused).unwrap();
        std::fs::rename(dir.path().join("next.yaml"), &path).unwrap();
        let started = Instant::now();
        while valid(&service).as_deref() != Some("0") {
            assert!(started.elapsed() < Duration::from_secs(5), "not refused: {:?}", String::from_utf8_lossy(refused));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(common::peek(&mut client, "partner-key", 1).await.limit, 3000, "the partner keeps its limit");
        write(&path, &limits(&partner, 3000));
        let started = Instant::now();
        while valid(&service).as_deref() != Some("1") {
            assert!(started.elapsed() < Duration::from_secs(5), "the good file was not applied again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    write(&path, "default:\n  limit: 5\n  window: 60s\noverrides: {}\n");
    wait_for_limit(&mut client, "partner-key", 5).await;
    assert_eq!(service.terminate(), Some(0));
    let logs = service.logs();
    assert!(logs.contains("must say so with `overrides: {}`"), "{logs}");
    assert!(logs.contains("not UTF-8"), "{logs}");
}
