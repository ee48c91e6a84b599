//! The orchestrator: plan, journal, registry, fan-out (`ARCHITECTURE.md`, "The shape of the
//! system"). It knows the traits of registry, groups, gateway and store, never a backend.
//!
//! The registry step is a soft transaction: every instance's status is written first, and
//! only if all of them took it are gateways told anything. If one is refused, the others are
//! put back and the operation fails with nothing notified.

mod index;
mod lanes;
mod plan;
pub mod reassert;
pub mod reconcile;
mod resume;
mod settling;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, warn};

use index::{HoldIndex, LastOperationIndex};
use lanes::{LaneGuard, Lanes};
pub use plan::{Plan, describe};
use settling::Settling;

use crate::config::DrainSettings;
use crate::domain::{
    Action, Caller, Hold, Instance, InstanceResult, NodeResult, NodeState, Operation,
    OperationError, OperationId, OperationState, PeerResult, RegistryStep, Status, Target,
};
use crate::gateway::Progress;
use crate::gateway::fanout::{FanOut, Job};
use crate::gateway::nodes::NodeDirectory;
use crate::gateway::{Delivery, Notification, NotifiedInstance};
use crate::groups::{GroupSource, GroupsError};
use crate::registry::{Registry, RegistryError};
use crate::store::{DesiredState, IdempotencyKey, Store, StoreError};
use crate::telemetry::{Metrics, NotificationLabels, OperationLabels, Step};

/// Registry writes one operation keeps in flight at once.
const REGISTRY_WRITES_IN_FLIGHT: usize = 32;

/// How long a fan-out runs before its registry step is journaled on its own rather than with
/// the settle. Until then a crash leaves the operation journaled as planned, and the next
/// start redoes its registry step (idempotent) and tells every node, as at-least-once allows.
const JOURNAL_REGISTRY_STEP_AFTER: Duration = Duration::from_millis(100);

/// One offline or online request, parsed.
#[derive(Debug, Clone)]
pub struct DrainRequest {
    pub action: Action,
    /// One target for the instance calls; several for a batch.
    pub targets: Vec<Target>,
    pub reason: Option<String>,
    pub caller: Caller,
    pub dry_run: bool,
    /// `Some` when the caller waits for every node, at most this long.
    pub wait: Option<Duration>,
    /// Offline of instances already held runs again (registry and every node) instead of
    /// answering with the operation that holds them.
    pub force: bool,
    /// The caller's `Idempotency-Key`: the same key for the same request returns the
    /// operation the first one created.
    pub idempotency_key: Option<String>,
}

/// How a request ended, from the caller's point of view.
#[derive(Debug)]
pub enum DrainOutcome {
    /// A dry run: the plan, nothing changed.
    Planned(Operation),
    /// The registry took it; the fan-out goes on in the background.
    Accepted(Operation),
    /// The caller waited and every node answered (state `succeeded` or `partial`).
    Settled(Operation),
    /// The caller waited and the timeout came first (state `in_progress`).
    TimedOut(Operation),
    /// Offline of instances already held (and out of service): the operation that holds
    /// them, nothing done again.
    AlreadyHeld(Operation),
    /// An `Idempotency-Key` seen before: the operation the first request created, as it is now.
    Replayed(Operation),
}

