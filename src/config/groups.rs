//! `[groups]`: which gateway groups route to an app, from config (`static`), from the gateway
//! team's own route table (`sql`), or both.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::registry::{RedactedUrl, redact_url_password};
use super::{ConfigError, app_name, invalid, positive_duration};
use crate::domain::AppName;

#[derive(Debug, Clone)]
pub struct GroupsSettings {
    /// App → the gateway groups that route to it, from `[groups.static]`; used when `static`
    /// is a source.
    pub routes: Option<BTreeMap<AppName, Vec<AppName>>>,
    /// The route table, when `sql` is a source.
    pub sql: Option<SqlGroupsSettings>,
}

/// Which database a route table lives in, by the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    /// `mysql://` (MySQL and MariaDB): the app is bound as `?`.
    MySql,
    /// `postgres://` or `postgresql://`: the app is bound as `$1`.
    Postgres,
}

#[derive(Debug, Clone)]
pub struct SqlGroupsSettings {
    /// Printed without its password.
    pub url: RedactedUrl,
    pub dialect: SqlDialect,
    /// The operator's SELECT: the group names for one app, the app its one bind parameter.
    pub query: String,
    /// Optional SELECT of (app, group) pairs: the whole mapping at once.
    pub all_query: Option<String>,
    /// How often the mapping is read again.
    pub refresh: Duration,
    /// How long a mapping read before the database went away is still used.
    pub stale_max: Duration,
    pub pool_size: u32,
    pub connect_timeout: Duration,
    /// Each query's bound, so a slow database cannot hold an offline's plan.
    pub statement_timeout: Duration,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroups {
    source: RawSources,
    /// No routes is a valid (if quiet) setting: an empty table, which the merged layers may
    /// leave out altogether.
    #[serde(rename = "static", default)]
    static_routes: BTreeMap<String, Vec<String>>,
    sql: RawSql,
}

/// `"static"`, `"sql"`, or a list of them (`SYNCHSPEED__GROUPS__SOURCE=static,sql`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum RawSources {
    One(String),
    Several(Vec<String>),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSql {
    /// Empty by default: required when `sql` is a source.
    #[serde(serialize_with = "redact_url_password")]
    url: String,
    query: String,
    all_query: String,
    refresh: String,
    stale_max: String,
    pool_size: u32,
    connect_timeout: String,
    statement_timeout: String,
}

impl RawGroups {
    pub(super) fn validate(self) -> Result<GroupsSettings, ConfigError> {
        let sources = match self.source {
            RawSources::One(source) => vec![source],
            RawSources::Several(sources) => sources,
        };
        let mut use_static = false;
        let mut use_sql = false;
        for source in &sources {
            match source.trim() {
                "static" => use_static = true,
                "sql" => use_sql = true,
                other => {
                    return Err(invalid(
                        "groups.source",
                        format!("'{other}' is not a group source (static, sql)"),
                    ));
                }
            }
        }
        if !use_static && !use_sql {
            return Err(invalid(
                "groups.source",
                "name at least one source (static, sql)",
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
        Ok(GroupsSettings {
            routes: use_static.then_some(routes),
            sql: if use_sql {
                Some(self.sql.validate()?)
            } else {
                None
            },
        })
    }
}

impl RawSql {
    fn validate(self) -> Result<SqlGroupsSettings, ConfigError> {
        let url = self.url.trim();
        let dialect = if url.starts_with("mysql://") {
            SqlDialect::MySql
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            SqlDialect::Postgres
        } else if url.is_empty() {
            return Err(invalid(
                "groups.sql.url",
                "required when groups.source has sql",
            ));
        } else {
            return Err(invalid(
                "groups.sql.url",
                format!(
                    "'{}' is not a mysql:// or postgres:// URL",
                    RedactedUrl::new(url)
                ),
            ));
        };
        let placeholder = match dialect {
            SqlDialect::MySql => "?",
            SqlDialect::Postgres => "$1",
        };
        let query = self.query.trim().to_owned();
        if query.is_empty() {
            return Err(invalid(
                "groups.sql.query",
                "required when groups.source has sql",
            ));
        }
        // Never interpolated: the app is the query's bind parameter, and only that.
        if !query.contains(placeholder) {
            return Err(invalid(
                "groups.sql.query",
                format!("must take the app name as its one bind parameter, {placeholder}"),
            ));
        }
        let all_query = Some(self.all_query.trim().to_owned()).filter(|q| !q.is_empty());
        let refresh = positive_duration("groups.sql.refresh", &self.refresh)?;
        let stale_max = positive_duration("groups.sql.stale_max", &self.stale_max)?;
        if stale_max < refresh {
            return Err(invalid(
                "groups.sql.stale_max",
                "must be at least groups.sql.refresh (a mapping is that old between two reads)",
            ));
        }
        if self.pool_size == 0 {
            return Err(invalid("groups.sql.pool_size", "must be at least 1"));
        }
        Ok(SqlGroupsSettings {
            url: RedactedUrl::new(url),
            dialect,
            query,
            all_query,
            refresh,
            stale_max,
            pool_size: self.pool_size,
            connect_timeout: positive_duration(
                "groups.sql.connect_timeout",
                &self.connect_timeout,
            )?,
            statement_timeout: positive_duration(
                "groups.sql.statement_timeout",
                &self.statement_timeout,
            )?,
        })
    }
}
