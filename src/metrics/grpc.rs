//! The gRPC calls' labels: the methods served, and status codes by name.

use std::sync::OnceLock;

use ::metrics::{Counter, counter};

use super::GRPC_CALLS;

/// The `method` label of each gRPC method served; any other path is `unknown`.
pub(super) const METHODS: &[(&str, &str)] = &[
    ("/ratelimit.v1.RateLimiter/CheckAndConsume", "CheckAndConsume"),
    ("/ratelimit.v1.RateLimiter/Peek", "Peek"),
    ("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", "ShouldRateLimit"),
    ("/grpc.health.v1.Health/Check", "HealthCheck"),
    ("/grpc.health.v1.Health/Watch", "HealthWatch"),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "Reflection"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "Reflection"),
];

/// The `method` label of a gRPC request path.
pub fn grpc_method(path: &str) -> &'static str {
    METHODS.iter().find(|(p, _)| *p == path).map_or("unknown", |(_, name)| name)
}

/// The status codes by number, as gRPC names them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// One gRPC call answered with status `code` (its number). The counters of the methods'
/// OK answers, which nearly every call is, are registered once, not looked up per call.
pub fn grpc_call(method: &'static str, code: i32) {
    static OK: OnceLock<Vec<(&'static str, Counter)>> = OnceLock::new();
    if code == 0 {
        let ok = OK.get_or_init(|| {
            let names = METHODS.iter().map(|(_, name)| *name).chain(["unknown"]);
            names.map(|name| (name, counter!(GRPC_CALLS, "method" => name, "code" => "OK"))).collect()
        });
        if let Some((_, counter)) = ok.iter().find(|(name, _)| *name == method) {
            counter.increment(1);
            return;
        }
    }
    let code = usize::try_from(code).ok().and_then(|c| CODES.get(c)).copied().unwrap_or("UNKNOWN");
    counter!(GRPC_CALLS, "method" => method, "code" => code).increment(1);
}
