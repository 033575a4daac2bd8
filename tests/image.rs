//! The container image (built by scripts/build-image.sh, as scripts/test does) runs as
//! three replicas on one Docker network with a Redis container, and the exactness
//! check passes through them.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Client, redis_image, try_check};
use ratelimitd::domain::oracle::Record;
use ratelimitd::grpc::pb::rate_limiter_client::RateLimiterClient;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

const LIMIT: u32 = 50;
const WINDOW_MS: u64 = 2_000;

/// The image scripts/test builds; RATELIMITD_TEST_IMAGE=name:tag to use another.
fn image() -> (String, String) {
    let image = std::env::var("RATELIMITD_TEST_IMAGE").unwrap_or_else(|_| "ratelimitd-test:local".into());
    let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    (name.to_owned(), tag.to_owned())
}

async fn replica(network: &str, name: &str, redis: &str) -> ContainerAsync<GenericImage> {
    let (image, tag) = image();
    let url = format!("redis://{redis}:6379");
    let args = ["--redis-url", &url, "--fingerprint-secret", "image-test", "--limit", "50", "--window", "2s"];
    let more =
        ["--redis-timeout", "2s", "--request-timeout", "10s", "--expected-replicas", "3", "--log-format", "json"];
    let args = [&args[..], &more[..]].concat();
    GenericImage::new(&image, &tag)
        .with_exposed_port(50051.tcp())
        .with_wait_for(WaitFor::message_on_stderr("serving ratelimit.v1.RateLimiter"))
        .with_network(network)
        .with_container_name(name)
        .with_cmd(args.iter().map(|a| a.to_string()))
        .start()
        .await
        .unwrap_or_else(|e| panic!("start {image}:{tag} (scripts/test builds it with scripts/build-image.sh): {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_in_containers_enforce_one_exact_limit() {
    let run = format!("rl-image-{}", rand::random::<u32>());
    let (redis_name, redis_tag) = redis_image();
    let redis_host = format!("{run}-redis");
    let _redis = GenericImage::new(&redis_name, &redis_tag)
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_network(&run)
        .with_container_name(&redis_host)
        .start()
        .await
        .expect("start Redis");
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(replica(&run, &format!("{run}-{i}"), &redis_host).await);
    }
    let mut clients: Vec<Client> = Vec::new();
    for replica in &replicas {
        let port = replica.get_host_port_ipv4(50051).await.expect("mapped port");
        clients.push(RateLimiterClient::connect(format!("http://127.0.0.1:{port}")).await.expect("connect"));
    }
    let mut callers = Vec::new();
    for caller in 0..30 {
        let mut client = clients[caller % clients.len()].clone();
        callers.push(tokio::spawn(async move {
            let (mut records, started, mut i) = (Vec::new(), Instant::now(), caller);
            while started.elapsed() < Duration::from_secs(6) {
                let (key, cost) = (i % 3, 1 + (i / 3 % 2) as u32);
                let d = try_check(&mut client, &format!("key-{key}"), cost).await.expect("no call may fail");
                assert_eq!(d.fallback, 0, "Redis is up: {d:?}");
                records.push((key, Record { allowed: d.allowed, cost, at_ms: d.decided_at_ms }));
                i += 1;
            }
            records
        }));
    }
    let mut by_key: HashMap<usize, Vec<Record>> = HashMap::new();
    for caller in callers {
        for (key, record) in caller.await.expect("a caller panicked") {
            by_key.entry(key).or_default().push(record);
        }
    }
    common::assert_exact("image, 3 containers", &by_key, LIMIT, WINDOW_MS, true);
}
