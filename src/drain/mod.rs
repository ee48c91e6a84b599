//! The orchestrator: plan, journal, registry, fan-out, then keeping the word. It knows the
//! traits of registry, groups, gateway and store, never a backend.
//!
//! One hop to each behaviour:
//! * [`execute`]: one request, from the dry run or the replay to the start of the fan-out;
//! * [`plan`]: targets → instances → gateway groups → nodes (a dry run stops there);
//! * [`idempotency`]: `Idempotency-Key` claims and replays;
//! * [`registry_step`]: the soft transaction (all or nothing, revert, failure codes);
//! * [`fanout_task`]: the background fan-out, recorded live and journaled as it settles;
//! * [`events`]: every change to an operation, published for the event streams;
//! * [`reassert`], [`reconcile`], [`resume`]: keeping the word after the answer;
//! * [`lanes`], [`index`], [`settling`]: per-IP order, the in-memory read views, and the
//!   settles answered before the journal has them. Each is one small type the orchestrator
//!   only calls through a few methods, so another implementation (several replicas sharing
//!   a store) can take its place.

mod backoff;
pub(crate) mod events;
mod execute;
mod fanout_task;
mod guard;
mod idempotency;
mod index;
mod lanes;
mod plan;
pub(crate) mod reassert;
pub(crate) mod reconcile;
mod registry_step;
mod request;
mod resume;
mod settling;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::warn;

use execute::record_settled;
use fanout_task::{LiveOperations, journal_as_it_stands};
use idempotency::ClaimedKeys;
use index::{HoldIndex, LastOperationIndex};
use lanes::Lanes;
pub(crate) use plan::Plan;
pub(crate) use request::{DrainError, DrainOutcome, DrainRequest};
use settling::Settling;

use crate::config::DrainSettings;
use crate::domain::{Hold, Instance, Operation, OperationId};
use crate::gateway::fanout::FanOut;
use crate::gateway::nodes::NodeDirectory;
use crate::groups::{GroupSource, GroupsHealth};
use crate::registry::{Registry, RegistryError};
use crate::store::{DesiredState, OperationFilter, OperationPage, Store, StoreError};
use crate::sync::lock;
use crate::telemetry::Metrics;

pub struct Orchestrator {
    registry: Arc<dyn Registry>,
    groups: Arc<dyn GroupSource>,
    nodes: NodeDirectory,
    fanout: FanOut,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: DrainSettings,
    replica: Option<String>,
    live: Arc<LiveOperations>,
    /// `drain.max_in_flight`: one permit per operation from journal to settled.
    in_flight: Arc<Semaphore>,
    /// Every background fan-out, so shutdown can wait for them.
    tasks: TaskTracker,
    /// The desired state, mirrored in memory for reads.
    holds: HoldIndex,
    /// Newest operation per IP, for reads.
    last_operations: LastOperationIndex,
    /// Operations on one IP run in the order they arrived.
    lanes: Lanes,
    /// Idempotency keys whose first request is still running.
    claimed_keys: ClaimedKeys,
    /// Settles answered from memory that the journal does not have yet.
    settling: Arc<Settling>,
    /// Cancelled when a shutdown's grace ends with fan-outs still running: callers still
    /// waiting on one are answered then, before the listener goes.
    grace_over: tokio_util::sync::CancellationToken,
    /// Signalled when a registry peer that had failed answers again: the reconciler checks
    /// every hold at once instead of at its next pass.
    recheck: tokio::sync::Notify,
    /// When each lost hold may be re-asserted again, shared by every path that finds one (a
    /// change, a peer back, the periodic pass): one loss is corrected once, and an instance
    /// that keeps reverting less and less often.
    reassertions: Mutex<backoff::Backoffs<crate::domain::InstanceKey>>,
    /// Holds that ended because their instance departed, in a registry that keeps
    /// synchspeed's offline for a while after (Nacos): a new registration on the same
    /// IP:port of the same app until then comes up disabled, and is enabled again.
    departed: Mutex<
        std::collections::HashMap<
            (std::net::IpAddr, u16, crate::domain::AppName),
            tokio::time::Instant,
        >,
    >,
    /// The latest dry runs, so that a planned operation's id can be fetched like any other
    /// for a while; never journaled (nothing happened).
    dry_runs: Mutex<std::collections::VecDeque<Operation>>,
    /// Every change to an operation, for the event streams.
    events: Arc<events::Events>,
}

