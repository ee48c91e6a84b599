//! Gateways: who must hear that an instance goes out or comes back, and telling them.
//!
//! [`nodes::NodeDirectory`] turns a gateway group into its nodes; [`Notifier`] tells one node
//! (one module per kind: [`webhook`], [`haproxy`]; [`by_group::NotifierByGroup`] picks the
//! kind of each group); [`fanout::FanOut`] tells all of them at once, bounded.

pub mod by_group;
pub mod fanout;
pub mod haproxy;
pub mod nodes;
pub mod webhook;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::GatewaySettings;
use crate::domain::operation::{HaproxyDetail, millis};
use crate::domain::{Action, AppName, OperationId};

/// One node of a gateway group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayNode {
    pub group: AppName,
    /// `host:port` (IPv6 in brackets).
    pub address: String,
}

/// What a node is told: the notification body (README, "For gateway implementers").
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub operation_id: OperationId,
    pub event: Action,
    pub app: AppName,
    pub instances: Vec<NotifiedInstance>,
    #[serde(with = "millis")]
    pub issued_at: DateTime<Utc>,
    /// The JSON body, serialized once and shared by every node that hears it.
    #[serde(skip)]
    encoded: OnceLock<bytes::Bytes>,
}

impl Notification {
    pub fn new(
        operation_id: OperationId,
        event: Action,
        app: AppName,
        instances: Vec<NotifiedInstance>,
        issued_at: DateTime<Utc>,
    ) -> Self {
        Self {
            operation_id,
            event,
            app,
            instances,
            issued_at,
            encoded: OnceLock::new(),
        }
    }

    /// The raw JSON body (what a signature covers).
    pub fn body(&self) -> Result<bytes::Bytes, serde_json::Error> {
        if let Some(body) = self.encoded.get() {
            return Ok(body.clone());
        }
        let body = bytes::Bytes::from(serde_json::to_vec(self)?);
        Ok(self.encoded.get_or_init(|| body).clone())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifiedInstance {
    pub instance_id: String,
    pub ip: IpAddr,
    pub port: u16,
}

/// A node's final answer, after every retry.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub acked: bool,
    pub attempts: u32,
    /// From the first attempt to the final answer.
    pub elapsed: Duration,
    /// The last error, when not acknowledged.
    pub error: Option<String>,
    /// What an HAProxy node did, in its final form.
    pub haproxy: Option<HaproxyDetail>,
}

impl Delivery {
    pub fn failed(attempts: u32, elapsed: Duration, error: String) -> Self {
        Self {
            acked: false,
            attempts,
            elapsed,
            error: Some(error),
            haproxy: None,
        }
    }
}

/// Where a notifier reports progress while a node is still pending (an HAProxy drain waiting
/// for idle, a warm-up ramping), so the operation shows it before the node answers.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Fn(HaproxyDetail) + Send + Sync>>);

impl Progress {
    pub fn new(report: impl Fn(HaproxyDetail) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(report)))
    }

    /// Progress nobody reads.
    pub fn ignored() -> Self {
        Self(None)
    }

    pub fn report(&self, detail: &HaproxyDetail) {
        if let Some(report) = &self.0 {
            report(detail.clone());
        }
    }
}

/// The retry schedule every kind uses: `gateway.backoff` doubled per retry with jitter, up to
/// `gateway.backoff_max`, for `gateway.attempts` attempts in all.
pub fn retry_schedule(settings: &GatewaySettings) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(settings.backoff)
        .with_max_delay(settings.backoff_max.max(settings.backoff))
        .with_max_times(settings.attempts.saturating_sub(1) as usize)
        .with_jitter()
}

#[async_trait]
pub trait Notifier: Send + Sync {
    /// Tells one node, retrying as the kind's protocol says. Never fails: a node that never
    /// acknowledged is a `Delivery` with `acked: false` and the reason.
    async fn notify(
        &self,
        node: &GatewayNode,
        notification: &Notification,
        progress: &Progress,
    ) -> Delivery;
}
