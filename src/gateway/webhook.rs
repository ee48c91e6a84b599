//! The `webhook` notifier: the notification protocol of the README's "For gateway
//! implementers".
//!
//! A 2xx is an acknowledgement; 408, 429, 5xx, a timeout or a refused connection is retried
//! with exponential backoff and jitter up to `attempts`; any other answer fails the node at
//! once (a 4xx will not change by asking again; 3xx is not followed).
//!
//! Notifications go out on hyper's pooled client directly rather than through reqwest (which
//! the registries use): an operation sends one request per node, a hundred at once, and
//! reqwest's per-request work (the URL parsed three times, the redirect and decompression
//! layers, boxed futures moved around) was a tenth of synchspeed's CPU on that path. A node is
//! plain `http://host:port`, so nothing reqwest adds is needed here.

use secrecy::ExposeSecret;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sha2::Sha256;
use tracing::debug;

use super::{Delivery, GatewayNode, Notification, Notifier, Progress, retry_schedule};
use crate::config::GatewaySettings;
use crate::diagnostics::error_chain;

pub const EVENT_HEADER: &str = "x-synchspeed-event";
pub const SIGNATURE_HEADER: &str = "x-synchspeed-signature";
const USER_AGENT_VALUE: &str = concat!("synchspeed/", env!("CARGO_PKG_VERSION"));

/// How much of a refusal's body is read: its start goes into the node's error.
const ERROR_BODY_LIMIT: usize = 4096;

pub struct WebhookNotifier {
    http: Client<HttpConnector, Full<Bytes>>,
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

/// A keep-alive pool like the registries' client: connect within 2 s, no Nagle delay, idle
/// sockets kept 60 s and at most 32 per node (a burst beyond it closes its extra sockets).
fn pooled_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build(connector)
}

impl WebhookNotifier {
    pub fn new(settings: &GatewaySettings) -> Self {
        let backoff = retry_schedule(settings);
        Self {
            http: pooled_client(),
            path: settings.path.clone(),
            timeout: settings.timeout,
            backoff,
            secret: settings
                .secret
                .as_ref()
                .map(|s| s.expose_secret().as_bytes().to_vec()),
        }
    }

    /// One POST, its answer read, within `timeout`.
    async fn attempt(
        &self,
        uri: &http::Uri,
        body: &Bytes,
        event: &'static str,
        signature: Option<&HeaderValue>,
    ) -> Result<(), AttemptError> {
        match tokio::time::timeout(self.timeout, self.exchange(uri, body, event, signature)).await {
            Ok(answer) => answer,
            // Timeouts may pass; retry them.
            Err(_) => Err(AttemptError {
                retryable: true,
                message: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    async fn exchange(
        &self,
        uri: &http::Uri,
        body: &Bytes,
        event: &'static str,
        signature: Option<&HeaderValue>,
    ) -> Result<(), AttemptError> {
        let mut request = http::Request::post(uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .header(EVENT_HEADER, HeaderValue::from_static(event));
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature.clone());
        }
        let request = request
            .body(Full::new(body.clone()))
            .map_err(|e| AttemptError {
                retryable: false,
                message: format!("the notification request cannot be built: {e}"),
            })?;
        let response = self.http.request(request).await.map_err(|e| AttemptError {
            // Refused and reset connections may all pass; retry them.
            retryable: true,
            message: error_chain(&e),
        })?;
        let status = response.status();
        // Read to its end, so the connection goes back to the pool; a refusal's start is kept.
        let text = match Limited::new(response.into_body(), ERROR_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        let retryable = code == 408 || code == 429 || status.is_server_error();
        let text: String = String::from_utf8_lossy(&text)
            .chars()
            .take(200)
            .filter(|c| !c.is_control())
            .collect();
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
        let uri: http::Uri = match format!("http://{}{}", node.address, self.path).parse() {
            Ok(uri) => uri,
            Err(e) => {
                return Delivery::failed(
                    0,
                    started.elapsed(),
                    format!("'{}' is not a node address: {e}", node.address),
                );
            }
        };
        let event = notification.event.as_str();
        let signature = match self
            .secret
            .as_ref()
            .map(|secret| HeaderValue::try_from(signature(secret, &body)))
            .transpose()
        {
            Ok(signature) => signature,
            Err(e) => {
                return Delivery::failed(
                    0,
                    started.elapsed(),
                    format!("the signature is not a header value: {e}"),
                );
            }
        };
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.attempt(&uri, &body, event, signature.as_ref())
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
