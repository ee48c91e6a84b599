//! The `webhook` notifier: the contract's notification protocol (`shared/spec/api.md` §3).
//!
//! A 2xx is an acknowledgement; 408, 429, 5xx, a timeout or a refused connection is retried
//! with exponential backoff and jitter up to `attempts`; any other answer fails the node at
//! once (a 4xx will not change by asking again; 3xx is not followed).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use sha2::Sha256;
use tracing::debug;

use super::{Delivery, GatewayNode, Notification, Notifier, Progress, retry_schedule};
use crate::config::GatewaySettings;
use crate::registry::eureka::error_chain;

pub const EVENT_HEADER: &str = "x-synchspeed-event";
pub const SIGNATURE_HEADER: &str = "x-synchspeed-signature";

pub struct WebhookNotifier {
    http: reqwest::Client,
    path: String,
    timeout: Duration,
    backoff: ExponentialBuilder,
    secret: Option<Vec<u8>>,
}

/// Why one attempt was not an acknowledgement.
#[derive(Debug)]
struct AttemptError {
    retryable: bool,
    message: String,
}

/// `sha256=<hex HMAC-SHA256 of the raw body>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookNotifier {
    pub fn new(settings: &GatewaySettings, http: reqwest::Client) -> Self {
        let backoff = retry_schedule(settings);
        Self {
            http,
            path: settings.path.clone(),
            timeout: settings.timeout,
            backoff,
            secret: settings.secret.as_ref().map(|s| s.as_bytes().to_vec()),
        }
    }

    async fn attempt(
        &self,
        url: &str,
        body: &bytes::Bytes,
        event: &'static str,
    ) -> Result<(), AttemptError> {
        let mut request = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(EVENT_HEADER, event)
            .body(body.clone());
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, body));
        }
        let response = request.send().await.map_err(|e| AttemptError {
            // Timeouts, refused and reset connections may all pass; retry them.
            retryable: true,
            message: if e.is_timeout() {
                format!("no answer within {:?}", self.timeout)
            } else {
                error_chain(&e)
            },
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        let retryable = code == 408 || code == 429 || status.is_server_error();
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).filter(|c| !c.is_control()).collect();
        Err(AttemptError {
            retryable,
            message: if text.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {text}")
            },
        })
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(
        &self,
        node: &GatewayNode,
        notification: &Notification,
        _progress: &Progress,
    ) -> Delivery {
        let started = Instant::now();
        let body = match notification.body() {
            Ok(body) => body,
            Err(e) => {
                return Delivery::failed(
                    0,
                    started.elapsed(),
                    format!("the notification does not serialize: {e}"),
                );
            }
        };
        let url = format!("http://{}{}", node.address, self.path);
        let event = notification.event.as_str();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.attempt(&url, &body, event)
        })
        .retry(self.backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &AttemptError| e.retryable)
        .notify(|e: &AttemptError, after: Duration| {
            debug!(node = %node.address, group = %node.group, "notification not acknowledged ({}), retrying in {after:?}", e.message);
        })
        .await;
        Delivery {
            acked: result.is_ok(),
            attempts: attempts.into_inner(),
            elapsed: started.elapsed(),
            error: result.err().map(|e| e.message),
            haproxy: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
