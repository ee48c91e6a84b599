//! `groups.source = ["static", "sql"]`: the union of several sources, each group once.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{GroupRoute, GroupSource, GroupsError, GroupsHealth};
use crate::domain::AppName;

pub struct Combined {
    /// In the order the sources were named: a group two sources know is shown as the
    /// first one's.
    sources: Vec<Arc<dyn GroupSource>>,
}

impl Combined {
    pub fn new(sources: Vec<Arc<dyn GroupSource>>) -> Self {
        Self { sources }
    }
}

#[async_trait]
impl GroupSource for Combined {
    /// Every source must answer: a group missing because one source could not be asked
    /// would leave a gateway routing to the instance.
    async fn groups_for(&self, app: &AppName) -> Result<Vec<GroupRoute>, GroupsError> {
        let mut seen = HashSet::new();
        let mut routes = Vec::new();
        for source in &self.sources {
            for route in source.groups_for(app).await? {
                if seen.insert(route.group.clone()) {
                    routes.push(route);
                }
            }
        }
        Ok(routes)
    }

    fn health(&self) -> GroupsHealth {
        let mut worst = GroupsHealth::Fresh;
        for source in &self.sources {
            match source.health() {
                GroupsHealth::Fresh => {}
                unavailable @ GroupsHealth::Unavailable(_) => return unavailable,
                stale @ GroupsHealth::Stale(_) => worst = stale,
            }
        }
        worst
    }

    async fn run(&self, shutdown: CancellationToken) {
        futures::future::join_all(self.sources.iter().map(|s| s.run(shutdown.clone()))).await;
    }
}
