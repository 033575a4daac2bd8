//! The HTTP API's JSON: the request body, the decision, and the problem of a refused
//! request. Messages name the field and what was wrong, never the key nor the body.

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::domain::FailureMode;
use crate::limiter::Verdict;

/// `{"key_id": "...", "cost": 1}`; `cost` may be left out (1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckBody {
    pub(super) key_id: String,
    #[serde(default)]
    pub(super) cost: u32,
}

const SHAPE: &str = r#"the body must be a JSON object {"key_id": string, "cost": integer from 0 to 4294967295}"#;

impl CheckBody {
    /// The body, or a problem saying where it went wrong (serde's own message could
    /// quote a value, which may be the key).
    pub(super) fn parse(body: &[u8]) -> Result<Self, Problem> {
        serde_json::from_slice(body).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
                _ => "it is not valid JSON",
            };
            Problem::invalid(format!("{SHAPE}: {what} (line {}, column {})", e.line(), e.column()))
        })
    }
}

/// The decision, as `ratelimit.v1.CheckAndConsumeResponse` has it.
#[derive(Debug, Serialize)]
pub(super) struct Answer {
    allowed: bool,
    limit: u32,
    remaining: u32,
    retry_after_ms: u64,
    reset_after_ms: u64,
    decided_at_ms: u64,
    policy: String,
    shadow_denied: bool,
    /// `none`, or the failure mode that answered (`open`, `closed`, `local`).
    fallback: &'static str,
}

impl From<&Verdict> for Answer {
    fn from(verdict: &Verdict) -> Self {
        let d = &verdict.decision;
        Self {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after_ms: d.retry_after_ms,
            reset_after_ms: d.reset_after_ms,
            decided_at_ms: d.decided_at_ms,
            policy: verdict.policy.name.to_string(),
            shadow_denied: verdict.shadow_denied,
            fallback: verdict.fallback.map_or("none", FailureMode::as_str),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        json(StatusCode::OK, &self)
    }
}

/// A request the service refused: `{"error": "invalid_argument", "message": "..."}`.
#[derive(Debug, Serialize)]
pub(super) struct Problem {
    #[serde(skip)]
    status: StatusCode,
    error: &'static str,
    message: String,
}

impl Problem {
    pub(super) fn invalid(message: String) -> Self {
        Self { status: StatusCode::BAD_REQUEST, error: "invalid_argument", message }
    }

    pub(super) fn unavailable(message: String) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, error: "unavailable", message }
    }

    pub(super) fn internal(message: String) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, error: "internal", message }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        json(self.status, &self)
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