/// Why a request changed nothing (or was undone).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no registered instance matches {0}")]
    NoMatch(String),
    #[error("too many operations in flight")]
    Busy,
    #[error("synchspeed is shutting down")]
    ShuttingDown,
    /// Nothing could be looked up or written: no operation was recorded, or the recorded one
    /// failed with nothing changed.
    #[error("the registry cannot be reached: {message}")]
    RegistryUnavailable {
        message: String,
        operation: Option<Box<Operation>>,
    },
    #[error("the registry refused the change: {message}")]
    RegistryRefused {
        message: String,
        operation: Box<Operation>,
    },
    #[error("Idempotency-Key '{0}' was used for another request")]
    IdempotencyKeyReused(String),
    #[error("a request with Idempotency-Key '{0}' is still being handled")]
    IdempotencyKeyInFlight(String),
    #[error(transparent)]
    Groups(GroupsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DrainError {
    fn registry_unavailable(error: RegistryError) -> Self {
        DrainError::RegistryUnavailable {
            message: error.to_string(),
            operation: None,
        }
    }
}

/// Operations whose fan-out is still running: readers see their progress live.
type LiveOperations = Mutex<HashMap<OperationId, LiveOperation>>;

/// An operation whose fan-out is running.
struct LiveOperation {
    progress: watch::Receiver<Operation>,
    /// The desired state of its registry step until the journal has it: a shutdown that
    /// journals the operation as it stands journals this with it, so the journal never shows
    /// a registry step done without the holds it set.
    unjournaled: Arc<Mutex<Option<DesiredState>>>,
}

pub struct Orchestrator {
    registry: Arc<dyn Registry>,
    groups: Arc<dyn GroupSource>,
    nodes: NodeDirectory,
    fanout: FanOut,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    settings: DrainSettings,
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
    claimed_keys: Mutex<std::collections::HashSet<(String, String)>>,
    /// Settles answered from memory that the journal does not have yet.
    settling: Arc<Settling>,
}

/// Dependencies of the orchestrator, built by `startup`.
pub struct Parts {
    pub registry: Arc<dyn Registry>,
    pub groups: Arc<dyn GroupSource>,
    pub nodes: NodeDirectory,
    pub fanout: FanOut,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub settings: DrainSettings,
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
            live: Arc::default(),
            tasks: TaskTracker::new(),
            holds,
            last_operations,
            lanes: Lanes::default(),
            claimed_keys: Mutex::default(),
            settling: Arc::default(),
        })
    }

    pub fn settings(&self) -> &DrainSettings {
        &self.settings
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every instance held out of service, oldest first.
    pub fn holds(&self) -> Vec<Hold> {
        self.holds.all()
    }

    pub fn holds_on(&self, ip: std::net::IpAddr) -> Vec<Hold> {
        self.holds.on_ip(ip)
    }

    /// The newest operation that touched `ip`, if any.
    pub async fn last_operation_on(
        &self,
        ip: std::net::IpAddr,
    ) -> Result<Option<Operation>, StoreError> {
        match self.last_operations.get(ip) {
            Some(id) => self.operation(&id).await,
            None => Ok(None),
        }
    }

    /// An operation, live if its fan-out is running, else from the store.
    pub async fn operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        let live = lock(&self.live)
            .get(id)
            .map(|live| live.progress.borrow().clone());
        match live {
            Some(operation) => Ok(Some(operation)),
            None => self.store.operation(id).await,
        }
    }

    /// Journaled operations matching `filter`, newest first. Every operation a caller was
    /// already told has settled is listed as settled.
    pub async fn operations(
        &self,
        filter: &crate::store::OperationFilter,
    ) -> Result<Vec<Operation>, StoreError> {
        self.settling.journal_caught_up().await;
        self.store.operations(filter).await
    }

    /// Runs one request through plan, journal, registry and fan-out.
    pub async fn execute(&self, request: DrainRequest) -> Result<DrainOutcome, DrainError> {
        if request.dry_run {
            let plan = self.plan(&request.targets).await?;
            let mut operation = new_operation(&request, &plan);
            operation.state = OperationState::Planned;
            return Ok(DrainOutcome::Planned(operation));
        }
        if self.tasks.is_closed() {
            return Err(DrainError::ShuttingDown);
        }
        let key = request.idempotency_key.as_ref().map(|key| IdempotencyKey {
            principal: request.caller.principal.clone().unwrap_or_default(),
            key: key.clone(),
            fingerprint: fingerprint(&request),
        });
        // Claimed before the lookup: a second request with the key arriving meanwhile is
        // told to wait rather than running the change twice.
        let _claim = match &key {
            Some(key) => {
                let claim = KeyClaim::take(&self.claimed_keys, key)?;
                if let Some(operation) = self.replay(key).await? {
                    return Ok(DrainOutcome::Replayed(operation));
                }
                Some(claim)
            }
            None => None,
        };
        let permit = Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| DrainError::Busy)?;
        let queued = self.metrics.time(Step::Queued);
        let lane = self
            .lanes
            .enter(request.targets.iter().map(|target| target.ip))
            .await;
        drop(queued);
        let planning = self.metrics.time(Step::Plan);
        let plan = self.plan(&request.targets).await?;
        drop(planning);
        if request.action == Action::Offline
            && !request.force
            && let Some(operation) = self.holding_operation(&plan).await?
        {
            return Ok(DrainOutcome::AlreadyHeld(operation));
        }
        let mut operation = new_operation(&request, &plan);
        // Journal before the first side effect.
        let journaling = self.metrics.time(Step::Journal);
        self.store
            .insert_operation(&operation, key.as_ref())
            .await?;
        drop(journaling);
        self.last_operations.record(&operation);
        self.metrics.operations_in_flight.inc();
        let span =
            tracing::info_span!("operation", id = %operation.id, action = request.action.as_str());
        let registry_result = self
            .registry_step(&mut operation, &plan, request.action)
            .instrument(span.clone())
            .await;
        let desired = match registry_result {
            Ok(desired) => desired,
            Err(error) => {
                record_settled(&self.metrics, &operation);
                return Err(error);
            }
        };
        let receiver = self.start_fanout(operation, &plan, permit, lane, span, Some(desired));
        match request.wait {
            None => Ok(DrainOutcome::Accepted(receiver.borrow().clone())),
            Some(timeout) => Ok(wait_for(receiver, timeout).await),
        }
    }

    /// The operation a key created, if the key was seen within `drain.idempotency_ttl`.
    async fn replay(&self, key: &IdempotencyKey) -> Result<Option<Operation>, DrainError> {
        let since = ago(self.settings.idempotency_ttl);
        let Some((fingerprint, id)) = self
            .store
            .idempotent_operation(&key.principal, &key.key, since)
            .await?
        else {
            return Ok(None);
        };
        if fingerprint != key.fingerprint {
            return Err(DrainError::IdempotencyKeyReused(key.key.clone()));
        }
        Ok(self.operation(&id).await?)
    }

    /// When every planned instance is already held and out of service: the operation that
    /// took the first of them out.
    async fn holding_operation(&self, plan: &Plan) -> Result<Option<Operation>, StoreError> {
        let by_time = self.registry.registration_time_identifies_process();
        let mut holding = None;
        for instance in &plan.instances {
            if instance.status != Status::OutOfService {
                return Ok(None);
            }
            let hold = self
                .holds
                .on_ip(instance.ip)
                .into_iter()
                .find(|hold| hold.is_of(instance, by_time));
            match hold {
                Some(hold) => {
                    holding.get_or_insert(hold.operation_id);
                }
                None => return Ok(None),
            }
        }
        match holding {
            Some(id) => self.operation(&id).await,
            None => Ok(None),
        }
    }

    async fn plan(&self, targets: &[Target]) -> Result<Plan, DrainError> {
        let instances = plan::resolve_instances(self.registry.as_ref(), targets).await?;
        let deliveries =
            plan::resolve_deliveries(self.groups.as_ref(), &self.nodes, &instances).await?;
        Ok(Plan {
            instances,
            deliveries,
        })
    }

    /// Writes every instance's status; all or nothing. When it took, the desired state is
    /// in memory already, and what is returned is for the journal.
    async fn registry_step(
        &self,
        operation: &mut Operation,
        plan: &Plan,
        action: Action,
    ) -> Result<DesiredState, DrainError> {
        let _timer = self.metrics.time(Step::Registry);
        let status = action.target_status();
        // Online lets go of the holds before the registry shows UP: a watching registry
        // reports the change at once, and the reconciler must not take it for a lost hold
        // and re-assert it. Put back if the change fails.
        let released = match action {
            Action::Online => {
                let keys: Vec<_> = plan.instances.iter().map(Instance::key).collect();
                self.holds.release(&keys)
            }
            Action::Offline => Vec::new(),
        };
        // Bounded: a batch of a thousand instances must not open a thousand connections to
        // the registry at once (it slows the registry and pins the memory of idle sockets).
        let writes: Vec<_> = plan
            .instances
            .iter()
            .map(|instance| self.registry.set_status(instance, status))
            .collect();
        let results: Vec<_> = futures::stream::iter(writes)
            .buffered(REGISTRY_WRITES_IN_FLIGHT)
            .collect()
            .await;
        let mut failures = Vec::new();
        for ((result, instance), record) in results
            .into_iter()
            .zip(&plan.instances)
            .zip(operation.instances.iter_mut())
        {
            match result {
                Ok(change) => {
                    record.registry = RegistryStep::Updated;
                    record.peers = change.peers;
                }
                Err(error) => {
                    record.registry = RegistryStep::Failed;
                    record.error = Some(error.to_string());
                    failures.push((instance.clone(), error));
                }
            }
        }
        let now = Utc::now();
        if failures.is_empty() {
            operation.registry_updated_at = Some(now);
            return Ok(self.desired_state(operation, plan, action));
        }

        // A write that got no answer may still land: it is put back too.
        let uncertain: Vec<bool> = operation
            .instances
            .iter()
            .zip(&plan.instances)
            .map(|(record, instance)| {
                record.registry == RegistryStep::Failed
                    && failures.iter().any(|(failed, e)| {
                        failed.key() == instance.key() && matches!(e, RegistryError::Unreachable(_))
                    })
            })
            .collect();
        self.revert(operation, plan, &uncertain).await;
        self.holds.put(&released);
        let unreachable = failures.iter().all(|(_, e)| {
            matches!(
                e,
                RegistryError::Unreachable(_) | RegistryError::NotReady(_)
            )
        });
        let gone = failures
            .iter()
            .all(|(_, e)| matches!(e, RegistryError::NotFound));
        let message = failures
            .iter()
            .map(|(instance, e)| format!("{} {}: {e}", instance.app, instance.instance_id))
            .collect::<Vec<_>>()
            .join("; ");
        let code = if unreachable {
            "registry_unavailable"
        } else if gone {
            "instance_gone"
        } else {
            "registry_refused"
        };
        operation.state = OperationState::Failed;
        operation.completed_at = Some(now);
        operation.error = Some(OperationError {
            code: code.into(),
            message: message.clone(),
        });
        if let Err(e) = self.store.update_operation(operation).await {
            error!(operation = %operation.id, "cannot record the failed operation: {e}");
        }
        warn!(operation = %operation.id, "registry step failed, no gateway notified: {message}");
        let boxed = Box::new(operation.clone());
        Err(if unreachable {
            DrainError::RegistryUnavailable {
                message,
                operation: Some(boxed),
            }
        } else {
            DrainError::RegistryRefused {
                message,
                operation: boxed,
            }
        })
    }

    /// Puts back the instances of a failed registry step that did take the change, and those
    /// whose write got no answer (`uncertain`: it may land late), so a failed operation leaves
    /// the registry as it found it. Writing the status it had is harmless where nothing landed.
    async fn revert(&self, operation: &mut Operation, plan: &Plan, uncertain: &[bool]) {
        for ((record, instance), uncertain) in operation
            .instances
            .iter_mut()
            .zip(&plan.instances)
            .zip(uncertain)
        {
            if record.registry != RegistryStep::Updated && !uncertain {
                continue;
            }
            // Only UP and OUT_OF_SERVICE are ours to write back; anything else was the
            // instance's own status, which it reasserts on its next heartbeat.
            let before = record.status_before;
            if !matches!(before, Status::Up | Status::OutOfService) {
                record.registry = RegistryStep::Reverted;
                continue;
            }
            let result = self.registry.set_status(instance, before).await;
            if *uncertain {
                let first = record.error.take().unwrap_or_default();
                record.error = Some(match result {
                    Ok(_) => format!("{first}; put back in case it lands late"),
                    Err(e) => {
                        format!("{first}; putting it back in case it lands late failed too: {e}")
                    }
                });
                continue;
            }
            match result {
                Ok(_) => record.registry = RegistryStep::Reverted,
                Err(e) => {
                    error!(app = %instance.app, id = %instance.instance_id, "cannot revert the registry change: {e}");
                    record.error = Some(format!("changed, and could not be put back: {e}"));
                }
            }
        }
    }

    /// The desired state a registry step that took sets, taken in memory at once (the
    /// registry has changed, whatever the store says next).
    fn desired_state(&self, operation: &Operation, plan: &Plan, action: Action) -> DesiredState {
        match action {
            Action::Offline => {
                // A re-assertion continues the hold it enforces: `hold_max` counts from the
                // operator's offline, not from the reconciler's last correction.
                let reasserting =
                    operation.caller.principal.as_deref() == Some(reassert::PRINCIPAL);
                let now = Utc::now();
                let holds: Vec<Hold> = plan
                    .instances
                    .iter()
                    .map(|instance| {
                        let since = reasserting
                            .then(|| {
                                self.holds
                                    .on_ip(instance.ip)
                                    .into_iter()
                                    .find(|hold| hold.key() == instance.key())
                                    .map(|hold| hold.since)
                            })
                            .flatten()
                            .unwrap_or(now);
                        Hold {
                            app: instance.app.clone(),
                            instance_id: instance.instance_id.to_string(),
                            ip: instance.ip,
                            port: instance.port,
                            registered_at: instance.registered_at,
                            operation_id: operation.id.clone(),
                            since,
                        }
                    })
                    .collect();
                self.holds.put(&holds);
                DesiredState::Hold(holds)
            }
            // Released from memory before the registry step; the journal follows.
            Action::Online => {
                DesiredState::Release(plan.instances.iter().map(Instance::key).collect())
            }
        }
    }

    /// Starts the background fan-out and returns a view of its progress. `desired`: the
    /// registry step just took and is journaled with the settle, or on its own once the
    /// fan-out has run `JOURNAL_REGISTRY_STEP_AFTER`, not before the nodes are told: a crash
    /// before that journal redoes the (idempotent) registry step and tells every node, which
    /// the at-least-once contract allows, and the caller waits for no write of it.
    fn start_fanout(
        &self,
        operation: Operation,
        plan: &Plan,
        permit: OwnedSemaphorePermit,
        lane: LaneGuard,
        span: tracing::Span,
        desired: Option<DesiredState>,
    ) -> watch::Receiver<Operation> {
        let notifications = notifications(&operation, plan);
        // Nodes that already answered (a resumed operation) are not told again.
        let pending: Vec<bool> = operation
            .gateways
            .iter()
            .map(|node| node.state == NodeState::Pending)
            .collect();
        let id = operation.id.clone();
        let unjournaled = Arc::new(Mutex::new(desired));
        let instances = plan.instances.clone();
        let status = operation.action.target_status();
        let (sender, receiver) = watch::channel(operation);
        let sender = Arc::new(sender);
        let jobs: Vec<Job> = plan
            .deliveries
            .iter()
            .enumerate()
            .filter(|(slot, _)| pending.get(*slot).copied().unwrap_or(false))
            .filter_map(|(slot, (node, app))| {
                Some(Job {
                    slot,
                    node: node.clone(),
                    notification: Arc::clone(notifications.get(app)?),
                    progress: progress_of(&sender, slot),
                })
            })
            .collect();
        lock(&self.live).insert(
            id.clone(),
            LiveOperation {
                progress: receiver.clone(),
                unjournaled: Arc::clone(&unjournaled),
            },
        );
        let deliveries = self.fanout.deliver(jobs);
        let store = Arc::clone(&self.store);
        let registry = Arc::clone(&self.registry);
        let metrics = Arc::clone(&self.metrics);
        let live = Arc::clone(&self.live);
        let settling = Arc::clone(&self.settling);
        let task = async move {
            // Held until the operation settles: `drain.max_in_flight` counts whole operations,
            // and the next operation on these IPs starts after this one's last answer.
            let _permit = permit;
            let _lane = lane;
            // A resumed operation whose registry step was journaled has nothing new to record
            // nor to read back.
            let registry_step_taken = lock(&unjournaled).is_some();
            let reading_back = async {
                if registry_step_taken {
                    // For the record only; the settle journals what it finds.
                    read_back(registry.as_ref(), &instances, status, &sender).await;
                }
            };
            let answers = async {
                let _timer = metrics.time(Step::Gateways);
                record_answers(deliveries, &sender, &metrics).await;
            };
            let fan_out = async {
                tokio::join!(answers, reading_back);
            };
            futures::pin_mut!(fan_out);
            // The registry step's record (its holds) goes into the settle's transaction when
            // the fan-out ends soon, as it does with nodes that answer: one commit instead of
            // two. A fan-out still running then has it journaled at that point, while the
            // remaining nodes are told.
            let still_running = tokio::select! {
                () = &mut fan_out => false,
                () = tokio::time::sleep(JOURNAL_REGISTRY_STEP_AFTER), if registry_step_taken => true,
            };
            if still_running {
                let journal = async {
                    let operation = sender.borrow().clone();
                    // The registry has changed: the gateways are told whatever the store
                    // says, so a store failure is logged, not returned.
                    let written = journal_as_it_stands(store.as_ref(), &operation, &unjournaled);
                    if let Err(e) = written.await {
                        error!(operation = %operation.id, "cannot journal the registry step: {e}");
                    }
                };
                // The settle below is written after the registry step's record, never before.
                tokio::join!(journal, fan_out);
            }
            let mut settled = sender.borrow().clone();
            settled.settle(Utc::now());
            // Counted before anyone sees it settle; journaled right after the waiters are
            // answered, and the operation stays live (readable from memory) until then. List
            // queries, which read the journal, wait for it (`settling`).
            record_settled(&metrics, &settled);
            settling.answered(&settled.id);
            sender.send_replace(settled.clone());
            // A registry step whose own journal failed gets a second chance with the settle.
            if let Err(e) = journal_as_it_stands(store.as_ref(), &settled, &unjournaled).await {
                error!(operation = %settled.id, "cannot record the settled operation: {e}");
            }
            lock(&live).remove(&settled.id);
            settling.journaled(&settled.id);
        }
        .instrument(span);
        self.tasks.spawn(task);
        receiver
    }

    /// Stops taking operations and waits up to `grace` for the running fan-outs.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.tasks.close();
        let finished = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !finished {
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
                    error!(operation = %operation.id, "cannot journal the unfinished operation: {e}");
                }
            }
        }
        finished
    }
}

