//! `[store]`: where the journal and the desired state are kept.

use serde::{Deserialize, Serialize};

use super::registry::RedactedUrl;
use std::time::Duration;

use super::{ConfigError, invalid, positive_duration};

/// Which server the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One file, one replica: the embedded default.
    Sqlite,
    /// A server several replicas share (`[cluster]` applies).
    Postgres,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `sqlite://path` or `postgres://user:password@host/database`; printed with any
    /// password hidden.
    pub url: RedactedUrl,
    pub kind: StoreKind,
    /// Settled operations older than this are forgotten (not those in progress or holding).
    pub retention: Duration,
    /// How often the retention (and the idempotency keys' ttl) is applied.
    pub prune_every: Duration,
    /// SQLite: the write-ahead log is truncated once it is past this many bytes.
    pub wal_max_bytes: u64,
    /// PostgreSQL: connections in the pool.
    pub pool_size: u32,
    /// PostgreSQL: bounds a new connection and the wait for a free one.
    pub connect_timeout: Duration,
    /// PostgreSQL: the server cancels a statement running longer.
    pub statement_timeout: Duration,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(serialize_with = "super::registry::redact_url_password")]
    url: String,
    retention: String,
    prune_every: String,
    wal_max_bytes: u64,
    pool_size: u32,
    connect_timeout: String,
    statement_timeout: String,
}

impl RawStore {
    pub(super) fn validate(self) -> Result<StoreSettings, ConfigError> {
        let kind = if self.url.starts_with("sqlite:") {
            StoreKind::Sqlite
        } else if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            StoreKind::Postgres
        } else {
            return Err(invalid(
                "store.url",
                "must be sqlite://path (one replica) or postgres://... (one or more replicas)",
            ));
        };
        if kind == StoreKind::Postgres {
            url::Url::parse(&self.url)
                .map_err(|e| invalid("store.url", format!("not a postgres:// URL: {e}")))?;
        }
        if self.wal_max_bytes == 0 {
            return Err(invalid("store.wal_max_bytes", "must be at least 1"));
        }
        if self.pool_size == 0 {
            return Err(invalid("store.pool_size", "must be at least 1"));
        }
        Ok(StoreSettings {
            url: RedactedUrl::new(self.url),
            kind,
            retention: positive_duration("store.retention", &self.retention)?,
            prune_every: positive_duration("store.prune_every", &self.prune_every)?,
            wal_max_bytes: self.wal_max_bytes,
            pool_size: self.pool_size,
            connect_timeout: positive_duration("store.connect_timeout", &self.connect_timeout)?,
            statement_timeout: positive_duration(
                "store.statement_timeout",
                &self.statement_timeout,
            )?,
        })
    }
}
