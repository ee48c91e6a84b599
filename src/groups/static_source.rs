//! `groups.source = "static"`: the mapping written in config.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{GroupSource, GroupsError};
use crate::domain::AppName;

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
    async fn groups_for(&self, app: &AppName) -> Result<Vec<AppName>, GroupsError> {
        Ok(self.routes.get(app).cloned().unwrap_or_default())
    }
}
