//! The one place HTTP status codes are chosen: [`ApiError`] for failures, [`outcome_response`]
//! for operations. Every error body is `{"error":{"code","message"}}`; a 500 is logged with
//! the request's span and shows nothing of its cause.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::FailureCode;
use crate::domain::{Operation, OperationState};
use crate::drain::{DrainError, DrainOutcome, NotReady};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// A call named a relay secret that is not this deployment's (`cluster::secret`).
    #[error("this call names a relay secret that is not this deployment's; nothing was done")]
    RelayRefused,
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive within {after:?} (server.body_read_timeout)")]
    BodyTimeout { after: std::time::Duration },
    #[error("a request body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the request's path and query are longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("the request has more than {fields} header fields or {bytes} bytes of them")]
    HeadersTooLarge { fields: usize, bytes: usize },
    #[error("too many operations in flight; try again in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    /// The registry refused the change (the operation failed; nothing was notified).
    #[error("{message}")]
    RegistryRefused {
        message: String,
        operation: Option<Box<Operation>>,
    },
    /// The registry or the store cannot be reached, or synchspeed is stopping.
    #[error("{message}")]
    Unavailable {
        code: &'static str,
        message: String,
        operation: Option<Box<Operation>>,
    },
    /// Something broke inside; the cause goes to the log, never to the caller.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The failed operation, when one was recorded (registry failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Box<Operation>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: what scripts branch on.
    #[schema(example = "instance_not_found")]
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The same status and code with a message that says nothing of the cause: for callers
    /// who may not see it (the cause is in the log).
    pub fn without_detail(self) -> Self {
        match self {
            ApiError::Unavailable { code, .. } => ApiError::Unavailable {
                code,
                message: format!("not ready ({code}); the log of synchspeed says why"),
                operation: None,
            },
            other => other,
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RelayRefused => (StatusCode::FORBIDDEN, "relay_refused"),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            ApiError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_operations")
            }
            ApiError::RegistryRefused { .. } => (StatusCode::BAD_GATEWAY, "registry_refused"),
            ApiError::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ApiError::Internal(cause) => {
                tracing::error!("internal error: {cause}");
                "synchspeed failed to handle the request; the log has the details under this request id".to_owned()
            }
            other => other.to_string(),
        };
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after } => Some(*retry_after),
            _ => None,
        };
        let unauthorized = matches!(self, ApiError::Unauthorized(_));
        let relay_refused = matches!(self, ApiError::RelayRefused);
        let operation = match self {
            ApiError::RegistryRefused { operation, .. }
            | ApiError::Unavailable { operation, .. } => operation,
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
            operation,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if relay_refused {
            response.headers_mut().insert(
                crate::cluster::secret::REFUSED,
                HeaderValue::from_static("secret"),
            );
        }
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    /// A store that cannot be read or written is unavailable, said as such (503): the caller
    /// can retry, or try another time. A record that does not parse is synchspeed's fault.
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(_) => ApiError::Internal(error.to_string()),
            StoreError::Database(_) | StoreError::Migrate(_) => ApiError::Unavailable {
                code: "store_unavailable",
                message: format!(
                    "synchspeed's store (its journal) cannot be used: {error}; nothing was changed and no gateway was told"
                ),
                operation: None,
            },
            StoreError::Fenced { .. } => ApiError::Unavailable {
                code: "not_leader",
                message: format!(
                    "{error}; nothing was changed and no gateway was told: try again, the replica that leads now answers"
                ),
                operation: None,
            },
        }
    }
}

impl From<NotReady> for ApiError {
    fn from(error: NotReady) -> Self {
        let code = match error {
            NotReady::Registry { .. } => "registry_unavailable",
            NotReady::Store(_) => "store_unavailable",
            NotReady::Groups(_) => "groups_unavailable",
        };
        ApiError::Unavailable {
            code,
            message: error.to_string(),
            operation: None,
        }
    }
}

