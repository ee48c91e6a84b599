//! Keeping the word: an instance synchspeed holds offline that shows up again as UP in the
//! registry (its own Curator client wrote its local copy back after a reconnection) is taken
//! out again, and the gateways are told again.
//!
//! Each re-assertion is an operation of its own, of origin `reconciler` (shown with the
//! principal `synchspeed-reconciler`), with the reason saying what happened: the audit trail shows every time the registry had to
//! be corrected. A different registration on the same IP (another instance id, or a newer
//! registration time) is a new instance and is left alone.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{DrainOutcome, DrainRequest, Orchestrator};
use crate::domain::operation::RECONCILER_PRINCIPAL;
use crate::domain::{Action, Caller, Instance, Origin, Status, Target};

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
    let by_time = orchestrator.registry.registration_time_identifies_process();
    let held = orchestrator
        .holds_on(instance.ip)
        .into_iter()
        .any(|hold| hold.is_of(instance, by_time));
    if held {
        reassert(orchestrator, instance, orchestrator.registry.kind()).await;
    }
}

/// Compares every hold with the registry cache (after missed changes).
async fn sweep(orchestrator: &Orchestrator) {
    for hold in orchestrator.holds() {
        let Ok(instances) = orchestrator.registry.instances_on(hold.ip).await else {
            continue;
        };
        let by_time = orchestrator.registry.registration_time_identifies_process();
        for instance in instances.iter().filter(|i| hold.is_of(i, by_time)) {
            check(orchestrator, instance).await;
        }
    }
}

/// Takes `instance` out again on every peer and tells the gateways again. `seen_by` names
/// where it showed up as UP, for the audit trail.
pub(super) async fn reassert(orchestrator: &Orchestrator, instance: &Instance, seen_by: &str) {
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
            "re-asserted: {} {} showed {} on {seen_by} while held offline",
            instance.app, instance.instance_id, instance.status
        )),
        caller: Caller {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            principal: Some(RECONCILER_PRINCIPAL.into()),
        },
        origin: Origin::Reconciler,
        dry_run: false,
        wait: None,
        // The cache may still say OUT_OF_SERVICE where a peer does not: write every peer.
        force: true,
        idempotency_key: None,
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
