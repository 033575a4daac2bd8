//! ratelimitd: an exact, shared sliding-window rate limiter for API keys.
//!
//! A tour, from the outside in:
//! - [`cli`] and [`config`]: the command line and the validated [`config::Config`];
//! - [`limits`] and [`reload`]: the limits file (policies, overrides by fingerprint)
//!   and its hot reload;
//! - [`app`]: wires a store, the limiter and the gRPC server; `run` takes a bound
//!   listener and a shutdown future, so tests serve on port 0 and stop on demand;
//! - [`grpc`]: the generated code, the `ratelimit.v1.RateLimiter` service, Envoy's
//!   `RateLimitService`, the rate-limit response headers, and the
//!   mapping of domain results to protobuf messages and gRPC statuses;
//! - [`limiter`]: the domain, with no gRPC or Redis types: policies, validation,
//!   fingerprints (the raw key never leaves this layer) and the ring algorithm;
//! - [`store`]: the `Store` trait, with the Redis store (atomic Lua script calls,
//!   `lua/sliding_window.lua`, each deciding a batch of checks one by one) and the
//!   in-process store;
//! - [`metrics`]: Prometheus names, the `/metrics` endpoint, the throttled-keys report;
//! - [`workers`]: the gRPC worker threads, one event loop each, and the acceptor
//!   that spreads connections over them;
//! - [`bench`]: the load generator behind the `ratelimitd-bench` binary.

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod limiter;
pub mod limits;
pub mod metrics;
pub mod reload;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod workers;

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex. A poisoned one still holds consistent data (nothing here
/// panics while changing guarded state), so it is used rather than failing every
/// later call.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
