//! How the Redis store reaches Redis: a deadpool-redis pool per topology (one server,
//! a Redis Cluster, or the master Sentinel names); the store sees one multiplexed
//! [`Conn`] either way.

use deadpool_redis::{PoolConfig, Runtime};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelServerType;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, TlsCertificates, Value};

use super::options::{RedisEndpoint, RedisOptions};
use crate::store::StoreError;

#[derive(Clone)]
pub(super) enum Pools {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

/// A connection checked out of its pool, held by a store lane.
pub(super) enum Pooled {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
    Sentinel(deadpool_redis::sentinel::Connection),
}

/// A multiplexed connection of any topology: clones share it and pipeline their calls.
#[derive(Clone)]
pub(super) enum Conn {
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Multiplexed(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Multiplexed(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Multiplexed(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Pools {
    pub(super) fn new(options: &RedisOptions, config: PoolConfig) -> Result<Self, StoreError> {
        let invalid = |e: RedisError| StoreError::Failed(format!("invalid Redis configuration: {e}"));
        let built = |e: deadpool_redis::BuildError| StoreError::Failed(format!("invalid Redis configuration: {e}"));
        Ok(match &options.endpoint {
            RedisEndpoint::Url(url) => {
                // Every call is bounded by --redis-timeout (RedisStore::bounded): redis-rs's own
                // response timeout (500 ms by default) would only add a timer per call, and cut
                // off calls under a longer --redis-timeout.
                let connection = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                let manager =
                    deadpool_redis::Manager::new_with_config(single(url, options)?, connection).map_err(invalid)?;
                let pool = deadpool_redis::Pool::builder(manager).config(config).runtime(Runtime::Tokio1);
                Self::Single(pool.build().map_err(built)?)
            }
            RedisEndpoint::Cluster(nodes) => {
                let nodes = nodes.iter().map(|url| node(url, options)).collect::<Result<Vec<_>, _>>()?;
                let manager = deadpool_redis::cluster::Manager::new(nodes, false).map_err(invalid)?;
                let pool = deadpool_redis::cluster::Pool::builder(manager).config(config).runtime(Runtime::Tokio1);
                Self::Cluster(pool.build().map_err(built)?)
            }
            RedisEndpoint::Sentinel { master, sentinels } => {
                let sentinels = sentinels.iter().map(|url| parse(url)).collect::<Result<Vec<_>, _>>()?;
                // The master's credentials: the password file (sentinels carry theirs in their URLs).
                let node =
                    options.password.as_ref().map(|password| deadpool_redis::sentinel::SentinelNodeConnectionInfo {
                        tls_mode: None,
                        redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                            password: Some(password.clone()),
                            ..Default::default()
                        }),
                    });
                let server = SentinelServerType::Master.into();
                let manager =
                    deadpool_redis::sentinel::Manager::new(sentinels, master.clone(), node, server).map_err(invalid)?;
                let pool = deadpool_redis::sentinel::Pool::builder(manager).config(config).runtime(Runtime::Tokio1);
                Self::Sentinel(pool.build().map_err(built)?)
            }
        })
    }

    /// A connection, or why there is none: Redis refused us (a wrong password or user, a
    /// missing permission: [`StoreError::Rejected`], until an operator acts), or it cannot
    /// be reached now ([`StoreError::Unavailable`]).
    pub(super) async fn get(&self) -> Result<(Pooled, Conn), StoreError> {
        Ok(match self {
            Self::Single(pool) => {
                let pooled = pool.get().await.map_err(pool_error)?;
                let conn = Conn::Multiplexed(MultiplexedConnection::clone(&pooled));
                (Pooled::Single(pooled), conn)
            }
            Self::Cluster(pool) => {
                let pooled = pool.get().await.map_err(pool_error)?;
                let conn = Conn::Cluster(ClusterConnection::clone(&pooled));
                (Pooled::Cluster(pooled), conn)
            }
            Self::Sentinel(pool) => {
                let pooled = pool.get().await.map_err(pool_error)?;
                let conn = Conn::Multiplexed(MultiplexedConnection::clone(&pooled));
                (Pooled::Sentinel(pooled), conn)
            }
        })
    }
}

impl Pooled {
    /// Takes the connection out of its pool for good: a connection given up on (timed
    /// out, broken, or to a server that was demoted) must not be recycled, since a
    /// demoted master still answers the pool's PING.
    pub(super) fn detach(self) {
        match self {
            Self::Single(conn) => drop(deadpool_redis::Connection::take(conn)),
            Self::Cluster(conn) => drop(deadpool_redis::cluster::Connection::take(conn)),
            Self::Sentinel(conn) => drop(deadpool_redis::sentinel::Connection::take(conn)),
        }
    }
}

fn pool_error(e: deadpool_redis::PoolError) -> StoreError {
    match e {
        deadpool_redis::PoolError::Backend(e) if refused(&e) => StoreError::Rejected(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

/// Whether Redis refused the connection (AUTH or the first command) for a reason that will
/// not pass by itself.
fn refused(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// Parses a URL; errors never show it (it may hold a password).
fn parse(url: &str) -> Result<ConnectionInfo, StoreError> {
    url.into_connection_info().map_err(|e| StoreError::Failed(format!("a Redis URL does not parse ({:?})", e.kind())))
}

/// A cluster node: its URL with the password file applied.
fn node(url: &str, options: &RedisOptions) -> Result<ConnectionInfo, StoreError> {
    let mut info = parse(url)?;
    if let Some(password) = &options.password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    Ok(info)
}

/// The single server: its URL, the password file, and the TLS files.
fn single(url: &str, options: &RedisOptions) -> Result<ConnectionInfo, StoreError> {
    let info = node(url, options)?;
    let Some(tls) = &options.tls else { return Ok(info) };
    let certificates = TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
        root_cert: tls.ca.clone(),
    };
    let client = redis::Client::build_with_tls(info, certificates)
        .map_err(|e| StoreError::Failed(format!("the Redis TLS files are not usable: {e}")))?;
    Ok(client.get_connection_info().clone())
}
