//! Desired state: an instance synchspeed holds out of service.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppName, InstanceKey, OperationId};
use crate::domain::operation::millis;

/// One held instance. Identified by app and instance id, and by the registration time where
/// the registry has one: a process that registers anew on the same IP is not the one held.
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
            instance_id: self.instance_id.clone(),
        }
    }
}
