//! `[store]`: where the journal and the desired state are kept.

use serde::{Deserialize, Serialize};

use super::registry::RedactedUrl;
use super::{ConfigError, invalid};

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `sqlite://path`; printed with any password hidden.
    pub url: RedactedUrl,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(serialize_with = "super::registry::redact_url_password")]
    url: String,
}

impl RawStore {
    pub(super) fn validate(self) -> Result<StoreSettings, ConfigError> {
        if !self.url.starts_with("sqlite:") {
            return Err(invalid(
                "store.url",
                "only sqlite: URLs are supported by this version (postgres is planned)",
            ));
        }
        Ok(StoreSettings {
            url: RedactedUrl::new(self.url),
        })
    }
}
