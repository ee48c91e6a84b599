//! Keeping the word at the speed of the registry: every change a backend's copy sees (a
//! ZooKeeper watch event, a Eureka delta or full fetch, a re-read instances file) is compared
//! with the desired state as it arrives.
//!
//! * A held instance seen as anything but OUT_OF_SERVICE is asked for at the source, on every
//!   peer (a copy may be older than synchspeed's own write: Eureka's read-only response
//!   cache). Where it is UP there (its own client wrote UP back after a reconnection; a fast
//!   restart with the same id whose cancel removed the override), it is taken out again on
//!   every peer, and the gateways are told again. One that keeps coming back is corrected
//!   less and less often (back-off up to `drain.retry_max`).
//! * A held instance the copy no longer has is judged at once on every peer, uncached: when
//!   none has it, its hold ends (so a new registration on that IP:port seconds later is new),
//!   where registrations cannot tell processes apart (Eureka; see `judge_departure`).
//! * A peer that had failed answers again: the reconciler checks every hold at once.
//! * A registration that comes up disabled on the IP:port of a hold that ended because its
//!   instance departed, in a registry that keeps synchspeed's offline after the instance is
//!   gone (Nacos, ~60 s): the offline was the old process's, and the new one is enabled.
//!
//! Each re-assertion is an operation of its own, of origin `reconciler` (shown with the
//! principal `synchspeed-reconciler`), with the reason saying what happened: the audit trail
//! shows every time the registry had to be corrected. A different registration on the same
//! IP (another instance id, or a newer registration time where that names a process) is a
//! new instance and is left alone.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::reconcile::{Verdict, judge};
use super::{DrainError, DrainOutcome, DrainRequest, Orchestrator};
use crate::domain::operation::RECONCILER_PRINCIPAL;
use crate::domain::{Action, Caller, HoldEnd, Instance, InstanceKey, Origin, Status, Target};
use crate::registry::{Observed, Sighting};
use crate::telemetry::TriggerLabels;

/// What found a lost hold: the `trigger` of `synchspeed_reassertions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A change the registry copy saw (a watch event, a refresh).
    Change,
    /// A registry peer that had failed answers again.
    PeerBack,
    /// The reconciler's periodic pass.
    Periodic,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Change => "change",
            Trigger::PeerBack => "peer_back",
            Trigger::Periodic => "periodic",
        }
    }
}

/// Follows registry changes until `shutdown`.
pub async fn keep_held_offline(
    orchestrator: Arc<Orchestrator>,
    mut changes: broadcast::Receiver<Observed>,
    shutdown: CancellationToken,
) {
    loop {
        let observed = tokio::select! {
            _ = shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Ok(observed) => observed,
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, "registry changes came faster than they were checked; checking every hold");
                    sweep(&orchestrator).await;
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        match observed {
            Observed::Seen(instance) => check(&orchestrator, &instance).await,
            Observed::Left { key, ip } => judge_departure(&orchestrator, &key, ip).await,
            Observed::PeerBack(peer) => {
                info!(peer = %peer, "a registry peer answers again; checking every hold now");
                // What it missed is written now, not a back-off later.
                orchestrator.retry_every_reassertion_soon();
                orchestrator.recheck.notify_one();
            }
        }
    }
}

async fn check(orchestrator: &Orchestrator, instance: &Instance) {
    if instance.status == Status::OutOfService {
        return reenable_if_left_over(orchestrator, instance).await;
    }
    let by_time = orchestrator.registry.registration_time_identifies_process();
    let Some(hold) = orchestrator
        .holds_on(instance.ip)
        .into_iter()
        .find(|hold| hold.is_of(instance, by_time))
    else {
        return;
    };
    // What a refresh shows may be older than synchspeed's own write (Eureka serves `apps` and
    // deltas from a read-only map up to 30 s stale): each peer is asked at the source, and
    // only a registration that is UP there is a loss, judged as the periodic pass judges it.
    let sightings = orchestrator
        .registry
        .sightings(&hold.key(), instance.ip)
        .await;
    let Verdict::Lost(lost) = judge(&hold, &sightings, by_time) else {
        return;
    };
    if !orchestrator.reassertion_due(&lost.key()) {
        return;
    }
    let peers: Vec<&str> = sightings
        .iter()
        .filter(|(_, s)| matches!(s, Sighting::Present(i) if i.status == Status::Up))
        .map(|(peer, _)| peer.as_str())
        .collect();
    reassert(orchestrator, &lost, &peers.join(", "), Trigger::Change).await;
}

