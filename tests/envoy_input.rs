//! Input that would make Envoy pass a request if ShouldRateLimit answered an error
//! (Envoy's `failure_mode_deny` is off by default): each gets a decision instead, and a
//! request answered OVER_LIMIT counts nothing for any of its keys. Sent with a client
//! of the service's own wire-compatible protos, whose entries are bytes, so a key that
//! is not UTF-8 can be sent as Envoy would forward an obs-text header.

mod common;

use common::process::Process;
use common::{Backend, TestServer, peek};
use ratelimitd::grpc::envoy::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use ratelimitd::grpc::envoy::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use ratelimitd::grpc::envoy::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use ratelimitd::grpc::envoy::pb::{Code, RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

type Envoy = RateLimitServiceClient<Channel>;

async fn envoy(server: &TestServer) -> Envoy {
    server.client().await; // waits until the server accepts connections
    let client = RateLimitServiceClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    client.max_encoding_message_size(64 * 1024 * 1024)
}

fn descriptor(entries: &[(&str, &[u8])]) -> RateLimitDescriptor {
    let entries = entries.iter().map(|(key, value)| Entry { key: key.as_bytes().to_vec(), value: value.to_vec() });
    RateLimitDescriptor { entries: entries.collect(), ..Default::default() }
}

fn key(value: &str) -> RateLimitDescriptor {
    descriptor(&[("api_key", value.as_bytes())])
}

async fn ask(client: &mut Envoy, descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitResponse {
    let request = RateLimitRequest { domain: b"partner-api".to_vec(), descriptors, hits_addend };
    match client.should_rate_limit(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("an error lets Envoy pass the request; expected a decision: {status:?}"),
    }
}

/// What a cost-1 request would leave for the key now (a peek: nothing is counted).
async fn remaining(server: &TestServer, key_id: &str) -> u32 {
    peek(&mut server.client().await, key_id, 1).await.remaining
}

/// A key that cannot be valid is OVER_LIMIT, and the valid key beside it counts nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_cannot_be_valid_is_over_the_limit_and_counts_nothing() {
    let server = Backend::memory().server(5, "60s").await;
    let mut client = envoy(&server).await;
    let long = "k".repeat(257);
    let not_utf8 = descriptor(&[("api_key", b"sk_live_\xff\xfe")]);
    for bad in [key(""), key(&long), not_utf8] {
        let response = ask(&mut client, vec![key("good"), bad], 0).await;
        assert_eq!(response.overall_code, Code::OverLimit as i32);
        let codes: Vec<i32> = response.statuses.iter().map(|s| s.code).collect();
        assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32], "the good key's own status is its state");
        let limit = response.statuses[1].current_limit.as_ref().map(|l| l.requests_per_unit);
        assert_eq!(limit, Some(5), "the refused descriptor shows the default policy's limit");
    }
    assert_eq!(remaining(&server, "good").await, 4, "a request answered OVER_LIMIT counted nothing");
    let alone = ask(&mut client, vec![descriptor(&[("api_key", b"\xc3\x28")])], 0).await;
    assert_eq!(alone.overall_code, Code::OverLimit as i32);
}

/// A cost that can never fit (above the limit, or above 2^32) is OVER_LIMIT, and the
/// other key of the request, even the same key in another descriptor, counts nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_cost_that_can_never_fit_is_over_the_limit_and_counts_nothing() {
    let server = Backend::memory().server(5, "60s").await;
    let mut client = envoy(&server).await;
    let mut huge = key("k");
    huge.hits_addend = Some(1 << 32);
    let mut six = key("k");
    six.hits_addend = Some(6);
    for over in [huge, six] {
        let response = ask(&mut client, vec![key("other"), key("k"), over], 0).await;
        assert_eq!(response.overall_code, Code::OverLimit as i32);
        assert_eq!(response.statuses[2].current_limit.as_ref().map(|l| l.requests_per_unit), Some(5));
    }
    let request_level = ask(&mut client, vec![key("k")], 6).await;
    assert_eq!(request_level.overall_code, Code::OverLimit as i32);
    assert_eq!((remaining(&server, "k").await, remaining(&server, "other").await), (4, 4));
    let mut fits = key("k");
    fits.hits_addend = Some(5);
    assert_eq!(ask(&mut client, vec![fits], 0).await.overall_code, Code::Ok as i32, "a cost of 5 fits");
}

