//! Probes and metrics: open to every caller (load balancers and scrapers do not carry tokens).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
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
pub async fn readyz(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, ApiError> {
    let orchestrator = &state.orchestrator;
    if let Some(role) = &state.cluster
        && let Err(lapsed) = role.leadership.check()
    {
        tracing::warn!("not ready: {lapsed}");
        return Err(ApiError::Unavailable {
            code: "leadership_lapsed",
            message: lapsed.to_string(),
            operation: None,
        });
    }
    // Probes are open to everyone; why it is not ready (a file's path, a database's error)
    // is told to allowed callers only, and always logged.
    let trusted = state.security.policy.check(peer.ip()).is_ok();
    let warnings = match orchestrator.readiness().await {
        Ok(warnings) => warnings,
        Err(not_ready) => {
            tracing::warn!("not ready: {not_ready}");
            let error = ApiError::from(not_ready);
            return Err(if trusted {
                error
            } else {
                error.without_detail()
            });
        }
    };
    let warnings = if trusted || warnings.is_empty() {
        warnings
    } else {
        vec!["degraded; the log says why".to_owned()]
    };
    let mut body = json!({"status": "ready", "registry": orchestrator.registry_kind()});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    if let Some(role) = &state.cluster {
        body["role"] = json!("leader");
        body["replica"] = json!(&*role.replica);
        body["epoch"] = json!(role.leadership.epoch);
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
