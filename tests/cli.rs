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
    ];
    for (args, env, flag) in cases {
        let output = ratelimitd(args, env).output().expect("run ratelimitd");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(first.contains("error") && first.contains(flag), "{args:?} {env:?}: {stderr}");
    }
}

#[test]
fn help_explains_every_flag_and_its_environment_variable() {
    let output = ratelimitd(&["--help"], &[]).output().expect("run ratelimitd --help");
    let help = String::from_utf8_lossy(&output.stdout);
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
