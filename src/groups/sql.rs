//! `groups.source = "sql"`: the gateway team's own route table (MySQL, MariaDB, PostgreSQL),
//! asked with the operator's SELECT, the app its one bind parameter, never interpolated.
//!
//! An offline must not wait on that database: the mapping is preloaded, read again every
//! `groups.sql.refresh` in the background, and a database query sits on an offline's path
//! only for an app never read before. When the database goes away, the last mapping read
//! keeps serving for `groups.sql.stale_max`, with a warning, a metric and `/readyz` saying
//! so; past that, or for an app never read, the answer is "cannot be looked up", and the
//! operation stops before the registry (synchspeed cannot know whom to tell).
//!
//! The query runs on read-only connections whose server stops a statement past
//! `groups.sql.statement_timeout` (`sql_pool.rs`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use sqlx::mysql::MySql;
use sqlx::postgres::Postgres;
use sqlx::{AssertSqlSafe, Column, Database, Executor, SqlSafeStr, Statement, Type, TypeInfo};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::sql_pool::Pool;
use super::{GroupRoute, GroupSource, GroupsError, GroupsHealth};
use crate::config::SqlGroupsSettings;
use crate::domain::{AppName, RouteSource};
use crate::sync::{read, write};
use crate::telemetry::Metrics;

/// Why the route table cannot be used at start: the configuration is wrong, not the
/// database's availability (a database that is down at start is waited for).
#[derive(Debug, thiserror::Error)]
pub enum SqlGroupsError {
    #[error("groups.sql.url: {0}")]
    Url(#[source] sqlx::Error),
    #[error("groups.sql.{key}: the database refused it: {source}")]
    Refused {
        key: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("groups.sql.{key}: {message}")]
    Shape { key: &'static str, message: String },
}

/// Why one read of the table failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error("no answer within {0:?} (groups.sql.statement_timeout)")]
    TimedOut(Duration),
}

/// What the table said of one app, and when.
struct Known {
    groups: Vec<AppName>,
    read_at: Instant,
}

#[derive(Default)]
struct State {
    apps: HashMap<AppName, Known>,
    /// When `all_query` last read the whole table: an app it did not list had no group then.
    complete_at: Option<Instant>,
    /// Since when, and why, the database cannot be asked; `None` while it answers.
    trouble: Option<(Instant, String)>,
}

pub struct SqlGroups {
    pool: Pool,
    settings: SqlGroupsSettings,
    state: RwLock<State>,
    metrics: Arc<Metrics>,
}

/// The names in one column, canonical, each once. A row that names no usable group (a NULL,
/// a name that is no app name) is skipped with a warning naming the app and the row, and
/// counted: one bad row must not fail every operation of the app, let alone readiness.
fn group_names(app: &str, names: Vec<Option<String>>, metrics: &Metrics) -> Vec<AppName> {
    let mut groups: Vec<AppName> = Vec::with_capacity(names.len());
    for (row, name) in names.into_iter().enumerate() {
        let Some(name) = name else {
            warn!(
                app,
                row = row + 1,
                "the route table has a row with no group (NULL); skipped"
            );
            metrics.groups_rows_skipped.inc();
            continue;
        };
        match AppName::parse(&name) {
            Ok(group) if !groups.contains(&group) => groups.push(group),
            // The same group in several rows is one route.
            Ok(_) => {}
            Err(e) => {
                warn!(app, row = row + 1, group = %name,
                    "the route table names a group that is no app name: {e}; skipped");
                metrics.groups_rows_skipped.inc();
            }
        }
    }
    groups
}

impl SqlGroups {
    /// Connects (lazily: a database that is down at start is waited for), checks the
    /// queries' shape where the database answers, and preloads the mapping.
    pub async fn open(
        settings: &SqlGroupsSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SqlGroupsError> {
        let pool = Pool::open(settings).map_err(SqlGroupsError::Url)?;
        let groups = Self {
            pool,
            settings: settings.clone(),
            state: RwLock::default(),
            metrics,
        };
        match groups.check_shape().await {
            Ok(()) => groups.refresh().await,
            Err(ShapeCheck::Wrong(error)) => return Err(error),
            Err(ShapeCheck::Unreachable(error)) => {
                warn!(url = %settings.url, "the groups database cannot be reached at start: {error}; \
                    its mapping is read once it answers");
                groups.trouble(error.to_string());
            }
        }
        Ok(groups)
    }

    /// Prepares each query once: the app is its one parameter, and it returns text (a group)
    /// or two texts (app, group). A wrong type is caught here, not on the first offline.
    async fn check_shape(&self) -> Result<(), ShapeCheck> {
        match &self.pool {
            Pool::MySql(pool) => self.check_with::<MySql, _>(pool).await,
            Pool::Postgres(pool) => self.check_with::<Postgres, _>(pool).await,
        }
    }

    async fn check_with<DB, E>(&self, pool: E) -> Result<(), ShapeCheck>
    where
        DB: Database,
        String: Type<DB>,
        E: for<'c> Executor<'c, Database = DB> + Copy,
    {
        let prepared = pool
            .prepare(AssertSqlSafe(self.settings.query.clone()).into_sql_str())
            .await
            .map_err(|e| ShapeCheck::of("query", e))?;
        if let Some(count) = parameter_count(prepared.parameters())
            && count != 1
        {
            return Err(ShapeCheck::wrong(
                "query",
                format!("takes {count} parameters; it must take one, the app name"),
            ));
        }
        text_columns::<DB>("query", prepared.columns(), 1)?;
        if let Some(all_query) = &self.settings.all_query {
            let prepared = pool
                .prepare(AssertSqlSafe(all_query.clone()).into_sql_str())
                .await
                .map_err(|e| ShapeCheck::of("all_query", e))?;
            text_columns::<DB>("all_query", prepared.columns(), 2)?;
        }
        Ok(())
    }

    /// The groups of one app, as the table says now.
    async fn ask(&self, app: &AppName) -> Result<Vec<AppName>, ReadError> {
        let query = AssertSqlSafe(self.settings.query.clone());
        // Decoded as optional: a NULL is a bad row to skip, not a failed read.
        let names: BoxFuture<'_, Result<Vec<Option<String>>, sqlx::Error>> = match &self.pool {
            Pool::MySql(pool) => {
                Box::pin(sqlx::query_scalar(query).bind(app.as_str()).fetch_all(pool))
            }
            Pool::Postgres(pool) => {
                Box::pin(sqlx::query_scalar(query).bind(app.as_str()).fetch_all(pool))
            }
        };
        let names = self.bounded(names).await?;
        Ok(group_names(app.as_str(), names, &self.metrics))
    }

