//! `[groups]`: which gateway groups route to an app.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConfigError, app_name, invalid};
use crate::domain::AppName;

#[derive(Debug, Clone)]
pub struct GroupsSettings {
    /// App → the gateway groups that route to it.
    pub routes: BTreeMap<AppName, Vec<AppName>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroups {
    source: String,
    /// No routes is a valid (if quiet) setting: an empty table, which the merged layers may
    /// leave out altogether.
    #[serde(rename = "static", default)]
    static_routes: BTreeMap<String, Vec<String>>,
}

impl RawGroups {
    pub(super) fn validate(self) -> Result<GroupsSettings, ConfigError> {
        if self.source.trim() != "static" {
            return Err(invalid(
                "groups.source",
                format!(
                    "'{}' is not supported by this version (static)",
                    self.source
                ),
            ));
        }
        let mut routes = BTreeMap::new();
        for (app, groups) in self.static_routes {
            let key = format!("groups.static.{app}");
            let app = app_name(&key, &app)?;
            let groups = groups
                .iter()
                .map(|group| app_name(&key, group))
                .collect::<Result<Vec<_>, _>>()?;
            routes.insert(app, groups);
        }
        Ok(GroupsSettings { routes })
    }
}
