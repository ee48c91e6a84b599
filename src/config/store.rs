//! `[store]`: where the journal and the desired state are kept.

use serde::{Deserialize, Serialize};

use super::registry::RedactedUrl;
use std::time::Duration;

use super::{ConfigError, invalid, positive_duration};

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `sqlite://path`; printed with any password hidden.
    pub url: RedactedUrl,
    /// Settled operations older than this are forgotten (not those in progress or holding).
    pub retention: Duration,
    /// How often the retention (and the idempotency keys' ttl) is applied.
    pub prune_every: Duration,
    /// The write-ahead log is truncated once it is past this many bytes.
    pub wal_max_bytes: u64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(serialize_with = "super::registry::redact_url_password")]
    url: String,
    retention: String,
    prune_every: String,
    wal_max_bytes: u64,
}

impl RawStore {
    pub(super) fn validate(self) -> Result<StoreSettings, ConfigError> {
        if !self.url.starts_with("sqlite:") {
            return Err(invalid(
                "store.url",
                "only sqlite: URLs are supported by this version (postgres is planned)",
            ));
        }
        if self.wal_max_bytes == 0 {
            return Err(invalid("store.wal_max_bytes", "must be at least 1"));
        }
        Ok(StoreSettings {
            url: RedactedUrl::new(self.url),
            retention: positive_duration("store.retention", &self.retention)?,
            prune_every: positive_duration("store.prune_every", &self.prune_every)?,
            wal_max_bytes: self.wal_max_bytes,
        })
    }
}
