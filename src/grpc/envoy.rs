//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, so that Envoy and
//! the gateways built on it (Istio, Contour, Emissary, Gloo) use ratelimitd as they
//! would Envoy's ratelimit service, with the same exact limits as our own API.
//!
//! Each descriptor that has an entry named by `--envoy-api-key-entry` (default
//! `api_key`) checks that entry's value as the key id; other entries are ignored, and
//! descriptors naming the same key are one check. A descriptor without that entry is
//! not limited (OK, no current limit).
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
use crate::domain::{InvalidRequest, Mode, Policies, Policy, Window};
use crate::limiter::multi::KeyChecks;
use crate::limiter::{CheckError, Checked, Limiter, Verdict};
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
        // Every descriptor is checked, against one snapshot of the policies, before any
        // is counted: bad input changes nothing.
        let policies = self.limiter.policies().current();
        let (mut keys, mut targets) = (KeyChecks::default(), Vec::with_capacity(request.descriptors.len()));
        for (i, descriptor) in request.descriptors.iter().enumerate() {
            let target = match self.validate(&policies, i, descriptor, request.hits_addend)? {
                Asked::Unlimited => Target::Unlimited,
                Asked::NeverFits(policy) => Target::NeverFits(policy),
                Asked::Check(check, mode) => Target::Key(keys.add(check, mode)),
            };
            targets.push(target);
        }
        let verdicts = self.limiter.decide_all(&keys).await.map_err(to_status)?;
        Ok(Response::new(respond(&targets, &verdicts)))
    }
}

/// What a descriptor asks for.
enum Asked {
    /// No API key entry: not limited.
    Unlimited,
    /// A cost above the key's limit: it can never fit, so it is over the limit, and
    /// nothing is counted.
    NeverFits(Arc<Policy>),
    Check(Checked, Mode),
}

/// Where a descriptor's status comes from.
enum Target {
    Unlimited,
    NeverFits(Arc<Policy>),
    /// The answer of the request's i-th distinct key.
    Key(usize),
}

impl<S: Store> EnvoyRateLimitService<S> {
    fn validate(
        &self,
        policies: &Policies,
        i: usize,
        descriptor: &RateLimitDescriptor,
        hits: u32,
    ) -> Result<Asked, Status> {
        let Some(entry) = descriptor.entries.iter().find(|entry| entry.key == *self.key_entry) else {
            return Ok(Asked::Unlimited);
        };
        if descriptor.is_negative_hits {
            let reason = "is_negative_hits is not supported: only time frees capacity";
            return Err(Status::invalid_argument(format!("descriptors[{i}]: {reason}")));
        }
        // A descriptor's own hits_addend of 0 asks without counting (as Envoy's ratelimit).
        let (cost, mode) = match &descriptor.hits_addend {
            Some(addend) if addend.value == 0 => (1, Mode::Peek),
            Some(addend) => (
                u32::try_from(addend.value).map_err(|_| {
                    Status::invalid_argument(format!("descriptors[{i}].hits_addend: {} is too large", addend.value))
                })?,
                Mode::Consume,
            ),
            None => (hits, Mode::Consume),
        };
        match self.limiter.validate_in(policies, &entry.value, cost) {
            Ok(check) => Ok(Asked::Check(check, mode)),
            Err(CheckError::Invalid(InvalidRequest::CostNeverFits { .. })) => {
                // Behind Envoy a rejected call would let the request through
                // (failure_mode_deny is off by default): a cost that can never fit is over.
                let check = self.limiter.validate_in(policies, &entry.value, 1).map_err(to_status)?;
                Ok(Asked::NeverFits(check.policy().clone()))
            }
            Err(CheckError::Invalid(invalid)) => Err(Status::invalid_argument(format!(
                "descriptors[{i}]: the value of entry \"{}\" {}",
                self.key_entry,
                invalid.reason()
            ))),
            Err(other) => Err(to_status(other)),
        }
    }
}

/// One status per descriptor, in order; OVER_LIMIT overall if any descriptor is.
/// The headers are those of the most constrained key: the denied one with the longest
/// wait, else the one with the fewest units left (shadow policies send none).
fn respond(targets: &[Target], verdicts: &[Verdict]) -> RateLimitResponse {
    let statuses: Vec<DescriptorStatus> = targets
        .iter()
        .map(|target| match target {
            Target::Key(i) => status(&verdicts[*i]),
            Target::NeverFits(policy) => never_fits(policy),
            Target::Unlimited => unlimited(),
        })
        .collect();
    let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
    let tightest = verdicts.iter().filter(|v| !v.policy.shadow).min_by_key(|v| {
        let d = &v.decision;
        (d.allowed, std::cmp::Reverse(d.retry_after_ms), d.remaining)
    });
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

fn never_fits(policy: &Policy) -> DescriptorStatus {
    let windows = policy.limits.windows();
    let tightest = windows.iter().min_by_key(|w| w.limit()).unwrap_or(&windows[0]);
    DescriptorStatus {
        code: Code::OverLimit as i32,
        current_limit: Some(rate_limit(policy, tightest)),
        ..Default::default()
    }
}

fn rate_limit(policy: &Policy, window: &Window) -> RateLimit {
    RateLimit {
        name: policy.name.to_string(),
        requests_per_unit: window.limit(),
        unit: unit(window.window_ms()) as i32,
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
        current_limit: Some(rate_limit(&verdict.policy, &window)),
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
