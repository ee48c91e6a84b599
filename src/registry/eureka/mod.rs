//! One room past 500 lines: the delta protocol, the writes and the watch on failed peers share
//! the copy and its bookkeeping.
//!
//! The Eureka backend: a local copy of the registry kept fresh with deltas, and status writes
//! to every peer (Netflix/eureka's `DiscoveryClient` delta protocol, and
//! `InstanceResource.statusUpdate` on each peer).

mod client;
pub mod model;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use client::{EurekaClient, Peer, PeerError};
use model::{Applications, Unindexable, reconcile_hash};

use super::cache::{Change, InstanceCache};
use super::{Observed, Registry, RegistryError, Sighting, StatusChange};
use crate::config::EurekaSettings;
use crate::domain::{AppName, Instance, InstanceKey, PeerOutcome, PeerResult, Status};
use crate::telemetry::Metrics;

/// Bookkeeping for the delta protocol. `apps__hashcode` counts every instance in the
/// registry, including those the cache cannot hold (no usable address): `unindexed` keeps their
/// statuses, so that the cache's counts plus these match, and a copy that left them out would
/// not mismatch on every delta and refetch forever.
#[derive(Debug, Default)]
struct Mirror {
    unindexed: HashMap<InstanceKey, Status>,
    /// The result of the last refresh: `None` after a success, the reason after a failure.
    last_error: Option<String>,
    last_success: Option<Instant>,
}

pub struct EurekaRegistry {
    client: EurekaClient,
    cache: InstanceCache,
    mirror: Mutex<Mirror>,
    /// Serialises refreshes: deltas must be applied one at a time, in order.
    refreshing: tokio::sync::Mutex<()>,
    /// Counts synchspeed's own status writes. One that lands while a delta is on its way
    /// is in the cache but not in that delta's hash code: the hash check of that delta would
    /// mismatch, and a full fetch of the whole registry would follow every busy second.
    writes: AtomicU64,
    refresh_every: Duration,
    metrics: Arc<Metrics>,
    /// Peers (by index) that failed a write or a read: probed every `PEER_PROBE_EVERY`
    /// until they answer, and then every hold is checked on them at once.
    failed_peers: Mutex<HashSet<usize>>,
}

/// How often a peer that failed is asked whether it answers again.
const PEER_PROBE_EVERY: Duration = Duration::from_secs(1);

