//! `[cluster]`: several replicas over one PostgreSQL store. Only read when `store.url` is
//! `postgres://`; a SQLite store is one replica.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive_duration};

/// The shortest lease: renewals go every third of it, and a pause of the leader's process
/// (a garbage-collecting neighbour, a slow disk) must not cost it the lease.
const LEASE_MIN: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This replica's name; `None`: the host name and listening port, found at start.
    pub replica: Option<String>,
    /// The URL the other replicas relay calls to; `None`: from the bound listen address.
    pub advertise: Option<url::Url>,
    pub lease: Duration,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    replica: String,
    advertise: String,
    lease: String,
}

impl RawCluster {
    pub(super) fn validate(self) -> Result<ClusterSettings, ConfigError> {
        let replica = self.replica.trim();
        if replica.len() > 128 || replica.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "cluster.replica",
                "at most 128 printable characters",
            ));
        }
        let advertise = match self.advertise.trim() {
            "" => None,
            raw => {
                let url = url::Url::parse(raw).map_err(|e| {
                    invalid("cluster.advertise", format!("'{raw}' is not a URL: {e}"))
                })?;
                if url.scheme() != "http" || url.host().is_none() || url.path() != "/" {
                    return Err(invalid(
                        "cluster.advertise",
                        format!("'{raw}': http://host:port, without a path"),
                    ));
                }
                Some(url)
            }
        };
        let lease = positive_duration("cluster.lease", &self.lease)?;
        if lease < LEASE_MIN {
            return Err(invalid("cluster.lease", "must be at least 3s"));
        }
        Ok(ClusterSettings {
            replica: (!replica.is_empty()).then(|| replica.to_owned()),
            advertise,
            lease,
        })
    }
}
