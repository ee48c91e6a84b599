//! The HTTP API (the README's "The API by example", served as `/api/v1/openapi.json`): router, one module per resource, the caller check,
//! the one error type, the OpenAPI document. Knows the orchestrator and the domain, never a
//! backend.

mod auth;
mod body;
mod browser;
mod console;
pub mod error;
mod events;
mod health;
mod instances;
mod observe;
mod offline;
pub mod openapi;
mod operations;
mod options;
mod parse;
pub mod server;
mod unparsed;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Router, middleware};

use crate::config::SecuritySettings;
use crate::drain::Orchestrator;
use crate::telemetry::Metrics;
use error::ApiError;

/// What every handler can reach: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Arc<Orchestrator>,
    pub security: Arc<SecuritySettings>,
    pub metrics: Arc<Metrics>,
    /// Bodies are read once the caller is known: nobody else makes synchspeed read one.
    pub body_limits: body::BodyLimits,
    /// With several replicas: this one leads, under this lease.
    pub cluster: Option<ClusterRole>,
}

/// The leader's part: what its probes say, and whom it believes a relayed caller from.
#[derive(Clone)]
pub struct ClusterRole {
    pub leadership: Arc<crate::cluster::lease::Leadership>,
    /// A follower relaying a call proves itself with it (`cluster::relay`).
    pub relay_secret: Arc<crate::cluster::secret::RelaySecret>,
    pub replica: Arc<str>,
}

pub(crate) use auth::client_addr;
pub use body::BodyLimits;
pub(crate) use observe::acceptable as acceptable_request_id;

pub fn router(state: AppState) -> Router {
    // Everything under /api/v1 but the OpenAPI document is for allowed callers only.
    let api = Router::new()
        .route(
            "/api/v1/instances/{ip}/offline",
            post(instances::post_offline),
        )
        .route(
            "/api/v1/instances/{ip}/online",
            post(instances::post_online),
        )
        .route("/api/v1/instances/{ip}", get(instances::get_instance))
        .route(
            "/api/v1/operations",
            post(operations::post_batch).get(operations::list_operations),
        )
        .route("/api/v1/operations/{id}", get(operations::get_operation))
        .route(
            "/api/v1/operations/{id}/events",
            get(events::operation_events),
        )
        .route("/api/v1/events", get(events::every_event))
        .route("/api/v1/offline", get(offline::list_offline))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            body::read_body,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            browser::guard,
        ));
    Router::new()
        .merge(api)
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/ui", get(console::index))
        .route("/ui/", get(console::index))
        .route("/ui/app.js", get(console::script))
        .route("/ui/app.css", get(console::style))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async {
            ApiError::NotFound {
                code: "route_not_found",
                message: "no such route; see /api/v1/openapi.json".into(),
            }
        })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed(
                "method not allowed on this route; see /api/v1/openapi.json".into(),
            )
        })
        .layer(DefaultBodyLimit::max(state.body_limits.bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}
