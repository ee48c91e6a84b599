//! The `nacos` registry kind: Spring Cloud Alibaba instances in a Nacos 2.x or 3.x cluster.
//!
//! Nacos has no index from an IP to its services, and its plain `instance/list` and its
//! gRPC pushes leave disabled instances out (protocol notes 3.4, 3.6), while every instance
//! synchspeed holds is disabled. So the copy is read from the catalog (v1
//! `catalog/instances`, v3 `admin/ns/instance/list`), which shows them, service by service:
//!
//! * every `refresh`: each group's service list (new services read at once, gone ones
//!   dropped), and the services that have a disabled instance, or lost one in the last
//!   [`MEMORY`] (where a held instance departs, and where a new pod on the same IP:port comes
//!   up disabled): the few that keeping the word depends on;
//! * at once, a service whose subscription over gRPC (`push`) says it changed: new
//!   instances, departures of enabled ones, someone disabling one, a re-registration;
//! * in turn, `sweep_per_second` other services a second: the safety net for what neither
//!   shows (pushes off or down).
//!
//! At 1,000 services that is about 1 + 5 reads a second, plus one per push.
//!
//! Offline and online are `enabled=false` and `enabled=true` by partial update (v1 `PATCH`,
//! v3 `PUT .../partial`), which keeps weight and metadata; each write is read back.

pub mod client;
pub mod model;
mod push;
mod read;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use self::client::{INSTANCE_PATCH, NacosClient};
use self::model::Placement;
use super::cache::InstanceCache;
use super::{Observed, Registry, RegistryError, Sighting, StatusChange};
use crate::config::NacosSettings;
use crate::domain::{Action, AppName, Instance, InstanceKey, PeerOutcome, PeerResult, Status};
use crate::sync::lock;

/// How long Nacos keeps an instance's operator layer (`enabled`, weight, metadata) after
/// the instance is gone (`nacos.naming.clean.expired-metadata.expired-time`, 60 s, checked
/// every 5 s), with a margin: a registration on the same IP:port within it comes up with
/// the old layer, disabled.
pub const MEMORY: Duration = Duration::from_secs(90);
/// Services read at once.
const READ_CONCURRENCY: usize = 8;
/// A caller's miss reads every service at most this often (a miss costs one read per
/// service: it must not be something a caller can repeat at will).
const FULL_READ_GAP: Duration = Duration::from_secs(5);

/// A service of one group, in Nacos's spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub group: String,
    pub service: String,
}

#[derive(Debug, Default)]
struct Known {
    keys: BTreeSet<InstanceKey>,
    /// Whether one of its instances is disabled: watched every refresh.
    disabled: bool,
}

#[derive(Debug, Default)]
struct Book {
    services: BTreeMap<ServiceRef, Known>,
    /// Services that lost a disabled instance, watched until then.
    remembered: HashMap<ServiceRef, Instant>,
    /// Where the sweep goes on from.
    cursor: Option<ServiceRef>,
    last_full_read: Option<Instant>,
}

pub struct NacosRegistry {
    client: NacosClient,
    metrics: Arc<crate::telemetry::Metrics>,
    cache: InstanceCache,
    book: Mutex<Book>,
    /// Services a push said changed, read with the next pass.
    dirty: Mutex<BTreeSet<ServiceRef>>,
    /// `Some(reason)` while the copy cannot be trusted.
    trouble: Mutex<Option<String>>,
    /// One read of everything at a time.
    full_read: tokio::sync::Mutex<()>,
}

