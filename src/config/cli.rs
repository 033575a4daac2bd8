//! The command line. Every flag also reads `RATELIMITD_<FLAG>` from the environment
//! (the Helm chart and operators rely on both names); values are checked in [`super::Config::from_cli`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum, value_parser};

#[derive(Clone, Parser)]
#[command(
    name = "ratelimitd",
    version,
    about = "Exact, shared sliding-window rate limiting for API keys, over gRPC.",
    long_about = "Exact, shared sliding-window rate limiting for API keys, over gRPC.\n\n\
        With --redis-url every replica shares one exact limit per key, decided atomically \
        inside Redis. Without it, the in-process store is used and limits are per process."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the gRPC API listens on.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_LISTEN", default_value = "0.0.0.0:50051", value_parser = parse_address)]
    pub listen: SocketAddr,

    /// Address of the HTTP API, for gateways that do not speak gRPC: POST /v1/check and
    /// /v1/peek (JSON), and forward authentication at /v1/auth (nginx auth_request, Traefik
    /// ForwardAuth). Off unless given.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_HTTP_LISTEN", value_parser = parse_address)]
    pub http_listen: Option<SocketAddr>,

    /// Address of the support desk's admin service (ratelimit.admin.v1.Admin: Inspect and
    /// Explain a key's history). Off unless given; needs --admin-tokens-file or
    /// --admin-client-ca. Keep it off the gateways' network.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_ADMIN_LISTEN", value_parser = parse_address)]
    pub admin_listen: Option<SocketAddr>,

    /// File of the admin service's callers: one `name token` per line (tokens of at least 16
    /// bytes); a call needs `authorization: Bearer <token>`, and its log line names the caller.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<PathBuf>,

    /// Mutual TLS for the admin service: callers need a certificate signed by this CA (PEM),
    /// whose subject names the caller in the log lines. Needs --tls-cert; apart from
    /// --tls-client-ca, so that a gateway's certificate opens no desk. With
    /// --admin-tokens-file too, a call needs both.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_ADMIN_CLIENT_CA", requires = "tls_cert")]
    pub admin_client_ca: Option<PathBuf>,

    /// The request header holding the API key for forward authentication (/v1/auth).
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_HTTP_KEY_HEADER", default_value = "x-api-key")]
    pub http_key_header: String,

    /// Address of the Prometheus endpoint, GET /metrics.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_METRICS_LISTEN", default_value = "0.0.0.0:9090", value_parser = parse_address)]
    pub metrics_listen: SocketAddr,

    /// PEM certificate chain of the gRPC port: with --tls-key, the port speaks TLS only.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates that client certificates must chain to: turns on mutual TLS
    /// (a client without such a certificate is refused). Needs --tls-cert.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Event-loop threads serving gRPC. Each serves the connections it accepts from start
    /// to end, with its own Redis connection, so a connection's requests and answers are
    /// batched into few system calls; the default is one per core.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_WORKER_THREADS", value_parser = value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Server-side bound on each gRPC call, receiving the request included: a call (or a
    /// client that opens a stream and never sends) is ended with CANCELLED after it.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_REQUEST_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Redis to share limits through: redis://[user[:password]@]host:port[/db], or rediss:// for
    /// TLS. Without it, limits are kept in this process only. Never logged.
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes instead of --redis-url, comma-separated
    /// (redis://host:6379,redis://host2:6379); the rest of the cluster is discovered.
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_CLUSTER_NODES", value_delimiter = ',', hide_env_values = true,
          conflicts_with_all = ["redis_url", "redis_sentinels"])]
    pub redis_cluster_nodes: Vec<String>,

    /// Sentinels instead of --redis-url, comma-separated (redis://host:26379,...): the
    /// service uses the master they name --redis-sentinel-master and follows failovers.
    #[arg(
        long,
        help_heading = "Redis",
        env = "RATELIMITD_REDIS_SENTINELS",
        value_delimiter = ',',
        hide_env_values = true,
        conflicts_with = "redis_url",
        requires = "redis_sentinel_master"
    )]
    pub redis_sentinels: Vec<String>,

    /// The master name the sentinels monitor (e.g. mymaster).
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_SENTINEL_MASTER", requires = "redis_sentinels")]
    pub redis_sentinel_master: Option<String>,

    /// File holding the Redis (ACL) password, instead of putting it in --redis-url.
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// PEM CA certificates to verify a rediss:// server with, instead of the system's.
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate for Redis servers that require one (rediss:// only).
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_CLIENT_CERT", requires = "redis_client_key")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_CLIENT_KEY", requires = "redis_client_cert")]
    pub redis_client_key: Option<PathBuf>,

    /// Prefix of every Redis key ratelimitd writes; each key is <prefix>{<key fingerprint>}:2.
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_KEY_PREFIX", default_value = "ratelimitd:")]
    pub redis_key_prefix: String,

    /// Whether an allowed check also counts the key's units in the previous release's layout
    /// (<prefix>{<key fingerprint>}), so that a rolling upgrade from it stays exact: read, or
    /// ignore once no replica of the previous release has run for a longest window (it saves
    /// one Redis command per script call that allows a check).
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_PREVIOUS_LAYOUT", default_value = "read")]
    pub redis_previous_layout: PreviousLayout,

    /// Deadline of each Redis call, connecting included, for callers that send none (a gRPC
    /// caller's own deadline, less a margin to answer it, is used instead). A call that
    /// misses it is answered by the key's failure mode (--failure-mode).
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_TIMEOUT", default_value = "50ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// What a check answers when Redis fails or misses its deadline, for policies that do not
    /// set their own `failure`: open (allow), closed (deny), or local (each replica enforces
    /// limit / --expected-replicas on its own exact in-process store).
    #[arg(long, help_heading = "Limits and failure modes", env = "RATELIMITD_FAILURE_MODE", value_enum, default_value_t = FailureModeArg::Local)]
    pub failure_mode: FailureModeArg,

    /// The least number of replicas the local failure mode divides each window's limit
    /// among. Replicas sharing a Redis count themselves there (ratelimitd_replicas), and the
    /// larger of the two is used.
    #[arg(long, help_heading = "Limits and failure modes", env = "RATELIMITD_EXPECTED_REPLICAS", default_value_t = 1,
          value_parser = value_parser!(u32).range(1..=10_000))]
    pub expected_replicas: u32,

    /// Redis connections per replica, each pipelining any number of concurrent calls; worker
    /// thread i uses connection i mod this. The default is one per worker thread (at most 256).
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_CONNECTIONS", value_parser = value_parser!(u16).range(1..=256))]
    pub redis_connections: Option<u16>,

    /// The most checks one Redis script call decides (1-1024). Checks that arrive on a
    /// connection while two of its calls are out wait and leave together, which costs
    /// Redis far less per check; 1 sends every check on its own. Redis Cluster always
    /// gets one check per call.
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_REDIS_BATCH", default_value_t = 32,
          value_parser = value_parser!(u16).range(1..=1024))]
    pub redis_batch: u16,

    /// Answer a throttled key's requests locally while a Redis denial proves them
    /// denied (exact: only time frees capacity). Only with --redis-url.
    #[arg(long, help_heading = "Redis", env = "RATELIMITD_DENY_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub deny_cache: bool,

    /// Requests (units of cost) each API key may make per window, by default.
    #[arg(
        long,
        help_heading = "Limits and failure modes",
        env = "RATELIMITD_LIMIT",
        default_value_t = 300,
        allow_negative_numbers = true
    )]
    pub limit: u32,

    /// Length of the sliding window (e.g. 60s, 1m, 500ms).
    #[arg(long, help_heading = "Limits and failure modes", env = "RATELIMITD_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub window: Duration,

    /// YAML file of policies and per-key overrides (see docs/configuration.md, "The limits file"). Its
    /// `default` section, if any, replaces --limit and --window. Reloaded when it changes
    /// and on SIGHUP; a file that does not validate is logged and the last good one kept.
    #[arg(long, help_heading = "Limits and failure modes", env = "RATELIMITD_LIMITS_FILE")]
    pub limits_file: Option<PathBuf>,

    /// How often the limits file is checked for changes (its content is compared, so
    /// Kubernetes ConfigMap updates, which swap a symlink, are seen too); 2s if not given.
    /// Only with --limits-file.
    #[arg(long, help_heading = "Limits and failure modes", env = "RATELIMITD_LIMITS_POLL_INTERVAL", value_parser = parse_duration)]
    pub limits_poll_interval: Option<Duration>,

    /// The Envoy rate-limit descriptor entry whose value is the API key.
    #[arg(
        long,
        help_heading = "Limits and failure modes",
        env = "RATELIMITD_ENVOY_API_KEY_ENTRY",
        default_value = "api_key"
    )]
    pub envoy_api_key_entry: String,

    /// Secret for the keyed fingerprints (HMAC-SHA-256) that name API keys in Redis and logs.
    /// Every replica sharing a Redis needs the same one; required with --redis-url.
    /// Prefer --fingerprint-secret-file or the environment over the command line.
    #[arg(
        long,
        help_heading = "Keys and the throttled-keys report",
        global = true,
        env = "RATELIMITD_FINGERPRINT_SECRET",
        hide_env_values = true
    )]
    pub fingerprint_secret: Option<String>,

    /// File holding the fingerprint secret (surrounding whitespace is ignored).
    #[arg(
        long,
        help_heading = "Keys and the throttled-keys report",
        global = true,
        env = "RATELIMITD_FINGERPRINT_SECRET_FILE",
        conflicts_with = "fingerprint_secret"
    )]
    pub fingerprint_secret_file: Option<PathBuf>,

    /// How many of the most throttled keys get a series of their own in the metrics.
    #[arg(long, help_heading = "Keys and the throttled-keys report", env = "RATELIMITD_THROTTLED_TOP_K", default_value_t = 20,
          value_parser = value_parser!(u16).range(1..=1000))]
    pub throttled_top_k: u16,

    /// Period of the throttled-keys report (the metrics cover the last one to two
    /// periods) and of the "key throttled" log line, at most once per key per period.
    #[arg(long, help_heading = "Keys and the throttled-keys report", env = "RATELIMITD_THROTTLED_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub throttled_interval: Duration,

    /// Fraction of its limit (0 to 1) a key must have used to count as near its limit.
    #[arg(
        long,
        help_heading = "Keys and the throttled-keys report",
        env = "RATELIMITD_NEAR_LIMIT_FRACTION",
        default_value_t = 0.8
    )]
    pub near_limit_fraction: f64,

    /// Log format. The level comes from RUST_LOG (default: info).
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// On SIGTERM or SIGINT, how long in-flight calls may take to finish before exiting.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGTERM or SIGINT, how long to keep serving new calls while gRPC health says
    /// NOT_SERVING, before draining: Kubernetes takes a moment to stop routing to a pod it
    /// is ending, and calls routed to it meanwhile are answered rather than refused.
    #[arg(long, help_heading = "Serving", env = "RATELIMITD_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
}

