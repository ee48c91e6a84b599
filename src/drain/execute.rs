//! Executing one request: the dry run, the idempotent replay and the already-held answer, or
//! plan, journal, registry step and the start of the fan-out, in that order.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tracing::{Instrument, info};

use super::events::{EventKind, Events};
use super::idempotency::key_of;
use super::plan::{self, Plan, describe};
use super::{DrainError, DrainOutcome, DrainRequest, Orchestrator};
use crate::domain::{
    Action, InstanceResult, NodeResult, NodeState, Operation, OperationId, OperationState, Origin,
    Status, Target,
};
use crate::store::StoreError;
use crate::telemetry::{Metrics, OperationLabels, Step};

impl Orchestrator {
    /// Runs one request through plan, journal, registry and fan-out.
    pub async fn execute(&self, request: DrainRequest) -> Result<DrainOutcome, DrainError> {
        if request.dry_run {
            let plan = self.plan(&request.targets).await?;
            let guard = self.guard(&request, &plan).await?;
            let mut operation = self.operation_for(&request, &plan);
            operation.state = OperationState::Planned;
            // What the guard would say, as a warning: a dry run refuses nothing.
            operation
                .warnings
                .extend(guard.into_iter().map(|violation| {
                    if request.force {
                        format!("forced past drain.min_up: {violation}")
                    } else {
                        format!("drain.min_up would refuse this offline: {violation}")
                    }
                }));
            self.remember_dry_run(&operation);
            return Ok(DrainOutcome::Planned(operation));
        }
        if self.tasks.is_closed() {
            return Err(DrainError::ShuttingDown);
        }
        let key = key_of(&request);
        // Claimed before the lookup: a second request with the key arriving meanwhile is
        // told to wait rather than running the change twice.
        let _claim = match &key {
            Some(key) => {
                let claim = self.claimed_keys.claim(key)?;
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
        // The reconciler decides to re-assert outside the lane: by its turn an online may
        // have ended the hold, or the operation that took the instance out may have finished
        // writing it. Judged again here, at the source, so that only a loss still standing
        // is re-asserted.
        if request.origin == Origin::Reconciler && request.action == Action::Offline {
            self.still_lost(&plan).await?;
        }
        if request.action == Action::Offline
            && !request.force
            && let Some(operation) = self.holding_operation(&plan).await?
        {
            return Ok(DrainOutcome::AlreadyHeld(operation));
        }
        let guard = self.guard(&request, &plan).await?;
        if !guard.is_empty() && !request.force {
            return Err(DrainError::MinUp(guard.join("; ")));
        }
        let mut operation = self.operation_for(&request, &plan);
        operation.warnings.extend(
            guard
                .into_iter()
                .map(|violation| format!("forced past drain.min_up: {violation}")),
        );
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
                record_settled(&self.metrics, &self.events, &operation);
                return Err(error);
            }
        };
        let receiver = self.start_fanout(operation, &plan, permit, lane, span, Some(desired));
        match request.wait {
            None => Ok(DrainOutcome::Accepted(receiver.borrow().clone())),
            Some(timeout) => Ok(wait_for(receiver, timeout, &self.grace_over).await),
        }
    }

    /// Every planned instance is still held and still shows UP on some registry peer (asked
    /// at the source); else what superseded the re-assertion.
    async fn still_lost(&self, plan: &Plan) -> Result<(), DrainError> {
        let by_time = self.registry.registration_time_identifies_process();
        for instance in &plan.instances {
            let hold = self
                .holds
                .on_ip(instance.ip)
                .into_iter()
                .find(|hold| hold.key() == instance.key());
            let Some(hold) = hold else {
                return Err(DrainError::Superseded(format!(
                    "{} {} is no longer held",
                    instance.app, instance.instance_id
                )));
            };
            let sightings = self.registry.sightings(&hold.key(), instance.ip).await;
            if !matches!(
                super::reconcile::judge(&hold, &sightings, by_time),
                super::reconcile::Verdict::Lost(_)
            ) {
                return Err(DrainError::Superseded(format!(
                    "{} {} is no longer UP on any registry peer",
                    instance.app, instance.instance_id
                )));
            }
        }
        Ok(())
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

    /// The `drain.min_up` guard's objections to an offline (none to an online, or to the
    /// reconciler's re-assertion of instances already held).
    async fn guard(&self, request: &DrainRequest, plan: &Plan) -> Result<Vec<String>, DrainError> {
        if request.action != Action::Offline || request.origin == Origin::Reconciler {
            return Ok(Vec::new());
        }
        self.min_up_violations(plan).await
    }

    /// The operation record for a plan, with what the registry adds: where each instance
    /// sits in it (Nacos group and cluster) and its warnings.
    fn operation_for(&self, request: &DrainRequest, plan: &Plan) -> Operation {
        let mut operation = new_operation(request, plan, self.replica.as_deref());
        for instance in &mut operation.instances {
            if let Some((group, cluster)) = self.registry.placement(&instance.instance_id) {
                instance.group = Some(group);
                instance.cluster = Some(cluster);
            }
        }
        operation
            .warnings
            .extend(self.registry.plan_warnings(request.action, &plan.instances));
        operation
    }

    async fn plan(&self, targets: &[Target]) -> Result<Plan, DrainError> {
        let bounds = self.settings.bounds;
        let instances = plan::resolve_instances(self.registry.as_ref(), targets, bounds).await?;
        let (deliveries, routes) =
            plan::resolve_deliveries(self.groups.as_ref(), &self.nodes, &instances, bounds).await?;
        Ok(Plan {
            instances,
            deliveries,
            routes,
        })
    }
}

/// The operation record for a plan, before anything happened.
fn new_operation(request: &DrainRequest, plan: &Plan, replica: Option<&str>) -> Operation {
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
        origin: request.origin,
        instances: plan.instances.iter().map(InstanceResult::planned).collect(),
        routes: plan.routes.clone(),
        warnings: plan.warnings(),
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
        replica: replica.map(str::to_owned),
    }
}

/// Waits until the operation settles, `timeout` passes, or a shutdown's grace ends.
async fn wait_for(
    mut receiver: watch::Receiver<Operation>,
    timeout: Duration,
    grace_over: &tokio_util::sync::CancellationToken,
) -> DrainOutcome {
    let settled = {
        let settling =
            tokio::time::timeout(timeout, receiver.wait_for(|op| op.state.is_terminal()));
        tokio::select! {
            settled = settling => Some(settled.map(|result| result.map(|operation| operation.clone()))),
            () = grace_over.cancelled() => None,
        }
    };
    let Some(settled) = settled else {
        return DrainOutcome::Interrupted(receiver.borrow().clone());
    };
    match settled {
        Ok(Ok(operation)) => DrainOutcome::Settled(operation),
        // The sender is dropped only after the final state was sent, so a closed channel
        // holds the settled operation.
        Ok(Err(_)) => DrainOutcome::Settled(receiver.borrow().clone()),
        Err(_) => DrainOutcome::TimedOut(receiver.borrow().clone()),
    }
}

/// Counts a settled (or failed) operation and logs it: the one line per operation an
/// operator greps for.
pub(super) fn record_settled(metrics: &Metrics, events: &Events, operation: &Operation) {
    events.whole(EventKind::Settled, operation);
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
