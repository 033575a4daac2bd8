//! Floor 5, the gRPC adapter: the generated code, the `RateLimiter` service, Envoy's
//! `RateLimitService`, health and reflection, and the one place where domain
//! decisions and errors become protobuf messages and statuses.

pub mod admin;
pub mod codec;
pub mod envoy;
mod health;
mod service;

pub use envoy::EnvoyRateLimitService;
pub use health::{Health, probe, reflection};
pub use service::RateLimiterService;

/// Code generated from `proto/ratelimit/v1/ratelimit.proto`.
pub mod pb {
    tonic::include_proto!("ratelimit.v1");

    /// The encoded descriptors of our protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ratelimit_descriptor");
}

use tonic::Status;

use crate::domain::FailureMode;
use crate::limiter::{CheckError, Verdict, headers};

impl From<Verdict> for pb::CheckAndConsumeResponse {
    fn from(verdict: Verdict) -> Self {
        let headers = headers::for_verdict(&verdict)
            .into_iter()
            .map(|(name, value)| pb::Header { name: name.to_owned(), value })
            .collect();
        let d = verdict.decision;
        Self {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after_ms: d.retry_after_ms,
            reset_after_ms: d.reset_after_ms,
            decided_at_ms: d.decided_at_ms,
            headers,
            policy: verdict.policy.name.to_string(),
            shadow_denied: verdict.shadow_denied,
            fallback: match verdict.fallback {
                None => pb::Fallback::None,
                Some(FailureMode::Open) => pb::Fallback::Open,
                Some(FailureMode::Closed) => pb::Fallback::Closed,
                Some(FailureMode::Local) => pb::Fallback::Local,
            } as i32,
        }
    }
}

/// Bad input is the caller's to fix (INVALID_ARGUMENT); a store that is down or
/// slow may recover (UNAVAILABLE, worth a retry with backoff); anything else is ours.
/// The caller's deadline (its `grpc-timeout`; Envoy sends its filter's `timeout`), for the
/// store calls made while serving it.
pub fn caller_deadline<T>(request: &tonic::Request<T>) -> Option<std::time::Instant> {
    let value = request.metadata().get("grpc-timeout")?;
    crate::sync::CallerDeadline::from_grpc_timeout(value.as_bytes(), std::time::Instant::now())
}

pub fn to_status(error: CheckError) -> Status {
    match &error {
        CheckError::Invalid(_) => Status::invalid_argument(error.to_string()),
        CheckError::Store(e) if e.is_transient() => Status::unavailable(error.to_string()),
        CheckError::Store(_) => Status::internal(error.to_string()),
    }
}
