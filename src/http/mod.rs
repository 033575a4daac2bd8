//! Floor 5, the HTTP adapter, for gateways that do not speak gRPC (`--http-listen`):
//! - `POST /v1/check` and `POST /v1/peek`: JSON in (`{"key_id": "...", "cost": 1}`), the
//!   decision out as JSON with the rate-limit headers; 429 when denied, 400 for bad input;
//! - `GET /v1/auth`, forward authentication (nginx `auth_request`, Traefik `ForwardAuth`):
//!   the key from the `--http-key-header` header, cost 1; 200 with the rate-limit headers
//!   when allowed, and when denied `deny_status` (429 by default; nginx's `auth_request`
//!   passes on only 2xx, 401 and 403, so its config asks for 403 and turns it into 429).
//!
//! As on Envoy's API, forward authentication answers every request with a decision: a
//! request without the header is not limited, and a key that cannot be valid is denied.

mod json;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};

use self::json::{Answer, CheckBody, Problem};
use crate::domain::Mode;
use crate::limiter::{CheckError, Limiter, Verdict, headers};
use crate::store::Store;

/// Our requests are a key of at most 256 bytes and a cost: anything near this is abuse.
const MAX_BODY_BYTES: usize = 16 * 1024;

struct Service<S> {
    limiter: Arc<Limiter<S>>,
    key_header: HeaderName,
}

/// The HTTP API's routes over `limiter`; `key_header` names the API key for `/v1/auth`.
pub fn router<S: Store>(limiter: Arc<Limiter<S>>, key_header: HeaderName) -> Router {
    let service = Arc::new(Service { limiter, key_header });
    Router::new()
        .route("/v1/check", post(check::<S>))
        .route("/v1/peek", post(peek::<S>))
        .route("/v1/auth", any(auth::<S>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

async fn check<S: Store>(State(service): State<Arc<Service<S>>>, body: Bytes) -> Response {
    decide(&service, &body, Mode::Consume).await
}

async fn peek<S: Store>(State(service): State<Arc<Service<S>>>, body: Bytes) -> Response {
    decide(&service, &body, Mode::Peek).await
}

#[tracing::instrument(level = "debug", skip_all, fields(key = tracing::field::Empty))]
async fn decide<S: Store>(service: &Service<S>, body: &[u8], mode: Mode) -> Response {
    let request = match CheckBody::parse(body) {
        Ok(request) => request,
        Err(problem) => return problem.into_response(),
    };
    let limiter = &service.limiter;
    let verdict = match limiter.validate(&request.key_id, request.cost) {
        Ok(checked) => limiter.decide(checked, mode).await,
        Err(e) => Err(e),
    };
    match verdict {
        Ok(verdict) => {
            let status = if verdict.decision.allowed { StatusCode::OK } else { StatusCode::TOO_MANY_REQUESTS };
            with_headers(status, &verdict, Answer::from(&verdict).into_response())
        }
        Err(error) => Problem::from(error).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct AuthQuery {
    deny_status: Option<u16>,
}

/// Forward authentication: always a decision, never an error a gateway could pass.
#[tracing::instrument(level = "debug", skip_all, fields(key = tracing::field::Empty))]
async fn auth<S: Store>(
    State(service): State<Arc<Service<S>>>,
    Query(query): Query<AuthQuery>,
    request_headers: HeaderMap,
) -> Response {
    let deny = match query.deny_status {
        None => StatusCode::TOO_MANY_REQUESTS,
        Some(401) => StatusCode::UNAUTHORIZED,
        Some(403) => StatusCode::FORBIDDEN,
        Some(429) => StatusCode::TOO_MANY_REQUESTS,
        Some(other) => {
            let message = format!("deny_status: {other} is not one of 401, 403 or 429");
            return Problem::invalid(message).into_response();
        }
    };
    let Some(value) = request_headers.get(&service.key_header) else {
        // No key: not limited (authentication rejects such requests elsewhere).
        return StatusCode::OK.into_response();
    };
    let limiter = &service.limiter;
    let checked = value.to_str().map_err(|_| ()).and_then(|key| limiter.validate(key, 1).map_err(|_| ()));
    let Ok(checked) = checked else {
        // Not UTF-8 (obs-text), empty or over 256 bytes: no API key is; counted nothing.
        tracing::debug!("forward auth: a key that cannot be valid, denied");
        return deny.into_response();
    };
    match limiter.decide(checked, Mode::Consume).await {
        Ok(verdict) if verdict.decision.allowed => with_headers(StatusCode::OK, &verdict, ().into_response()),
        Ok(verdict) => with_headers(deny, &verdict, ().into_response()),
        Err(_) => deny.into_response(),
    }
}

/// `response` with `status` and the verdict's RateLimit, RateLimit-Policy and Retry-After.
fn with_headers(status: StatusCode, verdict: &Verdict, mut response: Response) -> Response {
    *response.status_mut() = status;
    for (name, value) in headers::for_verdict(verdict) {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

impl From<CheckError> for Problem {
    fn from(error: CheckError) -> Self {
        match &error {
            CheckError::Invalid(_) => Problem::invalid(error.to_string()),
            CheckError::Store(e) if e.is_transient() => Problem::unavailable(error.to_string()),
            CheckError::Store(_) => Problem::internal(error.to_string()),
        }
    }
}
