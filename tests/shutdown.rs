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
