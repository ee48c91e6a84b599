//! Registry instances and their identity.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::AppName;

/// An instance's status as registries report it. The names are Eureka's `InstanceStatus`, which
/// the other registries map onto (ZooKeeper's `instance_status` uses `UP` and `OUT_OF_SERVICE`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Up,
    Down,
    Starting,
    OutOfService,
    Unknown,
}

impl Status {
    /// Every status, in the alphabetical order of its name (Eureka's `apps__hashcode` order).
    pub const ALPHABETICAL: [Status; 5] = [
        Status::Down,
        Status::OutOfService,
        Status::Starting,
        Status::Unknown,
        Status::Up,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Down => "DOWN",
            Status::Starting => "STARTING",
            Status::OutOfService => "OUT_OF_SERVICE",
            Status::Unknown => "UNKNOWN",
        }
    }

    /// Lenient parsing, as Eureka's `InstanceStatus.toEnum` does: case-insensitive, and anything
    /// unrecognised is UNKNOWN rather than an error, so one odd instance never breaks a refresh.
    pub fn from_registry(raw: &str) -> Status {
        match raw.trim().to_ascii_uppercase().as_str() {
            "UP" => Status::Up,
            "DOWN" => Status::Down,
            "STARTING" => Status::Starting,
            "OUT_OF_SERVICE" => Status::OutOfService,
            _ => Status::Unknown,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies one registration: the app and the registry's instance id. The IP does not:
/// several instances share an IP, and a new process on the same IP is a different instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceKey {
    pub app: AppName,
    /// Shared with the instance and every index that names it, so a key costs no copy.
    pub instance_id: Arc<str>,
}

/// One registered instance as synchspeed knows it from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub app: AppName,
    /// The registry's id for this registration (Eureka `InstanceInfo.getId()`; a znode name).
    pub instance_id: Arc<str>,
    /// Canonical address (see [`crate::domain::ip::canonical`]).
    pub ip: IpAddr,
    pub port: u16,
    pub status: Status,
    /// When this registration was made (ms since the epoch), where the registry says: together
    /// with the key it tells a restarted process apart from the one synchspeed acted on.
    pub registered_at: Option<i64>,
    /// String metadata (`management.port` and friends).
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            app: self.app.clone(),
            instance_id: self.instance_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_statuses_parse_leniently() {
        assert_eq!(
            Status::from_registry("out_of_service"),
            Status::OutOfService
        );
        assert_eq!(Status::from_registry(" UP "), Status::Up);
        assert_eq!(Status::from_registry("SLEEPING"), Status::Unknown);
    }

    #[test]
    fn alphabetical_order_is_by_name() {
        let names: Vec<_> = Status::ALPHABETICAL.iter().map(|s| s.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }
}
