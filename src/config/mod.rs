//! Floor 5, the configuration adapter: the command line ([`cli`]), the limits file
//! ([`limits`]) and its hot reload ([`reload`]), and the validated [`Config`], built
//! once from them; the rest of the code trusts it.

pub mod admin;
pub mod cli;
pub mod commands;
pub mod limits;
pub mod overrides;
pub mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;

use self::cli::Cli;
pub use self::cli::LogFormat;
use self::limits::LimitsError;
use crate::domain::{Fingerprinter, MAX_KEY_ID_BYTES, Policies, Policy, PolicyError, SharedPolicies};
use crate::metrics::ThrottleOptions;
use crate::store::redis::{RedisEndpoint, RedisOptions, RedisTls};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// TLS of the gRPC port; `None` serves plaintext.
    pub tls: Option<TlsFiles>,
    pub request_timeout: Duration,
    /// Event-loop threads serving gRPC (at least 1).
    pub worker_threads: usize,
    pub metrics_listen: SocketAddr,
    /// The HTTP API's address; `None` serves none.
    pub http_listen: Option<SocketAddr>,
    /// The support desk's admin service, if `--admin-listen` is given.
    pub admin: Option<admin::AdminConfig>,
    /// The header forward authentication reads the API key from.
    pub http_key_header: HeaderName,
    pub store: StoreConfig,
    /// The live policies; replacing them changes limits without a restart.
    pub policies: SharedPolicies,
    /// Where the policies come from, to reload them; `None` without --limits-file.
    pub limits_file: Option<LimitsFile>,
    /// The Envoy descriptor entry that names the API key.
    pub envoy_api_key_entry: String,
    /// Replicas sharing the store: the local failure mode divides limits by this.
    pub expected_replicas: u32,
    pub fingerprinter: Fingerprinter,
    pub throttle: ThrottleOptions,
    /// Answer proven denials locally (Redis store only).
    pub deny_cache: bool,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    /// How long to keep serving, NOT_SERVING, before draining.
    pub shutdown_delay: Duration,
}

/// The PEM contents of the gRPC port's TLS files, read at start-up.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// Mutual TLS: client certificates must chain to these.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").field("mutual", &self.client_ca.is_some()).finish_non_exhaustive()
    }
}

/// The limits file and what applies where it says nothing.
#[derive(Debug, Clone)]
pub struct LimitsFile {
    pub path: PathBuf,
    /// The default policy when the file has no `default` section (--limit, --window).
    pub default_policy: Policy,
    pub poll_interval: Duration,
    /// The content the policies in force were loaded from.
    pub loaded: Vec<u8>,
}

/// Built once at start-up, so the size of its Redis variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Limits are per process.
    Memory,
    Redis(RedisOptions),
}

