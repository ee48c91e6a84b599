//! `/api/v1/operations`: the audit trail, and batches.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody, ok, outcome_response};
use super::options::{self, json_body};
use crate::domain::ip::parse_ip;
use crate::domain::operation::OperationId;
use crate::domain::{Action, AppName, Caller, Operation, OperationState, Origin, Target};
use crate::drain::DrainRequest;
use crate::store::OperationFilter;

/// Default and largest page of the list.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;
/// A page of the list ends once its records add up to this (the first is always in it; one
/// operation at the `drain.max_*` bounds is a few megabytes): the answer stays a few MB and
/// the memory it takes with it, whatever `limit` says.
const LIST_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Largest batch: enough for a whole fleet, small enough to plan in one go.
pub const MAX_TARGETS: usize = 5000;

/// An operation id as synchspeed writes it, or a 400 that says what is wrong with it.
pub fn parse_operation_id(id: &str) -> Result<OperationId, ApiError> {
    id.parse()
        .map_err(|e: crate::domain::operation::InvalidOperationId| {
            ApiError::bad_request("invalid_id", e.to_string())
        })
}

/// One operation with its per-instance and per-node results.
#[utoipa::path(
    get,
    path = "/api/v1/operations/{id}",
    tag = "operations",
    params(("id" = String, Path, description = "op_ followed by a ULID")),
    responses((status = 200, body = Operation), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn get_operation(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = super::parse::path(id)?;
    let id = parse_operation_id(&id)?;
    match state.orchestrator.operation(&id).await? {
        Some(operation) => Ok(ok(operation)),
        None => Err(ApiError::NotFound {
            code: "operation_not_found",
            message: format!("there is no operation {id}"),
        }),
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Operations whose target or any instance is on this IP.
    pub ip: Option<String>,
    /// Operations that touched this app.
    pub app: Option<String>,
    /// planned, in_progress, succeeded, partial or failed.
    pub state: Option<String>,
    /// At most this many (default 50, at most 500); a page also ends at about 4 MB.
    pub limit: Option<u32>,
    /// Only operations older than this one: the `next` of the previous page.
    pub before: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperationList {
    pub operations: Vec<Operation>,
    /// When the page is full (by `limit` or by size), the `before` that reads the next one;
    /// absent when this page is the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Recent operations, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/operations",
    tag = "operations",
    params(ListQuery),
    responses((status = 200, body = OperationList), (status = 400, body = ErrorBody))
)]
pub async fn list_operations(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query: ListQuery = options::query_options(query.as_deref())?;
    // An empty value is no filter, as an HTML form sends it (`?ip=&state=`); white space
    // is a value, and refused as one.
    let given = |value: Option<String>| value.filter(|v| !v.is_empty());
    let filter = OperationFilter {
        ip: given(query.ip)
            .map(|ip| parse_ip(&ip).map_err(|e| ApiError::bad_request("invalid_ip", e.to_string())))
            .transpose()?,
        app: options::app_filter(given(query.app))?,
        state: given(query.state)
            .map(|s| {
                s.parse::<OperationState>()
                    .map_err(|e| ApiError::bad_request("invalid_option", e))
            })
            .transpose()?,
        before: given(query.before)
            .map(|id| parse_operation_id(&id))
            .transpose()?,
        max_bytes: LIST_MAX_BYTES,
        limit: match query.limit {
            None => DEFAULT_LIMIT,
            Some(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
            Some(limit) => {
                return Err(ApiError::bad_request(
                    "invalid_option",
                    format!("limit {limit} is not between 1 and {MAX_LIMIT}"),
                ));
            }
        },
    };
    let page = state.orchestrator.operations(&filter).await?;
    let next = page
        .more
        .then(|| page.operations.last().map(|op| op.id.to_string()))
        .flatten();
    let operations = page.operations;
    Ok(ok(OperationList { operations, next }))
}

/// A batch: several targets in one operation (one registry step, one fan-out in which each
/// node hears once per app).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub action: Action,
    pub targets: Vec<BatchTarget>,
    pub reason: Option<String>,
    pub wait: Option<bool>,
    pub timeout: Option<String>,
    pub dry_run: Option<bool>,
    /// Offline of instances already held: do it all again.
    pub force: Option<bool>,
}

/// The options of a batch that may also be given in the query string, with the same meaning
/// as in the body (the body wins), as on the instance calls.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BatchQuery {
    /// Free text for the audit trail.
    pub reason: Option<String>,
    /// Hold the response until every gateway node acknowledged, or `timeout` elapsed.
    pub wait: Option<bool>,
    /// With `wait`: a duration such as `10s`.
    pub timeout: Option<String>,
    /// Resolve and return the plan, change nothing.
    pub dry_run: Option<bool>,
    /// Offline of instances already held: do it all again.
    pub force: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchTarget {
    #[schema(example = "10.0.0.5")]
    pub ip: String,
    #[serde(default, deserialize_with = "super::options::port")]
    pub port: Option<u16>,
    pub app: Option<String>,
}

/// Take out or bring back several targets in one operation.
#[utoipa::path(
    post,
    path = "/api/v1/operations",
    tag = "operations",
    params(BatchQuery),
    request_body = BatchRequest,
    responses(
        (status = 200, body = Operation), (status = 202, body = Operation),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for another request, or the operation carries more than drain.max_* allow (plan_too_large)", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 502, body = Operation), (status = 503, body = ErrorBody), (status = 504, body = Operation),
    )
)]
pub async fn post_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let idempotency_key = options::idempotency_key(&headers)?;
    let query: BatchQuery = options::query_options(query.as_deref())?;
    let batch: BatchRequest = json_body(body, state.body_limits.bytes)?
        .ok_or_else(|| ApiError::bad_request("invalid_json", "a batch needs a JSON body"))?;
    if batch.targets.is_empty() || batch.targets.len() > MAX_TARGETS {
        return Err(ApiError::bad_request(
            "invalid_option",
            format!("targets must list between 1 and {MAX_TARGETS} instances"),
        ));
    }
    let targets = batch
        .targets
        .into_iter()
        .enumerate()
        .map(|(i, target)| {
            Ok(Target {
                ip: parse_ip(&target.ip).map_err(|e| {
                    ApiError::bad_request("invalid_ip", format!("targets[{i}]: {e}"))
                })?,
                port: options::port_filter(target.port).map_err(|e| {
                    ApiError::bad_request("invalid_option", format!("targets[{i}]: {e}"))
                })?,
                app: target
                    .app
                    .filter(|app| !app.is_empty())
                    .map(|app| {
                        AppName::parse(&app).map_err(|e| {
                            ApiError::bad_request(
                                "invalid_option",
                                format!("targets[{i}].app: {e}"),
                            )
                        })
                    })
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let orchestrator = &state.orchestrator;
    let request = DrainRequest {
        action: batch.action,
        targets,
        reason: options::reason(batch.reason.or(query.reason))?,
        caller,
        origin: Origin::Api,
        dry_run: batch.dry_run.or(query.dry_run).unwrap_or(false),
        wait: options::wait(
            batch.wait.or(query.wait),
            batch.timeout.or(query.timeout),
            orchestrator.settings(),
        )?,
        force: batch.force.or(query.force).unwrap_or(false),
        idempotency_key,
    };
    Ok(outcome_response(orchestrator.execute(request).await?))
}