/// Descriptors without the key entry are noise and never limit how many keyed ones a
/// request may carry; more than 16 distinct keys is OVER_LIMIT with nothing counted.
#[tokio::test(flavor = "multi_thread")]
async fn many_descriptors_are_decided_and_too_many_keys_count_nothing() {
    let server = Backend::memory().server(5, "60s").await;
    let mut client = envoy(&server).await;
    let mut descriptors: Vec<_> = (0..40).map(|i| descriptor(&[("path", format!("/v1/{i}").as_bytes())])).collect();
    descriptors.push(key("k"));
    let response = ask(&mut client, descriptors, 0).await;
    assert_eq!((response.overall_code, response.statuses.len()), (Code::Ok as i32, 41));
    assert_eq!(remaining(&server, "k").await, 3, "the keyed descriptor counted once");

    let sixteen: Vec<_> = (0..16).map(|i| key(&format!("key-{i}"))).collect();
    assert_eq!(ask(&mut client, sixteen, 0).await.overall_code, Code::Ok as i32);
    let seventeen: Vec<_> = (0..17).map(|i| key(&format!("many-{i}"))).collect();
    let response = ask(&mut client, seventeen, 0).await;
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    assert_eq!(response.statuses[16].code, Code::OverLimit as i32);
    assert_eq!(remaining(&server, "many-0").await, 4, "nothing counted for a refused request");
    let mut again: Vec<_> = (0..16).map(|i| key(&format!("again-{i}"))).collect();
    again.push(key("again-0"));
    assert_eq!(ask(&mut client, again, 0).await.overall_code, Code::Ok as i32, "a 17th descriptor of a seen key");
    let repeated: Vec<_> = (0..40).map(|_| key("same")).collect();
    assert_eq!(ask(&mut client, repeated, 0).await.overall_code, Code::Ok as i32, "one key, however many times");
    assert_eq!(remaining(&server, "same").await, 3, "counted once");
}

/// A request far over our own API's 16 KiB limit (a long path entry beside the key)
/// is decided, and its key counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_request_is_decided_and_its_key_counted() {
    let server = Backend::memory().server(5, "60s").await;
    let mut client = envoy(&server).await;
    let path = vec![b'a'; 60 * 1024];
    let descriptors = vec![descriptor(&[("path", &path)]), descriptor(&[("path", &path), ("api_key", b"k")])];
    let response = ask(&mut client, descriptors, 0).await;
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_eq!(remaining(&server, "k").await, 3);
}

/// `is_negative_hits` would give units back; only time frees capacity, so it is
/// answered as a check that counts nothing.
#[tokio::test(flavor = "multi_thread")]
async fn negative_hits_are_answered_and_give_nothing_back() {
    let server = Backend::memory().server(2, "60s").await;
    let mut client = envoy(&server).await;
    assert_eq!(ask(&mut client, vec![key("k"), key("k")], 0).await.statuses[0].limit_remaining, 1);
    let mut negative = key("k");
    negative.is_negative_hits = true;
    let response = ask(&mut client, vec![negative], 0).await;
    // Answered as a peek: allowed, and what a count would leave.
    assert_eq!((response.overall_code, response.statuses[0].limit_remaining), (Code::Ok as i32, 0));
    assert_eq!(remaining(&server, "k").await, 0, "nothing given back, nothing counted");
}

/// Each refusal is counted by reason and logged at most once per reason every 10 s,
/// with the count and never the key.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_counted_by_reason_and_logged_sparingly_without_the_key() {
    let mut server = Process::start(&["--limit", "5", "--log-format", "json"]);
    server.client().await;
    let channel = RateLimitServiceClient::connect(format!("http://{}", server.grpc)).await.expect("connect");
    let mut client = channel.max_encoding_message_size(64 * 1024 * 1024);
    let secret_long = format!("sk_live_SECRET_{}", "9".repeat(260));
    for _ in 0..20 {
        let refused = ask(&mut client, vec![key(&secret_long), descriptor(&[("api_key", b"sk_live_SECRET_\xff")])], 0);
        assert_eq!(refused.await.overall_code, Code::OverLimit as i32);
    }
    let text = server.scrape();
    let count = |reason: &str| {
        let series = format!("ratelimitd_envoy_refusals_total{{reason=\"{reason}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&series)?.parse::<f64>().ok())
    };
    assert_eq!((count("key_too_long"), count("key_not_utf8")), (Some(20.0), Some(20.0)), "{text}");
    assert_eq!(count("too_many_keys"), Some(0.0), "every reason's series exists from start-up: {text}");
    assert_eq!(server.terminate(), Some(0));
    let logs = server.logs();
    assert!(!logs.contains("SECRET"), "a raw key reached the logs");
    let lines = |reason: &str| logs.lines().filter(|l| l.contains("ShouldRateLimit") && l.contains(reason)).count();
    assert_eq!((lines("key_too_long"), lines("key_not_utf8")), (1, 1), "one line per reason per 10 s:\n{logs}");
}