    /// The whole mapping at once (`all_query`).
    async fn ask_all(&self, all_query: &str) -> Result<HashMap<AppName, Vec<AppName>>, ReadError> {
        let query = AssertSqlSafe(all_query.to_owned());
        type Pair = (Option<String>, Option<String>);
        let pairs: BoxFuture<'_, Result<Vec<Pair>, sqlx::Error>> = match &self.pool {
            Pool::MySql(pool) => Box::pin(sqlx::query_as(query).fetch_all(pool)),
            Pool::Postgres(pool) => Box::pin(sqlx::query_as(query).fetch_all(pool)),
        };
        let mut by_app: HashMap<AppName, Vec<Option<String>>> = HashMap::new();
        for (row, (app, group)) in self.bounded(pairs).await?.into_iter().enumerate() {
            let Some(app_name) = app.as_deref().and_then(|app| AppName::parse(app).ok()) else {
                warn!(app = ?app, row = row + 1,
                    "the route table (all_query) has a row whose app is NULL or no app name; skipped");
                self.metrics.groups_rows_skipped.inc();
                continue;
            };
            by_app.entry(app_name).or_default().push(group);
        }
        Ok(by_app
            .into_iter()
            .map(|(app, names)| {
                let groups = group_names(app.as_str(), names, &self.metrics);
                (app, groups)
            })
            .collect())
    }

    async fn bounded<T>(
        &self,
        read: BoxFuture<'_, Result<T, sqlx::Error>>,
    ) -> Result<T, ReadError> {
        let limit = self.settings.statement_timeout;
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| ReadError::TimedOut(limit))?
            .map_err(ReadError::Database)
    }

    /// Reads the mapping again: the whole table with `all_query`, else every app read before.
    async fn refresh(&self) {
        let result = match &self.settings.all_query {
            Some(all_query) => self.ask_all(all_query).await.map(|mapping| {
                let now = Instant::now();
                let mut state = write(&self.state);
                state.apps = mapping
                    .into_iter()
                    .map(|(app, groups)| {
                        (
                            app,
                            Known {
                                groups,
                                read_at: now,
                            },
                        )
                    })
                    .collect();
                state.complete_at = Some(now);
            }),
            None => self.refresh_known().await,
        };
        match result {
            Ok(()) => self.answered(),
            Err(e) => self.trouble(e.to_string()),
        }
        self.metrics
            .groups_mapping_age_seconds
            .set(self.oldest_age().as_secs_f64());
    }

    async fn refresh_known(&self) -> Result<(), ReadError> {
        let apps: Vec<AppName> = read(&self.state).apps.keys().cloned().collect();
        for app in apps {
            let groups = self.ask(&app).await?;
            let mut state = write(&self.state);
            state.apps.insert(
                app,
                Known {
                    groups,
                    read_at: Instant::now(),
                },
            );
        }
        Ok(())
    }

    fn answered(&self) {
        let mut state = write(&self.state);
        if let Some((since, _)) = state.trouble.take() {
            info!(
                down_for = ?since.elapsed(),
                "the groups database answers again; the mapping is current"
            );
        }
    }

    fn trouble(&self, why: String) {
        self.metrics.groups_refresh_errors.inc();
        let mut state = write(&self.state);
        warn!(url = %self.settings.url, "cannot read the route table: {why}; the last mapping read \
            serves for at most groups.sql.stale_max");
        let since = state
            .trouble
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        state.trouble = Some((since, why));
    }

    /// The age of the oldest part of the mapping in use (zero when nothing was read).
    fn oldest_age(&self) -> Duration {
        let state = read(&self.state);
        let oldest = state
            .apps
            .values()
            .map(|known| known.read_at)
            .chain(state.complete_at)
            .min();
        oldest.map_or(Duration::ZERO, |at| at.elapsed())
    }
}

