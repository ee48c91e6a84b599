//! Requests from web browsers, which carry the user's network position but not the user's
//! intent: a page on any site, opened on an allowed host, could otherwise take an instance
//! offline (a cross-site form or `fetch`), or reach the service under a name of the
//! attacker's that resolves to it (DNS rebinding). Programs (curl, deploy platforms, the CLI)
//! send neither `Origin` nor `Sec-Fetch-*` and are not concerned.
//!
//! Every API request is served only when its `Host` is an address, `localhost`, or a name in
//! `security.hostnames` (the cluster's advertised name is one): a page under a rebound name
//! reads nothing, not even with a same-origin GET, which carries neither `Origin` nor
//! `Sec-Fetch-*` in every browser. A browser request's `Origin` (when it has one) must be this
//! service itself or one of `security.allowed_origins`. Bodies are JSON only (`body.rs`), so a form or a `text/plain`
//! POST, which a page may send anywhere without asking, is refused too.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::config::BrowserPolicy;

const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// The host part of `host[:port]` (IPv6 in brackets).
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                host
            } else {
                authority
            }
        })
}

fn is_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(ORIGIN) || headers.contains_key(SEC_FETCH_SITE)
}

/// Whether `name` is one synchspeed is reached by: an address, `localhost`, or a name of
/// `security.hostnames` (`*.example` covers every name under `example`).
fn known_host(name: &str, policy: &BrowserPolicy) -> bool {
    let name = name.trim_end_matches('.');
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || policy
            .hostnames
            .iter()
            .any(|known| match known.strip_prefix("*.") {
                Some(parent) => name
                    .strip_suffix(parent)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => known == name,
            })
}

/// The request's `Host`, lower case, as it was sent (`None` without one: HTTP/1.0 programs).
fn host(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(HOST)?;
    Some(value.to_str().unwrap_or("?").trim().to_ascii_lowercase())
}

/// Why a request under this `Host` is refused, if it is (every API request).
fn judge_host(headers: &HeaderMap, policy: &BrowserPolicy) -> Result<(), String> {
    let Some(host) = host(headers) else {
        return Ok(());
    };
    let name = host_name(&host);
    if known_host(name, policy) {
        Ok(())
    } else {
        Err(format!(
            "synchspeed was reached as '{name}', which is not one of its names: add it to \
             security.hostnames, or call it by its address (a foreign name is how DNS \
             rebinding reaches a service)"
        ))
    }
}

/// Why a browser request is refused, if it is.
fn judge(headers: &HeaderMap, policy: &BrowserPolicy) -> Result<(), String> {
    judge_host(headers, policy)?;
    let host = host(headers).unwrap_or_default();
    match headers
        .get(ORIGIN)
        .map(|value| value.to_str().unwrap_or("?"))
    {
        Some(origin) => {
            let origin = origin.trim().to_ascii_lowercase();
            let own = ["http://", "https://"]
                .iter()
                .any(|scheme| origin == format!("{scheme}{host}"));
            if own || policy.allowed_origins.contains(&origin) {
                Ok(())
            } else {
                Err(format!(
                    "a page of {origin} may not call synchspeed (security.allowed_origins)"
                ))
            }
        }
        // No Origin: a navigation or a same-origin read; anything else is cross-site.
        None => match headers.get(SEC_FETCH_SITE).and_then(|v| v.to_str().ok()) {
            Some("same-origin" | "none") | None => Ok(()),
            Some(site) => Err(format!("a {site} browser request may not call synchspeed")),
        },
    }
}

pub async fn guard(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let policy = &state.security.browser;
    let judged = if is_browser(request.headers()) {
        judge(request.headers(), policy)
    } else {
        judge_host(request.headers(), policy)
    };
    judged.map_err(|why| {
        tracing::warn!("request refused: {why}");
        ApiError::Forbidden(format!("{why}; nothing was done"))
    })?;
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn policy() -> BrowserPolicy {
        BrowserPolicy {
            hostnames: vec!["synchspeed.internal".into()],
            allowed_origins: vec!["https://console.example".into()],
        }
    }

    #[test]
    fn programs_are_not_browsers() {
        assert!(!is_browser(&headers(&[("host", "10.0.0.1:8080")])));
        assert!(is_browser(&headers(&[("sec-fetch-site", "same-origin")])));
    }

    #[test]
    fn a_page_of_another_site_is_refused_and_the_service_own_pages_are_not() {
        let judge = |pairs| judge(&headers(pairs), &policy());
        assert!(
            judge(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example")
            ])
            .is_err()
        );
        assert!(
            judge(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080")
            ])
            .is_ok()
        );
        assert!(judge(&[("host", "[::1]:8080"), ("origin", "http://[::1]:8080")]).is_ok());
        assert!(
            judge(&[
                ("host", "synchspeed.internal"),
                ("origin", "https://console.example")
            ])
            .is_ok()
        );
        assert!(judge(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]).is_err());
        assert!(
            judge(&[
                ("host", "localhost:8080"),
                ("sec-fetch-site", "same-origin")
            ])
            .is_ok()
        );
    }

    #[test]
    fn a_program_is_refused_under_a_foreign_name_and_served_under_its_own() {
        let judge = |host| judge_host(&headers(&[("host", host)]), &policy());
        assert!(
            judge("evil.example:8080").is_err(),
            "a same-origin read of a rebound page"
        );
        assert!(judge("10.0.0.1:8080").is_ok());
        assert!(judge("[fd00::1]:8080").is_ok());
        assert!(judge("localhost").is_ok());
        assert!(judge("synchspeed.internal:8080").is_ok());
        assert!(judge("synchspeed.internal.:8080").is_ok(), "the root dot");
        assert!(
            judge_host(&HeaderMap::new(), &policy()).is_ok(),
            "HTTP/1.0 sends no Host"
        );
        let wildcard = BrowserPolicy {
            hostnames: vec!["*.svc.cluster.local".into()],
            allowed_origins: Vec::new(),
        };
        let under = |host| judge_host(&headers(&[("host", host)]), &wildcard);
        assert!(under("synchspeed.default.svc.cluster.local").is_ok());
        assert!(
            under("svc.cluster.local").is_err(),
            "the parent itself is not under it"
        );
        assert!(under("evilsvc.cluster.local").is_err());
    }

    #[test]
    fn dns_rebinding_is_refused_by_its_host() {
        // evil.example resolves to synchspeed: same origin to the browser, a foreign name here.
        let rebound = headers(&[
            ("host", "evil.example:8080"),
            ("origin", "http://evil.example:8080"),
        ]);
        assert!(judge(&rebound, &policy()).is_err());
    }
}
