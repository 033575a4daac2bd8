//! Counts gRPC calls by method and status (`ratelimitd_grpc_calls_total`), including calls
//! that never reach a handler: a message too large, a body that does not decode, an unknown
//! method. (A call cut off by `--request-timeout` is answered outside this layer, by tonic.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{Request, Response};

use crate::metrics;

/// The tower layer for tonic's server.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountCalls;

impl<S> tower_layer::Layer<S> for CountCalls {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
}

impl<S, B, R> tower_service::Service<Request<B>> for Counted<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = metrics::grpc_method(request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // An error is answered trailers-only, its status in the headers; a unary call that
            // answers a message ends with status OK in its trailers.
            let code = match response.headers().get("grpc-status") {
                Some(code) => code.to_str().ok().and_then(|c| c.parse::<i32>().ok()).unwrap_or(2),
                None => 0,
            };
            metrics::grpc_call(method, code);
            Ok(response)
        })
    }
}
