//! Who is calling: the caller policy (CIDR allow/deny, trusted proxies) against the TCP peer,
//! then the bearer token. The decided [`Caller`] goes into the request for the audit trail.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::domain::Caller;

pub async fn authorize(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = identify(&state, peer, request.headers())?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

fn identify(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let security = &state.security;
    let mut forwarded = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        forwarded.push(value.to_str().map_err(|_| {
            ApiError::bad_request(
                "bad_forwarded_for",
                "X-Forwarded-For is not printable ASCII",
            )
        })?);
    }
    let addr = security
        .policy
        .client_addr(peer.ip(), &forwarded)
        .map_err(|e| ApiError::bad_request("bad_forwarded_for", e.to_string()))?;
    security.policy.check(addr).map_err(|denied| {
        // The range that denied it is the operators' business: the log has it, the caller
        // is told its own address only.
        tracing::warn!(caller = %addr, peer = %peer.ip(), "caller refused: {denied}");
        ApiError::Forbidden(format!(
            "caller {addr} may not call synchspeed; ask its operators to allow it"
        ))
    })?;
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
