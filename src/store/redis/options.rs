//! How to reach Redis and how long to wait for it: one server (`--redis-url`), a Redis
//! Cluster (`--redis-cluster-nodes`), or the master Sentinel names (`--redis-sentinels`).
//! URLs and passwords may be secrets: no `Debug` here shows them.

use std::time::Duration;

/// Where Redis is.
#[derive(Clone)]
pub enum RedisEndpoint {
    /// One server: `redis://` or `rediss://`.
    Url(String),
    /// Seed nodes of a Redis Cluster; the rest of the topology is discovered, and
    /// followed through MOVED, ASK and failovers.
    Cluster(Vec<String>),
    /// The master that these sentinels name `master`; followed through failovers.
    Sentinel { master: String, sentinels: Vec<String> },
}

impl std::fmt::Debug for RedisEndpoint {
    /// URLs may hold passwords: only the shape is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(_) => f.write_str("Url(..)"),
            Self::Cluster(nodes) => write!(f, "Cluster({} seed nodes)", nodes.len()),
            Self::Sentinel { master, sentinels } => write!(f, "Sentinel({master}, {} sentinels)", sentinels.len()),
        }
    }
}

impl RedisEndpoint {
    /// Where it points, as `host:port` (comma-separated), without credentials: for logs.
    pub fn addresses(&self) -> String {
        let urls = match self {
            Self::Url(url) => std::slice::from_ref(url),
            Self::Cluster(nodes) => nodes.as_slice(),
            Self::Sentinel { sentinels, .. } => sentinels.as_slice(),
        };
        let address = |url: &String| {
            redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_or_else(|_| "<unparsable>".to_owned(), |info| info.addr().to_string())
        };
        urls.iter().map(address).collect::<Vec<_>>().join(",")
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Self::Url(_) => "single",
            Self::Cluster(_) => "cluster",
            Self::Sentinel { .. } => "sentinel",
        }
    }
}

/// How to reach Redis and how long to wait for it.
#[derive(Clone)]
pub struct RedisOptions {
    /// Where Redis is; URLs may hold credentials and are never logged.
    pub endpoint: RedisEndpoint,
    /// Put before `{fingerprint}` in every key name.
    pub key_prefix: String,
    /// Also count each key's units in the previous release's layout (a rolling upgrade).
    pub previous_layout: bool,
    /// The bound on each call, connecting included, when its caller sends no deadline.
    pub timeout: Duration,
    /// The longest a call waits, whatever its caller's deadline (the server's own bound
    /// on a request).
    pub longest_wait: Duration,
    /// Multiplexed connections for checks (one more is opened for PING and SCRIPT LOAD);
    /// each pipelines any number of concurrent calls.
    pub connections: usize,
    /// The most checks one script call decides (1: each check is its own call). Redis
    /// Cluster always gets one per call: a batch's keys would have to share a slot.
    pub batch: usize,
    /// For rediss:// URLs: how to verify the server, and a client certificate.
    pub tls: Option<RedisTls>,
    /// The ACL password, when it does not come in the URL.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisOptions {
    /// The password is never shown; the endpoint shows only its shape.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("endpoint", &self.endpoint)
            .field("key_prefix", &self.key_prefix)
            .field("previous_layout", &self.previous_layout)
            .field("timeout", &self.timeout)
            .field("longest_wait", &self.longest_wait)
            .field("connections", &self.connections)
            .field("batch", &self.batch)
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// PEM material for TLS to Redis.
#[derive(Clone)]
pub struct RedisTls {
    /// CA certificates to verify the server with; `None` uses the system's.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, for servers that require one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}