/// The time `span` ago; the earliest time there is for spans beyond the calendar (a config
/// can say `1000000years`).
pub fn ago(span: Duration) -> chrono::DateTime<Utc> {
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|span| Utc::now().checked_sub_signed(span))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation: a poisoned lock is still consistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The operation record for a plan, before anything happened.
fn new_operation(request: &DrainRequest, plan: &Plan) -> Operation {
    let target = request.targets.first().cloned().unwrap_or(Target {
        ip: std::net::IpAddr::from([0, 0, 0, 0]),
        port: None,
        app: None,
    });
    Operation {
        id: OperationId::generate(),
        action: request.action,
        state: OperationState::InProgress,
        target,
        targets: if request.targets.len() > 1 {
            request.targets.clone()
        } else {
            Vec::new()
        },
        reason: request.reason.clone(),
        caller: request.caller.clone(),
        instances: plan.instances.iter().map(InstanceResult::planned).collect(),
        gateways: plan
            .deliveries
            .iter()
            .map(|(node, app)| NodeResult {
                group: node.group.clone(),
                app: app.clone(),
                node: node.address.clone(),
                state: NodeState::Pending,
                attempts: 0,
                latency_ms: None,
                error: None,
                haproxy: None,
            })
            .collect(),
        error: None,
        created_at: Utc::now(),
        registry_updated_at: None,
        completed_at: None,
    }
}

