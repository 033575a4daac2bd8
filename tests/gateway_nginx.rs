//! A real nginx (Debian's 1.22) running the shipped `deploy/nginx/nginx.conf` in front
//! of two ratelimitd replicas on one Redis, through ratelimitd's forward authentication:
//! the limit is exact across replicas, a denial is the partner API's 429 with its JSON
//! body and Retry-After, and the key reaches neither nginx's logs nor ratelimitd's.

mod common;

use common::gateway::{Nginx, Reply, Upstream, get};
use common::process::Process;
use common::{Backend, TestServer};

const LIMIT: u32 = 30;

async fn call(nginx: &Nginx, key: &[u8]) -> Reply {
    get(nginx.addr, "/v1/patients?page=2", &[("x-api-key", key)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nginx_on_two_replicas_enforce_one_exact_limit_with_the_partner_apis_429() {
    let backend = Backend::redis().await;
    let replicas = [
        TestServer::start_with_http(backend.config(LIMIT, "60s")).await,
        TestServer::start_with_http(backend.config(LIMIT, "60s")).await,
    ];
    let upstream = Upstream::start().await;
    let gateways = [
        Nginx::start(upstream.addr, replicas[0].http.unwrap()).await,
        Nginx::start(upstream.addr, replicas[1].http.unwrap()).await,
    ];
    let mut statuses = Vec::new();
    for i in 0..48 {
        let reply = call(&gateways[i % 2], b"sk_live_SECRET_partner").await;
        if reply.status == 200 {
            assert_eq!(reply.body, "ok");
            assert_eq!(reply.header("ratelimit-policy"), Some("\"default\";q=30;w=60"), "{reply:?}");
            assert!(reply.header("ratelimit").is_some_and(|v| v.contains(";r=")), "{reply:?}");
        }
        statuses.push(reply.status);
    }
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    let denied = statuses.iter().filter(|s| **s == 429).count();
    println!("through two nginx on two replicas: {allowed} allowed, {denied} denied of 48 at limit {LIMIT}");
    assert_eq!((allowed, denied), (30, 18), "{statuses:?}");

    let denial = call(&gateways[0], b"sk_live_SECRET_partner").await;
    assert_eq!(denial.status, 429);
    assert_eq!(denial.header("content-type"), Some("application/json"));
    assert!(denial.body.contains("\"error\":\"rate_limit_exceeded\""), "{}", denial.body);
    let retry: u64 = denial.header("retry-after").expect("Retry-After on a 429").parse().expect("whole seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(denial.header("ratelimit").is_some_and(|v| v.starts_with("\"default\";r=0;t=")), "{denial:?}");

    assert_eq!(call(&gateways[1], b"sk_live_SECRET_other").await.status, 200, "another key is unaffected");
    assert_eq!(get(gateways[1].addr, "/", &[]).await.status, 200, "a request without a key is not limited");
    let long = vec![b'k'; 300];
    assert_eq!(call(&gateways[1], &long).await.status, 429, "a key that cannot be valid is denied");
    for gateway in &gateways {
        let logs = gateway.logs();
        assert!(logs.contains("GET /v1/patients?page=2"), "nginx logged the requests: {logs}");
        assert!(!logs.contains("SECRET") && !logs.contains("kkkkkkkk"), "a key reached nginx's logs: {logs}");
    }
}

/// The binary behind nginx, at debug level: its log never holds the key either.
#[tokio::test(flavor = "multi_thread")]
async fn the_key_never_reaches_ratelimitds_log_behind_nginx() {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Process::start(&["--limit", "2", "--http-listen", &listen, "--log-format", "json"]);
    server.client().await;
    let upstream = Upstream::start().await;
    let nginx = Nginx::start(upstream.addr, listen.parse().unwrap()).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(call(&nginx, b"sk_live_SECRET_debug").await.status);
    }
    assert_eq!(seen, [200, 200, 429]);
    assert_eq!(server.terminate(), Some(0));
    let logs = server.logs();
    assert!(logs.contains("HTTP API"), "the HTTP API was served: {logs}");
    assert!(!logs.contains("SECRET"), "a raw key reached ratelimitd's log");
    assert!(!nginx.logs().contains("SECRET"), "a raw key reached nginx's logs");
}
