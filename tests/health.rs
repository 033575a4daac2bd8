//! gRPC health follows the store and shutdown; reflection lists the services.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestServer};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SERVICE: &str = "ratelimit.v1.RateLimiter";

async fn channel(server: &TestServer) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).expect("a URI");
    endpoint.connect().await.expect("connect")
}

async fn health_client(server: &TestServer) -> HealthClient<tonic::transport::Channel> {
    server.client().await; // waits until the server accepts connections
    HealthClient::new(channel(server).await)
}

async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let request = HealthCheckRequest { service: service.to_owned() };
    let response = client.check(request).await.expect("health check").into_inner();
    ServingStatus::try_from(response.status).expect("a known status")
}

async fn wait_for(client: &mut HealthClient<tonic::transport::Channel>, wanted: ServingStatus) -> Duration {
    let started = Instant::now();
    while status(client, SERVICE).await != wanted {
        assert!(started.elapsed() < Duration::from_secs(15), "health never became {wanted:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status(client, "").await, wanted, "the server's overall status follows too");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_redis_and_shutdown() {
    let backend = Backend::redis().await;
    let redis = backend.redis.as_ref().unwrap();
    let server = backend.server(10, "60s").await;
    let mut client = health_client(&server).await;
    wait_for(&mut client, ServingStatus::Serving).await;

    redis.stop().await;
    let down = wait_for(&mut client, ServingStatus::NotServing).await;
    redis.start_again().await;
    let up = wait_for(&mut client, ServingStatus::Serving).await;
    println!("NOT_SERVING {down:?} after Redis stopped, SERVING {up:?} after it came back");

    // A watcher sees NOT_SERVING as soon as shutdown begins, while calls drain.
    let request = HealthCheckRequest { service: SERVICE.to_owned() };
    let mut watch = client.watch(request).await.expect("watch").into_inner();
    let first = watch.message().await.expect("a status").expect("a message");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(server.stop());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("a status in time");
    assert_eq!(next.expect("a status").expect("a message").status, ServingStatus::NotServing as i32);
    drop(watch);
    stopping.await.unwrap().expect("a clean stop");
}

/// Both reflection versions list every service the port answers: grpcurl asks v1,
/// Python's grpcio-reflection v1alpha.
#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1alpha;

    let server = Backend::memory().server(300, "60s").await;
    server.client().await;
    let wanted = [SERVICE, "grpc.health.v1.Health", "envoy.service.ratelimit.v3.RateLimitService"];

    let mut client = ServerReflectionClient::new(channel(&server).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in wanted {
        assert!(names.iter().any(|n| n == service), "v1: {service} missing from {names:?}");
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&server).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("a response");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("expected a service list: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in wanted {
        assert!(names.iter().any(|n| n == service), "v1alpha: {service} missing from {names:?}");
    }
}
