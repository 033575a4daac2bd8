//! `grpc.health.v1.Health`, following the store (SERVING only while it answers) and
//! shutdown (NOT_SERVING once draining starts), and server reflection, so generic
//! gRPC tools work without the proto files.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::pb;

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
        for service in ["", pb::rate_limiter_server::SERVICE_NAME] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// Server reflection, both versions (grpcurl speaks v1, Python's grpcio-reflection
/// v1alpha), over every service the port answers: ours, Envoy's subset and health.
#[allow(clippy::type_complexity)]
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    String,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().map_err(|e| e.to_string())?;
    let v1alpha = builder().build_v1alpha().map_err(|e| e.to_string())?;
    Ok((v1, v1alpha))
}
