//! Desired state: an instance synchspeed holds out of service.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppName, Instance, InstanceKey, OperationId};
use crate::domain::operation::millis;

/// Why a hold ended without an online call: the `why` of `synchspeed_holds_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldEnd {
    /// No registry peer that answered has the instance any more (the scale-down finished).
    Departed,
    /// Another registration of its id took its place (a new process).
    Replaced,
    /// Held longer than `drain.hold_max`; the registry is left as it is.
    Expired,
}

impl HoldEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldEnd::Departed => "departed",
            HoldEnd::Replaced => "replaced",
            HoldEnd::Expired => "expired",
        }
    }

    /// What the log says of it.
    pub fn detail(self) -> &'static str {
        match self {
            HoldEnd::Departed => "no registry peer has it any more",
            HoldEnd::Replaced => "another registration of its id took its place",
            HoldEnd::Expired => "held longer than drain.hold_max",
        }
    }
}

/// One held instance. Identified by app and instance id, and by the registration time where
/// the registry keeps one per process (ZooKeeper): a process that registers anew is not the
/// one held. Eureka stamps a new registration time on every `register` call, even from the
/// same process after a 404 heartbeat, so there the id alone identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub app: AppName,
    pub instance_id: String,
    #[schema(value_type = String, example = "10.0.0.5")]
    pub ip: IpAddr,
    pub port: u16,
    pub registered_at: Option<i64>,
    /// The operation that took it out.
    pub operation_id: OperationId,
    #[serde(with = "millis")]
    #[schema(value_type = String, format = DateTime)]
    pub since: DateTime<Utc>,
}

impl Hold {
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            app: self.app.clone(),
            instance_id: self.instance_id.as_str().into(),
        }
    }

    /// Whether `instance` is the very registration held. `by_registration_time`: the registry
    /// keeps one registration time per process, so a different one is a different process.
    pub fn is_of(&self, instance: &Instance, by_registration_time: bool) -> bool {
        self.app == instance.app
            && *self.instance_id == *instance.instance_id
            && (!by_registration_time
                || match (self.registered_at, instance.registered_at) {
                    (Some(held), Some(seen)) => held == seen,
                    _ => true,
                })
    }
}
