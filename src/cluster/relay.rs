//! What a replica that does not lead serves: its own probes and metrics, and every other call
//! relayed to the leader as it came (method, path, query, headers, body, and the answer
//! streamed back, event streams included). The caller's address is judged here, where its
//! connection arrived, and named to the leader in [`CALLER`] with the relay secret in
//! [`SECRET`]: the leader believes the name only with the secret, and checks the token itself.
//! So a caller sees one service whichever replica it reached.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::lease::Leader;
use super::secret::{REFUSED, RelaySecret};
use crate::domain::policy::CallerPolicy;
use crate::http::error::ApiError;
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::telemetry::{Metrics, RelayLabels};

/// Names the caller's address to the leader (believed only with [`SECRET`]).
pub const CALLER: &str = "x-synchspeed-relayed-for";
/// Proves a relayed call comes from a replica of this deployment.
pub const SECRET: &str = "x-synchspeed-relay-secret";
const REQUEST_ID: &str = "x-request-id";
/// How long a follower waits for the leader's TCP handshake before saying it is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Headers of one connection, never relayed (RFC 9110, 7.6.1), and the relay's own.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    ) || name.as_str() == CALLER
        || name.as_str() == SECRET
        || name.as_str() == super::secret::REFUSED
}

#[derive(Clone)]
pub struct RelayState {
    pub client: reqwest::Client,
    /// The leader as the election loop last read it; `None` while the store cannot be read.
    pub leader: watch::Receiver<Option<Leader>>,
    pub secret: Arc<RelaySecret>,
    pub policy: CallerPolicy,
    /// The largest body relayed (`server.body_limit`): a body is read whole before it is
    /// relayed, so that a call the leader refused for a stale secret can be sent again.
    pub body_limit: usize,
    /// How long a body may take to arrive (`server.body_read_timeout`).
    pub body_read_timeout: Duration,
    pub store: PgStore,
    pub metrics: Arc<Metrics>,
    pub replica: Arc<str>,
}

pub fn relay_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // The answer goes back to the caller as the leader wrote it, encoding and all.
        .no_gzip()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
}

/// The follower's routes.
pub fn router(state: RelayState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(relay)
        .with_state(state)
}

fn with_request_id(mut response: Response, id: HeaderValue) -> Response {
    response.headers_mut().insert(REQUEST_ID, id);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn unavailable(code: &'static str, message: String) -> Response {
    let mut response = ApiError::Unavailable {
        code,
        message,
        operation: None,
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// Ready when the store takes a write and a live leader is known to relay to.
async fn readyz(State(state): State<RelayState>) -> Response {
    if let Err(e) = state.store.ping().await {
        tracing::warn!("not ready: the store: {e}");
        return unavailable("store_unavailable", format!("the store: {e}"));
    }
    match state.leader.borrow().clone() {
        Some(leader) if leader.live => (
            StatusCode::OK,
            axum::Json(json!({
                "status": "ready",
                "role": "follower",
                "replica": &*state.replica,
                "leader": leader.replica,
                "epoch": leader.epoch,
            })),
        )
            .into_response(),
        _ => unavailable(
            "no_leader",
            "no replica leads now; one takes over within the lease".into(),
        ),
    }
}

async fn metrics(State(state): State<RelayState>) -> Response {
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

/// The caller's address as this replica judges it (trusted proxies and all), or the refusal.
fn judge(policy: &CallerPolicy, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, ApiError> {
    let addr = crate::http::client_addr(policy, peer, headers)?;
    policy.check(addr).map_err(|denied| {
        tracing::warn!(caller = %addr, peer = %peer, "caller refused: {denied}");
        ApiError::Forbidden(format!(
            "caller {addr} may not call synchspeed; ask its operators to allow it"
        ))
    })?;
    Ok(addr)
}

async fn relay(
    State(state): State<RelayState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    // The caller's id when it is sane (the leader judges it the same way), else a new one.
    let id = request
        .headers()
        .get(REQUEST_ID)
        .filter(|value| crate::http::acceptable_request_id(value))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&ulid::Ulid::new().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        });
    let caller = match judge(&state.policy, peer.ip(), request.headers()) {
        Ok(caller) => caller,
        Err(refused) => return with_request_id(refused.into_response(), id),
    };
    // A call another replica relayed here is never relayed on: during a takeover two
    // followers could otherwise pass it back and forth, and a replica restarted under the
    // name of a lease still running would relay to itself.
    let relayed_here = request.headers().get(SECRET).is_some_and(|secret| {
        bool::from(secret.as_bytes().ct_eq(state.secret.current().as_bytes()))
    });
    let leader = state.leader.borrow().clone();
    let Some(leader) =
        leader.filter(|leader| leader.live && !relayed_here && leader.replica != *state.replica)
    else {
        state.count(0);
        return with_request_id(
            unavailable(
                "no_leader",
                "no replica leads now; one takes over within the lease, try again".into(),
            ),
            id,
        );
    };
    let (parts, body) = request.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let url = format!("{}{}", leader.advertise.trim_end_matches('/'), target);
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(REQUEST_ID, id.clone());
    if let Ok(value) = HeaderValue::from_str(&caller.to_string()) {
        headers.insert(CALLER, value);
    }
    // A request without a body (a GET) is relayed without one, not as an empty chunked body.
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    let body = if has_body {
        let read = axum::body::to_bytes(body, state.body_limit);
        match tokio::time::timeout(state.body_read_timeout, read).await {
            Ok(Ok(bytes)) => Some(bytes),
            Ok(Err(_)) => {
                let limit = state.body_limit;
                return with_request_id(ApiError::PayloadTooLarge { limit }.into_response(), id);
            }
            Err(_) => {
                let after = state.body_read_timeout;
                return with_request_id(ApiError::BodyTimeout { after }.into_response(), id);
            }
        }
    } else {
        None
    };
    let send = |secret: Arc<str>| {
        let mut headers = headers.clone();
        if let Ok(value) = HeaderValue::from_str(&secret) {
            headers.insert(SECRET, value);
        }
        let mut relayed = state
            .client
            .request(parts.method.clone(), &url)
            .headers(headers);
        if let Some(body) = &body {
            relayed = relayed.body(body.clone());
        }
        relayed.send()
    };
    let mut sent = send(state.secret.current()).await;
    // The leader knows another secret (the store was created anew since this replica read
    // it): nothing was done there; read it again and send the call once more.
    if sent
        .as_ref()
        .is_ok_and(|answer| answer.headers().contains_key(REFUSED))
        && state.secret.reread().await
    {
        sent = send(state.secret.current()).await;
    }
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            state.count(0);
            tracing::warn!(leader = %leader.replica, %url, "cannot relay to the leader: {e}");
            return with_request_id(
                unavailable(
                    "leader_unreachable",
                    format!(
                        "the leading replica {} did not answer; try again (another takes over within the lease if it is gone)",
                        leader.replica
                    ),
                ),
                id,
            );
        }
    };
    state.count(answer.status().as_u16());
    let mut response = Response::builder().status(answer.status());
    if let Some(headers) = response.headers_mut() {
        for (name, value) in answer.headers() {
            if !hop_by_hop(name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    let stream = answer.bytes_stream().map_err(std::io::Error::other);
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| ApiError::Internal(format!("relayed answer: {e}")).into_response())
}

impl RelayState {
    fn count(&self, status: u16) {
        self.metrics
            .cluster_relayed
            .get_or_create(&RelayLabels { status })
            .inc();
    }
}
