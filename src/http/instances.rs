//! `/api/v1/instances/{ip}`: take out, bring back, look up.

use std::net::IpAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody, ok, outcome_response};
use super::options::{self, InstanceOptions};
use crate::domain::ip::parse_ip;
use crate::domain::{Action, AppName, Caller, Hold, Operation, Origin, Status, Target};
use crate::drain::{DrainRequest, IpView};

/// The parts of an offline or online call besides the path.
struct ChangeRequest {
    headers: HeaderMap,
    query: Option<String>,
    body: Result<Bytes, BytesRejection>,
}

fn path_ip(raw: Result<Path<String>, PathRejection>) -> Result<IpAddr, ApiError> {
    let Path(raw) = super::parse::path(raw)?;
    parse_ip(&raw).map_err(|e| ApiError::bad_request("invalid_ip", e.to_string()))
}

async fn change(
    state: AppState,
    action: Action,
    caller: Caller,
    ip: Result<Path<String>, PathRejection>,
    request: ChangeRequest,
) -> Result<Response, ApiError> {
    let ChangeRequest {
        headers,
        query,
        body,
    } = request;
    let ip = path_ip(ip)?;
    let idempotency_key = options::idempotency_key(&headers)?;
    let options = options::instance_options(query.as_deref(), body, state.body_limits.bytes)?;
    let orchestrator = &state.orchestrator;
    let request = DrainRequest {
        action,
        targets: vec![Target {
            ip,
            port: options::port_filter(options.port)?,
            app: options::app_filter(options.app)?,
        }],
        reason: options::reason(options.reason)?,
        caller,
        origin: Origin::Api,
        dry_run: options.dry_run.unwrap_or(false),
        wait: options::wait(options.wait, options.timeout, orchestrator.settings())?,
        force: options.force.unwrap_or(false),
        idempotency_key,
    };
    let outcome = orchestrator.execute(request).await?;
    Ok(outcome_response(outcome))
}

/// Take every instance on `{ip}` out of service, then notify the gateways.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{ip}/offline",
    tag = "instances",
    params(("ip" = String, Path, description = "IPv4 or IPv6 address of the instance"), InstanceOptions,
        ("Idempotency-Key" = Option<String>, Header, description = "The same key for the same request returns the first request's operation (header idempotent-replayed: true)")),
    request_body(content = Option<InstanceOptions>, description = "The same options as JSON (body wins)"),
    responses(
        (status = 200, description = "Dry run; wait=true and every node acknowledged; or every instance already held (header synchspeed-already-held: true, the holding operation)", body = Operation),
        (status = 202, description = "Registry updated, fan-out under way", body = Operation,
            headers(("Location" = String, description = "/api/v1/operations/{id}"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No registered instance matches", body = ErrorBody),
        (status = 409, description = "The same Idempotency-Key is still being handled", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for another request, or the operation carries more than drain.max_* allow (plan_too_large)", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 502, description = "Registry refused (error body), or wait=true and some nodes failed (the operation, state partial)", body = Operation),
        (status = 503, description = "Registry unreachable: nothing changed", body = ErrorBody),
        (status = 504, description = "wait=true and the timeout came first (the operation, in_progress)", body = Operation),
    )
)]
pub async fn post_offline(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ip: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = ChangeRequest {
        headers,
        query,
        body,
    };
    change(state, Action::Offline, caller, ip, request).await
}

/// Bring the instances on `{ip}` back: registry UP, gateways told to route again.
#[utoipa::path(
    post,
    path = "/api/v1/instances/{ip}/online",
    tag = "instances",
    params(("ip" = String, Path, description = "IPv4 or IPv6 address of the instance"), InstanceOptions,
        ("Idempotency-Key" = Option<String>, Header, description = "The same key for the same request returns the first request's operation (header idempotent-replayed: true)")),
    request_body(content = Option<InstanceOptions>, description = "The same options as JSON (body wins)"),
    responses(
        (status = 200, body = Operation), (status = 202, body = Operation),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "The operation carries more than drain.max_* allow (plan_too_large)", body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 502, body = Operation), (status = 503, body = ErrorBody), (status = 504, body = Operation),
    )
)]
pub async fn post_online(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ip: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = ChangeRequest {
        headers,
        query,
        body,
    };
    change(state, Action::Online, caller, ip, request).await
}

/// What synchspeed and the registry know of one IP.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    #[schema(value_type = String)]
    pub ip: IpAddr,
    /// Registered instances on this IP, from the registry cache.
    pub instances: Vec<RegisteredInstance>,
    /// Instances on this IP that synchspeed holds out of service (desired state).
    pub held: Vec<Hold>,
    pub last_operation: Option<Operation>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredInstance {
    pub app: AppName,
    pub instance_id: String,
    pub port: u16,
    pub status: Status,
    pub registered_at: Option<i64>,
    /// Whether synchspeed holds this instance out of service.
    pub held: bool,
}

/// Instances, desired state and last operation of one IP.
#[utoipa::path(
    get,
    path = "/api/v1/instances/{ip}",
    tag = "instances",
    params(("ip" = String, Path, description = "IPv4 or IPv6 address")),
    responses(
        (status = 200, body = InstanceView),
        (status = 400, body = ErrorBody),
        (status = 404, description = "Neither the registry nor synchspeed knows the IP", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub async fn get_instance(
    State(state): State<AppState>,
    ip: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let ip = path_ip(ip)?;
    let IpView {
        registered,
        held,
        last_operation,
    } = state.orchestrator.ip_view(ip).await?;
    if registered.is_empty() && held.is_empty() && last_operation.is_none() {
        return Err(ApiError::NotFound {
            code: "instance_not_found",
            message: format!("neither the registry nor synchspeed knows {ip}"),
        });
    }
    let instances = registered
        .into_iter()
        .map(|instance| RegisteredInstance {
            held: held.iter().any(|hold| hold.key() == instance.key()),
            app: instance.app,
            instance_id: instance.instance_id.to_string(),
            port: instance.port,
            status: instance.status,
            registered_at: instance.registered_at,
        })
        .collect();
    Ok(ok(InstanceView {
        ip,
        instances,
        held,
        last_operation,
    }))
}
