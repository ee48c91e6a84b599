//! One room past 500 lines: the operation record and every type it is made of, one contract.
//!
//! The operation: the audit record of one offline or online request, in the shape the README's
//! "The API by example" shows and the OpenAPI document describes.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use super::haproxy_detail::{HaproxyDetail, HaproxyServer, IdleWait, Warmup};
use super::{AppName, Instance, Route, Status};

/// `op_` followed by a ULID: sortable by creation time, so "newest first" is an index scan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "op_01JD3T0Q9K6N5ZV7X4B2C8M1EA")]
pub struct OperationId(ulid::Ulid);

/// Why a string is not an operation id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not an operation id: op_ followed by 26 characters of 0-9 and A-Z without I, L, O \
     and U, the first one 0-7, as synchspeed writes them"
)]
pub struct InvalidOperationId(String);

impl OperationId {
    pub fn generate() -> Self {
        Self(ulid::Ulid::new())
    }
}

impl FromStr for OperationId {
    type Err = InvalidOperationId;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        // One spelling per id: Crockford's base32 decodes lower case, I, L and O as other
        // digits, and a first digit past 7 overflows into another id. Only the spelling
        // synchspeed writes is an id.
        raw.strip_prefix("op_")
            .and_then(|ulid| {
                let parsed = ulid::Ulid::from_string(ulid).ok()?;
                (parsed.to_string() == ulid).then_some(parsed)
            })
            .map(Self)
            .ok_or_else(|| InvalidOperationId(raw.chars().take(64).collect()))
    }
}

impl TryFrom<String> for OperationId {
    type Error = InvalidOperationId;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        raw.parse()
    }
}

impl From<OperationId> for String {
    fn from(id: OperationId) -> String {
        id.to_string()
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op_{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Offline,
    Online,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Offline => "offline",
            Action::Online => "online",
        }
    }

    /// The registry status this action writes.
    pub fn target_status(self) -> Status {
        match self {
            Action::Offline => Status::OutOfService,
            Action::Online => Status::Up,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// A dry run: resolved and returned, nothing changed.
    Planned,
    InProgress,
    Succeeded,
    /// The registry step succeeded, some gateway nodes failed after all retries.
    Partial,
    /// The registry step failed: no gateway node was told anything.
    Failed,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Planned => "planned",
            OperationState::InProgress => "in_progress",
            OperationState::Succeeded => "succeeded",
            OperationState::Partial => "partial",
            OperationState::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, OperationState::InProgress)
    }
}

impl FromStr for OperationState {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        [
            OperationState::Planned,
            OperationState::InProgress,
            OperationState::Succeeded,
            OperationState::Partial,
            OperationState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == raw)
        .ok_or_else(|| {
            format!("'{raw}' is not a state (planned, in_progress, succeeded, partial, failed)")
        })
    }
}

/// What the caller asked for: an IP, optionally narrowed to one port or one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Target {
    #[schema(value_type = String, example = "10.0.0.5")]
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub app: Option<AppName>,
}

impl Target {
    pub fn matches(&self, instance: &Instance) -> bool {
        instance.ip == self.ip
            && self.port.is_none_or(|port| port == instance.port)
            && self.app.as_ref().is_none_or(|app| *app == instance.app)
    }
}

/// Who asked: the address the caller policy decided on, and the token's principal if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Caller {
    #[schema(value_type = String, example = "10.1.2.3")]
    pub addr: IpAddr,
    pub principal: Option<String>,
}

/// The registry step for one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistryStep {
    /// Not attempted yet (or a dry run).
    Planned,
    /// At least one registry authority accepted the change.
    Updated,
    /// No authority accepted it.
    Failed,
    /// It was accepted, then undone because another instance of the same operation failed:
    /// the registry step is all or nothing.
    Reverted,
}

/// One registry authority's (one Eureka peer's) answer for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerResult {
    /// The peer, credentials removed.
    pub peer: String,
    pub outcome: PeerOutcome,
    /// The status the peer reported when read back after the write (uncached read).
    pub verified_status: Option<Status>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerOutcome {
    Accepted,
    /// The peer does not know the instance (not replicated yet, or already evicted).
    NotFound,
    /// The peer answered with an error.
    Refused,
    /// The peer could not be reached or did not answer in time.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceResult {
    pub app: AppName,
    pub instance_id: String,
    #[schema(value_type = String)]
    pub ip: IpAddr,
    pub port: u16,
    /// The status the registry reported before this operation.
    pub status_before: Status,
    pub registered_at: Option<i64>,
    /// The registry's group of the instance, where it has groups (Nacos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The registry's cluster of the instance, where it has clusters (Nacos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub registry: RegistryStep,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerResult>,
    pub error: Option<String>,
}

impl InstanceResult {
    pub fn planned(instance: &Instance) -> Self {
        Self {
            app: instance.app.clone(),
            instance_id: instance.instance_id.to_string(),
            ip: instance.ip,
            port: instance.port,
            status_before: instance.status,
            registered_at: instance.registered_at,
            group: None,
            cluster: None,
            registry: RegistryStep::Planned,
            peers: Vec::new(),
            error: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Pending,
    Acked,
    Failed,
}

/// One gateway node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResult {
    pub group: AppName,
    /// The app this node was told about (one notification per app).
    pub app: AppName,
    /// `host:port` of a webhook node; `host:port` or `unix:/path` of an HAProxy runtime API.
    pub node: String,
    pub state: NodeState,
    pub attempts: u32,
    /// Wall time from the first attempt to the final answer, retries included.
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    /// What an HAProxy node did: the servers changed, the wait until idle, the warm-up.
    /// Updated while the node is pending, so a reader sees the progress live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<HaproxyDetail>,
}

/// Why an operation failed as a whole (the registry step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OperationError {
    pub code: FailureCode,
    pub message: String,
}

