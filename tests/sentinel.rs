//! Sentinel: one master, one replica and three sentinels, in containers. The master
//! is stopped during load; ratelimitd follows the promotion without a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestServer, container_ip, redis_image, redis_server, try_check};
use ratelimitd::grpc::pb::Fallback;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

async fn sentinel(master_ip: &str) -> (ContainerAsync<GenericImage>, String) {
    let (name, tag) = redis_image();
    let config = format!(
        "port 26379\nprotected-mode no\nsentinel monitor mymaster {master_ip} 6379 2\n\
         sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"
    );
    let container = GenericImage::new(&name, &tag)
        .with_exposed_port(26379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("+monitor master mymaster"))
        .with_copy_to("/data/sentinel.conf", config.into_bytes())
        .with_user("root") // Sentinel rewrites its configuration file
        .with_cmd(["/usr/local/bin/redis-server", "/data/sentinel.conf", "--sentinel"])
        .start()
        .await
        .expect("start a sentinel");
    let ip = container_ip(container.id());
    (container, ip)
}

#[tokio::test(flavor = "multi_thread")]
async fn follows_a_sentinel_failover_without_a_restart() {
    let (master, master_ip) = redis_server(&[]).await;
    let (_replica, replica_ip) = redis_server(&["--replicaof", &master_ip, "6379"]).await;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(sentinel(&master_ip).await);
    }
    let urls = sentinels.iter().map(|(_, ip)| format!("redis://{ip}:26379")).collect::<Vec<_>>().join(",");
    let extra = ["--redis-sentinels", urls.as_str(), "--redis-sentinel-master", "mymaster", "--redis-timeout", "500ms"];
    let extra = [&extra[..], &["--failure-mode", "closed"]].concat();
    let server = TestServer::start(Backend::memory().config_with(1_000_000, "60s", &extra)).await;
    let mut client = server.client().await;
    let d = try_check(&mut client, "before", 1).await.expect("a check");
    assert_eq!(d.fallback, Fallback::None as i32, "served by the master Sentinel names: {d:?}");

    // Load, then the master goes away; the sentinels promote the replica.
    let stopped_at = Instant::now();
    master.stop().await.expect("stop the master");
    let (mut calls, mut closed, mut recovered) = (0, 0, None);
    while stopped_at.elapsed() < Duration::from_secs(30) {
        let d = try_check(&mut client, &format!("during-{calls}"), 1).await.expect("no call may fail");
        calls += 1;
        if d.fallback == Fallback::None as i32 {
            assert!(d.allowed);
            recovered = Some(stopped_at.elapsed());
            break;
        }
        closed += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = recovered.expect("ratelimitd never reached the promoted master");
    let mut replica = common::connect(&format!("redis://{replica_ip}:6379")).await;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut replica).await.unwrap();
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut replica).await.unwrap();
    println!(
        "sentinel: master stopped; {calls} calls, {closed} answered closed while it failed over; \
         served by the promoted master {recovered:?} after the stop ({keys} keys on it)"
    );
    assert!(matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master"), "the replica was promoted");
    // And exact on the new master.
    for remaining in (0..3).rev() {
        let d = try_check(&mut client, "after", 1).await.unwrap();
        assert_eq!(d.fallback, Fallback::None as i32);
        assert_eq!(d.remaining, 999_999 - (2 - remaining), "{d:?}");
    }
}
