//! `groups.source = "static"`: the mapping written in config.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{GroupRoute, GroupSource, GroupsError};
use crate::domain::{AppName, RouteSource};

#[derive(Debug, Clone, Default)]
pub struct StaticGroups {
    routes: BTreeMap<AppName, Vec<AppName>>,
}

impl StaticGroups {
    pub fn new(routes: BTreeMap<AppName, Vec<AppName>>) -> Self {
        Self { routes }
    }
}

#[async_trait]
impl GroupSource for StaticGroups {
    async fn groups_for(&self, app: &AppName) -> Result<Vec<GroupRoute>, GroupsError> {
        Ok(self
            .routes
            .get(app)
            .into_iter()
            .flatten()
            .map(|group| GroupRoute {
                group: group.clone(),
                source: RouteSource::Static,
                age: None,
            })
            .collect())
    }
}