impl NacosRegistry {
    pub fn new(
        settings: &NacosSettings,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Result<Arc<Self>, RegistryError> {
        Ok(Arc::new(Self {
            client: NacosClient::new(settings)?,
            metrics,
            cache: InstanceCache::default(),
            book: Mutex::default(),
            dirty: Mutex::default(),
            trouble: Mutex::new(Some("Nacos not read yet".into())),
            full_read: tokio::sync::Mutex::new(()),
        }))
    }

    fn settings(&self) -> &NacosSettings {
        self.client.settings()
    }

    /// One status write through the partial update.
    async fn write_status(
        &self,
        instance: &Instance,
        status: Status,
    ) -> Result<StatusChange, RegistryError> {
        let placement = placement_of(&instance.instance_id)?;
        let mut params = self
            .client
            .instance_params(&placement, instance.ip, instance.port);
        let enabled = status != Status::OutOfService;
        params.push(("enabled", enabled.to_string()));
        let answer = self.client.send(&INSTANCE_PATCH, &params).await?;
        let said = model::excerpt(&answer.body);
        match answer.status {
            StatusCode::OK => {
                model::write_accepted(&answer.body).map_err(|why| {
                    RegistryError::malformed(format!(
                        "{} answered the update of {} with {why}",
                        answer.server, instance.instance_id
                    ))
                })?;
                self.cache.set_status(&instance.key(), status);
                Ok(StatusChange {
                    peers: vec![PeerResult {
                        peer: format!("nacos:{}", answer.server),
                        outcome: PeerOutcome::Accepted,
                        verified_status: None,
                        error: None,
                    }],
                })
            }
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
                Err(RegistryError::Refused(format!(
                    "{} did not allow the update ({}): {said}",
                    answer.server, answer.status
                )))
            }
            _ if model::says_not_found(&answer.body) => Err(RegistryError::NotFound),
            other => Err(RegistryError::Refused(format!(
                "{} refused enabled={enabled} ({other}): {said}",
                answer.server
            ))),
        }
    }

    /// Reads a written instance back into `peers`.
    async fn verify_status(&self, instance: &Instance, status: Status, peers: &mut [PeerResult]) {
        let Ok(placement) = placement_of(&instance.instance_id) else {
            return;
        };
        let service = ServiceRef {
            group: placement.group,
            service: placement.service,
        };
        let read = self.read_service(&service).await;
        for peer in peers.iter_mut() {
            match &read {
                Ok(instances) => match instances.iter().find(|i| i.key() == instance.key()) {
                    Some(found) => {
                        peer.verified_status = Some(found.status);
                        let wanted_enabled = status != Status::OutOfService;
                        let enabled = found.status != Status::OutOfService;
                        if enabled != wanted_enabled {
                            peer.error =
                                Some(format!("read back as enabled={enabled} after the write"));
                        }
                    }
                    None => peer.error = Some("gone from the catalog when read back".into()),
                },
                Err(e) => peer.error = Some(format!("cannot read it back: {e}")),
            }
        }
        if let Ok(instances) = read {
            self.apply(&service, instances);
        }
    }
}

/// Where `instance` sits in Nacos: from its id, which synchspeed builds from the placement.
fn placement_of(instance_id: &str) -> Result<Placement, RegistryError> {
    Placement::of_id(instance_id)
        .map(|(placement, _)| placement)
        .ok_or_else(|| {
            RegistryError::Refused(format!(
                "'{instance_id}' is not a Nacos registration (ip#port#cluster#group@@service)"
            ))
        })
}

