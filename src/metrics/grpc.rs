//! The gRPC calls' labels: the methods served, and status codes by name.

use ::metrics::counter;

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

/// One gRPC call answered with status `code` (its number).
pub fn grpc_call(method: &'static str, code: i32) {
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
    let code = usize::try_from(code).ok().and_then(|c| CODES.get(c)).copied().unwrap_or("UNKNOWN");
    counter!(GRPC_CALLS, "method" => method, "code" => code).increment(1);
}
