//! Envoy's `ShouldRateLimit`, called through a client generated from Envoy's own protos
//! (envoy-types), as a gateway would: statuses, several descriptors, hits_addend,
//! headers, and one exact limit shared with our own API across replicas (hostile
//! input: tests/envoy_input.rs).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Backend, TestServer, check, peek};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use ratelimitd::domain::{Limits, Policy, Window};
use tonic::transport::Channel;

type Envoy = RateLimitServiceClient<Channel>;

async fn envoy(server: &TestServer) -> Envoy {
    server.client().await; // waits until the server accepts connections
    RateLimitServiceClient::connect(format!("http://{}", server.addr)).await.expect("connect")
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    let entries = entries.iter().map(|(key, value)| Entry { key: (*key).into(), value: (*value).into() }).collect();
    RateLimitDescriptor { entries, ..Default::default() }
}

fn request(descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitRequest {
    RateLimitRequest { domain: "partner-api".into(), descriptors, hits_addend }
}

async fn ask(client: &mut Envoy, api_key: &str) -> RateLimitResponse {
    let request = request(vec![descriptor(&[("api_key", api_key)])], 0);
    client.should_rate_limit(request).await.expect("ShouldRateLimit").into_inner()
}

fn header<'a>(response: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    response.response_headers_to_add.iter().find(|h| h.key == name).map(|h| h.value.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn ok_then_over_limit_with_limits_and_headers() {
    let server = Backend::memory().server(3, "60s").await;
    let mut client = envoy(&server).await;
    for remaining in [2, 1, 0] {
        let response = ask(&mut client, "sk_live_1").await;
        assert_eq!(response.overall_code, Code::Ok as i32);
        let status = &response.statuses[0];
        assert_eq!((status.code, status.limit_remaining), (Code::Ok as i32, remaining));
        let limit = status.current_limit.as_ref().expect("a current limit");
        assert_eq!((limit.requests_per_unit, limit.unit, limit.name.as_str()), (3, Unit::Minute as i32, "default"));
        assert_eq!(status.duration_until_reset.as_ref().map(|d| d.seconds), Some(60));
        assert_eq!(header(&response, "RateLimit-Policy"), Some("\"default\";q=3;w=60"));
        assert_eq!(header(&response, "RateLimit"), Some(format!("\"default\";r={remaining};t=60").as_str()));
        assert_eq!(header(&response, "Retry-After"), None);
    }
    let denied = ask(&mut client, "sk_live_1").await;
    assert_eq!(denied.overall_code, Code::OverLimit as i32);
    assert_eq!(denied.statuses[0].code, Code::OverLimit as i32);
    let retry: u64 = header(&denied, "Retry-After").expect("Retry-After on a denial").parse().unwrap();
    assert!((59..=60).contains(&retry), "whole seconds, rounded up: {retry}");
    // Our own API answers the same, with the same headers.
    let ours = check(&mut server.client().await, "sk_live_1", 1).await;
    assert!(!ours.allowed);
    let ours_retry = ours.headers.iter().find(|h| h.name == "Retry-After").map(|h| h.value.clone());
    assert_eq!(ours_retry, Some(retry.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn several_descriptors_each_get_a_status() {
    let server = Backend::memory().server(2, "60s").await;
    let mut client = envoy(&server).await;
    for _ in 0..2 {
        ask(&mut client, "exhausted").await;
    }
    let descriptors = vec![
        descriptor(&[("api_key", "fresh"), ("path", "/v1/claims")]),
        descriptor(&[("api_key", "exhausted")]),
        descriptor(&[("remote_address", "10.0.0.1")]), // no API key: not limited
    ];
    let response = client.should_rate_limit(request(descriptors, 0)).await.expect("ShouldRateLimit").into_inner();
    assert_eq!(response.overall_code, Code::OverLimit as i32, "OVER_LIMIT if any descriptor is");
    let codes: Vec<i32> = response.statuses.iter().map(|s| s.code).collect();
    assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32, Code::Ok as i32]);
    assert_eq!(response.statuses[0].limit_remaining, 1);
    assert!(response.statuses[2].current_limit.is_none());
    assert!(header(&response, "Retry-After").is_some(), "the headers of the denied descriptor");
    // Envoy rejects the whole request, so the key that fitted counted nothing.
    let fresh = peek(&mut server.client().await, "fresh", 1).await;
    assert_eq!(fresh.remaining, 1, "2 left before the request, 1 after a count: nothing was counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_counts_once_per_key() {
    let server = Backend::memory().server(10, "60s").await;
    let mut client = envoy(&server).await;
    // Common Envoy configs send the key alone and with the route: one request, one count.
    let descriptors = vec![descriptor(&[("api_key", "k")]), descriptor(&[("api_key", "k"), ("path", "/v1/claims")])];
    let response = client.should_rate_limit(request(descriptors, 1)).await.unwrap().into_inner();
    let remaining: Vec<u32> = response.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!(remaining, [9, 9]);
    // A descriptor's own hits_addend of 0 asks without counting.
    let mut ask_only = descriptor(&[("api_key", "k")]);
    ask_only.hits_addend = Some(UInt64Value { value: 0 });
    let response = client.should_rate_limit(request(vec![ask_only], 1)).await.unwrap().into_inner();
    assert_eq!(response.statuses[0].limit_remaining, 8, "what a count would leave");
    assert_eq!(peek(&mut server.client().await, "k", 1).await.remaining, 8, "9 units free: nothing counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_longest_wait_sets_retry_after() {
    let server = Backend::memory().server(1, "60s").await;
    let minute = Window::new(1, Duration::from_secs(60)).unwrap();
    server.set_policy("slow", Policy::new("slow", Limits::new(&[minute]).unwrap()));
    server.set_override("fast", 1, Duration::from_secs(2));
    let mut client = envoy(&server).await;
    ask(&mut client, "fast").await;
    ask(&mut client, "slow").await;
    let both = vec![descriptor(&[("api_key", "fast")]), descriptor(&[("api_key", "slow")])];
    let response = client.should_rate_limit(request(both, 1)).await.unwrap().into_inner();
    let retry: u64 = header(&response, "Retry-After").expect("Retry-After").parse().unwrap();
    assert!(retry >= 59, "the client must wait for the slower key: Retry-After {retry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hits_addend_is_the_cost() {
    let server = Backend::memory().server(10, "60s").await;
    let mut client = envoy(&server).await;
    let response = client.should_rate_limit(request(vec![descriptor(&[("api_key", "k")])], 3)).await.unwrap();
    assert_eq!(response.into_inner().statuses[0].limit_remaining, 7, "request-level hits_addend 3");
    let mut own = descriptor(&[("api_key", "k")]);
    own.hits_addend = Some(UInt64Value { value: 5 });
    let response = client.should_rate_limit(request(vec![own], 3)).await.unwrap();
    assert_eq!(response.into_inner().statuses[0].limit_remaining, 2, "the descriptor's own hits_addend wins");
    let response = client.should_rate_limit(request(vec![descriptor(&[("api_key", "k")])], 0)).await.unwrap();
    assert_eq!(response.into_inner().statuses[0].limit_remaining, 1, "0 means 1");
}

/// Three replicas on one Redis, gateways calling through Envoy's API and ours at
/// once, 60 callers on 4 keys: within one window each key admits exactly its limit,
/// and every admitted request saw a distinct `remaining` (no two were counted alike).
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_one_exact_limit_through_envoy_and_our_api() {
    const LIMIT: u32 = 200;
    const KEYS: usize = 4;
    let backend = Backend::redis().await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start(backend.config(LIMIT, "60s")).await);
    }
    let mut callers = Vec::new();
    for caller in 0..60 {
        let server = &servers[caller % servers.len()];
        let (mut envoy_client, mut our_client) = (envoy(server).await, server.client().await);
        callers.push(tokio::spawn(async move {
            let mut allowed = Vec::new();
            for i in 0..40 {
                let key = format!("key-{}", (caller + i) % KEYS);
                let (ok, remaining) = if caller % 3 == 0 {
                    let d = check(&mut our_client, &key, 1).await;
                    (d.allowed, d.remaining)
                } else {
                    let response = ask(&mut envoy_client, &key).await;
                    let status = &response.statuses[0];
                    (status.code == Code::Ok as i32, status.limit_remaining)
                };
                if ok {
                    allowed.push((key, remaining));
                }
            }
            allowed
        }));
    }
    let mut by_key: HashMap<String, Vec<u32>> = HashMap::new();
    for caller in callers {
        for (key, remaining) in caller.await.expect("a caller failed") {
            by_key.entry(key).or_default().push(remaining);
        }
    }
    for (key, mut remaining) in by_key {
        remaining.sort_unstable();
        println!("{key}: {} of 600 requests allowed (limit {LIMIT})", remaining.len());
        assert_eq!(remaining, (0..LIMIT).collect::<Vec<_>>(), "{key}: exactly the limit, each unit counted once");
    }
}

/// Requests naming two keys, 64 at once through two replicas on one Redis (and one on
/// the in-process store): a request answered OVER_LIMIT counts in neither key, so the
/// wide key counts exactly the requests answered OK, and the narrow key its limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_limit_counts_in_no_key_even_under_concurrency() {
    for backend in [Backend::memory(), Backend::redis().await] {
        let replicas = if backend.redis.is_some() { 2 } else { 1 };
        let mut servers = Vec::new();
        for _ in 0..replicas {
            let server = backend.server(1000, "60s").await;
            server.set_override("narrow", 20, Duration::from_secs(60));
            servers.push(server);
        }
        let mut tasks = Vec::new();
        for caller in 0..64 {
            let mut client = envoy(&servers[caller % replicas]).await;
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..8 {
                    let both = vec![descriptor(&[("api_key", "wide")]), descriptor(&[("api_key", "narrow")])];
                    let response = client.should_rate_limit(request(both, 1)).await.expect("a decision");
                    ok += usize::from(response.into_inner().overall_code == Code::Ok as i32);
                }
                ok
            }));
        }
        let mut ok = 0;
        for task in tasks {
            ok += task.await.unwrap();
        }
        let wide = peek(&mut servers[0].client().await, "wide", 1).await;
        let counted_wide = 1000 - (wide.remaining + 1) as usize;
        let store = if replicas == 2 { "Redis" } else { "in-process" };
        println!("{store}: 512 requests on two keys, {ok} OK; the wide key counted {counted_wide}");
        assert_eq!(ok, 20, "the narrow key admits exactly its limit");
        assert_eq!(counted_wide, ok, "a request answered OVER_LIMIT counted in the wide key");
    }
}