impl From<DrainError> for ApiError {
    fn from(error: DrainError) -> Self {
        match error {
            DrainError::NoMatch(what) => ApiError::NotFound {
                code: "instance_not_found",
                message: format!("no registered instance matches {what}"),
            },
            DrainError::Busy => ApiError::TooManyRequests { retry_after: 1 },
            DrainError::MinUp(why) => ApiError::Conflict {
                code: "min_up",
                message: format!(
                    "{why}; nothing was changed (force=true takes it out anyway, and the operation says so)"
                ),
            },
            DrainError::ShuttingDown => ApiError::Unavailable {
                code: "shutting_down",
                // One replica is what runs today: there is no other to send it to.
                message: "synchspeed is shutting down; retry once it is back (GET /readyz)".into(),
                operation: None,
            },
            DrainError::RegistryUnavailable {
                message, operation, ..
            } => ApiError::Unavailable {
                code: "registry_unavailable",
                message: format!("{message}; nothing was changed and no gateway was told"),
                operation,
            },
            DrainError::RegistryRefused { message, operation } => ApiError::RegistryRefused {
                message: format!("the registry refused the change: {message}; no gateway was told"),
                operation: Some(operation),
            },
            error @ DrainError::Superseded(_) => ApiError::Conflict {
                code: "superseded",
                message: error.to_string(),
            },
            DrainError::PlanTooLarge(message) => ApiError::Unprocessable {
                code: "plan_too_large",
                message,
            },
            error @ DrainError::IdempotencyKeyReused(_) => ApiError::Unprocessable {
                code: "idempotency_key_reused",
                message: format!("{error}; use a new key for a new request"),
            },
            error @ DrainError::IdempotencyKeyInFlight(_) => ApiError::Conflict {
                code: "idempotency_key_in_use",
                message: format!("{error}; retry once it has answered"),
            },
            DrainError::Groups(e) => ApiError::Unavailable {
                code: "groups_unavailable",
                message: format!("{e}; nothing was changed"),
                operation: None,
            },
            DrainError::Store(e) => ApiError::from(e),
        }
    }
}

/// The response to an offline, online or batch call that got as far as an operation.
/// Says that an answer is the operation an earlier request created (`Idempotency-Key`).
pub const REPLAYED: &str = "idempotent-replayed";
/// Says that an offline found the instances already held and did nothing again.
pub const ALREADY_HELD: &str = "synchspeed-already-held";

fn accepted(operation: Operation) -> Response {
    let location = format!("/api/v1/operations/{}", operation.id);
    let mut response = (StatusCode::ACCEPTED, Json(operation)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn flagged(mut response: Response, name: &'static str) -> Response {
    response
        .headers_mut()
        .insert(name, HeaderValue::from_static("true"));
    response
}

pub fn outcome_response(outcome: DrainOutcome) -> Response {
    match outcome {
        DrainOutcome::Planned(operation) => (StatusCode::OK, Json(operation)).into_response(),
        DrainOutcome::Accepted(operation) => accepted(operation),
        DrainOutcome::AlreadyHeld(operation) => flagged(
            (StatusCode::OK, Json(operation)).into_response(),
            ALREADY_HELD,
        ),
        // The status the operation's state would have had first time round.
        DrainOutcome::Replayed(operation) => {
            let response = match operation.state {
                OperationState::InProgress => accepted(operation),
                OperationState::Succeeded | OperationState::Planned => {
                    (StatusCode::OK, Json(operation)).into_response()
                }
                OperationState::Failed
                    if operation
                        .error
                        .as_ref()
                        .is_some_and(|e| e.code == FailureCode::RegistryUnavailable) =>
                {
                    (StatusCode::SERVICE_UNAVAILABLE, Json(operation)).into_response()
                }
                _ => (StatusCode::BAD_GATEWAY, Json(operation)).into_response(),
            };
            flagged(response, REPLAYED)
        }
        DrainOutcome::Settled(operation) => {
            let status = match operation.state {
                OperationState::Succeeded => StatusCode::OK,
                _ => StatusCode::BAD_GATEWAY,
            };
            (status, Json(operation)).into_response()
        }
        DrainOutcome::TimedOut(operation) => {
            (StatusCode::GATEWAY_TIMEOUT, Json(operation)).into_response()
        }
        DrainOutcome::Interrupted(operation) => {
            let id = operation.id.clone();
            ApiError::Unavailable {
                code: "shutting_down",
                message: format!(
                    "synchspeed is stopping before every node answered; the operation is journaled and carried on when it is back (GET /api/v1/operations/{id})"
                ),
                operation: Some(Box::new(operation)),
            }
            .into_response()
        }
    }
}

/// A plain 200 with a JSON body (reads).
pub fn ok<T: Serialize>(body: T) -> Response {
    (StatusCode::OK, Json(body)).into_response()
}
