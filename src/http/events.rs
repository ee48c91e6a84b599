//! The event streams, as Server-Sent Events: one operation's changes until it settles
//! (`/api/v1/operations/{id}/events`), and every operation's (`/api/v1/events`).
//!
//! Each event's `data` is one JSON object that says what it is (`type`, `seq`,
//! `operationId`, then the operation or the node). A listener that falls behind the bus
//! (`drain/events.rs`) is not waited for: an operation's stream sends the operation as it
//! now stands (`snapshot`) and goes on; the stream of everything says how many events it
//! missed (`lagged`). Every stream ends when the service stops.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::operations::parse_operation_id;
use super::options;
use crate::domain::ip::parse_ip;
use crate::domain::{AppName, Operation, OperationId, OperationState};
use crate::drain::Orchestrator;
use crate::drain::events::{EventKind, OperationEvent};

/// One Server-Sent Event as it arrives: its name (`snapshot`, `started`, `node`, `progress`,
/// `settled`, `lagged`), its id (the bus's sequence number; none on a snapshot or on
/// `lagged`), and its data: one JSON object with `type`, `seq` and `operationId`.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "the OpenAPI document's shape of an event; events are written by axum"
)]
pub struct StreamEvent {
    event: String,
    id: Option<String>,
    data: String,
}

fn sse_event(kind: &str, seq: u64, data: &Value) -> Result<Event, Infallible> {
    let event = Event::default().event(kind).data(data.to_string());
    Ok(if seq > 0 {
        event.id(seq.to_string())
    } else {
        event
    })
}

fn snapshot(operation: &Operation) -> Result<Event, Infallible> {
    let event = OperationEvent::snapshot(operation);
    sse_event(EventKind::Snapshot.as_str(), 0, &event.data)
}

fn streamed(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    // A reverse proxy in front (nginx) would otherwise hold the events back in its buffer.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// Where an operation's stream stands.
struct OperationStream {
    id: OperationId,
    orchestrator: Arc<Orchestrator>,
    receiver: Receiver<std::sync::Arc<OperationEvent>>,
    closed: CancellationToken,
    /// The operation as it stood when the stream began, sent first.
    first: Option<Operation>,
    ended: bool,
}

fn settled(operation: &Operation) -> bool {
    operation.state != OperationState::InProgress
}

impl OperationStream {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            self.ended = settled(&first);
            return Some((snapshot(&first), self));
        }
        loop {
            let received = tokio::select! {
                () = self.closed.cancelled() => return None,
                received = self.receiver.recv() => received,
            };
            match received {
                Ok(event) if event.scope.operation_id == self.id => {
                    self.ended = event.kind == EventKind::Settled;
                    let sent = sse_event(event.kind.as_str(), event.seq, &event.data);
                    return Some((sent, self));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // What was missed is in the operation as it stands now.
                    let current = self.orchestrator.operation(&self.id).await.ok().flatten()?;
                    self.ended = settled(&current);
                    return Some((snapshot(&current), self));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// One operation's changes: the operation as it stands, then each change, ending at the
/// settle.
#[utoipa::path(
    get,
    path = "/api/v1/operations/{id}/events",
    tag = "operations",
    params(("id" = String, Path, description = "op_ followed by a ULID")),
    responses(
        (status = 200, content_type = "text/event-stream", body = StreamEvent,
            description = "Server-Sent Events: `snapshot` (the operation as it stands), then `started`, `node`, `progress`, and last `settled`; each `data` is a JSON object with `type`, `seq` and `operationId`"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)
    )
)]
pub async fn operation_events(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = super::parse::path(id)?;
    let id = parse_operation_id(&id)?;
    let events = state.orchestrator.events();
    // Listening before reading: no change between the read and the first event is lost.
    let receiver = events.subscribe();
    let closed = events.closed();
    let Some(first) = state.orchestrator.operation(&id).await? else {
        return Err(ApiError::NotFound {
            code: "operation_not_found",
            message: format!("there is no operation {id}"),
        });
    };
    let stream = OperationStream {
        id,
        orchestrator: Arc::clone(&state.orchestrator),
        receiver,
        closed,
        first: Some(first),
        ended: false,
    };
    Ok(streamed(futures::stream::unfold(
        stream,
        OperationStream::next,
    )))
}

/// Filters of the stream of everything; empty is no filter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only operations on this IP.
    pub ip: Option<String>,
    /// Only operations on instances of this app (case-insensitive).
    pub app: Option<String>,
}

struct EveryStream {
    receiver: Receiver<std::sync::Arc<OperationEvent>>,
    closed: CancellationToken,
    ip: Option<IpAddr>,
    app: Option<AppName>,
}

impl EveryStream {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            let received = tokio::select! {
                () = self.closed.cancelled() => return None,
                received = self.receiver.recv() => received,
            };
            match received {
                Ok(event) if event.concerns(self.ip, self.app.as_ref()) => {
                    let sent = sse_event(event.kind.as_str(), event.seq, &event.data);
                    return Some((sent, self));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    let data = OperationEvent::lagged(missed);
                    return Some((sse_event(EventKind::Lagged.as_str(), 0, &data), self));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Every operation's changes as they happen (no past ones), filtered by IP and app.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "operations",
    params(EventsQuery),
    responses(
        (status = 200, content_type = "text/event-stream", body = StreamEvent,
            description = "Server-Sent Events: `started`, `node`, `progress`, `settled` of every operation, and `lagged` (with `missed`) when this reader fell behind"),
        (status = 400, body = ErrorBody)
    )
)]
pub async fn every_event(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query: EventsQuery = options::query_options(query.as_deref())?;
    let ip = query
        .ip
        .filter(|ip| !ip.is_empty())
        .map(|ip| parse_ip(&ip).map_err(|e| ApiError::bad_request("invalid_ip", e.to_string())))
        .transpose()?;
    let app = options::app_filter(query.app)?;
    let events = state.orchestrator.events();
    let stream = EveryStream {
        receiver: events.subscribe(),
        closed: events.closed(),
        ip,
        app,
    };
    Ok(streamed(futures::stream::unfold(stream, EveryStream::next)))
}