impl EurekaRegistry {
    pub fn new(settings: &EurekaSettings, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            client: EurekaClient::new(http, &settings.urls, settings.timeout),
            cache: InstanceCache::default(),
            mirror: Mutex::default(),
            refreshing: tokio::sync::Mutex::new(()),
            writes: AtomicU64::new(0),
            refresh_every: settings.refresh,
            metrics,
            failed_peers: Mutex::default(),
        }
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        crate::sync::lock(&self.mirror)
    }

    fn peer_errors(&self, call: &str, errors: Vec<PeerError>) -> RegistryError {
        self.metrics.registry_error("eureka", call);
        let text = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if errors
            .iter()
            .all(|e| matches!(e, PeerError::Malformed { .. }))
            && !errors.is_empty()
        {
            RegistryError::malformed(text)
        } else {
            RegistryError::unreachable(text)
        }
    }

    /// Full fetch: the whole registry replaces the cache.
    async fn fetch_full(&self) -> Result<(), RegistryError> {
        let envelope = self
            .client
            .get_applications(false)
            .await
            .map_err(|errors| self.peer_errors("get_apps", errors))?;
        let (instances, unindexed) = index(envelope.applications);
        let count = instances.len();
        self.cache.replace_all(instances);
        self.mirror().unindexed = unindexed;
        debug!(instances = count, "eureka: full registry fetched");
        Ok(())
    }

    /// Delta fetch, applied idempotently (the same change shows up in several deltas), then
    /// the hash check: on a mismatch the copy has drifted and a full fetch replaces it, as
    /// `DiscoveryClient.getAndUpdateDelta` does.
    async fn fetch_delta(&self) -> Result<(), RegistryError> {
        let writes_before = self.writes.load(Ordering::SeqCst);
        let envelope = match self.client.get_applications(true).await {
            Ok(envelope) => envelope,
            Err(errors) => {
                // Delta disabled (403) or a broken delta: a full fetch still keeps us current.
                debug!(errors = ?errors, "eureka: delta failed, fetching the full registry");
                return self.fetch_full().await;
            }
        };
        let delta = envelope.applications;
        let expected_hash = delta.apps_hashcode.clone();
        let hash = self.apply_delta(delta);
        match expected_hash.as_deref() {
            Some(expected) if expected != hash => {
                if self.writes.load(Ordering::SeqCst) != writes_before {
                    // Our own write raced the delta; the next quiet delta checks the copy.
                    debug!(expected, local = %hash, "eureka: hash check skipped, a write raced the delta");
                    return Ok(());
                }
                debug!(expected, local = %hash, "eureka: hash mismatch after delta, full fetch");
                self.fetch_full().await
            }
            _ => Ok(()),
        }
    }

    /// Applies a delta idempotently and returns the local copy's hash code after it. The
    /// changes are applied in the delta's order: when one instance appears more than once,
    /// the last entry is its current state.
    fn apply_delta(&self, delta: Applications) -> String {
        let mut changes = Vec::new();
        let mut mirror = self.mirror();
        for app in delta.application {
            for info in app.instance {
                let deleted = info.deleted;
                match info.into_instance(&app.name) {
                    Ok(instance) => {
                        mirror.unindexed.remove(&instance.key());
                        changes.push(if deleted {
                            Change::Remove(instance.key())
                        } else {
                            Change::Upsert(instance)
                        });
                    }
                    Err(Unindexable { key: Some(key), .. }) if deleted => {
                        mirror.unindexed.remove(&key);
                        changes.push(Change::Remove(key));
                    }
                    Err(Unindexable {
                        key: Some(key),
                        status,
                        why,
                    }) => {
                        // It may have been indexable before; it is not any more.
                        keep_unindexed(&mut mirror.unindexed, key.clone(), status, &why);
                        changes.push(Change::Remove(key));
                    }
                    Err(Unindexable { key: None, why, .. }) => {
                        warn!(app = %app.name, "eureka: delta entry skipped: {why}");
                    }
                }
            }
        }
        // The same change shows up in every delta for 3 minutes; the cache skips what it
        // already has, so a busy registry costs no index updates.
        self.cache.apply(changes);
        self.local_hash(&mirror)
    }

    /// `apps__hashcode` of the local copy: the cache's statuses and the unindexed ones.
    fn local_hash(&self, mirror: &Mirror) -> String {
        let mut counts = self.cache.status_counts();
        for status in mirror.unindexed.values() {
            *counts.entry(*status).or_default() += 1;
        }
        reconcile_hash(&counts)
    }

    async fn refresh_now(&self) -> Result<(), RegistryError> {
        let result = if self.cache.is_loaded() {
            self.fetch_delta().await
        } else {
            self.fetch_full().await
        };
        let mut mirror = self.mirror();
        match &result {
            Ok(()) => {
                mirror.last_error = None;
                mirror.last_success = Some(Instant::now());
            }
            Err(e) => mirror.last_error = Some(e.to_string()),
        }
        result
    }

    fn peer_failed(&self, peer: &Peer) {
        if let Some(index) = self.client.peers.iter().position(|p| std::ptr::eq(p, peer)) {
            crate::sync::lock(&self.failed_peers).insert(index);
        }
    }

    /// Asks each peer that failed whether it answers now (an uncached read of an instance
    /// that does not exist: 404 is an answer); those that do are announced.
    async fn probe_failed_peers(&self) {
        let failed: Vec<usize> = crate::sync::lock(&self.failed_peers)
            .iter()
            .copied()
            .collect();
        for index in failed {
            let Some(peer) = self.client.peers.get(index) else {
                continue;
            };
            let answer = self
                .client
                .get_instance(peer, "SYNCHSPEED-PROBE", "synchspeed-probe")
                .await;
            if matches!(answer, Ok(_) | Err(PeerError::Status { status: 404, .. })) {
                crate::sync::lock(&self.failed_peers).remove(&index);
                info!(
                    peer = peer.display(),
                    "eureka: a peer that had failed answers again; checking every hold on it"
                );
                self.cache
                    .announce(Observed::PeerBack(peer.display().to_owned()));
            }
        }
    }

    /// One peer's write.
    async fn write_peer(&self, peer: &Peer, instance: &Instance, status: Status) -> PeerResult {
        let mut result = PeerResult {
            peer: peer.display().to_owned(),
            outcome: PeerOutcome::Accepted,
            verified_status: None,
            error: None,
        };
        let (app, id) = (instance.app.as_str(), &*instance.instance_id);
        if let Err(error) = self.client.write_status(peer, app, id, status).await {
            self.metrics.registry_error("eureka", "write_status");
            result.outcome = error.write_outcome();
            result.error = Some(error.to_string());
            if result.outcome != PeerOutcome::NotFound {
                self.peer_failed(peer);
            }
        }
        result
    }

    /// What one peer shows after it accepted a write, read from the registry itself.
    async fn read_back(
        &self,
        peer: &Peer,
        instance: &Instance,
        status: Status,
        result: &mut PeerResult,
    ) {
        let (app, id) = (instance.app.as_str(), &*instance.instance_id);
        match self.client.get_instance(peer, app, id).await {
            Ok(info) => {
                let verified = info.status();
                result.verified_status = Some(verified);
                if verified != status {
                    // Accepted but not showing: an instance that reports DOWN or STARTING
                    // keeps that status (DownOrStartingRule), and a DELETE without an override
                    // to remove is a no-op. The write still stands; say what the peer shows.
                    result.error = Some(format!(
                        "accepted, but the peer shows {verified} (the instance's own status wins until it changes)"
                    ));
                }
            }
            Err(error) => {
                self.metrics.registry_error("eureka", "verify");
                result.error = Some(format!("accepted, not verified: {error}"));
            }
        }
    }
}

