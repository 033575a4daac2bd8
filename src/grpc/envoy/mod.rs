//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, so that Envoy and
//! the gateways built on it (Istio, Contour, Emissary, Gloo) use ratelimitd as they
//! would Envoy's ratelimit service, with the same exact limits as our own API.
//!
//! Each descriptor that has an entry named by `--envoy-api-key-entry` (default
//! `api_key`) checks that entry's value as the key id; other entries are ignored, and
//! descriptors naming the same key are one check. A descriptor without that entry is
//! not limited (OK, no current limit). The request's `domain` does not change the key,
//! and a descriptor's `limit` override is ignored, so a gateway cannot raise a limit.
//!
//! Envoy lets a request through when this service answers an error (its
//! `failure_mode_deny` is off by default), so every request that decodes gets a
//! decision, never an error: a key that cannot be valid, a cost that can never fit, or
//! more than [`MAX_KEYS`] keys is OVER_LIMIT, and then nothing is counted for any key
//! of the request (see [`refusal`] for the metric and the log line).

pub mod pb;
mod refusal;
mod respond;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use self::pb::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse, RateLimitService};
use self::refusal::Refusal;
use self::respond::{Target, respond};
use super::to_status;
use crate::domain::{InvalidRequest, Mode, Policies};
use crate::limiter::multi::KeyChecks;
use crate::limiter::{CheckError, Checked, Limiter};
use crate::store::Store;

pub use self::pb::RateLimitServiceServer;

/// The most distinct keys one request may name: each is a store call, and no gateway
/// sends more than a few.
pub const MAX_KEYS: usize = 16;
/// The largest request the service decodes. Envoy sends its descriptors' entries from
/// the request's headers (60 KiB at most by default), so this takes dozens of
/// descriptors each repeating the longest header.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub struct EnvoyRateLimitService<S> {
    limiter: Arc<Limiter<S>>,
    /// The descriptor entry whose value is the API key.
    key_entry: Arc<[u8]>,
}

impl<S> EnvoyRateLimitService<S> {
    pub fn new(limiter: Arc<Limiter<S>>, key_entry: &str) -> Self {
        for refusal in Refusal::ALL {
            crate::metrics::envoy_refusal_reason(refusal.as_str());
        }
        Self { limiter, key_entry: key_entry.as_bytes().into() }
    }
}

#[tonic::async_trait]
impl<S: Store> RateLimitService for EnvoyRateLimitService<S> {
    #[tracing::instrument(level = "debug", skip_all, fields(key = tracing::field::Empty))]
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let deadline = super::caller_deadline(&request);
        let request = request.into_inner();
        // Every descriptor is checked, against one snapshot of the policies, before any
        // is counted.
        let policies = self.limiter.policies().current();
        let (mut keys, mut targets, mut refused) = (KeyChecks::default(), Vec::new(), false);
        // The raw key ids already taken (at most MAX_KEYS): a repeat is never refused.
        let mut seen: Vec<&[u8]> = Vec::new();
        for descriptor in &request.descriptors {
            let target = match self.ask(&policies, descriptor, request.hits_addend, &mut seen) {
                Asked::Unlimited => Target::Unlimited,
                Asked::Refused(why, policy) => {
                    why.note();
                    refused = true;
                    Target::Refused(policy)
                }
                Asked::Check(check, mode) => Target::Key(keys.add(check, mode)),
            };
            targets.push(target);
        }
        if refused {
            // Envoy rejects the whole request: no key of it may count it.
            keys.peek_only();
        }
        let verdicts =
            crate::sync::CallerDeadline::scope(deadline, self.limiter.decide_all(&keys)).await.map_err(to_status)?;
        Ok(Response::new(respond(&targets, &verdicts)))
    }
}

/// What a descriptor asks for.
enum Asked {
    Unlimited,
    Refused(Refusal, Arc<crate::domain::Policy>),
    Check(Checked, Mode),
}

impl<S: Store> EnvoyRateLimitService<S> {
    /// What `descriptor` asks, given the key ids the request named before it.
    fn ask<'a>(
        &self,
        policies: &Policies,
        descriptor: &'a RateLimitDescriptor,
        hits: u32,
        seen: &mut Vec<&'a [u8]>,
    ) -> Asked {
        let Some(entry) = descriptor.entries.iter().find(|entry| *entry.key == *self.key_entry) else {
            return Asked::Unlimited;
        };
        let default = || policies.default.clone();
        let Ok(key_id) = std::str::from_utf8(&entry.value) else {
            return Asked::Refused(Refusal::KeyNotUtf8, default());
        };
        if !seen.contains(&entry.value.as_slice()) {
            if seen.len() >= MAX_KEYS {
                // Not fingerprinted: past the limit, a new key is refused whatever it is.
                return Asked::Refused(Refusal::TooManyKeys, default());
            }
            seen.push(&entry.value);
        }
        let (cost, mode) = match &descriptor.hits_addend {
            // A negative hit would give units back; only time frees capacity, so the
            // descriptor is answered as a check that counts nothing.
            _ if descriptor.is_negative_hits => {
                Refusal::NegativeHits.note();
                (1, Mode::Peek)
            }
            // A descriptor's own hits_addend of 0 asks without counting (as Envoy's ratelimit).
            Some(0) => (1, Mode::Peek),
            Some(addend) => (u32::try_from(*addend).unwrap_or(u32::MAX), Mode::Consume),
            None => (hits, Mode::Consume),
        };
        match self.limiter.validate_in(policies, key_id, cost) {
            Ok(check) => Asked::Check(check, mode),
            Err(CheckError::Invalid(InvalidRequest::CostNeverFits { .. })) => {
                let policy =
                    self.limiter.validate_in(policies, key_id, 1).map_or_else(|_| default(), |c| c.policy().clone());
                Asked::Refused(Refusal::CostNeverFits, policy)
            }
            Err(CheckError::Invalid(InvalidRequest::EmptyKey)) => Asked::Refused(Refusal::KeyEmpty, default()),
            Err(_) => Asked::Refused(Refusal::KeyTooLong, default()),
        }
    }
}