/// Shows a pending node's progress on the live operation. A report that arrives after the
/// node's answer (they travel separately) is stale and dropped.
fn progress_of(sender: &Arc<watch::Sender<Operation>>, slot: usize) -> Progress {
    let sender = Arc::clone(sender);
    Progress::new(move |detail| {
        // Like a node's answer, seen by readers without waking the waiters.
        sender.send_if_modified(|op| {
            if let Some(node) = op.gateways.get_mut(slot)
                && node.state == NodeState::Pending
            {
                node.haproxy = Some(detail);
            }
            false
        });
    })
}

/// One notification per app, shared by every node that hears about that app.
fn notifications(
    operation: &Operation,
    plan: &Plan,
) -> HashMap<crate::domain::AppName, Arc<Notification>> {
    let issued_at = operation.registry_updated_at.unwrap_or_else(Utc::now);
    let mut by_app: HashMap<crate::domain::AppName, Vec<NotifiedInstance>> = HashMap::new();
    for instance in &plan.instances {
        by_app
            .entry(instance.app.clone())
            .or_default()
            .push(NotifiedInstance {
                instance_id: instance.instance_id.to_string(),
                ip: instance.ip,
                port: instance.port,
            });
    }
    by_app
        .into_iter()
        .map(|(app, instances)| {
            let notification = Notification::new(
                operation.id.clone(),
                operation.action,
                app.clone(),
                instances,
                issued_at,
            );
            (app, Arc::new(notification))
        })
        .collect()
}

