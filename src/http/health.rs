//! Probes and metrics: open to every caller (load balancers and scrapers do not carry tokens).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ok};

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Serving")))]
pub async fn healthz() -> Response {
    ok(json!({"status": "ok"}))
}

/// Readiness: the registry answered recently, the store answers, the gateway groups can be
/// looked up (`warnings` says what is degraded but served).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Registry or store not answering")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let orchestrator = &state.orchestrator;
    let warnings = orchestrator.readiness().await?;
    let mut body = json!({"status": "ready", "registry": orchestrator.registry_kind()});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    Ok(ok(body))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