/// Dry runs kept fetchable by id.
const DRY_RUNS_KEPT: usize = 256;

/// Dependencies of the orchestrator, built by `startup`.
pub struct Parts {
    pub registry: Arc<dyn Registry>,
    pub groups: Arc<dyn GroupSource>,
    pub nodes: NodeDirectory,
    pub fanout: FanOut,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub settings: DrainSettings,
    /// This replica's name, recorded on its operations (PostgreSQL stores only).
    pub replica: Option<String>,
}

/// Why the service cannot take operations now (`/readyz`).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("{kind} registry: {source}")]
    Registry {
        kind: &'static str,
        #[source]
        source: RegistryError,
    },
    #[error("store: {0}")]
    Store(#[source] StoreError),
    #[error("gateway groups: {0}")]
    Groups(String),
}

/// What the registry and synchspeed know of one IP.
#[derive(Debug)]
pub struct IpView {
    /// Registered instances on the IP, from the registry cache.
    pub registered: Vec<Instance>,
    /// The instances on it synchspeed holds out of service.
    pub held: Vec<Hold>,
    pub last_operation: Option<Operation>,
}

impl Orchestrator {
    /// Builds the orchestrator and loads its read views from the store.
    pub async fn open(parts: Parts) -> Result<Self, StoreError> {
        let holds = HoldIndex::load(parts.store.holds().await?);
        let last_operations = LastOperationIndex::load(parts.store.last_operation_ids().await?);
        Ok(Self {
            in_flight: Arc::new(Semaphore::new(parts.settings.max_in_flight)),
            registry: parts.registry,
            groups: parts.groups,
            nodes: parts.nodes,
            fanout: parts.fanout,
            store: parts.store,
            metrics: parts.metrics,
            settings: parts.settings,
            replica: parts.replica,
            live: Arc::default(),
            tasks: TaskTracker::new(),
            holds,
            last_operations,
            lanes: Lanes::default(),
            claimed_keys: ClaimedKeys::default(),
            settling: Arc::default(),
            dry_runs: Mutex::default(),
            recheck: tokio::sync::Notify::new(),
            grace_over: tokio_util::sync::CancellationToken::new(),
            reassertions: Mutex::default(),
            departed: Mutex::default(),
            events: Arc::default(),
        })
    }

    /// Every change to an operation, as it happens.
    pub fn events(&self) -> &events::Events {
        &self.events
    }

    pub fn settings(&self) -> &DrainSettings {
        &self.settings
    }