/// Journals `operation` as it stands, with the desired state of its registry step while the
/// journal does not have that yet (then it does).
async fn journal_as_it_stands(
    store: &dyn Store,
    operation: &Operation,
    unjournaled: &Mutex<Option<DesiredState>>,
) -> Result<(), StoreError> {
    let desired = lock(unjournaled).clone();
    match desired {
        Some(desired) => {
            store.record_registry_step(operation, &desired).await?;
            *lock(unjournaled) = None;
            Ok(())
        }
        None => store.update_operation(operation).await,
    }
}

/// Reads back what the registry shows for each instance written (`status`, on `instances`
/// in the operation's order), onto the live operation.
async fn read_back(
    registry: &dyn Registry,
    instances: &[Instance],
    status: Status,
    sender: &watch::Sender<Operation>,
) {
    let written: Vec<(usize, Vec<PeerResult>)> = sender
        .borrow()
        .instances
        .iter()
        .enumerate()
        .filter(|(_, record)| record.registry == RegistryStep::Updated)
        .map(|(index, record)| (index, record.peers.clone()))
        .collect();
    let reads = written.into_iter().filter_map(|(index, mut peers)| {
        let instance = instances.get(index)?;
        Some(async move {
            registry.verify(instance, status, &mut peers).await;
            (index, peers)
        })
    });
    let mut reads = futures::stream::iter(reads).buffer_unordered(REGISTRY_WRITES_IN_FLIGHT);
    while let Some((index, peers)) = reads.next().await {
        sender.send_if_modified(|op| {
            if let Some(record) = op.instances.get_mut(index) {
                record.peers = peers;
            }
            false
        });
    }
}