/// How often the limits file is read for changes, without --limits-poll-interval.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A configuration that cannot run, naming the flag and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--limit must be between 1 and {max}, got {0}", max = crate::domain::MAX_LIMIT)]
    Limit(u32),
    #[error("--window must be a whole number of milliseconds from 1ms to 31 days, got {0:?}")]
    Window(Duration),
    #[error("--redis-timeout must be at least 1ms, got {0:?}")]
    RedisTimeout(Duration),
    #[error("{0}: every URL must start with redis:// or rediss:// (values are not shown: they may hold passwords)")]
    RedisUrlOf(&'static str),
    #[error("{0}: a URL does not parse ({1}; values are not shown: they may hold passwords)")]
    RedisUrlParse(&'static str, String),
    #[error("{flag} {path}: not a PEM file (no -----BEGIN line)")]
    NotPem { flag: &'static str, path: String },
    #[error("--redis-sentinel-master must name the master the sentinels monitor")]
    SentinelMaster,
    #[error("{0} needs a rediss:// --redis-url (TLS to one Redis; not yet with Cluster or Sentinel)")]
    RedisTlsOption(&'static str),
    #[error("{flag} {path}: {source}")]
    RedisFile { flag: &'static str, path: String, source: std::io::Error },
    #[error(
        "--fingerprint-secret (or --fingerprint-secret-file) is required with --redis-url: \
         every replica sharing the Redis must name keys with the same secret"
    )]
    MissingSecret,
    #[error("--fingerprint-secret must not be empty")]
    EmptySecret,
    #[error("--throttled-interval must be at least 1s, got {0:?}")]
    ThrottledInterval(Duration),
    #[error("--near-limit-fraction must be above 0 and at most 1, got {0}")]
    NearLimitFraction(f64),
    #[error("--fingerprint-secret-file {path}: {source}")]
    SecretFile { path: String, source: std::io::Error },
    #[error("{flag} {path}: {source}")]
    TlsFile { flag: &'static str, path: String, source: std::io::Error },
    #[error("--redis-timeout ({0:?}) must be shorter than --request-timeout ({1:?})")]
    RedisTimeoutOverRequest(Duration, Duration),
    #[error("--request-timeout must be between 10ms and 1h, got {0:?}")]
    RequestTimeout(Duration),
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("--limits-poll-interval must be at least 100ms, got {0:?}")]
    LimitsPollInterval(Duration),
    #[error("--shutdown-delay must be at most 5 minutes, got {0:?}")]
    ShutdownDelay(Duration),
    #[error("--limits-poll-interval needs --limits-file: there is no file to poll")]
    PollWithoutLimitsFile,
    #[error("--envoy-api-key-entry must not be empty")]
    EnvoyApiKeyEntry,
    #[error("--http-key-header must be an HTTP header name (letters, digits and -), got {0:?}")]
    HttpKeyHeader(String),
    #[error(
        "fingerprint needs the secret the service uses: --fingerprint-secret, --fingerprint-secret-file \
         or RATELIMITD_FINGERPRINT_SECRET"
    )]
    FingerprintSecret,
    #[error("fingerprint: {0}")]
    FingerprintInput(String),
    #[error("{0}")]
    Admin(String),
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let mut default = Policy::default_with(cli.limit, cli.window).map_err(|e| match e {
            PolicyError::Window(window) => ConfigError::Window(window),
            _ => ConfigError::Limit(cli.limit),
        })?;
        default.failure = cli.failure_mode.into();
        let secret = read_secret(&cli)?;
        let throttle = throttle_options(&cli)?;
        let worker_threads =
            cli.worker_threads.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from);
        let store = match redis_endpoint(&cli)? {
            None => StoreConfig::Memory,
            Some(endpoint) => {
                let rediss = matches!(&endpoint, RedisEndpoint::Url(url) if url.starts_with("rediss://"));
                let tls = redis_tls(&cli, rediss)?;
                let password = read_redis_file(&cli.redis_password_file, "--redis-password-file")?
                    .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
                if secret.is_none() {
                    return Err(ConfigError::MissingSecret);
                }
                if cli.redis_timeout < Duration::from_millis(1) {
                    return Err(ConfigError::RedisTimeout(cli.redis_timeout));
                }
                StoreConfig::Redis(RedisOptions {
                    endpoint,
                    key_prefix: cli.redis_key_prefix.clone(),
                    previous_layout: cli.redis_previous_layout == cli::PreviousLayout::Read,
                    timeout: cli.redis_timeout,
                    longest_wait: cli.request_timeout,
                    connections: cli.redis_connections.map_or(worker_threads.min(256), usize::from),
                    batch: usize::from(cli.redis_batch),
                    tls,
                    password,
                })
            }
        };
        // With the in-process store nothing outlives the process, so a random secret will do.
        let secret = secret.unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec());
        let (policies, limits_file) = policies(&cli, default)?;
        if cli.envoy_api_key_entry.is_empty() {
            return Err(ConfigError::EnvoyApiKeyEntry);
        }
        let http_key_header = HeaderName::try_from(cli.http_key_header.to_ascii_lowercase())
            .map_err(|_| ConfigError::HttpKeyHeader(cli.http_key_header.clone()))?;
        if cli.shutdown_delay > Duration::from_secs(300) {
            return Err(ConfigError::ShutdownDelay(cli.shutdown_delay));
        }
        if cli.request_timeout < Duration::from_millis(10) || cli.request_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::RequestTimeout(cli.request_timeout));
        }
        if matches!(store, StoreConfig::Redis(_)) && cli.redis_timeout >= cli.request_timeout {
            // Else a call could be cut off while its Redis call still runs, and never
            // reach its failure mode (nor tell the circuit breaker how Redis is doing).
            return Err(ConfigError::RedisTimeoutOverRequest(cli.redis_timeout, cli.request_timeout));
        }
        Ok(Self {
            listen: cli.listen,
            tls: tls_files(&cli)?,
            request_timeout: cli.request_timeout,
            worker_threads,
            metrics_listen: cli.metrics_listen,
            http_listen: cli.http_listen,
            admin: admin::admin(&cli)?,
            http_key_header,
            store,
            policies: SharedPolicies::new(policies),
            limits_file,
            envoy_api_key_entry: cli.envoy_api_key_entry,
            expected_replicas: cli.expected_replicas,
            fingerprinter: Fingerprinter::new(&secret),
            throttle,
            deny_cache: cli.deny_cache,
            log_format: cli.log_format,
            shutdown_grace: cli.shutdown_grace,
            shutdown_delay: cli.shutdown_delay,
        })
    }
}

/// The policies at start-up: the limits file's if there is one (it must validate), else
/// the flags' default for every key.
fn policies(cli: &Cli, default: Policy) -> Result<(Policies, Option<LimitsFile>), ConfigError> {
    let Some(path) = &cli.limits_file else {
        if cli.limits_poll_interval.is_some() {
            return Err(ConfigError::PollWithoutLimitsFile);
        }
        return Ok((Policies::uniform(default), None));
    };
    let poll_interval = cli.limits_poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
    if poll_interval < Duration::from_millis(100) {
        return Err(ConfigError::LimitsPollInterval(poll_interval));
    }
    let (policies, loaded) = limits::load(path, &default)?;
    let file = LimitsFile { path: path.clone(), default_policy: default, poll_interval, loaded };
    Ok((policies, Some(file)))
}

