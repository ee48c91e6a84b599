//! Every request: a request id (the caller's when it is sane, else a new one) on the response
//! and on every log line of the request, and a count by route template and status.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::AppState;
use super::error::ApiError;
use crate::telemetry::RequestLabels;
use axum::response::IntoResponse;

pub const REQUEST_ID: &str = "x-request-id";

/// The longest path and query taken (414 past it): more than the longest valid query, a
/// 1,024-character `reason` and a 255-character `app` of four-byte characters, percent-encoded.
const MAX_URI: usize = 16 * 1024;
/// The most header fields, and header bytes, taken (431 past either).
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A head past synchspeed's limits, answered in the envelope like every other error.
fn oversized(request: &Request) -> Option<ApiError> {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if uri > MAX_URI {
        return Some(ApiError::UriTooLong { limit: MAX_URI });
    }
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge {
            fields: MAX_HEADERS,
            bytes: MAX_HEADER_BYTES,
        });
    }
    None
}

/// The `method` label: the methods HTTP defines, and `other` for anything a caller made up,
/// so that no caller can add series to `/metrics` (every made-up method was one).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// A caller-supplied id is kept only if it is short and plain, so a hostile header cannot
/// flood or forge log lines.
pub(crate) fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .filter(|value| acceptable(value))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&ulid::Ulid::new().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        });
    request.headers_mut().insert(REQUEST_ID, id.clone());
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span =
        tracing::info_span!("request", request_id = id.to_str().unwrap_or("-"), %method, %route);
    let mut response = match oversized(&request) {
        Some(error) => error.into_response(),
        None => next.run(request).instrument(span).await,
    };
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, id);
    // Answers are JSON for programs: never sniffed as something else, never cached (an
    // operation changes until it settles; a hold list is out of date the moment it is kept).
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
