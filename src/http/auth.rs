//! Who is calling: the caller policy (CIDR allow/deny, trusted proxies) against the TCP peer,
//! then the bearer token. The decided [`Caller`] goes into the request for the audit trail.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::cluster::relay;
use crate::domain::Caller;
use crate::domain::policy::CallerPolicy;

pub async fn authorize(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let relayed = relayed_for(&state, request.headers()).await?;
    let caller = identify(&state, peer, relayed, request.headers())?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// The caller a follower relayed this call for, when it proves it is one of this
/// deployment's replicas; `None` for a call that names no relay secret. A call that names
/// one this deployment does not know (after reading it again from the store) is refused with
/// nothing done: a follower then reads its own again and retries, and a forged one learns
/// nothing (the header alone proves nothing).
async fn relayed_for(state: &AppState, headers: &HeaderMap) -> Result<Option<IpAddr>, ApiError> {
    let (Some(role), Some(secret)) = (state.cluster.as_ref(), headers.get(relay::SECRET)) else {
        return Ok(None);
    };
    if !role.relay_secret.verify(secret.as_bytes()).await {
        tracing::warn!("a call named a relay secret that is not this deployment's; refused");
        return Err(ApiError::RelayRefused);
    }
    Ok(headers
        .get(relay::CALLER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok()))
}

fn identify(
    state: &AppState,
    peer: SocketAddr,
    relayed: Option<IpAddr>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let security = &state.security;
    let addr = match relayed {
        // The follower judged the caller's address where its connection arrived.
        Some(addr) => addr,
        None => client_addr(&security.policy, peer.ip(), headers)?,
    };
    security.policy.check(addr).map_err(|denied| {
        // The range that denied it is the operators' business: the log has it, the caller
        // is told its own address only.
        tracing::warn!(caller = %addr, peer = %peer.ip(), "caller refused: {denied}");
        ApiError::Forbidden(format!(
            "caller {addr} may not call synchspeed; ask its operators to allow it"
        ))
    })?;
    authenticate(state, addr, headers)
}

/// The TCP peer, or the client a trusted proxy forwarded for (`X-Forwarded-For`). Also the
/// follower's judgement of a call it relays (`cluster::relay`).
pub(crate) fn client_addr(
    policy: &CallerPolicy,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<IpAddr, ApiError> {
    let mut forwarded = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        forwarded.push(value.to_str().map_err(|_| {
            ApiError::bad_request(
                "bad_forwarded_for",
                "X-Forwarded-For is not printable ASCII",
            )
        })?);
    }
    policy
        .client_addr(peer, &forwarded)
        .map_err(|e| ApiError::bad_request("bad_forwarded_for", e.to_string()))
}

/// The bearer token, when tokens are configured.
fn authenticate(state: &AppState, addr: IpAddr, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let security = &state.security;
    if !security.tokens.is_required() {
        return Ok(Caller {
            addr,
            principal: None,
        });
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(|| ApiError::Unauthorized("send \"Authorization: Bearer <token>\"".into()))?;
    let principal = security.tokens.authenticate(presented).ok_or_else(|| {
        tracing::warn!(caller = %addr, "caller presented an unknown token");
        ApiError::Unauthorized("the bearer token is not valid".into())
    })?;
    Ok(Caller {
        addr,
        principal: Some(principal.to_owned()),
    })
}