/// A registration that comes up disabled on the IP:port of a hold that ended when its
/// instance departed, within the time the registry keeps synchspeed's offline after an
/// instance is gone (Nacos's operator layer, ~60 s): the offline was for the old process,
/// and the new one would never receive traffic. Enabled again, as an operation of its own.
async fn reenable_if_left_over(orchestrator: &Orchestrator, instance: &Instance) {
    if orchestrator
        .registry
        .operator_state_outlives_instance()
        .is_none()
    {
        return;
    }
    let slot = (instance.ip, instance.port, instance.app.clone());
    let left_over = {
        let mut departed = crate::sync::lock(&orchestrator.departed);
        let now = tokio::time::Instant::now();
        departed.retain(|_, until| *until > now);
        departed.remove(&slot).is_some()
    };
    if !left_over {
        return;
    }
    let by_time = orchestrator.registry.registration_time_identifies_process();
    if orchestrator
        .holds_on(instance.ip)
        .iter()
        .any(|hold| hold.is_of(instance, by_time))
    {
        // Held again meanwhile (an offline of the new registration): it stays out.
        return;
    }
    warn!(app = %instance.app, instance = %instance.instance_id, ip = %instance.ip, port = instance.port,
        "a new registration came up disabled by the offline of the instance that left this IP:port; enabling it");
    let request = reconciler_request(
        Action::Online,
        instance,
        format!(
            "re-enabled: {} {} registered disabled, the offline left over from the instance whose hold ended when it departed",
            instance.app, instance.instance_id
        ),
    );
    match orchestrator.execute(request).await {
        Ok(DrainOutcome::Accepted(operation) | DrainOutcome::Settled(operation)) => {
            info!(operation = %operation.id, "the new registration is enabled; gateways told");
        }
        Ok(_) => {}
        Err(e) => error!(app = %instance.app, instance = %instance.instance_id,
            "cannot enable the new registration: {e}"),
    }
}

/// A held instance the copy no longer has: every peer is asked, and the hold ends only
/// when none that answered has it (a peer that cannot be asked proves nothing).
///
/// Only where a registration cannot tell one process from the next (Eureka): there, a new
/// registration with the same id seconds later would be taken for the held one unless the
/// hold ends now. Where it can (ZooKeeper: Curator keeps its registration time for the life
/// of the process), a node that vanished is often the same process about to re-create it
/// (its session expired across a ZooKeeper restart), and must stay held; a new process is
/// told apart by its registration time, and the periodic pass ends the old hold.
async fn judge_departure(orchestrator: &Orchestrator, key: &InstanceKey, ip: IpAddr) {
    if orchestrator.registry.registration_time_identifies_process() {
        return;
    }
    let Some(hold) = orchestrator
        .holds_on(ip)
        .into_iter()
        .find(|hold| hold.key() == *key)
    else {
        return;
    };
    let sightings = orchestrator.registry.sightings(key, ip).await;
    let by_time = orchestrator.registry.registration_time_identifies_process();
    match judge(&hold, &sightings, by_time) {
        Verdict::Departed => orchestrator.end_hold(&hold, HoldEnd::Departed).await,
        Verdict::Replaced => orchestrator.end_hold(&hold, HoldEnd::Replaced).await,
        // Still on some peer: what it shows there is the periodic pass's, or the next
        // change's, to act on.
        Verdict::Kept | Verdict::Lost(_) | Verdict::Unknown => {}
    }
}

/// Compares every hold with the registry copy (after missed changes).
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
/// where it showed up as UP, for the audit trail; `trigger` what found it.
pub(super) async fn reassert(
    orchestrator: &Orchestrator,
    instance: &Instance,
    seen_by: &str,
    trigger: Trigger,
) {
    warn!(app = %instance.app, instance = %instance.instance_id, ip = %instance.ip,
        status = %instance.status, trigger = trigger.label(),
        "a held instance is back in the registry as {}; re-asserting OUT_OF_SERVICE", instance.status);
    orchestrator
        .metrics
        .reassertions
        .get_or_create(&TriggerLabels {
            trigger: trigger.label(),
        })
        .inc();
    let request = reconciler_request(
        Action::Offline,
        instance,
        format!(
            "re-asserted: {} {} showed {} on {seen_by} while held offline",
            instance.app, instance.instance_id, instance.status
        ),
    );
    match orchestrator.execute(request).await {
        Ok(DrainOutcome::Accepted(operation) | DrainOutcome::Settled(operation)) => {
            info!(operation = %operation.id, "re-assertion accepted by the registry; gateways told again");
        }
        Ok(_) => {}
        Err(e @ DrainError::Superseded(_)) => {
            info!(app = %instance.app, instance = %instance.instance_id, "{e}");
        }
        Err(e) => {
            error!(app = %instance.app, instance = %instance.instance_id,
                "cannot re-assert OUT_OF_SERVICE: {e}");
            // The back-off is for an instance that keeps reverting what synchspeed wrote; a
            // write that did not land (the registry restarting) is tried again at the next
            // change or pass, not a back-off later.
            orchestrator.retry_reassertion_soon(&instance.key());
        }
    }
}

/// The reconciler's own request for one registration, of origin `reconciler`. Forced: the
/// cache may still show the state wanted where a peer does not, so every peer is written.
fn reconciler_request(action: Action, instance: &Instance, reason: String) -> DrainRequest {
    DrainRequest {
        action,
        targets: vec![Target {
            ip: instance.ip,
            port: Some(instance.port),
            app: Some(instance.app.clone()),
        }],
        reason: Some(reason),
        caller: Caller {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            principal: Some(RECONCILER_PRINCIPAL.into()),
        },
        origin: Origin::Reconciler,
        dry_run: false,
        wait: None,
        force: true,
        idempotency_key: None,
    }
}
