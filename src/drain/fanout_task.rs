//! Step 4, in the background: every pending node is told, each answer is recorded on the live
//! operation as it arrives, journaled every second while it runs, and the operation is
//! journaled as it settles.
//!
//! While it runs, the operation lives in memory ([`LiveOperations`]): readers and waiting
//! callers see it from there, and a shutdown journals it as it stands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::{Instrument, error, warn};

use super::events::{EventKind, EventScope, Events};
use super::lanes::LaneGuard;
use super::registry_step::REGISTRY_WRITES_IN_FLIGHT;
use super::settling::Settling;
use super::{Orchestrator, Plan, record_settled};
use crate::domain::{
    AppName, Instance, NodeState, Operation, OperationId, PeerResult, RegistryStep, Status,
};
use crate::gateway::fanout::{FanOut, Job};
use crate::gateway::{Delivery, Notification, NotifiedInstance, Progress};
use crate::registry::Registry;
use crate::store::{DesiredState, Store, StoreError};
use crate::sync::lock;
use crate::telemetry::{Metrics, NotificationLabels, Step};

/// How long a fan-out runs before its registry step is journaled on its own rather than with
/// the settle. Until then a crash leaves the operation journaled as planned, and the next
/// start redoes its registry step (idempotent) and tells every node, as at-least-once allows.
const JOURNAL_REGISTRY_STEP_AFTER: Duration = Duration::from_millis(100);

/// How often a running fan-out's answers so far are journaled (when there are new ones).
const JOURNAL_ANSWERS_EVERY: Duration = Duration::from_secs(1);

/// How many nodes have answered (acknowledged or failed for good).
fn answered(operation: &Operation) -> usize {
    operation
        .gateways
        .iter()
        .filter(|node| node.state != NodeState::Pending)
        .count()
}

/// Operations whose fan-out is still running: readers see their progress live.
pub(super) type LiveOperations = Mutex<HashMap<OperationId, LiveOperation>>;

/// The desired state of a registry step until the journal has it (then `None`).
type Unjournaled = Arc<Mutex<Option<DesiredState>>>;

/// An operation whose fan-out is running.
pub(super) struct LiveOperation {
    pub(super) progress: watch::Receiver<Operation>,
    /// The desired state of its registry step until the journal has it: a shutdown that
    /// journals the operation as it stands journals this with it, so the journal never shows
    /// a registry step done without the holds it set.
    pub(super) unjournaled: Unjournaled,
}

/// One operation's fan-out, from the first notification to the journaled settle.
struct FanOutTask {
    /// The live operation: every answer lands here.
    sender: Arc<watch::Sender<Operation>>,
    jobs: Vec<Job>,
    fanout: FanOut,
    /// The instances written, in the operation's order, for the read-back.
    instances: Vec<Instance>,
    status: Status,
    unjournaled: Unjournaled,
    /// `drain.max_in_flight` counts whole operations: held until the settle.
    _permit: OwnedSemaphorePermit,
    /// The next operation on these IPs starts after this one's last answer.
    _lane: LaneGuard,
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    metrics: Arc<Metrics>,
    live: Arc<LiveOperations>,
    settling: Arc<Settling>,
    events: Arc<Events>,
    scope: Arc<EventScope>,
}

impl Orchestrator {
    /// Starts the background fan-out and returns a view of its progress. `desired`: the
    /// registry step just took and is journaled with the settle, or on its own once the
    /// fan-out has run `JOURNAL_REGISTRY_STEP_AFTER`, not before the nodes are told: a crash
    /// before that journal redoes the (idempotent) registry step and tells every node, which
    /// the at-least-once contract allows, and the caller waits for no write of it.
    pub(super) fn start_fanout(
        &self,
        operation: Operation,
        plan: &Plan,
        permit: OwnedSemaphorePermit,
        lane: LaneGuard,
        span: tracing::Span,
        desired: Option<DesiredState>,
    ) -> watch::Receiver<Operation> {
        let by_app = notifications(&operation, plan);
        // Nodes that already answered (a resumed operation) are not told again.
        let pending: Vec<bool> = operation
            .gateways
            .iter()
            .map(|node| node.state == NodeState::Pending)
            .collect();
        let id = operation.id.clone();
        let scope = EventScope::of(&operation);
        self.events
            .operation(EventKind::Started, &scope, &operation);
        let unjournaled = Arc::new(Mutex::new(desired));
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
                    notification: Arc::clone(by_app.get(app)?),
                    progress: progress_of(&sender, slot, &self.events, &scope),
                })
            })
            .collect();
        lock(&self.live).insert(
            id,
            LiveOperation {
                progress: receiver.clone(),
                unjournaled: Arc::clone(&unjournaled),
            },
        );
        let task = FanOutTask {
            sender,
            jobs,
            fanout: self.fanout.clone(),
            instances: plan.instances.clone(),
            status,
            unjournaled,
            _permit: permit,
            _lane: lane,
            store: Arc::clone(&self.store),
            registry: Arc::clone(&self.registry),
            metrics: Arc::clone(&self.metrics),
            live: Arc::clone(&self.live),
            settling: Arc::clone(&self.settling),
            events: Arc::clone(&self.events),
            scope,
        };
        self.tasks.spawn(task.run().instrument(span));
        receiver
    }
}

