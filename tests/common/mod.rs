//! Test harness: ratelimitd servers on port 0 with a stop handle, Redis started
//! through testcontainers from the locally built image (see scripts/test), and an
//! exactness checker over recorded decisions.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod gateway;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod script;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;
use ratelimitd::app::{self, AppError};
use ratelimitd::config::Config;
use ratelimitd::config::cli::Cli;
use ratelimitd::domain::oracle::Record;
use ratelimitd::domain::{Fingerprint, Limits, Override, Policy, SharedPolicies};
use ratelimitd::grpc::pb::rate_limiter_client::RateLimiterClient;
use ratelimitd::grpc::pb::{CheckAndConsumeRequest, CheckAndConsumeResponse, PeekRequest};
use testcontainers::core::{ContainerPort, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Client = RateLimiterClient<Channel>;

/// The image scripts/build-redis-image.sh builds (Debian's Redis 7.0); override with
/// RATELIMITD_TEST_REDIS_IMAGE=name:tag, e.g. redis:7 where images can be pulled.
pub fn redis_image() -> (String, String) {
    let image = std::env::var("RATELIMITD_TEST_REDIS_IMAGE").unwrap_or_else(|_| "ratelimitd-test-redis:7".into());
    let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    (name.to_owned(), tag.to_owned())
}

const REDIS_PORT: ContainerPort = ContainerPort::Tcp(6379);

/// A Redis container of this test's own, on a fixed host port so that it keeps
/// its address across a stop and start.
pub struct Redis {
    container: ContainerAsync<GenericImage>,
    pub port: u16,
}

impl Redis {
    pub async fn start() -> Self {
        let (name, tag) = redis_image();
        let port = free_port();
        let container = GenericImage::new(&name, &tag)
            .with_exposed_port(6379.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_mapped_port(port, REDIS_PORT)
            .start()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start Redis from image {name}:{tag} in Docker: {e}. \
                     The tests need a running Docker Engine and that image: run scripts/test, \
                     which builds it (scripts/build-redis-image.sh)."
                )
            });
        Self { container, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.url()).await
    }

    /// Stops and starts the container: Redis comes back empty (no persistence),
    /// with no scripts loaded, and every client connection broken.
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    pub async fn stop(&self) {
        self.container.stop().await.expect("stop Redis");
    }

    pub async fn start_again(&self) {
        self.container.start().await.expect("start Redis again");
    }

    /// Freezes Redis (`docker pause`): calls hang rather than fail.
    pub async fn pause(&self) {
        self.container.pause().await.expect("pause Redis");
    }

    pub async fn unpause(&self) {
        self.container.unpause().await.expect("unpause Redis");
    }
}

/// The test's own connection to a Redis it started. Its commands get 10 s, not redis-rs's
/// default 500 ms: a loaded 2-core machine (six nodes forming a cluster, say) can take
/// longer than that to answer.
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("valid URL");
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Where a test's servers keep their state: in process, or in a Redis of its own.
pub struct Backend {
    pub redis: Option<Redis>,
}

impl Backend {
    pub fn memory() -> Self {
        Self { redis: None }
    }

    pub async fn redis() -> Self {
        Self { redis: Some(Redis::start().await) }
    }

    /// The configuration `ratelimitd` would build from these flags on this backend.
    pub fn config(&self, limit: u32, window: &str) -> Config {
        self.config_with(limit, window, &[])
    }

    /// The same with more flags.
    pub fn config_with(&self, limit: u32, window: &str, extra: &[&str]) -> Config {
        let limit = limit.to_string();
        let mut args = vec!["ratelimitd", "--limit", &limit, "--window", window, "--shutdown-grace", "5s"];
        args.extend(["--fingerprint-secret", "test-secret"]);
        if !extra.contains(&"--request-timeout") {
            // Above the tests' 2 s Redis deadline (it must be the longer of the two).
            args.extend(["--request-timeout", "10s"]);
        }
        let url = self.redis.as_ref().map(Redis::url);
        if let Some(url) = &url {
            args.extend(["--redis-url", url]);
            if !extra.contains(&"--redis-timeout") {
                args.extend(["--redis-timeout", "2s"]);
            }
        }
        args.extend(extra);
        Config::from_cli(Cli::try_parse_from(args).expect("test flags parse")).expect("valid test config")
    }

