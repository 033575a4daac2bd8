//! TLS to Redis (rediss://) with the CA and client certificate options, and a Redis
//! ACL user whose password is read from a file: against a Redis container that
//! speaks TLS only and requires client certificates.

mod common;

use common::pki::Pki;
use common::{Backend, Client, TestServer, check, free_port, redis_request};
use ratelimitd::grpc::pb::Fallback;
use testcontainers::core::IntoContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// A Redis that speaks TLS only, requires client certificates from `pki`, and has one
/// ACL user `ratelimitd` with password `s3cret` (the default user is off).
async fn tls_redis(pki: &Pki) -> (ContainerAsync<GenericImage>, u16) {
    let (cert, key) = pki.issue(&["localhost", "127.0.0.1"]);
    let port = free_port();
    let tls = [
        "--port",
        "0",
        "--tls-port",
        "6379",
        "--tls-cert-file",
        "/tls/server.pem",
        "--tls-key-file",
        "/tls/server.key",
        "--tls-ca-cert-file",
        "/tls/ca.pem",
        "--tls-auth-clients",
        "yes",
        "--user",
        "default",
        "off",
        "--user",
        "ratelimitd",
        "on",
        ">s3cret",
        "~*",
        "+@all",
    ];
    let container = redis_request(&tls)
        .with_copy_to("/tls/server.pem", cert.into_bytes())
        .with_copy_to("/tls/server.key", key.into_bytes())
        .with_copy_to("/tls/ca.pem", pki.ca.clone().into_bytes())
        .with_mapped_port(port, 6379.tcp())
        .start()
        .await
        .expect("start a TLS Redis (scripts/test builds the image)");
    (container, port)
}

async fn server(port: u16, files: &tempfile::TempDir, extra: &[&str]) -> (TestServer, Client) {
    let url = format!("rediss://ratelimitd@127.0.0.1:{port}");
    let password = files.path().join("password");
    let mut args = vec!["--redis-url", &url, "--redis-timeout", "2s", "--failure-mode", "closed"];
    let password = password.to_str().unwrap();
    args.extend(["--redis-password-file", password]);
    args.extend(extra);
    let server = TestServer::start(Backend::memory().config_with(3, "60s", &args)).await;
    let client = server.client().await;
    (server, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_with_ca_client_certificate_and_acl_password_file() {
    let pki = Pki::new();
    let (_redis, port) = tls_redis(&pki).await;
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    write("password", "s3cret\n");
    let ca = write("ca.pem", &pki.ca);
    let (cert, key) = pki.issue(&["ratelimitd"]);
    let (cert, key) = (write("client.pem", &cert), write("client.key", &key));
    let tls =
        ["--redis-ca-file", ca.as_str(), "--redis-client-cert", cert.as_str(), "--redis-client-key", key.as_str()];

    let (_server, mut client) = server(port, &files, &tls).await;
    for remaining in [2, 1, 0] {
        let d = check(&mut client, "k", 1).await;
        assert_eq!((d.allowed, d.remaining, d.fallback), (true, remaining, Fallback::None as i32), "{d:?}");
    }
    assert!(!check(&mut client, "k", 1).await.allowed, "Redis over TLS enforces the limit");

    // Without the client certificate, or without trusting the CA, or with a wrong
    // password, Redis is not reached: the failure mode (closed) answers.
    let stranger = Pki::new();
    let other_ca = write("other-ca.pem", &stranger.ca);
    let cases: [(&str, Vec<&str>); 3] = [
        ("no client certificate", vec!["--redis-ca-file", ca.as_str()]),
        (
            "a CA that did not sign the server",
            vec!["--redis-ca-file", &other_ca, "--redis-client-cert", &cert, "--redis-client-key", &key],
        ),
        ("a wrong password", tls.to_vec()),
    ];
    for (what, extra) in cases {
        if what == "a wrong password" {
            write("password", "wrong");
        }
        let (_server, mut client) = server(port, &files, &extra).await;
        let d = check(&mut client, "other-key", 1).await;
        assert_eq!((d.allowed, d.fallback), (false, Fallback::Closed as i32), "{what}: {d:?}");
    }
}