/// Shows each node's answer on the live operation as it arrives. Visible to readers at once,
/// but nobody is woken: the callers waiting for the outcome care about the settle only, and
/// waking them for each of a hundred answers costs more than the answers themselves.
async fn record_answers(
    deliveries: impl futures::Stream<Item = (usize, Delivery)>,
    sender: &watch::Sender<Operation>,
    metrics: &Metrics,
) {
    futures::pin_mut!(deliveries);
    while let Some((slot, delivery)) = deliveries.next().await {
        let state = if delivery.acked { "acked" } else { "failed" };
        metrics
            .notification_seconds
            .get_or_create(&NotificationLabels {
                state: state.into(),
            })
            .observe(delivery.elapsed.as_secs_f64());
        sender.send_if_modified(|op| {
            let Some(node) = op.gateways.get_mut(slot) else {
                return false;
            };
            node.state = if delivery.acked {
                NodeState::Acked
            } else {
                NodeState::Failed
            };
            node.attempts = delivery.attempts;
            node.latency_ms = Some(delivery.elapsed.as_secs_f64() * 1000.0);
            node.error = delivery.error.clone();
            if delivery.haproxy.is_some() {
                node.haproxy = delivery.haproxy.clone();
            }
            if !delivery.acked {
                warn!(node = %node.node, group = %node.group, attempts = delivery.attempts,
                    "gateway node did not acknowledge: {}", delivery.error.as_deref().unwrap_or("no answer"));
            }
            false
        });
    }
}