/// How a query's shape check ended when it did not pass.
enum ShapeCheck {
    /// The configuration is wrong: the start stops.
    Wrong(SqlGroupsError),
    /// The database could not be asked: checked again once it answers.
    Unreachable(sqlx::Error),
}

impl ShapeCheck {
    fn of(key: &'static str, error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Database(_) => {
                ShapeCheck::Wrong(SqlGroupsError::Refused { key, source: error })
            }
            other => ShapeCheck::Unreachable(other),
        }
    }

    fn wrong(key: &'static str, message: String) -> Self {
        ShapeCheck::Wrong(SqlGroupsError::Shape { key, message })
    }
}

fn parameter_count<T>(parameters: Option<sqlx::Either<&[T], usize>>) -> Option<usize> {
    parameters.map(|p| p.either(<[T]>::len, |count| count))
}

/// The first `count` columns are text, and there are at least that many.
fn text_columns<DB>(
    key: &'static str,
    columns: &[DB::Column],
    count: usize,
) -> Result<(), ShapeCheck>
where
    DB: Database,
    String: Type<DB>,
{
    if columns.len() < count {
        return Err(ShapeCheck::wrong(
            key,
            format!(
                "returns {} columns; it must return {count} (text)",
                columns.len()
            ),
        ));
    }
    for column in &columns[..count] {
        if !<String as Type<DB>>::compatible(column.type_info()) {
            return Err(ShapeCheck::wrong(
                key,
                format!(
                    "its column `{}` is {}, not text: a group is named by its text",
                    column.name(),
                    column.type_info().name()
                ),
            ));
        }
    }
    Ok(())
}

#[async_trait]
impl GroupSource for SqlGroups {
    async fn groups_for(&self, app: &AppName) -> Result<Vec<GroupRoute>, GroupsError> {
        let stale_max = self.settings.stale_max;
        let route = |groups: &[AppName], read_at: Instant| -> Vec<GroupRoute> {
            groups
                .iter()
                .map(|group| GroupRoute {
                    group: group.clone(),
                    source: RouteSource::Sql,
                    age: Some(read_at.elapsed()),
                })
                .collect()
        };
        {
            let state = read(&self.state);
            if let Some(known) = state.apps.get(app)
                && known.read_at.elapsed() <= stale_max
            {
                return Ok(route(&known.groups, known.read_at));
            }
            if let Some(complete_at) = state.complete_at
                && complete_at.elapsed() <= stale_max
                && !state.apps.contains_key(app)
            {
                // The whole table, read recently, lists no group for it.
                return Ok(Vec::new());
            }
        }
        // Never read (or read too long ago): the table is asked now, on this operation's path.
        match self.ask(app).await {
            Ok(groups) => {
                let now = Instant::now();
                let routes = route(&groups, now);
                write(&self.state).apps.insert(
                    app.clone(),
                    Known {
                        groups,
                        read_at: now,
                    },
                );
                // The database answers: whatever kept it away is over.
                self.answered();
                Ok(routes)
            }
            Err(e) => {
                let reason = format!(
                    "the route table cannot be read ({e}) and no mapping of it \
                    younger than groups.sql.stale_max is known"
                );
                self.trouble(e.to_string());
                Err(GroupsError::Unavailable {
                    app: app.clone(),
                    reason,
                })
            }
        }
    }

    fn health(&self) -> GroupsHealth {
        let (since, why, usable) = {
            let state = read(&self.state);
            let Some((since, why)) = &state.trouble else {
                return GroupsHealth::Fresh;
            };
            let usable = !state.apps.is_empty() || state.complete_at.is_some();
            (*since, why.clone(), usable)
        };
        let age = self.oldest_age();
        let down = since.elapsed().as_secs();
        if usable && age <= self.settings.stale_max {
            GroupsHealth::Stale(format!(
                "the groups database cannot be read for {down} s ({why}); the mapping read {} s \
                 ago is used until it is older than groups.sql.stale_max",
                age.as_secs()
            ))
        } else {
            GroupsHealth::Unavailable(format!(
                "the groups database cannot be read for {down} s ({why}), and no mapping of it \
                 is young enough to use"
            ))
        }
    }

    async fn run(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.refresh);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and `open` has just read the mapping.
        ticker.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.refresh() => {}
            }
        }
    }
}
