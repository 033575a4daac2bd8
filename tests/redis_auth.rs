//! A permanent Redis error is loud, not silent: with a wrong password, the start-up line
//! and the circuit breaker's line name the Redis (host:port) and the error, never the
//! password; gRPC health says NOT_SERVING, and so does `ratelimitd.readiness`, the service
//! the chart's readiness probe asks, so the replica is taken out; the failure mode answers
//! meanwhile. A Redis that is merely down leaves readiness SERVING.

mod common;

use std::time::{Duration, Instant};

use common::process::Process;
use common::{Redis, check, redis_server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_redis_password_is_loud_and_makes_the_replica_not_ready() {
    let (_redis, ip) = redis_server(&["--requirepass", "the-right-one"]).await;
    let url = format!("redis://default:hunter2-wrong@{ip}:6379");
    let mut server = Process::start_logging(
        &["--redis-url", &url, "--fingerprint-secret", "s", "--redis-timeout", "200ms", "--log-format", "json"],
        "info",
    );
    let mut client = server.client().await;
    for _ in 0..5 {
        let answer = check(&mut client, "k", 1).await;
        assert_ne!(
            answer.fallback,
            ratelimitd::grpc::pb::Fallback::None as i32,
            "Redis refuses us: a failure mode answers"
        );
    }
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "ratelimitd.readiness"] {
        until(&mut health, service, ServingStatus::NotServing).await;
    }
    // The metric says why.
    let metrics = server.scrape();
    let auth = metrics.lines().find(|l| l.starts_with("ratelimitd_redis_errors_total{kind=\"auth\"}"));
    let count: f64 = auth.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
    assert!(count > 0.0, "no error of kind auth counted: {auth:?} {}", server.logs());
    assert_eq!(server.terminate(), Some(0));
    let logs = server.logs();
    let endpoint = format!("{ip}:6379");
    let unreachable = logs.lines().find(|l| l.contains("Redis not reachable yet")).unwrap_or_else(|| panic!("{logs}"));
    assert!(unreachable.contains(&endpoint), "the start-up error names the Redis: {unreachable}");
    let open = logs.lines().find(|l| l.contains("circuit breaker open")).unwrap_or_else(|| panic!("{logs}"));
    assert!(open.contains(&endpoint) && open.to_lowercase().contains("auth"), "names the Redis and the error: {open}");
    assert!(!logs.contains("hunter2"), "the password reached the logs");
}

/// Waits until `service` reports `status`.
async fn until(health: &mut HealthClient<tonic::transport::Channel>, service: &str, status: ServingStatus) {
    let started = Instant::now();
    loop {
        let request = HealthCheckRequest { service: service.to_owned() };
        if health.check(request).await.unwrap().into_inner().status == status as i32 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{service:?} never became {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis that is down is not a refusal: "" says NOT_SERVING (Redis does not answer), but
/// readiness stays SERVING, so the replicas stay in the Service and the failure mode answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_is_down_keeps_the_replica_ready() {
    let redis = Redis::start().await;
    let url = redis.url();
    let server =
        Process::start_logging(&["--redis-url", &url, "--fingerprint-secret", "s", "--redis-timeout", "50ms"], "info");
    let mut client = server.client().await;
    check(&mut client, "k", 1).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    until(&mut health, "ratelimitd.readiness", ServingStatus::Serving).await;
    redis.stop().await;
    check(&mut client, "k", 1).await;
    until(&mut health, "", ServingStatus::NotServing).await;
    let request = HealthCheckRequest { service: "ratelimitd.readiness".into() };
    let ready = health.check(request).await.unwrap().into_inner().status;
    assert_eq!(ready, ServingStatus::Serving as i32, "readiness must not follow a Redis outage");
}
