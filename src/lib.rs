//! ratelimitd: an exact, shared sliding-window rate limiter for API keys.
//!
//! The crate is built in floors; each imports only the floors below it (`tests/layers.rs`
//! checks this), so a check runs downhill from the gRPC call to the store:
//! 1. [`domain`]: policies, decisions, the in-process history, fingerprints, validation, the
//!    exactness oracle. Plain data, no gRPC or Redis types.
//! 2. [`metrics`]: metric names and the recording helpers, the throttled-keys sketch.
//! 3. [`store`]: the [`store::Store`] trait, the in-process store, and the Redis store
//!    (one atomic call of `lua/sliding_window.lua` decides a batch of checks).
//! 4. [`limiter`]: the service: validation, policy lookup, the deny cache, the circuit
//!    breaker, failure modes, all-or-nothing decisions over several keys, housekeeping.
//! 5. Adapters: [`grpc`] (our API, Envoy's, health, reflection), [`http`] (JSON and
//!    forward authentication for gateways without gRPC) and [`config`] (the command line,
//!    the limits file and its reload).
//! 6. [`server`]: worker threads, the gRPC router, the `/metrics` endpoint, draining.
//! 7. [`app`]: wiring; `run` takes bound listeners and a shutdown future, so tests
//!    serve on port 0 and stop on demand.
//!
//! The algorithm and the guarantees are described once, in `docs/design.md`.

pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod limiter;
pub mod metrics;
pub mod server;
pub mod store;
mod sync;
