//! Which gateway groups route to an app.
//!
//! A gateway group is itself an app name (in the registry, or listed under `[gateway.nodes]`);
//! [`GroupSource`] answers "which groups must hear about ORDER-SERVICE": from config
//! ([`StaticGroups`]), from the gateway team's route table ([`SqlGroups`], cached off the
//! latency path), or both ([`Combined`], the union).

mod combined;
mod sql;
mod sql_pool;
mod static_source;

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use combined::Combined;
pub use sql::SqlGroups;
pub use static_source::StaticGroups;

use crate::domain::{AppName, RouteSource};

#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    /// Nothing fresh enough is known of the app, and the source cannot be asked: synchspeed
    /// cannot know whom to tell, so nothing may change.
    #[error("the gateway groups of {app} cannot be looked up: {reason}")]
    Unavailable { app: AppName, reason: String },
}

/// A group that routes to an app, as a source knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRoute {
    pub group: AppName,
    pub source: RouteSource,
    /// How old the mapping it comes from is; `None` where it cannot age (config).
    pub age: Option<Duration>,
}

/// Whether a source's mapping can be trusted now, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupsHealth {
    Fresh,
    /// The source cannot be asked, and the last mapping it gave is still used: a warning.
    Stale(String),
    /// The source cannot be asked, and no mapping it gave is young enough to use.
    Unavailable(String),
}

#[async_trait]
pub trait GroupSource: Send + Sync {
    /// The groups routing to `app`; empty when none does (then no gateway is notified).
    async fn groups_for(&self, app: &AppName) -> Result<Vec<GroupRoute>, GroupsError>;

    fn health(&self) -> GroupsHealth {
        GroupsHealth::Fresh
    }

    /// Keeps the mapping fresh until `shutdown`, for sources that cache one.
    async fn run(&self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
    }
}