/// Waits until the operation settles or `timeout` passes.
async fn wait_for(mut receiver: watch::Receiver<Operation>, timeout: Duration) -> DrainOutcome {
    let settled = tokio::time::timeout(timeout, receiver.wait_for(|op| op.state.is_terminal()))
        .await
        .map(|result| result.map(|operation| operation.clone()));
    match settled {
        Ok(Ok(operation)) => DrainOutcome::Settled(operation),
        // The sender is dropped only after the final state was sent, so a closed channel
        // holds the settled operation.
        Ok(Err(_)) => DrainOutcome::Settled(receiver.borrow().clone()),
        Err(_) => DrainOutcome::TimedOut(receiver.borrow().clone()),
    }
}

/// What a request asks, for comparing two uses of one `Idempotency-Key`: the action and the
/// targets (not how the caller waits, nor the reason).
fn fingerprint(request: &DrainRequest) -> String {
    let targets: Vec<String> = request
        .targets
        .iter()
        .map(|t| {
            format!(
                "{}:{}:{}",
                t.ip,
                t.port.map(|p| p.to_string()).unwrap_or_default(),
                t.app.as_ref().map(|a| a.as_str()).unwrap_or_default()
            )
        })
        .collect();
    format!("{} {}", request.action.as_str(), targets.join(","))
}

