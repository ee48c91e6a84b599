//! Registries: where instances are listed and where their status is written.
//!
//! [`Registry`] is what the orchestrator knows; one module per backend implements it. Lookups
//! are served from a local [`cache::InstanceCache`] with an IP index (a registry's own list
//! endpoints are cached and slow to scan); writes go to every authority and are verified with
//! an uncached read where the registry has one.

pub mod cache;
pub mod eureka;
pub mod file;
pub mod nacos;
pub mod zookeeper;

use std::net::IpAddr;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::domain::{Action, AppName, Instance, InstanceKey, PeerResult, Status};

/// The error underneath a registry error, kept for code that walks `source()`.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a registry call failed. `Unreachable` means nothing answered: the change was not made
/// anywhere, and it is worth trying again later. Each message says its cause already; the
/// cause itself is kept as the `source()` where there is one.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the registry cannot be reached: {detail}")]
    Unreachable {
        detail: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("the registry refused the change: {0}")]
    Refused(String),
    #[error("the registry does not know the instance")]
    NotFound,
    #[error("the registry answered something that does not parse: {detail}")]
    Malformed {
        detail: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("the registry cache is not loaded yet: {0}")]
    NotReady(String),
}

impl RegistryError {
    pub fn unreachable(detail: impl Into<String>) -> Self {
        RegistryError::Unreachable {
            detail: detail.into(),
            cause: None,
        }
    }

    /// Unreachable because of `cause`, said after `context`.
    pub fn unreachable_by(
        context: impl std::fmt::Display,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RegistryError::Unreachable {
            detail: format!("{context}: {cause}"),
            cause: Some(Box::new(cause)),
        }
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        RegistryError::Malformed {
            detail: detail.into(),
            cause: None,
        }
    }

    /// Malformed because of `cause`, said after `context`.
    pub fn malformed_by(
        context: impl std::fmt::Display,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RegistryError::Malformed {
            detail: format!("{context}: {cause}"),
            cause: Some(Box::new(cause)),
        }
    }
}

/// What a backend saw change, for keeping the word at the speed of the registry.
#[derive(Debug, Clone)]
pub enum Observed {
    /// An instance as it is now, after it changed (status, registration, address).
    Seen(Instance),
    /// An instance that is no longer registered (where the backend's copy came from).
    Left { key: InstanceKey, ip: IpAddr },
    /// A peer that had failed a write or a read answers again (Eureka).
    PeerBack(String),
}

/// What one authority says of one registration right now.
#[derive(Debug, Clone)]
pub enum Sighting {
    Present(Instance),
    Absent,
    /// It could not be asked (down, slow, garbled): nothing can be concluded from it.
    Unknown(String),
}

/// The result of writing a status: every authority's answer, with at least one acceptance.
#[derive(Debug, Clone)]
pub struct StatusChange {
    pub peers: Vec<PeerResult>,
}

#[async_trait]
pub trait Registry: Send + Sync {
    /// `eureka`, `file`: for logs and metrics.
    fn kind(&self) -> &'static str;

    /// The instances registered on `ip`, from the local cache. Errors only when the cache was
    /// never loaded (nothing is known yet).
    async fn instances_on(&self, ip: IpAddr) -> Result<Vec<Instance>, RegistryError>;

    /// The instances of one app (a gateway group's nodes), every status.
    async fn instances_of(&self, app: &AppName) -> Result<Vec<Instance>, RegistryError>;

    /// A number that changes whenever [`Self::instances_of`] `app` would answer differently,
    /// so what a caller derives from that answer can be kept until then. Read it before the
    /// instances: a change between the two then only costs one more derivation. `None` where
    /// the backend cannot tell.
    fn app_version(&self, _app: &AppName) -> Option<u64> {
        None
    }

    /// Writes `status` (OUT_OF_SERVICE or UP) for `instance` to every authority. Ok when at
    /// least one authority accepted; the answers of the others are in the result. Never
    /// deregisters.
    async fn set_status(
        &self,
        instance: &Instance,
        status: Status,
    ) -> Result<StatusChange, RegistryError>;

    /// Reads back what an accepted write left on each authority into `peers` (the
    /// `set_status` answers): the status a peer shows, and why it differs when it does. For
    /// the record only, so it runs while the gateways are told rather than before: a peer
    /// that took the write has it, whatever it shows. Backends whose write is its own
    /// verification (a compare-and-set) have nothing to add.
    async fn verify(&self, _instance: &Instance, _status: Status, _peers: &mut [PeerResult]) {}

    /// Brings the cache up to date now (a caller asked about an IP the cache does not know).
    async fn refresh(&self) -> Result<(), RegistryError>;

    /// Ok when the registry answered recently enough to be trusted.
    async fn readiness(&self) -> Result<(), RegistryError>;

    /// Keeps the cache fresh until `shutdown` is cancelled.
    async fn run(&self, shutdown: CancellationToken);

    /// What changes in the registry, as the backend's copy sees it (a watch, a delta, a
    /// full fetch, a re-read file): what the re-assertion path compares with the desired
    /// state at once. `None` for backends that keep no copy.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Observed>> {
        None
    }

    /// Whether a registration time identifies one process (Curator keeps it for the life of
    /// the process). Eureka stamps a new one on every `register`, even from the same process.
    fn registration_time_identifies_process(&self) -> bool {
        false
    }

    /// How long the registry keeps what synchspeed wrote of an instance after the instance
    /// is gone, so that a new registration on the same IP:port comes up with it (Nacos keeps
    /// its operator layer, `enabled=false` included, about 60 s). `None`: it keeps nothing.
    fn operator_state_outlives_instance(&self) -> Option<std::time::Duration> {
        None
    }

    /// The group and cluster an instance id names, where the registry has them (Nacos), to
    /// show on an operation's instances.
    fn placement(&self, _instance_id: &str) -> Option<(String, String)> {
        None
    }

    /// What a caller should know of taking these instances `action` in this registry that
    /// is no failure (Nacos: consumers that keep routing to the last instance of a service).
    fn plan_warnings(&self, _action: Action, _instances: &[Instance]) -> Vec<String> {
        Vec::new()
    }

    /// What each authority says of `key` (on `ip`) now, for the reconciler. The default reads
    /// the cache, which is authoritative for registries kept current by a watch; registries
    /// with several peers and cached lists ask each peer directly.
    async fn sightings(&self, key: &InstanceKey, ip: IpAddr) -> Vec<(String, Sighting)> {
        // A cache that is not current (a lost session, a failing refresh) proves nothing.
        let current = match self.readiness().await {
            Ok(()) => self.instances_on(ip).await,
            Err(e) => Err(e),
        };
        let sighting = match current {
            Ok(instances) => instances
                .into_iter()
                .find(|instance| instance.key() == *key)
                .map_or(Sighting::Absent, Sighting::Present),
            Err(e) => Sighting::Unknown(e.to_string()),
        };
        vec![(self.kind().to_owned(), sighting)]
    }
}
