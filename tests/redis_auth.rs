//! A permanent Redis error is loud, not silent: with a wrong password, the start-up line
//! and the circuit breaker's line name the Redis (host:port) and the error, never the
//! password; gRPC health says NOT_SERVING, so a readiness probe on it takes the replica
//! out; and the failure mode answers meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::process::Process;
use common::{check, redis_server};
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
    let started = Instant::now();
    loop {
        let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "health still SERVING with a wrong password");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.terminate(), Some(0));
    let logs = server.logs();
    let endpoint = format!("{ip}:6379");
    let unreachable = logs.lines().find(|l| l.contains("Redis not reachable yet")).unwrap_or_else(|| panic!("{logs}"));
    assert!(unreachable.contains(&endpoint), "the start-up error names the Redis: {unreachable}");
    let open = logs.lines().find(|l| l.contains("circuit breaker open")).unwrap_or_else(|| panic!("{logs}"));
    assert!(open.contains(&endpoint) && open.to_lowercase().contains("auth"), "names the Redis and the error: {open}");
    assert!(!logs.contains("hunter2"), "the password reached the logs");
}
