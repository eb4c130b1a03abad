//! The lists of routes that behave differently, in one place: those without
//! auth, those without rate limits, those that honour `Idempotency-Key`.

/// Routes without auth.
pub const PUBLIC: [&str; 3] = ["/healthz", "/readyz", "/openapi.json"];

/// Whether `path` is exempt from rate limits: the public routes, the
/// reference page, the metrics and the admin routes.
pub fn is_unlimited(path: &str) -> bool {
    PUBLIC.contains(&path)
        || path == "/docs"
        || path.starts_with("/docs/")
        || path == "/metrics"
        || path.starts_with("/admin/")
}

/// Routes that honour `Idempotency-Key` (path pattern, method): every POST
/// that creates.
pub const KEYED: [(&str, &str); 4] = [
    ("/scripts", "post"),
    ("/scripts/{id}/versions", "post"),
    ("/runs", "post"),
    ("/commands", "post"),
];
