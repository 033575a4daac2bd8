//! Graceful shutdown: once signalled, the server stops accepting, lets in-flight
//! calls finish, and returns cleanly.

mod common;

use std::time::Duration;

use common::{Backend, check};

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_calls_finish_before_the_server_stops() {
    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let server = backend.server(10, "60s").await;
    let mut client = server.client().await;
    assert!(check(&mut client, "k", 1).await.allowed);

    // Freeze Redis so the next call is still in flight when shutdown begins.
    redis.pause().await;
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { common::try_check(&mut client, "k", 1).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "the server returned with a call in flight");
    redis.unpause().await;

    let answered = in_flight.await.unwrap().expect("the in-flight call must be answered, not cut off");
    assert!(answered.allowed);
    assert_eq!(answered.remaining, 8);
    let stopped = tokio::time::timeout(Duration::from_secs(5), stopping).await;
    stopped.expect("the server must stop once drained").unwrap().expect("a clean stop");
}

/// With --shutdown-delay, a replica told to stop keeps serving new connections and calls,
/// while gRPC health says NOT_SERVING, until the delay is over: callers that Kubernetes
/// still routes to it meanwhile are answered, not refused. Then it drains and returns.
#[tokio::test(flavor = "multi_thread")]
async fn during_the_shutdown_delay_new_calls_are_served_while_health_says_not_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let config = Backend::memory().config_with(10, "60s", &["--shutdown-delay", "2s"]);
    let server = common::TestServer::start(config).await;
    let addr = server.addr;
    assert!(check(&mut server.client().await, "k", 1).await.allowed);
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let endpoint = format!("http://{addr}");
    let mut fresh = ratelimitd::grpc::pb::rate_limiter_client::RateLimiterClient::connect(endpoint.clone())
        .await
        .expect("a new connection during the delay is accepted");
    assert_eq!(check(&mut fresh, "k", 1).await.remaining, 8, "a new call during the delay is served");
    let channel = tonic::transport::Channel::from_shared(endpoint).unwrap().connect().await.expect("connect");
    let mut health = HealthClient::new(channel);
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::NotServing as i32, "NOT_SERVING from the moment shutdown begins");
    assert!(!stopping.is_finished(), "the server returned before its delay was over");

    let stopped = tokio::time::timeout(Duration::from_secs(10), stopping).await;
    stopped.expect("the server stops once the delay is over and calls are drained").unwrap().expect("a clean stop");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}
