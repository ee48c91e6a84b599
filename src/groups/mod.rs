//! Which gateway groups route to an app.
//!
//! A gateway group is itself an app name (in the registry, or listed under `[gateway.nodes]`);
//! [`GroupSource`] answers "which groups must hear about ORDER-SERVICE".

mod static_source;

use async_trait::async_trait;

pub use static_source::StaticGroups;

use crate::domain::AppName;

#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the static source never fails; a source that asks a database will"
        )
    )]
    #[error("the group source cannot be reached: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait GroupSource: Send + Sync {
    /// The groups routing to `app`; empty when none does (then no gateway is notified).
    async fn groups_for(&self, app: &AppName) -> Result<Vec<AppName>, GroupsError>;
}
