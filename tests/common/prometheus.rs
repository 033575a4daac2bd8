//! Prometheus's tools (Debian's prometheus package, which scripts/test installs): a real
//! server on loopback, and promtool.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::free_port;
use super::process::http_get;

/// `name` from PATH; fails the test, saying how to get it, if it is missing.
pub fn tool(name: &str) -> Command {
    let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{name} not found: scripts/test installs it (Debian's prometheus package)"
    );
    Command::new(name)
}

/// `prometheus` on loopback, scraping `target` and evaluating `rules` every second; killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: SocketAddr, rules: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let mut yaml = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ratelimitd\n    static_configs:\n      - targets: ['{target}']\n"
        );
        if let Some(rules) = rules {
            yaml.push_str(&format!("rule_files:\n  - '{}'\n", rules.display()));
        }
        std::fs::write(&config, yaml).unwrap();
        let port = free_port();
        let child = tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Self { child, port, _dir: dir }
    }

    /// The JSON answer of an API `path` (with its query), or `None` while it does not answer.
    pub fn query(&self, path: &str) -> Option<serde_json::Value> {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let body = std::panic::catch_unwind(|| http_get(addr, path)).ok()?;
        serde_json::from_str(&body).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