    pub async fn server(&self, limit: u32, window: &str) -> TestServer {
        TestServer::start(self.config(limit, window)).await
    }
}

/// A ratelimitd serving on a port of its own until stopped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP API's address, for a server started with [`TestServer::start_with_http`].
    pub http: Option<SocketAddr>,
    /// The admin service's address, for a config with `--admin-listen`.
    pub admin: Option<SocketAddr>,
    config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AppError>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        Self::start_serving(config, false).await
    }

    /// The same, serving the HTTP API too, on a port of its own.
    pub async fn start_with_http(config: Config) -> Self {
        Self::start_serving(config, true).await
    }

    async fn start_serving(config: Config, serve_http: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let http = match serve_http {
            true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0")),
            false => None,
        };
        let http_addr = http.as_ref().map(|l| l.local_addr().expect("local addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        // The admin service, when the config asks for one, on a port of its own.
        let admin = match &config.admin {
            Some(_) => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0")),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr().expect("local addr"));
        let listeners = app::Listeners { grpc: listener, metrics: None, http, admin };
        let task = tokio::spawn(app::run(listeners, config.clone(), shutdown));
        Self { addr, http: http_addr, admin: admin_addr, config, stop: Some(stop), task }
    }

    pub async fn client(&self) -> Client {
        let endpoint = format!("http://{}", self.addr);
        for _ in 0..100 {
            if let Ok(client) = RateLimiterClient::connect(endpoint.clone()).await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("ratelimitd at {endpoint} did not accept connections");
    }

    pub fn policies(&self) -> &SharedPolicies {
        &self.config.policies
    }

    pub fn fingerprint(&self, key_id: &str) -> Fingerprint {
        self.config.fingerprinter.fingerprint(key_id)
    }

    /// Gives `key_id` its own policy from its next call on.
    pub fn set_override(&self, key_id: &str, limit: u32, window: Duration) {
        self.set_policy(key_id, Policy::new("override", Limits::single(limit, window).expect("valid limits")));
    }

    pub fn set_policy(&self, key_id: &str, policy: Policy) {
        let mut policies = (*self.policies().current()).clone();
        let entry = Override::new(policy.into(), None);
        policies.overrides.insert(self.fingerprint(key_id), entry);
        self.policies().replace(policies);
    }

    /// Signals shutdown and waits for the server to drain and return.
    pub async fn stop(mut self) -> Result<(), AppError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("server task panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn check(client: &mut Client, key_id: &str, cost: u32) -> CheckAndConsumeResponse {
    try_check(client, key_id, cost).await.unwrap_or_else(|status| panic!("CheckAndConsume failed: {status:?}"))
}

pub async fn try_check(client: &mut Client, key_id: &str, cost: u32) -> Result<CheckAndConsumeResponse, tonic::Status> {
    let request = CheckAndConsumeRequest { key_id: key_id.to_owned(), cost };
    client.check_and_consume(request).await.map(tonic::Response::into_inner)
}

pub async fn peek(client: &mut Client, key_id: &str, cost: u32) -> CheckAndConsumeResponse {
    let request = PeekRequest { key_id: key_id.to_owned(), cost };
    client.peek(request).await.map(tonic::Response::into_inner).unwrap_or_else(|s| panic!("Peek failed: {s:?}"))
}

/// How the image's Redis starts (as its CMD), for containers that add flags of their own.
const REDIS_SERVER: [&str; 9] =
    ["/usr/local/bin/redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"];

/// A Redis container request running `redis-server` with `extra` flags (cluster, replica, TLS).
pub fn redis_request(extra: &[&str]) -> testcontainers::core::ContainerRequest<GenericImage> {
    let (name, tag) = redis_image();
    let cmd: Vec<String> = REDIS_SERVER.iter().chain(extra).map(|a| a.to_string()).collect();
    GenericImage::new(&name, &tag)
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_cmd(cmd)
}

/// Starts `redis_request(extra)`; the container and its address on Docker's bridge.
pub async fn redis_server(extra: &[&str]) -> (ContainerAsync<GenericImage>, String) {
    let container = redis_request(extra).start().await.expect("start a Redis container");
    let ip = container_ip(container.id());
    (container, ip)
}

/// A container's address on Docker's bridge network, reachable from this host (nodes of a
/// Redis Cluster or behind Sentinel announce these addresses, not published ports).
pub fn container_ip(id: &str) -> String {
    let output = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id])
        .output()
        .expect("run docker inspect");
    let ip = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(!ip.is_empty(), "no address for container {id}: {}", String::from_utf8_lossy(&output.stderr));
    ip
}

/// What a load caller returns: its decisions, as (key, record), and a count.
pub type CallerOutcome = (Vec<(usize, Record)>, usize);

/// Waits for load callers that each return their decisions, as (key, record), and a
/// count of calls answered otherwise (a fallback, a failed call); groups the decisions
/// by key and adds up the counts.
pub async fn gather(callers: Vec<tokio::task::JoinHandle<CallerOutcome>>) -> (HashMap<usize, Vec<Record>>, usize) {
    let (mut by_key, mut other) = (HashMap::<_, Vec<_>>::new(), 0);
    for caller in callers {
        let (records, count) = caller.await.expect("a caller panicked");
        other += count;
        for (key, record) in records {
            by_key.entry(key).or_default().push(record);
        }
    }
    (by_key, other)
}

/// Checks the exactness rule per key over recorded decisions (never over, never
/// under), printing each key's figures under `label`; `saturated` also asserts each key
/// reached its limit in some window (the load was enough to test "never over").
pub fn assert_exact<K: std::fmt::Display>(
    label: &str,
    by_key: &HashMap<K, Vec<Record>>,
    limit: u32,
    window_ms: u64,
    saturated: bool,
) {
    assert!(!by_key.is_empty(), "{label}: no decisions recorded");
    for (key, records) in by_key {
        let v = ratelimitd::domain::oracle::audit(records, limit, window_ms);
        println!(
            "{label}, key-{key}: {} calls, {} allowed, max {} units in any {window_ms} ms (limit {limit}), {} wrongly denied",
            v.calls, v.allowed, v.max_in_window, v.wrongly_denied
        );
        assert!(v.max_in_window <= u64::from(limit), "{label}, key-{key}: never over");
        assert!(
            !saturated || v.max_in_window == u64::from(limit),
            "{label}, key-{key}: the load never reached the limit"
        );
        assert_eq!(v.wrongly_denied, 0, "{label}, key-{key}: never under");
    }
}

/// A port for a listener this test does not bind itself (a child `ratelimitd`, a
/// container's mapped port), free when returned.
///
/// Taken from below the kernel's ephemeral range: a port there is never handed to
/// an outgoing connection or to another `bind(0)` between this call and the
/// child's bind (a port from `bind(0)` was, under load: "Address already in use").
/// No two calls in one test binary return the same port; test binaries run one at
/// a time, and each starts at its own offset.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low();
    let span = low - FIRST_PORT;
    let offset = std::process::id() % span;
    for _ in 0..span {
        let port = FIRST_PORT + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("port below the ephemeral range");
        // The wildcard address conflicts with a listener on any address.
        if StdListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST_PORT}-{}", low - 1)
}

const FIRST_PORT: u32 = 10_000;

/// The first port of the kernel's ephemeral range (32768 by default on Linux).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|low| *low > FIRST_PORT + 1_000)
        .unwrap_or(32_768)
}
