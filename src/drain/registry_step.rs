//! Step 3, the soft transaction: every instance's status is written, and only if all of them
//! took it are gateways told anything. If one is refused, the others are put back and the
//! operation fails with nothing notified.

use chrono::Utc;
use futures::StreamExt;
use tracing::{error, warn};

use super::{DrainError, Orchestrator, Plan};
use crate::domain::{
    Action, FailureCode, Hold, Instance, Operation, OperationError, OperationState, Origin,
    RegistryStep, Status,
};
use crate::registry::RegistryError;
use crate::store::DesiredState;
use crate::telemetry::Step;

/// Registry writes one operation keeps in flight at once: a batch of a thousand instances
/// must not open a thousand connections to the registry at once (it slows the registry and
/// pins the memory of idle sockets).
pub(super) const REGISTRY_WRITES_IN_FLIGHT: usize = 32;

/// What a failed registry step's errors say, taken together.
fn classify(failures: &[(Instance, RegistryError)]) -> FailureCode {
    let unreachable = failures.iter().all(|(_, e)| {
        matches!(
            e,
            RegistryError::Unreachable { .. } | RegistryError::NotReady(_)
        )
    });
    let gone = failures
        .iter()
        .all(|(_, e)| matches!(e, RegistryError::NotFound));
    if unreachable {
        FailureCode::RegistryUnavailable
    } else if gone {
        FailureCode::InstanceGone
    } else {
        FailureCode::RegistryRefused
    }
}

impl Orchestrator {
    /// Writes every instance's status; all or nothing. When it took, the desired state is
    /// in memory already, and what is returned is for the journal.
    pub(super) async fn registry_step(
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
                        failed.key() == instance.key()
                            && matches!(e, RegistryError::Unreachable { .. })
                    })
            })
            .collect();
        self.revert(operation, plan, &uncertain).await;
        self.holds.put(&released);
        let code = classify(&failures);
        let message = failures
            .iter()
            .map(|(instance, e)| format!("{} {}: {e}", instance.app, instance.instance_id))
            .collect::<Vec<_>>()
            .join("; ");
        operation.state = OperationState::Failed;
        operation.completed_at = Some(now);
        operation.error = Some(OperationError {
            code,
            message: message.clone(),
        });
        if let Err(e) = self.store.update_operation(operation).await {
            error!(operation = %operation.id, "cannot record the failed operation: {e}");
        }
        warn!(operation = %operation.id, "registry step failed, no gateway notified: {message}");
        let boxed = Box::new(operation.clone());
        Err(match code {
            FailureCode::RegistryUnavailable => DrainError::RegistryUnavailable {
                message: format!("the registry cannot be reached: {message}"),
                operation: Some(boxed),
                source: None,
            },
            FailureCode::InstanceGone | FailureCode::RegistryRefused => {
                DrainError::RegistryRefused {
                    message,
                    operation: boxed,
                }
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
                let reasserting = operation.origin == Origin::Reconciler;
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
}
