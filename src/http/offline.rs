//! `/api/v1/offline`: the desired state.

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ok};
use crate::domain::Hold;

#[derive(Debug, Serialize, ToSchema)]
pub struct HeldList {
    pub instances: Vec<Hold>,
}

/// Instances synchspeed currently holds out of service.
#[utoipa::path(get, path = "/api/v1/offline", tag = "instances", responses((status = 200, body = HeldList)))]
pub async fn list_offline(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(ok(HeldList {
        instances: state.orchestrator.holds(),
    }))
}
