//! Requests from web browsers, which carry the user's network position but not the user's
//! intent: a page on any site, opened on an allowed host, could otherwise take an instance
//! offline (a cross-site form or `fetch`), or reach the service under a name of the
//! attacker's that resolves to it (DNS rebinding). Programs (curl, deploy platforms, the CLI)
//! send neither `Origin` nor `Sec-Fetch-*` and are not concerned.
//!
//! A browser request is served only when its `Host` is an address, `localhost`, or a name in
//! `security.hostnames`, and its `Origin` (when it has one) is this service itself or one of
//! `security.allowed_origins`. Bodies are JSON only (`body.rs`), so a form or a `text/plain`
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

/// Why a browser request is refused, if it is.
fn judge(headers: &HeaderMap, policy: &BrowserPolicy) -> Result<(), String> {
    let host = headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let name = host_name(&host);
    let known_host = name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || policy.hostnames.iter().any(|known| known == name);
    if !known_host {
        return Err(format!(
            "a browser reached synchspeed as '{name}', which is not one of its names \
             (security.hostnames)"
        ));
    }
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
    if is_browser(request.headers()) {
        judge(request.headers(), &state.security.browser).map_err(|why| {
            tracing::warn!("browser request refused: {why}");
            ApiError::Forbidden(format!("{why}; nothing was done"))
        })?;
    }
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
    fn dns_rebinding_is_refused_by_its_host() {
        // evil.example resolves to synchspeed: same origin to the browser, a foreign name here.
        let rebound = headers(&[
            ("host", "evil.example:8080"),
            ("origin", "http://evil.example:8080"),
        ]);
        assert!(judge(&rebound, &policy()).is_err());
    }
}
