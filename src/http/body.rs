//! Reading a request's body, bounded in size and in time, after the caller check and before
//! the handler: a body that never finishes arriving holds nothing past
//! `server.body_read_timeout` (408), and one declared larger than `server.body_limit` is
//! refused before a byte of it is read (413, and no `100 Continue` is sent for it).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::AppState;
use super::error::ApiError;

/// The size and time a body may take.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub bytes: usize,
    pub time: Duration,
}

pub async fn read_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let limits = state.body_limits;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.bytes as u64) {
        return Err(ApiError::PayloadTooLarge {
            limit: limits.bytes,
        });
    }
    let json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| {
            let essence = essence.trim().to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        });
    let (parts, body) = request.into_parts();
    let collected = tokio::time::timeout(limits.time, Limited::new(body, limits.bytes).collect());
    let bytes = match collected.await {
        Err(_) => return Err(ApiError::BodyTimeout { after: limits.time }),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge {
                limit: limits.bytes,
            });
        }
        Ok(Err(error)) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("the request body could not be read: {error}"),
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // A form or a text/plain POST is what any web page may send anywhere without asking:
    // a body is taken as JSON only.
    if !bytes.iter().all(u8::is_ascii_whitespace) && json != Some(true) {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}
