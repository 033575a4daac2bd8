//! The `ratelimitd` binary as operators run it: flags and their errors, start-up on
//! the in-process store, SIGTERM, and no API key in its logs.

mod common;

use std::process::Command;

use common::check;
use common::process::{BIN, Process};

fn ratelimitd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).envs(env.iter().copied()).env_remove("RUST_LOG");
    cmd
}

/// Flags, environment, and the flag the error must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn a_bad_value_exits_non_zero_with_a_first_line_naming_the_flag() {
    let cases: &[Case] = &[
        (&["--limit", "0"], &[], "--limit"),
        (&["--limit", "many"], &[], "--limit"),
        (&[], &[("RATELIMITD_LIMIT", "0")], "--limit"),
        (&["--window", "5 fortnights"], &[], "--window"),
        (&["--listen", "nowhere"], &[], "--listen"),
        (&["--redis-url", "redis://127.0.0.1:1"], &[], "--fingerprint-secret"),
        (&["--redis-connections", "0"], &[], "--redis-connections"),
        (&["--log-format", "xml"], &[], "--log-format"),
        (&["--metrics-listen", "127.0.0.1:99999"], &[], "--metrics-listen"),
        (&["--near-limit-fraction", "1.5"], &[], "--near-limit-fraction"),
        (&["--limit", "-5"], &[], "--limit"),
        (&["--redis-url", "redis://user:hunter2@h:notaport", "--fingerprint-secret", "s"], &[], "--redis-url"),
        (&["--tls-cert", NOT_PEM, "--tls-key", NOT_PEM], &[], "--tls-cert"),
        (&["--limits-poll-interval", "5s"], &[], "--limits-poll-interval"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (&["--tls-cert", NOT_PEM], &[], "--tls-key"),
        (&["check-limits"], &[], "<FILE>"),
    ];
    std::fs::write(NOT_PEM, "not a certificate\n").unwrap();
    for (args, env, flag) in cases {
        let output = ratelimitd(args, env).output().expect("run ratelimitd");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(first.contains("error") && first.contains(flag), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("hunter2"), "a password reached the error: {stderr}");
    }
}

/// A file that is not PEM, for the TLS flags.
const NOT_PEM: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/not-a-certificate.pem");

/// `ratelimitd check-limits FILE`: the same verdict as start-up, serving nothing.
#[test]
fn check_limits_validates_a_file_offline() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let fp = "00112233445566778899aabbccddeeff";
    std::fs::write(
        &good,
        format!("policies:\n  gold:\n    limit: 3000\n    window: 1m\noverrides:\n  {fp}:\n    policy: gold\n"),
    )
    .unwrap();
    let output = ratelimitd(&["check-limits", good.to_str().unwrap()], &[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("valid") && stdout.contains("1 overrides") && stdout.contains("default 300 per 1m"),
        "{stdout}"
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "policies:\n  gold:\n    limit: 10\n    window: 60s\n    burst: 3\n").unwrap();
    let checked = ratelimitd(&["check-limits", bad.to_str().unwrap()], &[]).output().unwrap();
    let started =
        ratelimitd(&["--listen", "127.0.0.1:0", "--limits-file", bad.to_str().unwrap()], &[]).output().unwrap();
    assert_eq!((checked.status.code(), started.status.code()), (Some(2), Some(2)));
    let message = String::from_utf8_lossy(&checked.stderr);
    assert!(message.contains("unknown field `burst`") && message.contains("line 5"), "{message}");
    assert_eq!(message, String::from_utf8_lossy(&started.stderr), "the same message as start-up");
}

/// What an operator sees at start-up: one line with what is in force and no secret;
/// a name to listen on is resolved; SIGHUP without a limits file is logged, not fatal;
/// human logs carry no colour codes when they go to a file.
#[tokio::test(flavor = "multi_thread")]
async fn start_up_says_what_is_in_force_and_sighup_without_a_limits_file_is_harmless() {
    let port = common::free_port();
    let http = format!("localhost:{port}");
    let redis = "redis://user:hunter2@127.0.0.1:1";
    let mut server = Process::start(&[
        "--http-listen",
        &http,
        "--redis-url",
        redis,
        "--fingerprint-secret",
        "s3cret",
        "--log-format",
        "human",
        "--redis-timeout",
        "20ms",
        "--failure-mode",
        "open",
    ]);
    let mut client = server.client().await;
    assert!(check(&mut client, "k", 1).await.allowed, "Redis is down: the open failure mode allows");
    let resolved = format!("127.0.0.1:{port}").parse().unwrap();
    let over_http = common::gateway::get(resolved, "/v1/auth", &[("x-api-key", b"k")]).await;
    assert_eq!(over_http.status, 200, "--http-listen localhost:{port} was resolved and served");
    server.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(check(&mut client, "k", 1).await.allowed, "still serving after SIGHUP");
    assert_eq!(server.terminate(), Some(0));
    let logs = server.logs();
    let start = logs.lines().find(|l| l.contains("ratelimitd starting")).unwrap_or_else(|| panic!("{logs}"));
    for wanted in [
        env!("CARGO_PKG_VERSION"),
        "single",
        "127.0.0.1:1",
        "default 300 per 1m",
        "failure_mode=\"open\"",
        "expected_replicas=1",
    ] {
        assert!(start.contains(wanted), "{wanted:?} missing from {start}");
    }
    assert!(logs.contains("no --limits-file to reload"), "{logs}");
    assert!(!logs.contains("hunter2") && !logs.contains("s3cret"), "a secret reached the logs");
    assert!(!logs.contains('\u{1b}'), "colour codes in a log file");
}

