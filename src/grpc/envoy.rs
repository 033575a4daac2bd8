//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, so that Envoy and
//! the gateways built on it (Istio, Contour, Emissary, Gloo) use ratelimitd as they
//! would Envoy's ratelimit service, with the same exact limits as our own API.
//!
//! Each descriptor that has an entry named by `--envoy-api-key-entry` (default
//! `api_key`) is one check of that entry's value as the key id; other entries are
//! ignored. A descriptor without that entry is not limited (OK, no current limit).
//! The request's `domain` is accepted as given and does not change the key: a key is
//! counted once whatever the domain or API it arrives through. Limits come only from
//! ratelimitd's policies: a descriptor's `limit` override is ignored, so a gateway
//! cannot raise a key's limit.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tonic::{Request, Response, Status};

pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

use super::{headers, to_status};
use crate::limiter::{CheckError, Checked, Limiter, Mode, Verdict};
use crate::store::Store;

/// The most descriptors one request may carry: each is a store call.
pub const MAX_DESCRIPTORS: usize = 16;

pub struct EnvoyRateLimitService<S> {
    limiter: Arc<Limiter<S>>,
    /// The descriptor entry whose value is the API key.
    key_entry: Arc<str>,
}

impl<S> EnvoyRateLimitService<S> {
    pub fn new(limiter: Arc<Limiter<S>>, key_entry: &str) -> Self {
        Self { limiter, key_entry: key_entry.into() }
    }
}

#[tonic::async_trait]
impl<S: Store> RateLimitService for EnvoyRateLimitService<S> {
    #[tracing::instrument(level = "debug", skip_all, fields(key = tracing::field::Empty))]
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        if request.descriptors.len() > MAX_DESCRIPTORS {
            let message =
                format!("descriptors: {} given; at most {MAX_DESCRIPTORS} are allowed", request.descriptors.len());
            return Err(Status::invalid_argument(message));
        }
        // Every descriptor is checked before any is counted: bad input changes nothing.
        let mut checked = Vec::with_capacity(request.descriptors.len());
        for (i, descriptor) in request.descriptors.iter().enumerate() {
            checked.push(self.validate(i, descriptor, request.hits_addend)?);
        }
        let mut verdicts = Vec::with_capacity(checked.len());
        for check in checked {
            verdicts.push(match check {
                Some(check) => Some(self.limiter.decide(check, Mode::Consume).await.map_err(to_status)?),
                None => None,
            });
        }
        Ok(Response::new(respond(&verdicts)))
    }
}

impl<S: Store> EnvoyRateLimitService<S> {
    /// The descriptor's check, or `None` if it names no API key.
    fn validate(&self, i: usize, descriptor: &RateLimitDescriptor, hits: u32) -> Result<Option<Checked>, Status> {
        let Some(entry) = descriptor.entries.iter().find(|entry| entry.key == *self.key_entry) else {
            return Ok(None);
        };
        if descriptor.is_negative_hits {
            let reason = "is_negative_hits is not supported: only time frees capacity";
            return Err(Status::invalid_argument(format!("descriptors[{i}]: {reason}")));
        }
        let cost = match &descriptor.hits_addend {
            Some(addend) => u32::try_from(addend.value).map_err(|_| {
                Status::invalid_argument(format!("descriptors[{i}].hits_addend: {} is too large", addend.value))
            })?,
            None => hits,
        };
        self.limiter.validate(&entry.value, cost).map(Some).map_err(|e| match e {
            CheckError::InvalidArgument { field: "key_id", reason } => Status::invalid_argument(format!(
                "descriptors[{i}]: the value of entry \"{}\" {reason}",
                self.key_entry
            )),
            CheckError::InvalidArgument { field: "cost", reason } => {
                Status::invalid_argument(format!("descriptors[{i}]: hits_addend {reason}"))
            }
            other => to_status(other),
        })
    }
}

/// One status per descriptor, in order; OVER_LIMIT overall if any descriptor is.
/// The headers are those of the most constrained descriptor: the first denied one,
/// else the one with the fewest units left.
fn respond(verdicts: &[Option<Verdict>]) -> RateLimitResponse {
    let statuses: Vec<DescriptorStatus> = verdicts.iter().map(|v| v.as_ref().map_or_else(unlimited, status)).collect();
    let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
    let tightest = verdicts.iter().flatten().min_by_key(|v| (v.decision.allowed, v.decision.remaining));
    let response_headers_to_add = tightest
        .map(headers::for_verdict)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| HeaderValue { key: name.to_owned(), value, ..Default::default() })
        .collect();
    RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        response_headers_to_add,
        ..Default::default()
    }
}

fn unlimited() -> DescriptorStatus {
    DescriptorStatus { code: Code::Ok as i32, ..Default::default() }
}

fn status(verdict: &Verdict) -> DescriptorStatus {
    let d = &verdict.decision;
    let window = verdict.policy.limits.windows()[usize::from(d.window)];
    let reset = std::time::Duration::from_millis(d.window_reset_ms);
    DescriptorStatus {
        code: if d.allowed { Code::Ok } else { Code::OverLimit } as i32,
        current_limit: Some(RateLimit {
            name: verdict.policy.name.to_string(),
            requests_per_unit: window.limit(),
            unit: unit(window.window_ms()) as i32,
        }),
        limit_remaining: d.remaining,
        duration_until_reset: Some(ProtoDuration {
            seconds: reset.as_secs() as i64,
            nanos: reset.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

/// Envoy's unit for a window, UNKNOWN for windows that are not one unit long (the
/// headers and our own API still carry the exact window).
fn unit(window_ms: u64) -> Unit {
    match window_ms {
        1_000 => Unit::Second,
        60_000 => Unit::Minute,
        3_600_000 => Unit::Hour,
        86_400_000 => Unit::Day,
        604_800_000 => Unit::Week,
        _ => Unit::Unknown,
    }
}