    /// `eureka`, `zookeeper`, `file`: for probes and logs.
    pub fn registry_kind(&self) -> &'static str {
        self.registry.kind()
    }

    /// Ok when the registry answered recently enough to be trusted, the store answers and
    /// the gateway groups can be looked up; with what is degraded but still served (a route
    /// table read a while ago while its database is away).
    pub async fn readiness(&self) -> Result<Vec<String>, NotReady> {
        self.registry
            .readiness()
            .await
            .map_err(|source| NotReady::Registry {
                kind: self.registry.kind(),
                source,
            })?;
        self.store.ping().await.map_err(NotReady::Store)?;
        match self.groups.health() {
            GroupsHealth::Fresh => Ok(Vec::new()),
            GroupsHealth::Stale(warning) => Ok(vec![warning]),
            GroupsHealth::Unavailable(why) => Err(NotReady::Groups(why)),
        }
    }

    /// Keeps the gateway groups' mapping fresh until `shutdown` (sources that cache one).
    pub async fn refresh_groups(&self, shutdown: tokio_util::sync::CancellationToken) {
        self.groups.run(shutdown).await;
    }

    /// Every instance held out of service, oldest first.
    pub fn holds(&self) -> Vec<Hold> {
        self.holds.all()
    }

    pub fn holds_on(&self, ip: IpAddr) -> Vec<Hold> {
        self.holds.on_ip(ip)
    }

    /// What the registry cache, the desired state and the journal say of `ip`.
    pub async fn ip_view(&self, ip: IpAddr) -> Result<IpView, DrainError> {
        let registered = self
            .registry
            .instances_on(ip)
            .await
            .map_err(DrainError::registry_unavailable)?;
        Ok(IpView {
            registered,
            held: self.holds.on_ip(ip),
            last_operation: self.last_operation_on(ip).await?,
        })
    }

    /// The newest operation that touched `ip`, if any.
    async fn last_operation_on(&self, ip: IpAddr) -> Result<Option<Operation>, StoreError> {
        match self.last_operations.get(ip) {
            Some(id) => self.operation(&id).await,
            None => Ok(None),
        }
    }

    /// An operation, live if its fan-out is running, one of the latest dry runs, else from
    /// the store.
    pub async fn operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        let live = lock(&self.live)
            .get(id)
            .map(|live| live.progress.borrow().clone())
            .or_else(|| {
                lock(&self.dry_runs)
                    .iter()
                    .find(|planned| planned.id == *id)
                    .cloned()
            });
        match live {
            Some(operation) => Ok(Some(operation)),
            None => self.store.operation(id).await,
        }
    }

    /// Journaled operations matching `filter`, newest first. Every operation a caller was
    /// already told has settled is listed as settled.
    pub async fn operations(&self, filter: &OperationFilter) -> Result<OperationPage, StoreError> {
        self.settling.journal_caught_up().await;
        self.store.operations(filter).await
    }

    /// Stops taking operations and waits up to `grace` for the running fan-outs.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.tasks.close();
        let finished = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !finished {
            self.grace_over.cancel();
            warn!(
                running = self.tasks.len(),
                "shutdown grace elapsed with fan-outs still running; journaling where they stand"
            );
            // The next start resumes from here and tells only the nodes that had not
            // answered yet.
            let snapshots: Vec<(Operation, Arc<Mutex<Option<DesiredState>>>)> = lock(&self.live)
                .values()
                .map(|live| {
                    (
                        live.progress.borrow().clone(),
                        Arc::clone(&live.unjournaled),
                    )
                })
                .collect();
            for (operation, unjournaled) in snapshots {
                let written = journal_as_it_stands(self.store.as_ref(), &operation, &unjournaled);
                if let Err(e) = written.await {
                    tracing::error!(operation = %operation.id, "cannot journal the unfinished operation: {e}");
                }
            }
        }
        // Nothing changes any more: the event streams end, and hold no connection open.
        self.events.close();
        finished
    }
}

impl Orchestrator {
    /// Whether a lost hold on `key` is to be re-asserted now; if so, the next one waits
    /// (doubling from a second, or the reconciler's pass when shorter, up to
    /// `drain.retry_max`), backed off even when it works: a peer that keeps reverting it is
    /// corrected less and less often rather than in a tight loop.
    fn reassertion_due(&self, key: &crate::domain::InstanceKey) -> bool {
        let now = tokio::time::Instant::now();
        let base = self.settings.reconcile_every.min(Duration::from_secs(1));
        let max = self.settings.retry_max.max(base);
        let mut backoffs = lock(&self.reassertions);
        if !backoffs.due(key, now) {
            return false;
        }
        backoffs.failed(key, now, base, max);
        true
    }

    /// The re-assertion of `key` did not land (the registry restarting): it is tried again
    /// at the next change or pass, not a back-off later.
    fn retry_reassertion_soon(&self, key: &crate::domain::InstanceKey) {
        lock(&self.reassertions).clear(key);
    }

    /// A registry peer that was away answers again: the re-assertions tried meanwhile could
    /// not reach it, so their back-offs say nothing of an instance reverting synchspeed.
    fn retry_every_reassertion_soon(&self) {
        lock(&self.reassertions).retain(|_| false);
    }

    /// Keeps a dry run fetchable by its id, the oldest forgotten first.
    fn remember_dry_run(&self, operation: &Operation) {
        let mut kept = lock(&self.dry_runs);
        if kept.len() == DRY_RUNS_KEPT {
            kept.pop_front();
        }
        kept.push_back(operation.clone());
    }
}

/// The time `span` ago; the earliest time there is for spans beyond the calendar (a config
/// can say `1000000years`).
pub(crate) fn ago(span: Duration) -> chrono::DateTime<Utc> {
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|span| Utc::now().checked_sub_signed(span))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
}
