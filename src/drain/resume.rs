//! Crash recovery: operations a previous process left `in_progress` are carried to the end.
//!
//! The journal has each one as it was last written: before the registry step (only the plan),
//! after it (`registryUpdatedAt` set), or at a shutdown whose grace ran out (the nodes that had
//! answered by then). The registry step is idempotent, so one that may or may not have
//! happened is done again; then every node that had not answered is told, so each node hears
//! each notification at least once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, warn};

use super::{Orchestrator, Plan, record_settled};
use crate::domain::{Instance, InstanceResult, Operation};
use crate::gateway::GatewayNode;
use crate::store::StoreError;

/// How often the registry is asked whether it is ready, while a resumed operation waits.
const REGISTRY_POLL: Duration = Duration::from_millis(200);

impl Orchestrator {
    /// Resumes every operation a previous run left unfinished; returns how many there were.
    pub async fn resume_unfinished(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let unfinished = self.store.unfinished_operations().await?;
        let count = unfinished.len();
        for operation in unfinished {
            warn!(operation = %operation.id, action = operation.action.as_str(),
                registry_done = operation.registry_updated_at.is_some(),
                "resuming an operation a previous run left unfinished");
            self.resume(operation, shutdown).await;
        }
        Ok(count)
    }

    async fn resume(&self, mut operation: Operation, shutdown: &CancellationToken) {
        let plan = plan_of(&operation);
        if operation.replica != self.replica
            && let Some(replica) = &self.replica
        {
            let before = operation
                .replica
                .as_deref()
                .unwrap_or("a replica without a name");
            operation.warnings.push(format!(
                "carried on by replica {replica} after {before} stopped before it settled"
            ));
            operation.replica = Some(replica.clone());
        }
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            return;
        };
        let lane = self
            .lanes
            .enter(operation.instances.iter().map(|i| i.ip))
            .await;
        let span = tracing::info_span!("operation", id = %operation.id,
            action = operation.action.as_str(), resumed = true);
        let desired = if operation.registry_updated_at.is_none() {
            if !self.registry_ready(shutdown).await {
                // Stopping: it stays unfinished in the journal for the next start.
                return;
            }
            self.metrics.operations_in_flight.inc();
            let action = operation.action;
            match self
                .registry_step(&mut operation, &plan, action)
                .instrument(span.clone())
                .await
            {
                Ok(desired) => Some(desired),
                Err(e) => {
                    error!(operation = %operation.id, "resumed operation failed at the registry: {e}");
                    record_settled(&self.metrics, &self.events, &operation);
                    return;
                }
            }
        } else {
            self.metrics.operations_in_flight.inc();
            None
        };
        self.last_operations.record(&operation);
        self.start_fanout(operation, &plan, permit, lane, span, desired);
    }

    /// Waits until the registry cache can be trusted; false when stopping first.
    async fn registry_ready(&self, shutdown: &CancellationToken) -> bool {
        loop {
            if self.registry.readiness().await.is_ok() {
                return true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(REGISTRY_POLL) => {}
            }
        }
    }
}

/// The plan an operation was journaled with: its instances and its nodes, in slot order.
pub(super) fn plan_of(operation: &Operation) -> Plan {
    Plan {
        instances: operation.instances.iter().map(instance_of).collect(),
        deliveries: operation
            .gateways
            .iter()
            .map(|node| {
                (
                    GatewayNode {
                        group: node.group.clone(),
                        address: node.node.clone(),
                    },
                    node.app.clone(),
                )
            })
            .collect(),
        routes: operation.routes.clone(),
    }
}

/// The registration an instance result is about, as the registry showed it before.
fn instance_of(result: &InstanceResult) -> Instance {
    Instance {
        app: result.app.clone(),
        instance_id: result.instance_id.as_str().into(),
        ip: result.ip,
        port: result.port,
        status: result.status_before,
        registered_at: result.registered_at,
        metadata: Default::default(),
    }
}
