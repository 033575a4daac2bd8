//! The HTTP API (`--http-listen`), called as a gateway without gRPC would: JSON checks
//! with the same decisions, headers and validation as gRPC, and forward authentication.

mod common;

use std::net::SocketAddr;

use common::gateway::post;
use common::{Backend, TestServer, peek};

async fn server(limit: u32) -> (TestServer, SocketAddr) {
    let server = TestServer::start_with_http(Backend::memory().config(limit, "60s")).await;
    server.client().await;
    let http = server.http.expect("the HTTP API");
    (server, http)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_check_answers_as_grpc_does_with_the_headers() {
    let (server, http) = server(2).await;
    for remaining in [1, 0] {
        let reply = post(http, "/v1/check", "application/json", br#"{"key_id":"sk_live_1"}"#).await;
        let (status, body) = (reply.status, &reply.body);
        assert_eq!(status, 200, "{body}");
        let answer = json(body);
        assert_eq!((answer["allowed"].as_bool(), answer["remaining"].as_u64()), (Some(true), Some(remaining)));
        assert_eq!((answer["limit"].as_u64(), answer["policy"].as_str()), (Some(2), Some("default")));
        assert_eq!(answer["fallback"], "none");
        assert_eq!(reply.header("ratelimit-policy"), Some("\"default\";q=2;w=60"), "{reply:?}");
    }
    let reply = post(http, "/v1/check", "application/json", br#"{"key_id":"sk_live_1","cost":1}"#).await;
    let (status, body) = (reply.status, &reply.body);
    assert_eq!(status, 429, "{body}");
    let answer = json(body);
    assert_eq!(answer["allowed"], false);
    assert!(answer["retry_after_ms"].as_u64().is_some_and(|ms| ms > 58_000), "{body}");
    assert!(matches!(reply.header("retry-after"), Some("60" | "59")), "{reply:?}");
    // The same key through gRPC: one history.
    assert!(!peek(&mut server.client().await, "sk_live_1", 1).await.allowed, "one history with gRPC");
    let reply = post(http, "/v1/peek", "application/json", br#"{"key_id":"sk_live_2","cost":2}"#).await;
    let (status, body) = (reply.status, &reply.body);
    assert_eq!((status, json(body)["remaining"].as_u64()), (200, Some(0)));
    assert!(peek(&mut server.client().await, "sk_live_2", 2).await.allowed, "a peek counted nothing");
}

/// Bad input: 400 with a message naming the field, never the key; nothing counted.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_400_naming_the_field_and_counts_nothing() {
    let (server, http) = server(5).await;
    let long = format!(r#"{{"key_id":"sk_live_SECRET_{}"}}"#, "7".repeat(300));
    let cases: &[(&[u8], &str)] = &[
        (br#"{"key_id":""}"#, "key_id: must not be empty"),
        (long.as_bytes(), "key_id: is 315 bytes long"),
        (br#"{"key_id":"sk_live_SECRET_1","cost":6}"#, "cost: 6 is greater than the key's limit of 5"),
        (br#"{"key_id":"sk_live_SECRET_1","cost":"sk_live_SECRET_1"}"#, "of the wrong type"),
        (br#"{"cost":1}"#, "a field is missing"),
        (br#"{"key_id":"sk_live_SECRET_1","extra":1}"#, "unknown"),
        (b"sk_live_SECRET_1", "not valid JSON"),
        (br#"{"key_id":"sk_live_SECRET_1","cost":4294967296}"#, "of the wrong type"),
    ];
    for (body, message) in cases {
        let reply = post(http, "/v1/check", "application/json", body).await;
        let (status, answer) = (reply.status, &reply.body);
        assert_eq!(status, 400, "{answer}");
        let problem = json(answer);
        assert_eq!(problem["error"], "invalid_argument");
        let text = problem["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{text:?} lacks {message:?}");
        assert!(!answer.contains("SECRET"), "the key was echoed: {answer}");
    }
    let status = post(http, "/v1/check", "application/json", &vec![b' '; 20 * 1024]).await.status;
    assert_eq!(status, 413, "a body over 16 KiB");
    assert_eq!(peek(&mut server.client().await, "sk_live_SECRET_1", 1).await.remaining, 4, "nothing was counted");
}

/// Forward authentication: the key from x-api-key, cost 1; 200 with the headers when
/// allowed, the asked status (429 by default) with Retry-After when denied; a request
/// without the header is not limited, a key that cannot be valid is denied.
#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_decides_every_request() {
    use common::gateway::get;

    let (server, http) = server(1).await;
    let allowed = get(http, "/v1/auth", &[("x-api-key", b"sk_live_a")]).await;
    assert_eq!(allowed.status, 200);
    assert!(allowed.header("ratelimit").is_some_and(|v| v.contains("r=0")), "{allowed:?}");
    let denied = get(http, "/v1/auth", &[("x-api-key", b"sk_live_a")]).await;
    assert_eq!(denied.status, 429);
    assert!(denied.header("retry-after").is_some(), "{denied:?}");
    assert_eq!(get(http, "/v1/auth?deny_status=403", &[("x-api-key", b"sk_live_a")]).await.status, 403);
    assert_eq!(get(http, "/v1/auth?deny_status=401", &[("x-api-key", b"sk_live_a")]).await.status, 401);
    assert_eq!(get(http, "/v1/auth?deny_status=500", &[("x-api-key", b"sk_live_a")]).await.status, 400);
    assert_eq!(get(http, "/v1/auth", &[]).await.status, 200, "no key: not limited");
    for bad in [b"".as_slice(), &[b'k'; 300], b"sk_\xff"] {
        assert_eq!(get(http, "/v1/auth", &[("x-api-key", bad)]).await.status, 429, "cannot be valid");
    }
    assert!(peek(&mut server.client().await, "sk_live_b", 1).await.allowed);
}