#[test]
fn help_explains_every_flag_and_its_environment_variable_by_topic() {
    let output = ratelimitd(&["--help"], &[]).output().expect("run ratelimitd --help");
    let help = String::from_utf8_lossy(&output.stdout);
    for heading in ["Serving:", "Redis:", "Limits and failure modes:", "Keys and the throttled-keys report:"] {
        assert!(help.lines().any(|l| l == heading), "--help is grouped by topic: no {heading}");
    }
    for flag in [
        "listen",
        "redis-url",
        "redis-key-prefix",
        "redis-timeout",
        "redis-connections",
        "limit",
        "window",
        "fingerprint-secret",
        "fingerprint-secret-file",
        "log-format",
        "shutdown-grace",
        "metrics-listen",
        "throttled-top-k",
        "throttled-interval",
        "near-limit-fraction",
    ] {
        let env = format!("RATELIMITD_{}", flag.to_uppercase().replace('-', "_"));
        assert!(help.contains(&format!("--{flag} ")), "--{flag} missing from --help");
        assert!(help.contains(&env), "{env} missing from --help");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_in_process_logs_no_key_and_exits_0_on_sigterm() {
    let mut server = Process::start(&["--limit", "2", "--log-format", "json"]);
    let mut client = server.client().await;
    let secret_key = "sk_live_SECRET_4f1c9a";
    assert!(check(&mut client, secret_key, 2).await.allowed);
    assert!(!check(&mut client, secret_key, 1).await.allowed);
    let _ = common::try_check(&mut client, &"x".repeat(300), 1).await;
    drop(client);

    assert_eq!(server.terminate(), Some(0), "{}", server.logs());
    let logs = server.logs();
    assert!(logs.contains("limits are per process"), "no start-up warning: {logs}");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(!logs.contains("SECRET_4f1c9a"), "the API key reached the logs");
    assert!(!logs.contains("xxxxxxxxxx"), "a rejected key reached the logs");
}

/// `ratelimitd probe`, as the chart's `helm test` hook runs it: exit 0 and SERVING from a
/// server that serves, 1 and NOT_SERVING from one whose Redis cannot be reached, 1 and one
/// line from an address where nothing listens.
#[tokio::test(flavor = "multi_thread")]
async fn probe_asks_a_running_server_whether_it_serves() {
    let probe = |target: String| {
        let out = ratelimitd(&["probe", &target], &[]).output().expect("run ratelimitd probe");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let serving = Process::start(&[]);
    serving.client().await;
    let (code, status, _) = probe(serving.grpc.to_string());
    assert_eq!((code, status.as_str()), (Some(0), "SERVING"));

    let unreachable = format!("redis://127.0.0.1:{}", common::free_port());
    let down = Process::start(&["--redis-url", &unreachable, "--fingerprint-secret", "s", "--redis-timeout", "50ms"]);
    let mut client = down.client().await;
    // Health follows the store's last answer, checked every few hundred ms.
    let started = std::time::Instant::now();
    let (code, status) = loop {
        let _ = common::try_check(&mut client, "k", 1).await;
        let (code, status, _) = probe(down.grpc.to_string());
        if code != Some(0) || started.elapsed() > std::time::Duration::from_secs(10) {
            break (code, status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!((code, status.as_str()), (Some(1), "NOT_SERVING"));

    let (code, status, error) = probe(format!("127.0.0.1:{}", common::free_port()));
    assert_eq!((code, status.as_str()), (Some(1), ""));
    assert!(
        error.starts_with("ratelimitd: probe: cannot connect to 127.0.0.1:") && error.lines().count() == 1,
        "{error}"
    );
}
