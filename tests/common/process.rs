//! The real `ratelimitd` binary as a child process with its own ports, its logs
//! captured to a file, and a minimal HTTP/1.0 GET for loopback endpoints.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ratelimitd::grpc::pb::rate_limiter_client::RateLimiterClient;

use super::{Client, free_port};

pub const BIN: &str = env!("CARGO_BIN_EXE_ratelimitd");

pub struct Process {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `ratelimitd` on free loopback ports with `args` and `RUST_LOG=debug`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_logging(args, "debug")
    }

    /// The same at another log level (`RUST_LOG`).
    pub fn start_logging(args: &[&str], level: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("ratelimitd.log");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(BIN)
            .args(["--listen", &grpc.to_string(), "--metrics-listen", &metrics.to_string()])
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("start ratelimitd");
        Self { child: Some(child), grpc, metrics, log, _dir: dir }
    }

    pub async fn client(&self) -> Client {
        let started = Instant::now();
        loop {
            if let Ok(client) = RateLimiterClient::connect(format!("http://{}", self.grpc)).await {
                return client;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "ratelimitd did not start: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn scrape(&self) -> String {
        http_get(self.metrics, "/metrics")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (e.g. "HUP") without waiting.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        let kill = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status();
        assert!(kill.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// Kills the process (SIGKILL: no drain, as a crashed or evicted replica).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill ratelimitd");
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(kill.is_ok_and(|s| s.success()), "kill -TERM failed");
        child.wait().expect("wait for ratelimitd").code()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET over HTTP/1.0 (the server closes the connection after the response); the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "GET {path}: {head}");
    body.to_owned()
}

/// `ratelimitd --fingerprint-secret SECRET fingerprint`, as an operator runs it, with `key` on
/// stdin: the fingerprint it prints (never the key).
pub fn fingerprint(secret: &str, key: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["--fingerprint-secret", secret, "fingerprint"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run ratelimitd fingerprint");
    writeln!(child.stdin.take().expect("stdin"), "{key}").expect("write the key");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("UTF-8").trim().to_owned();
    assert_eq!(printed.len(), 32, "{printed}");
    assert!(!printed.contains(key));
    printed
}
