//! A gateway group that routes to an app, and where synchspeed learnt it: what a dry run and
//! the audit trail show beside the nodes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppName;

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// `[groups.static]` in the configuration.
    Static,
    /// The gateway team's route table (`[groups.sql]`).
    Sql,
}

/// One gateway group routing to one app, as the plan found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub app: AppName,
    pub group: AppName,
    pub source: RouteSource,
    /// How old the mapping it came from was when the plan was made (`sql`: it is read every
    /// `groups.sql.refresh`, and kept while the database is away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_age_ms: Option<u64>,
}
