//! The options of the instance calls, from the query string and the JSON body (body wins),
//! parsed into types at the edge.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use crate::config::DrainSettings;
use crate::domain::AppName;

/// Longest `reason` kept in the audit trail.
pub const MAX_REASON: usize = 1024;

/// The shortest `timeout` a caller may wait: below it a wait could not see even one node
/// answer, and would be a 504 by construction.
pub const MIN_WAIT: Duration = Duration::from_millis(100);

/// A port as JSON Schema's `integer` means it: `8080` and `8080.0` alike (an integral number,
/// whatever its spelling), from a body or a query string.
pub fn port<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u16>, D::Error> {
    struct Port;
    impl<'de> serde::de::Visitor<'de> for Port {
        type Value = Option<u16>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a port number")
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            u16::try_from(n)
                .map(Some)
                .map_err(|_| E::custom("out of range"))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            u16::try_from(n)
                .map(Some)
                .map_err(|_| E::custom("out of range"))
        }
        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
            if n.fract() == 0.0 && (0.0..=65535.0).contains(&n) {
                // Checked: integral and in range.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                return Ok(Some(n as u16));
            }
            Err(E::custom("not a whole number in range"))
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match text.trim().parse::<f64>() {
                Ok(n) => self.visit_f64(n),
                Err(_) => Err(E::custom("not a number")),
            }
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<S: serde::Deserializer<'de>>(self, d: S) -> Result<Self::Value, S::Error> {
            d.deserialize_any(self)
        }
    }
    deserializer.deserialize_any(Port)
}

/// A port filter: 1 to 65535 (no instance listens on port 0).
pub fn port_filter(port: Option<u16>) -> Result<Option<u16>, ApiError> {
    match port {
        Some(0) => Err(ApiError::bad_request(
            "invalid_option",
            "port must be between 1 and 65535",
        )),
        other => Ok(other),
    }
}

/// Options of `POST /api/v1/instances/{ip}/offline` and `/online`.
#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InstanceOptions {
    /// Only the instance on this port.
    #[serde(default, deserialize_with = "port")]
    pub port: Option<u16>,
    /// Only instances of this app.
    pub app: Option<String>,
    /// Free text for the audit trail.
    pub reason: Option<String>,
    /// Hold the response until every gateway node acknowledged, or `timeout` elapsed.
    pub wait: Option<bool>,
    /// With `wait`: a duration such as `10s` (default 30s, capped by config).
    pub timeout: Option<String>,
    /// Resolve and return the plan, change nothing.
    pub dry_run: Option<bool>,
    /// Offline of instances already held: run the registry step and notify every node again
    /// (without it, the answer is the operation that holds them, nothing redone).
    pub force: Option<bool>,
}

impl InstanceOptions {
    /// Fields set in `body` replace those from the query.
    fn overlay(self, body: InstanceOptions) -> InstanceOptions {
        InstanceOptions {
            port: body.port.or(self.port),
            app: body.app.or(self.app),
            reason: body.reason.or(self.reason),
            wait: body.wait.or(self.wait),
            timeout: body.timeout.or(self.timeout),
            dry_run: body.dry_run.or(self.dry_run),
            force: body.force.or(self.force),
        }
    }
}

/// Options given in a query string; an unknown one is a 400, on every route alike.
pub fn query_options<T: serde::de::DeserializeOwned + Default>(
    query: Option<&str>,
) -> Result<T, ApiError> {
    super::parse::from_query(query)
}

/// The query string and the body together.
pub fn instance_options(
    query: Option<&str>,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<InstanceOptions, ApiError> {
    let from_query = query_options::<InstanceOptions>(query)?;
    let from_body = json_body::<InstanceOptions>(body, limit)?.unwrap_or_default();
    Ok(from_query.overlay(from_body))
}

/// A JSON body, or `None` when there is none. Size and syntax errors are the caller's.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Option<T>, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    // No body, and a JSON `null`, are no options.
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        return Ok(None);
    }
    super::parse::from_json(&bytes).map(Some)
}

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, or absent.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |why: &str| ApiError::bad_request("invalid_idempotency_key", why.to_owned());
    if values.next().is_some() {
        return Err(invalid("Idempotency-Key is given more than once"));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY {
        return Err(invalid(&format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    if !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "Idempotency-Key must be visible ASCII characters without spaces",
        ));
    }
    // Checked above: every byte is visible ASCII.
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

pub fn reason(raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        Some(reason) if reason.chars().count() > MAX_REASON => Err(ApiError::bad_request(
            "invalid_option",
            format!("reason is longer than {MAX_REASON} characters"),
        )),
        Some(reason) if reason.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// An app filter; an empty value is no filter (as an HTML form sends it).
pub fn app_filter(raw: Option<String>) -> Result<Option<AppName>, ApiError> {
    raw.filter(|app| !app.is_empty())
        .map(|app| {
            AppName::parse(&app)
                .map_err(|e| ApiError::bad_request("invalid_option", format!("app: {e}")))
        })
        .transpose()
}

/// `Some(timeout)` when the caller waits. A timeout above the configured maximum is capped.
pub fn wait(
    wait: Option<bool>,
    timeout: Option<String>,
    drain: &DrainSettings,
) -> Result<Option<Duration>, ApiError> {
    let timeout = timeout
        .filter(|raw| !raw.is_empty())
        .map(|raw| {
            let shown = raw.chars().take(40).collect::<String>();
            let timeout = humantime::parse_duration(raw.trim()).map_err(|_| {
                ApiError::bad_request(
                    "invalid_duration",
                    format!("timeout '{shown}' is not a duration such as 10s or 500ms"),
                )
            })?;
            if timeout < MIN_WAIT {
                return Err(ApiError::bad_request(
                    "invalid_duration",
                    format!(
                        "timeout '{shown}' is shorter than {}ms",
                        MIN_WAIT.as_millis()
                    ),
                ));
            }
            Ok(timeout)
        })
        .transpose()?;
    if !wait.unwrap_or(false) {
        return Ok(None);
    }
    Ok(Some(
        timeout
            .unwrap_or(drain.wait_timeout)
            .min(drain.wait_timeout_max),
    ))
}
