//! Unit tests of the config module.

use clap::Parser;

use super::*;

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    Config::from_cli(Cli::try_parse_from([&["ratelimitd"], args].concat()).expect("flags parse"))
}

#[test]
fn defaults_to_300_per_minute_in_process() {
    let config = parse(&[]).unwrap();
    assert!(matches!(config.store, StoreConfig::Memory));
    let policy = config.policies.current().default.limits.windows()[0];
    assert_eq!((policy.limit(), policy.window_ms()), (300, 60_000));
}

#[test]
fn bad_values_name_their_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--limit", "0"], "--limit"),
        (&["--window", "0s"], "--window"),
        (&["--window", "1500us"], "--window"),
        (&["--redis-url", "redis://h:6379"], "--fingerprint-secret"),
        (&["--redis-url", "http://user:hunter2@h", "--fingerprint-secret", "s"], "--redis-url"),
        (
            &["--redis-url", "redis://user:hunter2@h", "--fingerprint-secret", "s", "--redis-ca-file", "/x"],
            "--redis-ca-file",
        ),
        (
            &["--redis-url", "rediss://u:hunter2@h", "--fingerprint-secret", "s", "--redis-ca-file", "/x"],
            "--redis-ca-file",
        ),
        (&["--redis-url", "redis://h", "--fingerprint-secret", "s", "--redis-timeout", "0s"], "--redis-timeout"),
        (&["--fingerprint-secret", ""], "--fingerprint-secret"),
        (&["--fingerprint-secret-file", "/nonexistent/secret"], "--fingerprint-secret-file"),
        (&["--throttled-interval", "10ms"], "--throttled-interval"),
        (&["--near-limit-fraction", "0"], "--near-limit-fraction"),
        (&["--near-limit-fraction", "NaN"], "--near-limit-fraction"),
        (&["--limits-file", "/nonexistent/limits.yaml"], "--limits-file"),
        (&["--limits-file", "/dev/null", "--limits-poll-interval", "1ms"], "--limits-poll-interval"),
        (&["--envoy-api-key-entry", ""], "--envoy-api-key-entry"),
        (&["--http-key-header", "x api key"], "--http-key-header"),
        (&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "--tls-cert"),
        (&["--request-timeout", "1ms"], "--request-timeout"),
        (&["--redis-url", "redis://h", "--fingerprint-secret", "s", "--redis-timeout", "1s"], "--redis-timeout"),
    ];
    for (args, flag) in cases {
        let message = parse(args).expect_err("must be rejected").to_string();
        assert!(message.starts_with(flag), "{args:?}: {message}");
        assert!(!message.contains("hunter2"), "a Redis password leaked: {message}");
    }
}

#[test]
fn redis_needs_a_shared_secret() {
    let config = parse(&["--redis-url", "redis://h:6379", "--fingerprint-secret", "s3cret"]).unwrap();
    let StoreConfig::Redis(options) = config.store else { panic!("expected the Redis store") };
    assert_eq!(options.timeout, Duration::from_millis(50));
    assert_eq!(options.longest_wait, Duration::from_secs(1), "--request-timeout bounds a caller's deadline");
    assert!(options.previous_layout);
    assert_eq!(options.key_prefix, "ratelimitd:");
}

#[test]
fn fingerprint_reads_one_line_under_the_secret() {
    let cli = |args: &[&str]| Cli::try_parse_from([&["ratelimitd"], args].concat()).unwrap();
    let with_secret = cli(&["--fingerprint-secret", "s3cret", "fingerprint"]);
    let printed = fingerprint(&with_secret, "sk_live_1\n").unwrap();
    assert_eq!(printed, Fingerprinter::new(b"s3cret").fingerprint("sk_live_1").to_string());
    assert_eq!(fingerprint(&with_secret, "sk_live_1\r\n").unwrap(), printed);
    assert!(matches!(fingerprint(&with_secret, "\n"), Err(ConfigError::FingerprintInput(_))));
    let without = cli(&["fingerprint"]);
    assert!(matches!(fingerprint(&without, "sk_live_1"), Err(ConfigError::FingerprintSecret)));
}