/// What made a registry step fail: what scripts branch on, in the operation and in the error
/// body alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// Nothing answered (or the cache was not loaded): nothing was changed.
    RegistryUnavailable,
    /// The registry no longer knows the instance (it left between the plan and the write).
    InstanceGone,
    /// The registry answered and said no.
    RegistryRefused,
}

/// The principal shown on the reconciler's own operations in the audit trail. Reserved in
/// config, so no caller's token can carry it.
pub const RECONCILER_PRINCIPAL: &str = "synchspeed-reconciler";

/// Who started an operation. Decided by how it came in, never by a name: a token's principal
/// is the caller's to choose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A call to the API.
    #[default]
    Api,
    /// synchspeed's reconciler re-asserting a hold that the registry lost.
    Reconciler,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub id: OperationId,
    pub action: Action,
    pub state: OperationState,
    /// What was asked for; for a batch, the first target (all of them are in `targets`).
    pub target: Target,
    /// Every target of a batch; empty for a single-instance call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    pub reason: Option<String>,
    pub caller: Caller,
    /// Records journaled before the origin was kept read as API calls.
    #[serde(default)]
    pub origin: Origin,
    pub instances: Vec<InstanceResult>,
    /// The gateway groups found for each app, and where each came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    pub gateways: Vec<NodeResult>,
    /// What the caller should know that is no failure (an app no gateway routes to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
    #[serde(with = "millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(with = "millis::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub registry_updated_at: Option<DateTime<Utc>>,
    #[serde(with = "millis::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<DateTime<Utc>>,
    /// The replica that ran it (`cluster.replica`), on a PostgreSQL store; the one that
    /// carried it on when its first replica stopped (a warning says which that was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "synchspeed-0")]
    pub replica: Option<String>,
}

impl Operation {
    /// Settles the state once no node is pending: succeeded when every node acknowledged.
    pub fn settle(&mut self, now: DateTime<Utc>) {
        if self.gateways.iter().any(|n| n.state == NodeState::Pending) {
            return;
        }
        self.state = if self.gateways.iter().all(|n| n.state == NodeState::Acked) {
            OperationState::Succeeded
        } else {
            OperationState::Partial
        };
        self.completed_at = Some(now);
    }
}

/// Timestamps with milliseconds and a `Z`, as in the contract's example.
pub mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.serialize_str(&format(at)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<DateTime<Utc>>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_round_trip_and_reject_garbage() {
        let id = OperationId::generate();
        assert_eq!(id.to_string().parse::<OperationId>().unwrap(), id);
        assert!("op_nope".parse::<OperationId>().is_err());
        // Aliases of one id are no ids: lower case, a first digit past 7, I/L/O for 1/1/0.
        let canonical = id.to_string();
        let ulid = &canonical[3..];
        assert!(
            format!("op_{}", ulid.to_lowercase())
                .parse::<OperationId>()
                .is_err()
        );
        for first in ['8', 'G', 'R', 'Z'] {
            let alias = format!("op_{first}{}", &ulid[1..]);
            assert!(alias.parse::<OperationId>().is_err(), "{alias}");
        }
        let with_o = format!("op_{}", ulid.replacen('0', "O", 1));
        if with_o != canonical {
            assert!(with_o.parse::<OperationId>().is_err(), "{with_o}");
        }
        assert!("01JD3T0Q9K6N5ZV7X4B2C8M1EA".parse::<OperationId>().is_err());
    }

    fn node(state: NodeState) -> NodeResult {
        NodeResult {
            group: AppName::parse("GW").unwrap(),
            app: AppName::parse("A").unwrap(),
            node: "127.0.0.1:1".into(),
            state,
            attempts: 1,
            latency_ms: None,
            error: None,
            haproxy: None,
        }
    }

    fn operation(nodes: Vec<NodeResult>) -> Operation {
        Operation {
            id: OperationId::generate(),
            action: Action::Offline,
            state: OperationState::InProgress,
            target: Target {
                ip: "10.0.0.5".parse().unwrap(),
                port: None,
                app: None,
            },
            targets: vec![],
            reason: None,
            caller: Caller {
                addr: "127.0.0.1".parse().unwrap(),
                principal: None,
            },
            origin: Origin::Api,
            instances: vec![],
            routes: vec![],
            gateways: nodes,
            warnings: vec![],
            error: None,
            created_at: Utc::now(),
            registry_updated_at: None,
            completed_at: None,
            replica: None,
        }
    }

    #[test]
    fn settles_only_when_no_node_is_pending() {
        let mut op = operation(vec![node(NodeState::Acked), node(NodeState::Pending)]);
        op.settle(Utc::now());
        assert_eq!(op.state, OperationState::InProgress);
        op.gateways[1].state = NodeState::Failed;
        op.settle(Utc::now());
        assert_eq!(op.state, OperationState::Partial);
        assert!(op.completed_at.is_some());
    }

    #[test]
    fn no_nodes_at_all_is_success() {
        let mut op = operation(vec![]);
        op.settle(Utc::now());
        assert_eq!(op.state, OperationState::Succeeded);
    }

    #[test]
    fn serializes_in_the_contract_shape() {
        let op = operation(vec![node(NodeState::Acked)]);
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["state"], "in_progress");
        assert_eq!(json["gateways"][0]["state"], "acked");
        assert!(json["createdAt"].as_str().unwrap().ends_with('Z'));
        assert!(json.get("targets").is_none());
        let back: Operation = serde_json::from_value(json).unwrap();
        assert_eq!(back.id, op.id);
    }
}
