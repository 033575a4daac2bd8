//! `ratelimit.v1.RateLimiter`: decodes the request, asks the limiter, encodes the decision.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::rate_limiter_server::RateLimiter;
use super::pb::{CheckAndConsumeRequest, CheckAndConsumeResponse, PeekRequest};
use super::{caller_deadline, to_status};
use crate::limiter::Limiter;
use crate::store::Store;
use crate::sync::CallerDeadline;

pub struct RateLimiterService<S> {
    limiter: Arc<Limiter<S>>,
}

impl<S> RateLimiterService<S> {
    pub fn new(limiter: Arc<Limiter<S>>) -> Self {
        Self { limiter }
    }
}

#[tonic::async_trait]
impl<S: Store> RateLimiter for RateLimiterService<S> {
    /// The span carries the key's fingerprint (recorded by the limiter), never the key.
    /// It is at debug level: a span per call at info level costs measurable time.
    #[tracing::instrument(level = "debug", skip_all, fields(key = tracing::field::Empty, cost = request.get_ref().cost))]
    async fn check_and_consume(
        &self,
        request: Request<CheckAndConsumeRequest>,
    ) -> Result<Response<CheckAndConsumeResponse>, Status> {
        let deadline = caller_deadline(&request);
        let request = request.into_inner();
        let verdict = CallerDeadline::scope(deadline, self.limiter.check_and_consume(&request.key_id, request.cost));
        match verdict.await {
            Ok(verdict) => {
                let d = &verdict.decision;
                tracing::debug!(
                    allowed = d.allowed,
                    remaining = d.remaining,
                    shadow_denied = verdict.shadow_denied,
                    "decided"
                );
                Ok(Response::new(verdict.into()))
            }
            Err(error) => Err(to_status(error)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(key = tracing::field::Empty, cost = request.get_ref().cost))]
    async fn peek(&self, request: Request<PeekRequest>) -> Result<Response<CheckAndConsumeResponse>, Status> {
        let deadline = caller_deadline(&request);
        let request = request.into_inner();
        match CallerDeadline::scope(deadline, self.limiter.peek(&request.key_id, request.cost)).await {
            Ok(verdict) => Ok(Response::new(verdict.into())),
            Err(error) => Err(to_status(error)),
        }
    }
}