/// An idempotency key whose request is running; released when that request returns.
struct KeyClaim<'a> {
    claimed: &'a Mutex<std::collections::HashSet<(String, String)>>,
    id: (String, String),
}

impl<'a> KeyClaim<'a> {
    fn take(
        claimed: &'a Mutex<std::collections::HashSet<(String, String)>>,
        key: &IdempotencyKey,
    ) -> Result<Self, DrainError> {
        let id = (key.principal.clone(), key.key.clone());
        if !lock(claimed).insert(id.clone()) {
            return Err(DrainError::IdempotencyKeyInFlight(key.key.clone()));
        }
        Ok(Self { claimed, id })
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        lock(self.claimed).remove(&self.id);
    }
}

fn record_settled(metrics: &Metrics, operation: &Operation) {
    metrics.operations_in_flight.dec();
    metrics
        .operations
        .get_or_create(&OperationLabels {
            action: operation.action.as_str().into(),
            state: operation.state.as_str().into(),
        })
        .inc();
    info!(
        operation = %operation.id,
        action = operation.action.as_str(),
        state = operation.state.as_str(),
        caller = %operation.caller.addr,
        principal = operation.caller.principal.as_deref().unwrap_or("-"),
        target = %describe(&operation.target),
        instances = operation.instances.len(),
        nodes = operation.gateways.len(),
        acked = operation.gateways.iter().filter(|n| n.state == NodeState::Acked).count(),
        reason = operation.reason.as_deref().unwrap_or("-"),
        "operation settled"
    );
}
