//! TLS on the gRPC port, and mutual TLS: a client that does not trust the server's
//! certificate, or (with mTLS) has no certificate the server trusts, is refused.

mod common;

use std::path::{Path, PathBuf};

use common::pki::Pki;
use common::{Backend, TestServer};
use ratelimitd::grpc::pb::CheckAndConsumeRequest;
use ratelimitd::grpc::pb::rate_limiter_client::RateLimiterClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// PEM files in a directory of their own.
fn write(dir: &tempfile::TempDir, name: &str, pem: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

async fn server(pki: &Pki, mutual: bool) -> TestServer {
    let (cert, key) = pki.issue(&["localhost"]);
    // Read when the configuration is built: the directory may go after that.
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key, ca) =
        (write(&dir, "server.pem", &cert), write(&dir, "server.key", &key), write(&dir, "ca.pem", &pki.ca));
    let mut extra = vec!["--tls-cert", arg(&cert), "--tls-key", arg(&key)];
    if mutual {
        extra.extend(["--tls-client-ca", arg(&ca)]);
    }
    TestServer::start(Backend::memory().config_with(10, "60s", &extra)).await
}

/// Calls CheckAndConsume over TLS trusting `ca`, presenting `identity` if given.
async fn call(server: &TestServer, ca: &str, identity: Option<(String, String)>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", server.addr)).map_err(|e| e.to_string())?;
    let channel: Channel =
        endpoint.tls_config(tls).map_err(|e| e.to_string())?.connect().await.map_err(|e| format!("{e:?}"))?;
    let request = CheckAndConsumeRequest { key_id: "k".into(), cost: 1 };
    RateLimiterClient::new(channel).check_and_consume(request).await.map(|_| ()).map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_clients_that_trust_it_and_no_one_else() {
    let pki = Pki::new();
    let server = server(&pki, false).await;
    call(&server, &pki.ca, None).await.expect("a client trusting the CA is served");
    let stranger = Pki::new();
    let refused = call(&server, &stranger.ca, None).await.expect_err("a client trusting another CA must fail");
    println!("untrusted certificate: {refused}");
    let plaintext = RateLimiterClient::connect(format!("http://{}", server.addr)).await;
    let plain_call = match plaintext {
        Ok(mut client) => {
            client.check_and_consume(CheckAndConsumeRequest { key_id: "k".into(), cost: 1 }).await.is_ok()
        }
        Err(_) => false,
    };
    assert!(!plain_call, "a plaintext client must not be served");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let pki = Pki::new();
    let server = server(&pki, true).await;
    call(&server, &pki.ca, Some(pki.issue(&["localhost"])))
        .await
        .expect("a client with a certificate from the CA is served");
    let refused = call(&server, &pki.ca, None).await.expect_err("a client without a certificate must be refused");
    println!("no client certificate: {refused}");
    let stranger = Pki::new();
    let refused = call(&server, &pki.ca, Some(stranger.issue(&["localhost"])))
        .await
        .expect_err("another CA's certificate is refused");
    println!("client certificate from another CA: {refused}");
}
