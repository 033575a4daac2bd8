//! `grpc.health.v1.Health`, following the store (SERVING only while it answers) and
//! shutdown (NOT_SERVING once draining starts), and server reflection, so generic
//! gRPC tools work without the proto files.

use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::pb;
use super::pb::rate_limiter_server::RateLimiterServer;
use super::service::RateLimiterService;
use crate::store::MemoryStore;

/// Sets the status of the whole server ("") and of `ratelimit.v1.RateLimiter`.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// The handle that sets the status, and the health service to add to the server.
    pub fn new() -> (Self, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>)
    {
        let (reporter, service) = tonic_health::server::health_reporter();
        (Self { reporter }, service)
    }

    pub async fn set(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        // The service name does not depend on the store type the server is generic over.
        let name = <RateLimiterServer<RateLimiterService<MemoryStore>> as NamedService>::NAME;
        for service in ["", name] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// Server reflection (v1) over our protos and the health protocol.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    String,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())
}
