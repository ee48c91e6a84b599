//! What the `haproxy` notifier did on one node, shown on the node's result (live while it is
//! pending: the wait for idle, the warm-up).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The HAProxy side of one node's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HaproxyDetail {
    /// Every server, in every backend, whose address and port are the instance's.
    pub servers: Vec<HaproxyServer>,
    /// The admin state set: `drain`, `maint` or `ready`.
    pub state: String,
    /// Offline with `wait_idle`: the wait for the servers' sessions to reach zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleWait>,
    /// Online with a warm-up: the weight ramp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HaproxyServer {
    pub backend: String,
    pub server: String,
    /// Current sessions, as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    /// The weight set last (during a warm-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The weight the server has in HAProxy's configuration: where a warm-up ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_weight: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdleWait {
    /// True once every server had no session; false while waiting, or when the wait timed out.
    pub reached: bool,
    pub waited_ms: f64,
    /// Sessions still open across the servers at the last poll.
    pub sessions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Warmup {
    /// Share of the configured weight set so far, in percent.
    pub percent: u8,
    pub done: bool,
}