/// Keeps the status of an instance the cache cannot hold (the hash code counts it) and says
/// why it is not indexed.
fn keep_unindexed(
    unindexed: &mut HashMap<InstanceKey, Status>,
    key: InstanceKey,
    status: Status,
    why: &model::Unusable,
) {
    warn!(app = %key.app, id = %key.instance_id, "eureka: instance not indexed: {why}");
    unindexed.insert(key, status);
}

/// Every instance of a full registry: the indexable ones, and the status of the others.
fn index(apps: Applications) -> (Vec<Instance>, HashMap<InstanceKey, Status>) {
    let mut instances = Vec::new();
    let mut unindexed = HashMap::new();
    for app in apps.application {
        for info in app.instance {
            match info.into_instance(&app.name) {
                Ok(instance) => instances.push(instance),
                Err(Unindexable {
                    key: Some(key),
                    status,
                    why,
                }) => keep_unindexed(&mut unindexed, key, status, &why),
                Err(Unindexable { key: None, why, .. }) => {
                    warn!(app = %app.name, "eureka: instance skipped: {why}");
                }
            }
        }
    }
    (instances, unindexed)
}

/// The overall result of a write from every peer's answer: made when one peer accepted it.
fn aggregate(peers: Vec<PeerResult>) -> Result<StatusChange, RegistryError> {
    if peers.iter().any(|p| p.outcome == PeerOutcome::Accepted) {
        return Ok(StatusChange { peers });
    }
    let text = peers
        .iter()
        .filter_map(|p| p.error.clone())
        .collect::<Vec<_>>()
        .join("; ");
    if peers.iter().all(|p| p.outcome == PeerOutcome::NotFound) {
        Err(RegistryError::NotFound)
    } else if peers.iter().any(|p| p.outcome == PeerOutcome::Refused) {
        Err(RegistryError::Refused(text))
    } else {
        Err(RegistryError::unreachable(text))
    }
}

