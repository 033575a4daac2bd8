//! The support desk's admin service, on Redis and on the in-process store: Inspect and
//! Explain agree with the decisions that made the history (a known timeline replayed, its
//! allowed requests listed as the independent record, counted window by window here), read
//! without counting anything; callers need a token, and bad input gets its status; the
//! command-line client prints the same history, reading the key from stdin.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::process::BIN;
use common::{Backend, TestServer, check};
use ratelimitd::grpc::admin::pb::KeyRequest;
use ratelimitd::grpc::admin::pb::admin_client::AdminClient;
use ratelimitd::grpc::admin::pb::key_request::Key;
use tonic::{Code, Request};

const TOKEN: &str = "desk-token-0123456789abcdef";

struct Desk {
    server: TestServer,
    _tokens: tempfile::NamedTempFile,
    token_file: tempfile::NamedTempFile,
}

async fn desk(backend: &Backend) -> Desk {
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "# name token\nalice {TOKEN}\nbob another-token-of-bob-0001").unwrap();
    let path = tokens.path().to_str().unwrap().to_owned();
    let flags = ["--admin-listen", "127.0.0.1:0", "--admin-tokens-file", &path];
    let server = TestServer::start(backend.config_with(5, "60s", &flags)).await;
    let mut token_file = tempfile::NamedTempFile::new().unwrap();
    writeln!(token_file, "{TOKEN}").unwrap();
    Desk { server, _tokens: tokens, token_file }
}