/// `ratelimitd fingerprint`: the fingerprint of the key read from `input` (one line;
/// the line break is not part of the key), under the configured secret.
pub fn fingerprint(cli: &Cli, input: &str) -> Result<String, ConfigError> {
    let secret = read_secret(cli)?.ok_or(ConfigError::FingerprintSecret)?;
    let key = input.strip_suffix('\n').unwrap_or(input);
    let key = key.strip_suffix('\r').unwrap_or(key);
    if key.is_empty() || key.len() > MAX_KEY_ID_BYTES {
        let reason = format!("expected one API key of 1 to {MAX_KEY_ID_BYTES} bytes on stdin, got {}", key.len());
        return Err(ConfigError::FingerprintInput(reason));
    }
    Ok(Fingerprinter::new(&secret).fingerprint(key).to_string())
}

/// Where Redis is: `--redis-url`, `--redis-cluster-nodes` or `--redis-sentinels` (clap
/// lets at most one through); every URL must be redis:// or rediss://.
fn redis_endpoint(cli: &Cli) -> Result<Option<RedisEndpoint>, ConfigError> {
    let check = |flag: &'static str, urls: &[String]| {
        let valid = urls.iter().all(|url| url.starts_with("redis://") || url.starts_with("rediss://"));
        if !valid {
            return Err(ConfigError::RedisUrlOf(flag));
        }
        for url in urls {
            // redis-rs's message says what is wrong (its kind), never the URL.
            redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|e| ConfigError::RedisUrlParse(flag, format!("{:?}", e.kind())))?;
        }
        Ok(())
    };
    if let Some(url) = &cli.redis_url {
        check("--redis-url", std::slice::from_ref(url))?;
        return Ok(Some(RedisEndpoint::Url(url.clone())));
    }
    if !cli.redis_cluster_nodes.is_empty() {
        check("--redis-cluster-nodes", &cli.redis_cluster_nodes)?;
        return Ok(Some(RedisEndpoint::Cluster(cli.redis_cluster_nodes.clone())));
    }
    if !cli.redis_sentinels.is_empty() {
        check("--redis-sentinels", &cli.redis_sentinels)?;
        let master = cli.redis_sentinel_master.clone().unwrap_or_default();
        if master.is_empty() {
            return Err(ConfigError::SentinelMaster);
        }
        return Ok(Some(RedisEndpoint::Sentinel { master, sentinels: cli.redis_sentinels.clone() }));
    }
    Ok(None)
}

fn read_redis_file(path: &Option<std::path::PathBuf>, flag: &'static str) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    std::fs::read(path).map(Some).map_err(|source| ConfigError::RedisFile {
        flag,
        path: path.display().to_string(),
        source,
    })
}

/// The CA and client certificate for rediss://; refused with redis://, where they would
/// silently do nothing.
fn redis_tls(cli: &Cli, rediss: bool) -> Result<Option<RedisTls>, ConfigError> {
    if !rediss {
        if cli.redis_ca_file.is_some() {
            return Err(ConfigError::RedisTlsOption("--redis-ca-file"));
        }
        if cli.redis_client_cert.is_some() {
            return Err(ConfigError::RedisTlsOption("--redis-client-cert"));
        }
        return Ok(None);
    }
    let ca = read_redis_file(&cli.redis_ca_file, "--redis-ca-file")?;
    let cert = read_redis_file(&cli.redis_client_cert, "--redis-client-cert")?;
    let key = read_redis_file(&cli.redis_client_key, "--redis-client-key")?;
    Ok(Some(RedisTls { ca, client: cert.zip(key) }))
}

fn tls_files(cli: &Cli) -> Result<Option<TlsFiles>, ConfigError> {
    let read = |flag: &'static str, path: &std::path::Path| {
        let pem = std::fs::read(path).map_err(|source| ConfigError::TlsFile {
            flag,
            path: path.display().to_string(),
            source,
        })?;
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(ConfigError::NotPem { flag, path: path.display().to_string() });
        }
        Ok(pem)
    };
    let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) else { return Ok(None) };
    let client_ca = cli.tls_client_ca.as_ref().map(|ca| read("--tls-client-ca", ca)).transpose()?;
    Ok(Some(TlsFiles { cert: read("--tls-cert", cert)?, key: read("--tls-key", key)?, client_ca }))
}

fn throttle_options(cli: &Cli) -> Result<ThrottleOptions, ConfigError> {
    if cli.throttled_interval < Duration::from_secs(1) {
        return Err(ConfigError::ThrottledInterval(cli.throttled_interval));
    }
    let fraction = cli.near_limit_fraction;
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(ConfigError::NearLimitFraction(fraction));
    }
    Ok(ThrottleOptions {
        top_k: cli.throttled_top_k.into(),
        interval: cli.throttled_interval,
        near_limit_fraction: fraction,
    })
}

fn read_secret(cli: &Cli) -> Result<Option<Vec<u8>>, ConfigError> {
    let secret = match (&cli.fingerprint_secret, &cli.fingerprint_secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|source| ConfigError::SecretFile { path: path.display().to_string(), source })?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if secret.is_empty() {
        return Err(ConfigError::EmptySecret);
    }
    Ok(Some(secret.into_bytes()))
}

#[cfg(test)]
mod tests;