#[async_trait]
impl Registry for EurekaRegistry {
    fn kind(&self) -> &'static str {
        "eureka"
    }

    /// What every refresh (delta or full fetch) changes, and peers that answer again.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Observed>> {
        Some(self.cache.subscribe())
    }

    async fn instances_on(&self, ip: IpAddr) -> Result<Vec<Instance>, RegistryError> {
        if !self.cache.is_loaded() {
            return Err(RegistryError::NotReady(
                self.mirror()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the first fetch has not finished".into()),
            ));
        }
        Ok(self.cache.on_ip(ip))
    }

    async fn instances_of(&self, app: &AppName) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.cache.of_app(app))
    }

    fn app_version(&self, app: &AppName) -> Option<u64> {
        Some(self.cache.app_version(app))
    }

    async fn set_status(
        &self,
        instance: &Instance,
        status: Status,
    ) -> Result<StatusChange, RegistryError> {
        let peers = join_all(
            self.client
                .peers
                .iter()
                .map(|peer| self.write_peer(peer, instance, status)),
        )
        .await;
        let change = aggregate(peers)?;
        self.cache.set_status(&instance.key(), status);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(change)
    }

    async fn verify(&self, instance: &Instance, status: Status, peers: &mut [PeerResult]) {
        let checks = peers
            .iter_mut()
            .filter(|result| result.outcome == PeerOutcome::Accepted)
            .filter_map(|result| {
                let peer = self
                    .client
                    .peers
                    .iter()
                    .find(|peer| peer.display() == result.peer)?;
                Some(self.read_back(peer, instance, status, result))
            });
        join_all(checks).await;
    }

    /// Every peer, uncached (`GET apps/{APP}/{id}` reads the registry itself, §1.6): a peer
    /// that missed a write or lost its override map shows it here before any cache does.
    async fn sightings(&self, key: &InstanceKey, _ip: IpAddr) -> Vec<(String, Sighting)> {
        let app = key.app.as_str();
        let id = &*key.instance_id;
        join_all(self.client.peers.iter().map(|peer| async move {
            let sighting = match self.client.get_instance(peer, app, id).await {
                Ok(info) => match info.into_instance(app) {
                    Ok(instance) => Sighting::Present(instance),
                    Err(unindexable) => {
                        Sighting::Unknown(format!("{}: {}", peer.display(), unindexable.why))
                    }
                },
                Err(PeerError::Status { status: 404, .. }) => Sighting::Absent,
                Err(error) => {
                    self.metrics.registry_error("eureka", "verify");
                    self.peer_failed(peer);
                    Sighting::Unknown(error.to_string())
                }
            };
            (peer.display().to_owned(), sighting)
        }))
        .await
    }

    async fn refresh(&self) -> Result<(), RegistryError> {
        // Single flight: a caller that finds a refresh under way waits for it and uses its
        // result rather than starting another.
        if let Ok(_guard) = self.refreshing.try_lock() {
            return self.refresh_now().await;
        }
        let _wait = self.refreshing.lock().await;
        match self.mirror().last_error.clone() {
            None => Ok(()),
            Some(error) => Err(RegistryError::unreachable(error)),
        }
    }

    async fn readiness(&self) -> Result<(), RegistryError> {
        let mirror = self.mirror();
        match (&mirror.last_error, self.cache.is_loaded()) {
            (None, true) => Ok(()),
            (Some(error), _) => Err(RegistryError::unreachable(error.clone())),
            (None, false) => Err(RegistryError::NotReady(
                "the first fetch has not finished".into(),
            )),
        }
    }

    async fn run(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.refresh_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probes = tokio::time::interval(PEER_PROBE_EVERY);
        probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                _ = probes.tick() => {
                    self.probe_failed_peers().await;
                    continue;
                }
            }
            match self.refresh().await {
                Ok(()) if failing => {
                    failing = false;
                    info!(
                        instances = self.cache.len(),
                        "eureka: registry reachable again"
                    );
                }
                Ok(()) => {}
                // Logged once per outage, not on every tick.
                Err(error) if !failing => {
                    failing = true;
                    warn!("eureka: refresh failed, serving the last copy: {error}");
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(outcome: PeerOutcome) -> PeerResult {
        PeerResult {
            peer: "http://p/".into(),
            outcome,
            verified_status: None,
            error: Some(format!("{outcome:?}")),
        }
    }

    #[test]
    fn one_accepting_peer_makes_the_change() {
        let change = aggregate(vec![
            peer(PeerOutcome::Unreachable),
            peer(PeerOutcome::Accepted),
        ])
        .unwrap();
        assert_eq!(change.peers.len(), 2);
    }

    #[test]
    fn failures_are_classified_for_the_caller() {
        assert!(matches!(
            aggregate(vec![
                peer(PeerOutcome::NotFound),
                peer(PeerOutcome::NotFound)
            ]),
            Err(RegistryError::NotFound)
        ));
        assert!(matches!(
            aggregate(vec![
                peer(PeerOutcome::Unreachable),
                peer(PeerOutcome::Refused)
            ]),
            Err(RegistryError::Refused(_))
        ));
        assert!(matches!(
            aggregate(vec![
                peer(PeerOutcome::Unreachable),
                peer(PeerOutcome::NotFound)
            ]),
            Err(RegistryError::Unreachable { .. })
        ));
    }
}