#[async_trait]
impl Registry for NacosRegistry {
    fn kind(&self) -> &'static str {
        "nacos"
    }

    async fn instances_on(&self, ip: IpAddr) -> Result<Vec<Instance>, RegistryError> {
        self.cache.loaded_on_ip(ip, "Nacos not read yet")
    }

    async fn instances_of(&self, app: &AppName) -> Result<Vec<Instance>, RegistryError> {
        self.cache.loaded_of_app(app, "Nacos not read yet")
    }

    fn app_version(&self, app: &AppName) -> Option<u64> {
        Some(self.cache.app_version(app))
    }

    async fn set_status(
        &self,
        instance: &Instance,
        status: Status,
    ) -> Result<StatusChange, RegistryError> {
        let written = self.write_status(instance, status).await;
        if written.is_err() {
            self.metrics.registry_error("nacos", "write_status");
        }
        written
    }

    async fn verify(&self, instance: &Instance, status: Status, peers: &mut [PeerResult]) {
        self.verify_status(instance, status, peers).await;
        if peers.iter().any(|peer| peer.error.is_some()) {
            self.metrics.registry_error("nacos", "verify");
        }
    }
    async fn refresh(&self) -> Result<(), RegistryError> {
        let recent = lock(&self.book)
            .last_full_read
            .is_some_and(|at| at.elapsed() < FULL_READ_GAP);
        if recent {
            return self.pass().await;
        }
        self.read_everything().await
    }

    async fn readiness(&self) -> Result<(), RegistryError> {
        if let Some(why) = self.client.login_trouble() {
            return Err(RegistryError::Refused(why));
        }
        match lock(&self.trouble).clone() {
            None => Ok(()),
            Some(reason) => Err(RegistryError::unreachable(reason)),
        }
    }

    fn changes(&self) -> Option<broadcast::Receiver<Observed>> {
        Some(self.cache.subscribe())
    }

    /// Asked at the source: the service's catalog, read now, and the registration by itself
    /// when the catalog leaves it out (after a restart the copy may not know a disabled
    /// instance that rnacos's catalog hides: this is how the reconciler's first pass finds
    /// each hold's).
    async fn sightings(&self, key: &InstanceKey, ip: IpAddr) -> Vec<(String, Sighting)> {
        let peer = self.kind().to_owned();
        let Some((placement, port)) = Placement::of_id(&key.instance_id) else {
            return vec![(peer, Sighting::Absent)];
        };
        let service = ServiceRef {
            group: placement.group,
            service: placement.service,
        };
        let mut instances = match self.read_service(&service).await {
            Ok(instances) => instances,
            Err(e) => return vec![(peer, Sighting::Unknown(e.to_string()))],
        };
        if !instances.iter().any(|i| i.key() == *key) {
            let assumed = Instance {
                app: key.app.clone(),
                instance_id: key.instance_id.clone(),
                ip,
                port,
                // Left out of a catalog that lists every enabled instance: disabled.
                status: Status::OutOfService,
                registered_at: None,
                metadata: BTreeMap::new(),
            };
            match self.read_detail(&service, assumed).await {
                Ok(Some(found)) => instances.push(found),
                Ok(None) => {}
                Err(e) => return vec![(peer, Sighting::Unknown(e.to_string()))],
            }
        }
        let sighting = instances
            .iter()
            .find(|i| i.key() == *key)
            .cloned()
            .map_or(Sighting::Absent, Sighting::Present);
        self.apply(&service, instances);
        vec![(peer, sighting)]
    }

    fn operator_state_outlives_instance(&self) -> Option<Duration> {
        Some(MEMORY)
    }

    fn placement(&self, instance_id: &str) -> Option<(String, String)> {
        Placement::of_id(instance_id).map(|(p, _)| (p.group, p.cluster))
    }

    fn plan_warnings(&self, action: Action, instances: &[Instance]) -> Vec<String> {
        if action != Action::Offline {
            return Vec::new();
        }
        let taken: BTreeSet<InstanceKey> = instances.iter().map(Instance::key).collect();
        let apps: BTreeSet<&AppName> = instances.iter().map(|i| &i.app).collect();
        apps.into_iter()
            .filter(|app| {
                let all = self.cache.of_app(app);
                all.iter()
                    .filter(|i| i.status == Status::Up)
                    .all(|i| taken.contains(&i.key()))
            })
            .map(|app| {
                format!(
                    "this takes the last enabled instance of Nacos service {app} offline: Nacos SDK consumers keep their last non-empty instance list (updateCacheWhenEmpty is false by default) and keep routing to it"
                )
            })
            .collect()
    }

    async fn run(&self, shutdown: CancellationToken) {
        let (services, followed) = watch::channel(Vec::new());
        let mut pushed = if self.settings().push {
            push::spawn(self.settings(), followed, shutdown.clone())
        } else {
            // No sender: `recv` answers None at once, and that branch is switched off.
            tokio::sync::mpsc::unbounded_channel().1
        };
        let mut pushes_on = self.settings().push;
        let mut ticker = tokio::time::interval(self.settings().refresh);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pause = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                changed = pushed.recv(), if pushes_on => match changed {
                    Some(service) => {
                        lock(&self.dirty).insert(service);
                        if self.cache.is_loaded() {
                            // Read what pushes named at once, not at the next tick.
                            let dirty: Vec<ServiceRef> =
                                std::mem::take(&mut *lock(&self.dirty)).into_iter().collect();
                            self.read_and_apply(dirty).await;
                            continue;
                        }
                    }
                    None => pushes_on = false,
                },
            }
            match self.pass().await {
                Ok(()) => {
                    self.set_trouble(None);
                    pause = Duration::from_millis(200);
                    services.send_if_modified(|followed| {
                        let known = self.known_services();
                        let changed = *followed != known;
                        *followed = known;
                        changed
                    });
                }
                Err(e) => {
                    warn!("Nacos refresh failed: {e}");
                    self.set_trouble(Some(e.to_string()));
                    if !self.cache.is_loaded() {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}