/// Secrets may come on the command line (the fingerprint secret, a Redis URL with a
/// password): the command line is not printed.
impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli").field("command", &self.command).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Reads an API key on stdin and prints its fingerprint under the configured
    /// --fingerprint-secret (for the overrides of the limits file). The key is not echoed.
    Fingerprint,
    /// Validates a limits file as start-up would, and serves nothing: exit 0 with what it
    /// holds, or 2 with the same message start-up would give (for CI and before a change).
    CheckLimits {
        /// The limits file (YAML).
        file: PathBuf,
    },
    /// Asks a running ratelimitd's gRPC health service whether it serves: exit 0 if it
    /// answers SERVING, 1 otherwise (NOT_SERVING, or no answer within 5 s). For `helm test`
    /// and probes in an image without a shell; plaintext only.
    /// Asks a running ratelimitd's admin service (--admin-listen) about one key: `inspect`
    /// (its policy, and per window what is counted and left) or `explain` (the requests
    /// inside its longest window). The raw key is read from a file, never from the command line.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    Probe {
        /// host:port of its gRPC listener.
        target: String,
        /// The health service to ask: "" (the default) is SERVING while Redis answers;
        /// `ratelimitd.readiness` is NOT_SERVING only while Redis refuses every call (a wrong
        /// password) or the server shuts down.
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AdminAction {
    /// The key's policy and, for each window, the units counted and left and when they free.
    Inspect(AdminArgs),
    /// The times and costs of the requests inside the key's longest window, oldest first.
    Explain(AdminArgs),
    /// Forgets the key's history on every replica, on the record: needs --reason.
    Reset {
        #[command(flatten)]
        args: AdminArgs,
        /// Why (a key rotation, a partner's mistake): written to the audit log with the caller.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct AdminArgs {
    /// host:port of the admin service (--admin-listen).
    #[arg(long)]
    pub target: String,
    /// File holding the bearer token (a token of the service's --admin-tokens-file); not
    /// needed where the service knows callers by certificate alone (--admin-client-ca).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// File holding the raw API key, or - for stdin (a final line break is not part of it).
    #[arg(long, required_unless_present = "fingerprint", conflicts_with = "fingerprint")]
    pub key_file: Option<PathBuf>,
    /// The key's fingerprint (32 hex digits), as logs and metrics show it.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The CA (PEM) that signed the service's certificate, when it serves TLS (--tls-cert).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// This client's certificate and key (PEM), when the service requires them
    /// (--admin-client-ca, or --tls-client-ca).
    #[arg(long, requires = "client_key", requires = "ca_file")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureModeArg {
    /// Allow: the API stays up, unprotected.
    Open,
    /// Deny: the API is protected, and down.
    Closed,
    /// Each replica enforces limit / --expected-replicas by itself.
    Local,
}

impl From<FailureModeArg> for crate::domain::FailureMode {
    fn from(arg: FailureModeArg) -> Self {
        match arg {
            FailureModeArg::Open => Self::Open,
            FailureModeArg::Closed => Self::Closed,
            FailureModeArg::Local => Self::Local,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreviousLayout {
    /// Count the previous release's ring too (during and just after a rolling upgrade).
    Read,
    /// Count only this layout.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `host:port`, a name resolved once at start-up (e.g. `localhost:50051`) or an address.
fn parse_address(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addresses = value.to_socket_addrs().map_err(|e| format!("{e} (expected host:port, e.g. 0.0.0.0:50051)"))?;
    addresses.next().ok_or_else(|| "it resolves to no address".to_owned())
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (expected e.g. 60s, 500ms, 1m)"))
}
