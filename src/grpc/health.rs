//! `grpc.health.v1.Health`, following the store (SERVING only while it answers) and
//! shutdown (NOT_SERVING once draining starts), and server reflection, so generic
//! gRPC tools work without the proto files.

use std::process::ExitCode;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response};
use tonic_health::server::HealthReporter;

use super::pb;

/// The health service name a readiness probe asks: NOT_SERVING only while the store refuses
/// every call until an operator acts (a wrong password, a script error) and once shutdown
/// starts; SERVING while Redis is merely down or slow, when the failure modes answer.
pub const READINESS: &str = "ratelimitd.readiness";

/// Sets the status of the whole server (""), of `ratelimit.v1.RateLimiter` and of [`READINESS`].
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

    /// `serving`: the whole server ("") and `ratelimit.v1.RateLimiter` (SERVING while the
    /// store answers); `ready`: [`READINESS`].
    pub async fn set(&self, serving: bool, ready: bool) {
        let status = |on| if on { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in ["", pb::rate_limiter_server::SERVICE_NAME] {
            self.reporter.set_service_status(service, status(serving)).await;
        }
        self.reporter.set_service_status(READINESS, status(ready)).await;
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

/// `ratelimitd probe TARGET [--service NAME]`: whether the server at `TARGET` (host:port,
/// plaintext) answers SERVING for `service` ("": the whole server), within 5 s. Prints its status, or one line saying why
/// there is none.
pub async fn probe(target: &str, service: &str) -> ExitCode {
    let ask = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| format!("{target} is not host:port: {e}"))?;
        let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {target}: {e}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.to_owned() })
            .await
            .map_err(|status| format!("{target} answered {:?}: {}", status.code(), status.message()))?;
        Ok::<_, String>(reply.into_inner().status())
    };
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            if status == health_check_response::ServingStatus::Serving { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Ok(Err(why)) => {
            eprintln!("ratelimitd: probe: {why}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("ratelimitd: probe: {target} did not answer within 5 s");
            ExitCode::FAILURE
        }
    }
}