impl FanOutTask {
    async fn run(self) {
        let sender = &self.sender;
        // A resumed operation whose registry step was journaled has nothing new to record
        // nor to read back.
        let registry_step_taken = lock(&self.unjournaled).is_some();
        let reading_back = async {
            if registry_step_taken {
                // For the record only; the settle journals what it finds.
                read_back(self.registry.as_ref(), &self.instances, self.status, sender).await;
            }
        };
        let answers = async {
            let _timer = self.metrics.time(Step::Gateways);
            let deliveries = self.fanout.deliver(self.jobs);
            record_answers(deliveries, sender, &self.metrics, &self.events, &self.scope).await;
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
            let (done, mut finished) = watch::channel(false);
            let journal = async {
                let operation = sender.borrow().clone();
                // The registry has changed: the gateways are told whatever the store
                // says, so a store failure is logged, not returned.
                let written =
                    journal_as_it_stands(self.store.as_ref(), &operation, &self.unjournaled);
                if let Err(e) = written.await {
                    error!(operation = %operation.id, "cannot journal the registry step: {e}");
                }
                // Then the answers as they come, so that whoever carries the operation on
                // after a crash tells only the nodes the journal has no answer from. Never
                // cancelled mid-write: it stops between writes once the fan-out is done.
                let mut journaled = answered(&operation);
                loop {
                    tokio::select! {
                        _ = finished.wait_for(|done| *done) => break,
                        () = tokio::time::sleep(JOURNAL_ANSWERS_EVERY) => {}
                    }
                    let operation = sender.borrow().clone();
                    let now = answered(&operation);
                    if now == journaled {
                        continue;
                    }
                    match journal_as_it_stands(self.store.as_ref(), &operation, &self.unjournaled)
                        .await
                    {
                        Ok(()) => journaled = now,
                        Err(e) => {
                            warn!(operation = %operation.id, "cannot journal the answers so far: {e}")
                        }
                    }
                }
            };
            let fan_out = async {
                fan_out.await;
                done.send_replace(true);
            };
            // The settle below is written after the registry step's record, never before.
            tokio::join!(journal, fan_out);
        }
        let mut settled = sender.borrow().clone();
        settled.settle(Utc::now());
        // Counted before anyone sees it settle; journaled right after the waiters are
        // answered, and the operation stays live (readable from memory) until then. List
        // queries, which read the journal, wait for it (`settling`).
        record_settled(&self.metrics, &self.events, &settled);
        self.settling.answered(&settled.id);
        sender.send_replace(settled.clone());
        // A registry step whose own journal failed gets a second chance with the settle.
        let written = journal_as_it_stands(self.store.as_ref(), &settled, &self.unjournaled);
        if let Err(e) = written.await {
            error!(operation = %settled.id, "cannot record the settled operation: {e}");
        }
        lock(&self.live).remove(&settled.id);
        self.settling.journaled(&settled.id);
    }
}

/// Shows a pending node's progress on the live operation. A report that arrives after the
/// node's answer (they travel separately) is stale and dropped.
fn progress_of(
    sender: &Arc<watch::Sender<Operation>>,
    slot: usize,
    events: &Arc<Events>,
    scope: &Arc<EventScope>,
) -> Progress {
    let sender = Arc::clone(sender);
    let (events, scope) = (Arc::clone(events), Arc::clone(scope));
    Progress::new(move |detail| {
        // Like a node's answer, seen by readers without waking the waiters.
        sender.send_if_modified(|op| {
            if let Some(node) = op.gateways.get_mut(slot)
                && node.state == NodeState::Pending
            {
                node.haproxy = Some(detail);
                events.progress(&scope, slot, node);
            }
            false
        });
    })
}

/// One notification per app, shared by every node that hears about that app.
pub(super) fn notifications(
    operation: &Operation,
    plan: &Plan,
) -> HashMap<AppName, Arc<Notification>> {
    let issued_at = operation.registry_updated_at.unwrap_or_else(Utc::now);
    let mut by_app: HashMap<AppName, Vec<NotifiedInstance>> = HashMap::new();
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
pub(super) async fn journal_as_it_stands(
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
    events: &Events,
    scope: &Arc<EventScope>,
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
            events.node(scope, slot, node);
            false
        });
    }
}
