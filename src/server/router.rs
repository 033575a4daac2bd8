//! The gRPC router every worker serves: our API, Envoy's, health and reflection, with
//! the limits on what one client may send.

use std::sync::Arc;
use std::time::Duration;

use tonic::service::Routes;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::ServeError;
use super::calls::CountCalls;
use crate::config::{Config, TlsFiles};
use crate::grpc::envoy::{self, RateLimitServiceServer};
use crate::grpc::pb::rate_limiter_server::RateLimiterServer;
use crate::grpc::{EnvoyRateLimitService, RateLimiterService, reflection};
use crate::limiter::Limiter;
use crate::store::Store;

/// Our API's requests are a key of at most 256 bytes and a cost: anything near this is abuse.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Concurrent calls one HTTP/2 connection may have open.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// HTTP/2 pings find connections whose client vanished (their streams are then freed).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server settings and the services, ready to be served by each worker.
pub struct Router {
    pub builder: Server<tower_layer::Stack<CountCalls, tower_layer::Identity>>,
    pub routes: Routes,
}

impl Router {
    pub fn new<S: Store>(
        limiter: Arc<Limiter<S>>,
        config: &Config,
        health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) -> Result<Self, ServeError> {
        let (reflection, reflection_v1alpha) = reflection().map_err(ServeError::Reflection)?;
        let envoy =
            RateLimitServiceServer::new(EnvoyRateLimitService::new(limiter.clone(), &config.envoy_api_key_entry))
                .max_decoding_message_size(envoy::MAX_MESSAGE_BYTES);
        let service =
            RateLimiterServer::new(RateLimiterService::new(limiter)).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut builder = Server::builder()
            .layer(CountCalls)
            .timeout(config.request_timeout)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
        if let Some(tls) = &config.tls {
            builder = builder.tls_config(tls_config(tls)).map_err(ServeError::Tls)?;
        }
        let routes = Routes::new(service)
            .add_service(envoy)
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_v1alpha);
        Ok(Self { builder, routes })
    }
}

pub(super) fn tls_config(tls: &TlsFiles) -> ServerTlsConfig {
    let config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
    match &tls.client_ca {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}
