//! `[gateway]` with `[gateway.haproxy]`: how gateway nodes are found and told.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{ConfigError, app_name, duration, invalid, positive_duration, redact};
use crate::domain::AppName;

/// How a gateway group hears about instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierKind {
    /// The contract's notification protocol over HTTP.
    Webhook,
    /// HAProxy's runtime API: server state and weight changed directly.
    Haproxy,
}

impl NotifierKind {
    fn parse(key: &str, raw: &str) -> Result<Self, ConfigError> {
        match raw.trim() {
            "webhook" => Ok(Self::Webhook),
            "haproxy" => Ok(Self::Haproxy),
            other => Err(invalid(key, format!("'{other}' is not webhook or haproxy"))),
        }
    }
}

/// The admin state an HAProxy server is put in when its instance goes offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaproxyOfflineState {
    /// No new connections; established ones (and persistent sessions) finish.
    Drain,
    /// No traffic at all, health checks stopped.
    Maint,
}

impl HaproxyOfflineState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HaproxySettings {
    pub offline_state: HaproxyOfflineState,
    /// Offline: acknowledge only once the servers have no session left (or `idle_timeout`).
    pub wait_idle: bool,
    pub idle_timeout: Duration,
    /// How often current sessions are read while waiting for idle.
    pub idle_poll: Duration,
    /// Online: ramp the weight up over this long; `None` gives full weight at once.
    pub warmup: Option<Duration>,
    /// The share of the configured weight a warm-up starts from, in percent (1–100).
    pub warmup_start_percent: u8,
    /// Weight changes in a warm-up, the last one reaching the configured weight.
    pub warmup_steps: u32,
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The kind of every group not listed in `group_notifiers`.
    pub notifier: NotifierKind,
    /// Groups told through another kind than `notifier`.
    pub group_notifiers: BTreeMap<AppName, NotifierKind>,
    pub haproxy: HaproxySettings,
    pub path: String,
    /// Per attempt.
    pub timeout: Duration,
    pub attempts: u32,
    /// Delay before the first retry; doubled each retry, with jitter, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Notifications in flight at once, across all operations.
    pub concurrency: usize,
    /// HMAC key for `X-Synchspeed-Signature`; `None` sends no signature.
    pub secret: Option<SecretString>,
    /// Instance metadata key holding a gateway node's notification port (`management.port`).
    pub port_metadata_key: Option<String>,
    /// Groups whose nodes are listed here rather than found in the registry.
    pub nodes: BTreeMap<AppName, Vec<String>>,
}

impl GatewaySettings {
    pub fn kind_of(&self, group: &AppName) -> NotifierKind {
        self.group_notifiers
            .get(group)
            .copied()
            .unwrap_or(self.notifier)
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    notifier: String,
    #[serde(default)]
    group_notifiers: BTreeMap<String, String>,
    haproxy: RawHaproxy,
    path: String,
    timeout: String,
    attempts: u32,
    backoff: String,
    backoff_max: String,
    concurrency: usize,
    #[serde(serialize_with = "redact")]
    secret: SecretString,
    port_metadata_key: String,
    #[serde(default)]
    nodes: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHaproxy {
    state: String,
    wait_idle: bool,
    idle_timeout: String,
    idle_poll: String,
    warmup: String,
    warmup_start_percent: u8,
    warmup_steps: u32,
}

impl RawGateway {
    pub(super) fn validate(self) -> Result<GatewaySettings, ConfigError> {
        let notifier = NotifierKind::parse("gateway.notifier", &self.notifier)?;
        let mut group_notifiers = BTreeMap::new();
        for (group, kind) in &self.group_notifiers {
            let key = format!("gateway.group_notifiers.{group}");
            let kind = NotifierKind::parse(&key, kind)?;
            group_notifiers.insert(app_name(&key, group)?, kind);
        }
        if !self.path.starts_with('/') {
            return Err(invalid("gateway.path", "must start with /"));
        }
        if self.attempts == 0 {
            return Err(invalid("gateway.attempts", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(invalid("gateway.concurrency", "must be at least 1"));
        }
        let mut nodes = BTreeMap::new();
        for (group, list) in self.nodes {
            let key = format!("gateway.nodes.{group}");
            let group = app_name(&key, &group)?;
            let kind = group_notifiers.get(&group).copied().unwrap_or(notifier);
            for node in &list {
                match (kind, node.strip_prefix("unix:")) {
                    (NotifierKind::Haproxy, Some(path)) if path.starts_with('/') => {}
                    (NotifierKind::Haproxy, Some(_)) => {
                        return Err(invalid(&key, format!("'{node}': unix:/absolute/path")));
                    }
                    _ => node_address(&key, node)?,
                }
            }
            nodes.insert(group, list);
        }
        Ok(GatewaySettings {
            notifier,
            group_notifiers,
            haproxy: self.haproxy.validate()?,
            path: self.path,
            timeout: positive_duration("gateway.timeout", &self.timeout)?,
            attempts: self.attempts,
            backoff: duration("gateway.backoff", &self.backoff)?,
            backoff_max: duration("gateway.backoff_max", &self.backoff_max)?,
            concurrency: self.concurrency,
            secret: Some(self.secret).filter(|s| !s.expose_secret().is_empty()),
            port_metadata_key: Some(self.port_metadata_key.trim().to_owned())
                .filter(|s| !s.is_empty()),
            nodes,
        })
    }
}

/// A static node is `host:port`; the host may be a name or an address (`[v6]` bracketed).
fn node_address(key: &str, node: &str) -> Result<(), ConfigError> {
    let parsed = Url::parse(&format!("http://{node}"))
        .map_err(|e| invalid(key, format!("'{node}' is not host:port ({e})")))?;
    if parsed.port().is_none() || parsed.path() != "/" || parsed.host_str().is_none() {
        return Err(invalid(key, format!("'{node}' is not host:port")));
    }
    Ok(())
}

impl RawHaproxy {
    pub(super) fn validate(self) -> Result<HaproxySettings, ConfigError> {
        let offline_state = match self.state.trim() {
            "drain" => HaproxyOfflineState::Drain,
            "maint" => HaproxyOfflineState::Maint,
            other => {
                return Err(invalid(
                    "gateway.haproxy.state",
                    format!("'{other}' is not drain or maint"),
                ));
            }
        };
        if !(1..=100).contains(&self.warmup_start_percent) {
            return Err(invalid(
                "gateway.haproxy.warmup_start_percent",
                "must be between 1 and 100",
            ));
        }
        if self.warmup_steps == 0 {
            return Err(invalid(
                "gateway.haproxy.warmup_steps",
                "must be at least 1",
            ));
        }
        let warmup = duration("gateway.haproxy.warmup", &self.warmup)?;
        Ok(HaproxySettings {
            offline_state,
            wait_idle: self.wait_idle,
            idle_timeout: positive_duration("gateway.haproxy.idle_timeout", &self.idle_timeout)?,
            idle_poll: positive_duration("gateway.haproxy.idle_poll", &self.idle_poll)?,
            warmup: Some(warmup).filter(|w| !w.is_zero()),
            warmup_start_percent: self.warmup_start_percent,
            warmup_steps: self.warmup_steps,
        })
    }
}
