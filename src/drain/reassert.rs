//! Keeping the word: an instance synchspeed holds offline that shows up again as UP in the
//! registry (its own Curator client wrote its local copy back after a reconnection) is taken
//! out again, and the gateways are told again.
//!
//! Each re-assertion is an operation of its own, by the principal `synchspeed-reconciler`,
//! with the reason saying what happened: the audit trail shows every time the registry had to
//! be corrected. A different registration on the same IP (another instance id, or a newer
//! registration time) is a new instance and is left alone.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{DrainOutcome, DrainRequest, Orchestrator};
use crate::domain::{Action, Caller, Hold, Instance, Status, Target};

pub const PRINCIPAL: &str = "synchspeed-reconciler";

/// Whether `hold` is about this very registration of `instance`.
fn holds(hold: &Hold, instance: &Instance) -> bool {
    hold.app == instance.app
        && hold.instance_id == instance.instance_id
        && match (hold.registered_at, instance.registered_at) {
            (Some(held), Some(seen)) => held == seen,
            _ => true,
        }
}

/// Follows registry changes until `shutdown`.
pub async fn keep_held_offline(
    orchestrator: Arc<Orchestrator>,
    mut changes: broadcast::Receiver<Instance>,
    shutdown: CancellationToken,
) {
    loop {
        let instance = tokio::select! {
            _ = shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Ok(instance) => instance,
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, "registry changes came faster than they were checked; checking every hold");
                    sweep(&orchestrator).await;
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        check(&orchestrator, &instance).await;
    }
}

async fn check(orchestrator: &Orchestrator, instance: &Instance) {
    if instance.status == Status::OutOfService {
        return;
    }
    let held = orchestrator
        .holds_on(instance.ip)
        .into_iter()
        .any(|hold| holds(&hold, instance));
    if held {
        reassert(orchestrator, instance).await;
    }
}

/// Compares every hold with the registry cache (after missed changes).
async fn sweep(orchestrator: &Orchestrator) {
    for hold in orchestrator.holds() {
        let Ok(instances) = orchestrator.registry().instances_on(hold.ip).await else {
            continue;
        };
        for instance in instances.iter().filter(|i| holds(&hold, i)) {
            check(orchestrator, instance).await;
        }
    }
}

async fn reassert(orchestrator: &Orchestrator, instance: &Instance) {
    warn!(app = %instance.app, instance = %instance.instance_id, ip = %instance.ip,
        status = %instance.status, "a held instance is back in the registry as {}; re-asserting OUT_OF_SERVICE", instance.status);
    let request = DrainRequest {
        action: Action::Offline,
        targets: vec![Target {
            ip: instance.ip,
            port: Some(instance.port),
            app: Some(instance.app.clone()),
        }],
        reason: Some(format!(
            "re-asserted: {} {} showed {} while held offline",
            instance.app, instance.instance_id, instance.status
        )),
        caller: Caller {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            principal: Some(PRINCIPAL.into()),
        },
        dry_run: false,
        wait: None,
    };
    match orchestrator.execute(request).await {
        Ok(DrainOutcome::Accepted(operation) | DrainOutcome::Settled(operation)) => {
            info!(operation = %operation.id, "re-assertion accepted by the registry; gateways told again");
        }
        Ok(_) => {}
        Err(e) => error!(app = %instance.app, instance = %instance.instance_id,
            "cannot re-assert OUT_OF_SERVICE: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AppName, OperationId};

    fn instance(id: &str, registered_at: Option<i64>) -> Instance {
        Instance {
            app: AppName::parse("ORDER-SERVICE").unwrap(),
            instance_id: id.into(),
            ip: "10.0.0.5".parse().unwrap(),
            port: 8080,
            status: Status::Up,
            registered_at,
            metadata: Default::default(),
        }
    }

    #[test]
    fn only_the_held_registration_is_held() {
        let hold = Hold {
            app: AppName::parse("ORDER-SERVICE").unwrap(),
            instance_id: "a".into(),
            ip: "10.0.0.5".parse().unwrap(),
            port: 8080,
            registered_at: Some(100),
            operation_id: OperationId::generate(),
            since: chrono::Utc::now(),
        };
        assert!(
            holds(&hold, &instance("a", Some(100))),
            "the same registration"
        );
        assert!(
            !holds(&hold, &instance("b", Some(100))),
            "another instance id"
        );
        assert!(!holds(&hold, &instance("a", Some(200))), "registered anew");
    }
}