/// A call to the admin service with `token` (none: no authorization header).
fn request(key: Key, token: Option<&str>) -> Request<KeyRequest> {
    let mut request = Request::new(KeyRequest { key: Some(key) });
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn timeline_agrees_with_inspect_and_explain(backend: Backend) {
    let desk = desk(&backend).await;
    let mut client = desk.server.client().await;
    let admin_addr = desk.server.admin.expect("an admin listener");
    let mut admin = AdminClient::connect(format!("http://{admin_addr}")).await.unwrap();

    // The record: every allowed request with its time and cost, one entry per millisecond.
    let mut allowed: Vec<(u64, u64)> = Vec::new();
    let mut denied_at = 0;
    for cost in [1, 2, 1, 3, 1, 1] {
        let d = check(&mut client, "sk_live_partner", cost).await;
        if !d.allowed {
            denied_at = d.decided_at_ms;
        }
        if d.allowed {
            match allowed.last_mut() {
                Some(last) if last.0 == d.decided_at_ms => last.1 += u64::from(cost),
                _ => allowed.push((d.decided_at_ms, u64::from(cost))),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    assert_eq!(
        allowed.iter().map(|a| a.1).sum::<u64>(),
        5,
        "1 + 2 + 1 + 1 of the limit of 5; the cost of 3 did not fit"
    );

    let explained =
        admin.explain(request(Key::KeyId("sk_live_partner".into()), Some(TOKEN))).await.unwrap().into_inner();
    let listed: Vec<(u64, u64)> = explained.requests.iter().map(|r| (r.at_unix_ms, u64::from(r.cost))).collect();
    assert_eq!(listed, allowed, "Explain lists exactly the allowed requests, oldest first");
    assert_eq!((explained.limit, explained.window_ms, explained.policy.as_str()), (5, 60_000, "default"));

    let fingerprint = desk.server.fingerprint("sk_live_partner").to_string();
    let inspected =
        admin.inspect(request(Key::Fingerprint(fingerprint.clone()), Some(TOKEN))).await.unwrap().into_inner();
    let window = &inspected.windows[0];
    let inside: Vec<&(u64, u64)> = allowed.iter().filter(|(t, _)| t + 60_000 > inspected.at_unix_ms).collect();
    let counted: u64 = inside.iter().map(|(_, units)| units).sum();
    assert_eq!((u64::from(window.counted), window.remaining), (counted, 5 - counted as u32));
    assert_eq!(window.next_free_unix_ms, inside[0].0 + 60_000, "when the oldest unit leaves");
    assert_eq!(window.empty_unix_ms, inside.last().unwrap().0 + 60_000);
    assert_eq!(inspected.fingerprint, fingerprint);
    assert_eq!(inspected.last_denied_unix_ms, denied_at, "the cost of 3 was the last denial");
    // Reading counted nothing: the key is still exactly at its limit.
    let d = check(&mut client, "sk_live_partner", 1).await;
    assert!(!d.allowed && d.retry_after_ms == window.next_free_unix_ms - d.decided_at_ms, "{d:?}");
    let inspected = admin.inspect(request(Key::Fingerprint(fingerprint.clone()), Some(TOKEN))).await.unwrap();
    assert_eq!(inspected.into_inner().last_denied_unix_ms, d.decided_at_ms, "the latest denial");

    // A key of cost-1 requests only (Redis keeps it in its unit format).
    let mut units: Vec<(u64, u64)> = Vec::new();
    for _ in 0..3 {
        let d = check(&mut client, "sk_live_units", 1).await;
        match units.last_mut() {
            Some(last) if last.0 == d.decided_at_ms => last.1 += 1,
            _ => units.push((d.decided_at_ms, 1)),
        }
    }
    let explained = admin.explain(request(Key::KeyId("sk_live_units".into()), Some(TOKEN))).await.unwrap().into_inner();
    let listed: Vec<(u64, u64)> = explained.requests.iter().map(|r| (r.at_unix_ms, u64::from(r.cost))).collect();
    assert_eq!(listed, units);

    // Bad input and missing credentials: refused with their status.
    let missing = admin.inspect(request(Key::KeyId("k".into()), None)).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let wrong = admin.inspect(request(Key::KeyId("k".into()), Some("not-a-token-we-know-at-all"))).await.unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    let unknown = "00112233445566778899aabbccddeeff";
    let status = admin.inspect(request(Key::Fingerprint(unknown.into()), Some(TOKEN))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(unknown), "{status:?}");
    let status = admin.explain(request(Key::Fingerprint("sk_live_partner".into()), Some(TOKEN))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!status.message().contains("sk_live"), "never echo what may be a raw key: {status:?}");
    let status = admin.explain(request(Key::KeyId(String::new()), Some(TOKEN))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The command-line client, the key on stdin.
    let mut cli = Command::new(BIN)
        .args(["admin", "explain", "--target", &admin_addr.to_string(), "--key-file", "-", "--token-file"])
        .arg(desk.token_file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cli.stdin.take().unwrap().write_all(b"sk_live_partner\n").unwrap();
    let out = cli.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed} {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        printed.contains(&fingerprint) && printed.contains(&format!("{} requests, 5 units", allowed.len())),
        "{printed}"
    );
    assert_eq!(printed.lines().filter(|l| l.contains("  cost ")).count(), allowed.len(), "{printed}");
    assert!(!printed.contains("sk_live"), "{printed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_the_desk_reads_the_exact_history() {
    timeline_agrees_with_inspect_and_explain(Backend::memory()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_redis_the_desk_reads_the_exact_history() {
    timeline_agrees_with_inspect_and_explain(Backend::redis().await).await;
}

#[test]
fn the_admin_service_needs_its_tokens() {
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let out = run(&["--admin-listen", "127.0.0.1:0"]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{error}");
    assert!(error.contains("--admin-tokens-file or --admin-client-ca") && error.lines().count() == 1, "{error}");
    let out = run(&["--admin-listen", "127.0.0.1:0", "--admin-client-ca", "ca.pem"]);
    assert_eq!(out.status.code(), Some(2), "mutual TLS needs the listener's own certificate (--tls-cert)");
    let mut short = tempfile::NamedTempFile::new().unwrap();
    writeln!(short, "alice short").unwrap();
    let out = run(&["--admin-listen", "127.0.0.1:0", "--admin-tokens-file", short.path().to_str().unwrap()]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{error}");
    assert!(error.contains("line 1") && error.contains("16 bytes"), "{error}");
}

/// Reset on Redis, with two replicas whose deny caches hold the key's denial: once Reset
/// returns, the key's next request is allowed on either replica, and another key is
/// untouched. A reset without a reason changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_frees_the_key_on_every_replica_and_no_other() {
    use ratelimitd::grpc::admin::pb::ResetRequest;
    let backend = Backend::redis().await;
    let a = desk(&backend).await;
    let b = TestServer::start(backend.config(5, "60s")).await;
    let (mut on_a, mut on_b) = (a.server.client().await, b.client().await);
    for key in ["sk_live_rotated", "sk_live_other"] {
        for i in 0..5 {
            let client = if i % 2 == 0 { &mut on_a } else { &mut on_b };
            assert!(check(client, key, 1).await.allowed);
        }
        // Denied on both: each replica's deny cache now answers the key's cost-1 checks.
        assert!(!check(&mut on_a, key, 1).await.allowed && !check(&mut on_b, key, 1).await.allowed);
    }
    let mut admin = AdminClient::connect(format!("http://{}", a.server.admin.unwrap())).await.unwrap();
    let fingerprint = a.server.fingerprint("sk_live_rotated").to_string();
    let authorized = |reason: &str| {
        let mut request = Request::new(ResetRequest { fingerprint: fingerprint.clone(), reason: reason.into() });
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        request
    };
    let status = admin.reset(authorized("  ")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let denied_on_b = check(&mut on_b, "sk_live_rotated", 1).await;
    assert!(!denied_on_b.allowed, "a refused reset changed nothing");
    let unauthenticated =
        admin.reset(Request::new(ResetRequest { fingerprint: fingerprint.clone(), reason: "x".into() }));
    assert_eq!(unauthenticated.await.unwrap_err().code(), Code::Unauthenticated);

    let reset = admin.reset(authorized("the partner rotated a leaked key")).await.unwrap().into_inner();
    assert!(reset.had_history);
    // The reset took over two seconds: the other replica has told Redis its denial.
    let inspected = admin.inspect(request(Key::Fingerprint(fingerprint.clone()), Some(TOKEN))).await.unwrap();
    assert_eq!(inspected.into_inner().last_denied_unix_ms, denied_on_b.decided_at_ms, "replica b's denial, seen on a");
    let d = check(&mut on_b, "sk_live_rotated", 1).await;
    assert!(d.allowed && d.remaining == 4 && d.fallback == 0, "the other replica's cached denial is gone: {d:?}");
    assert!(check(&mut on_a, "sk_live_rotated", 1).await.allowed);
    for client in [&mut on_a, &mut on_b] {
        assert!(!check(client, "sk_live_other", 1).await.allowed, "another key is untouched");
    }
}

/// The command-line client resets a key of the real binary (in process), and the audit line
/// names the caller, the key's fingerprint and the reason; never the raw key.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_resets_a_key_on_the_record() {
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "alice {TOKEN}").unwrap();
    let mut token_file = tempfile::NamedTempFile::new().unwrap();
    writeln!(token_file, "{TOKEN}").unwrap();
    let admin = format!("127.0.0.1:{}", common::free_port());
    let tokens_path = tokens.path().to_str().unwrap();
    let flags = ["--limit", "2", "--admin-listen", &admin, "--admin-tokens-file", tokens_path, "--log-format", "json"];
    let mut server = common::process::Process::start_logging(&flags, "info");
    let mut client = server.client().await;
    assert!(check(&mut client, "sk_live_partner_key", 2).await.allowed);
    assert!(!check(&mut client, "sk_live_partner_key", 1).await.allowed);
    let mut cli = Command::new(BIN)
        .args(["admin", "reset", "--target", &admin, "--key-file", "-", "--reason", "partner mistake, ticket 4711"])
        .arg("--token-file")
        .arg(token_file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cli.stdin.take().unwrap().write_all(b"sk_live_partner_key").unwrap();
    let out = cli.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("reset on every replica"),
        "{printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(check(&mut client, "sk_live_partner_key", 2).await.allowed, "the whole limit is free again");
    assert_eq!(server.terminate(), Some(0));
    let logs = server.logs();
    let line = logs.lines().find(|l| l.contains("\"audit\":\"key reset\"")).unwrap_or_else(|| panic!("{logs}"));
    for field in ["\"actor\":\"alice\"", "\"reason\":\"partner mistake, ticket 4711\"", "\"before\":2"] {
        assert!(line.contains(field), "{field}: {line}");
    }
    assert!(!logs.contains("sk_live_partner_key"), "the raw key reached the logs");
}

/// Writes `text` to `name` in `dir` and returns its path.
fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// With `--tls-cert`, the admin listener serves TLS too: the client with the CA (`--ca-file`)
/// is answered, one in plaintext is not.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_service_serves_tls_like_the_grpc_listener() {
    let pki = common::pki::Pki::new();
    let (cert, key) = pki.issue(&["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| write_file(&dir, name, text);
    let (cert, key, ca) = (file("cert.pem", &cert), file("key.pem", &key), file("ca.pem", &pki.ca));
    let tokens = file("tokens", &format!("alice {TOKEN}\n"));
    let token = file("token", TOKEN);
    let admin = format!("127.0.0.1:{}", common::free_port());
    let flags = ["--tls-cert", &cert, "--tls-key", &key, "--admin-listen", &admin, "--admin-tokens-file", &tokens];
    let server = common::process::Process::start_logging(&flags, "info");
    let inspect = |extra: &[&str]| {
        let mut args = vec!["admin", "inspect", "--target", &admin, "--token-file", &token];
        args.extend(["--fingerprint", "00112233445566778899aabbccddeeff"]);
        args.extend(extra);
        Command::new(BIN).args(&args).output().unwrap()
    };
    // Until the server listens; NOT_FOUND (exit 1, the status printed) is the service's answer.
    let started = std::time::Instant::now();
    let answered = loop {
        let out = inspect(&["--ca-file", &ca]);
        let error = String::from_utf8_lossy(&out.stderr).into_owned();
        if error.contains("NotFound") || started.elapsed() > std::time::Duration::from_secs(10) {
            break error;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        answered.contains("NotFound: fingerprint 00112233445566778899aabbccddeeff"),
        "{answered} {}",
        server.logs()
    );
    let plaintext = inspect(&[]);
    let error = String::from_utf8_lossy(&plaintext.stderr);
    assert!(plaintext.status.code() == Some(1) && !error.contains("NotFound"), "{error}");
}

/// With `--admin-client-ca`, the desk knows callers by certificate: one signed by that CA is
/// answered without a token and named by its subject in the audit line; one signed by another
/// CA (a gateway's, say), or none, is refused in the handshake.
#[tokio::test(flavor = "multi_thread")]
async fn the_desk_knows_callers_by_their_certificate() {
    let (service_ca, desk_ca) = (common::pki::Pki::new(), common::pki::Pki::new());
    let (cert, key) = service_ca.issue(&["127.0.0.1"]);
    let (alice_cert, alice_key) = desk_ca.issue(&["desk-alice"]);
    let (gateway_cert, gateway_key) = service_ca.issue(&["gateway-7"]);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| write_file(&dir, name, text);
    let (cert, key, ca) = (file("cert.pem", &cert), file("key.pem", &key), file("ca.pem", &service_ca.ca));
    let desk_ca = file("desk-ca.pem", &desk_ca.ca);
    let (alice_cert, alice_key) = (file("alice.pem", &alice_cert), file("alice.key", &alice_key));
    let (gateway_cert, gateway_key) = (file("gateway.pem", &gateway_cert), file("gateway.key", &gateway_key));
    let partner = file("partner.key", "sk_live_partner_cert");
    let admin = format!("127.0.0.1:{}", common::free_port());
    let flags = ["--tls-cert", &cert, "--tls-key", &key, "--admin-listen", &admin, "--admin-client-ca", &desk_ca];
    let server = common::process::Process::start_logging(&flags, "info");
    let inspect = |identity: Option<(&str, &str)>| {
        let mut args = vec!["admin", "inspect", "--target", &admin, "--key-file", &partner, "--ca-file", &ca];
        if let Some((cert, key)) = identity {
            args.extend(["--client-cert", cert, "--client-key", key]);
        }
        Command::new(BIN).args(&args).output().unwrap()
    };
    let started = std::time::Instant::now();
    let answered = loop {
        let out = inspect(Some((&alice_cert, &alice_key)));
        if out.status.success() || started.elapsed() > std::time::Duration::from_secs(10) {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let printed = String::from_utf8_lossy(&answered.stdout);
    assert!(answered.status.success(), "{printed} {} {}", String::from_utf8_lossy(&answered.stderr), server.logs());
    assert!(printed.contains("policy default") && printed.contains("not denied"), "{printed}");
    for refused in [inspect(Some((&gateway_cert, &gateway_key))), inspect(None)] {
        let error = String::from_utf8_lossy(&refused.stderr);
        assert!(refused.status.code() == Some(1) && !refused.status.success(), "{error}");
        assert!(refused.stdout.is_empty(), "{error}");
    }
    let logs = server.logs();
    let reads: Vec<&str> = logs.lines().filter(|l| l.contains("audit=\"admin read\"")).collect();
    assert_eq!(reads.len(), 1, "only the desk's certificate got an answer: {logs}");
    assert!(reads[0].contains("actor=CN=desk-alice "), "{}", reads[0]);
    assert!(!logs.contains("sk_live_partner_cert"), "the raw key reached the logs");
}
