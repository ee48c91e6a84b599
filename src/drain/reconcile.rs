//! The reconciler: every `drain.reconcile_every`, each hold is compared with what every
//! registry peer says now (uncached where the registry allows), and the desired state is
//! enforced.
//!
//! - Held and showing UP somewhere (an Eureka instance restarted with the same id after its
//!   override was removed, a peer that missed the write or lost its in-memory override map, a
//!   ZooKeeper instance that wrote its own copy back): OUT_OF_SERVICE is re-asserted on every
//!   peer and the gateways are told again, as an operation of `synchspeed-reconciler`.
//! - Absent from every peer that answered (deregistered or evicted: the scale-down finished):
//!   the hold ends. A later registration on that IP is a new instance and is not held.
//! - Replaced by another registration of the same id (ZooKeeper: a new process): the hold ends.
//! - Held for longer than `drain.hold_max`: the hold ends, logged; the registry is left as is.
//! - Nodes that failed every attempt of the hold's operation are told again, with backoff up
//!   to `drain.retry_max`, and the operation's node results updated when they answer.
//!
//! A peer that cannot be asked proves nothing: a hold is never ended on a guess.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Orchestrator;
use super::backoff::Backoffs;
use super::fanout_task::notifications;
use super::reassert::{self, Trigger};
use super::resume::plan_of;
use crate::domain::{Hold, HoldEnd, Instance, NodeState, OperationId, OperationState, Status};
use crate::gateway::Progress;
use crate::gateway::fanout::Job;
use crate::registry::Sighting;
use crate::sync::lock;
use crate::telemetry::HoldEndLabels;

/// What the peers' answers mean for one hold.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Out of service wherever it is registered: nothing to do.
    Kept,
    /// Some peer shows this registration UP: re-assert.
    Lost(Instance),
    /// No peer that answered has it any more.
    Departed,
    /// Only another registration of the same id is left (a new process).
    Replaced,
    /// Some peer could not be asked and none showed a reason to act.
    Unknown,
}

pub(super) fn judge(
    hold: &Hold,
    sightings: &[(String, Sighting)],
    by_registration_time: bool,
) -> Verdict {
    let mut held_present = false;
    let mut other_present = false;
    let mut unknown = false;
    for (_, sighting) in sightings {
        match sighting {
            Sighting::Present(instance) if hold.is_of(instance, by_registration_time) => {
                if instance.status == Status::Up {
                    return Verdict::Lost(instance.clone());
                }
                held_present = true;
            }
            Sighting::Present(_) => other_present = true,
            Sighting::Absent => {}
            Sighting::Unknown(_) => unknown = true,
        }
    }
    if held_present {
        Verdict::Kept
    } else if unknown || sightings.is_empty() {
        Verdict::Unknown
    } else if other_present {
        Verdict::Replaced
    } else {
        Verdict::Departed
    }
}

#[derive(Debug, Default)]
struct State {
    renotifications: Backoffs<OperationId>,
}

/// Runs a pass every `drain.reconcile_every`, and at once when a registry peer that had
/// failed answers again (`Orchestrator::recheck`), until `shutdown`.
pub async fn reconcile_forever(orchestrator: Arc<Orchestrator>, shutdown: CancellationToken) {
    let every = orchestrator.settings.reconcile_every;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = State::default();
    loop {
        let trigger = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => Trigger::Periodic,
            () = orchestrator.recheck.notified() => Trigger::PeerBack,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = orchestrator.reconcile_once(&mut state, trigger) => {}
        }
        orchestrator.metrics.reconcile_runs.inc();
    }
}

impl Orchestrator {
    async fn reconcile_once(&self, state: &mut State, trigger: Trigger) {
        let base = self.settings.reconcile_every;
        let max = self.settings.retry_max.max(base);
        let by_time = self.registry.registration_time_identifies_process();
        let expired_before = super::ago(self.settings.hold_max);
        let holds = self.holds();
        let mut operations = BTreeSet::new();
        for hold in &holds {
            let key = hold.key();
            if hold.since < expired_before {
                self.end_hold(hold, HoldEnd::Expired).await;
                continue;
            }
            let sightings = self.registry.sightings(&key, hold.ip).await;
            match judge(hold, &sightings, by_time) {
                Verdict::Kept => lock(&self.reassertions).clear(&key),
                Verdict::Unknown => {
                    // Said once per pass and hold: the operator sees why a hold lingers.
                    for (peer, sighting) in &sightings {
                        if let Sighting::Unknown(why) = sighting {
                            debug!(app = %hold.app, instance = %hold.instance_id, peer = %peer,
                                "hold kept unjudged: the peer cannot be asked: {why}");
                        }
                    }
                }
                Verdict::Departed => {
                    self.end_hold(hold, HoldEnd::Departed).await;
                    continue;
                }
                Verdict::Replaced => {
                    self.end_hold(hold, HoldEnd::Replaced).await;
                    continue;
                }
                Verdict::Lost(instance) => {
                    if self.reassertion_due(&key) {
                        let peers: Vec<&str> = sightings
                            .iter()
                            .filter(|(_, s)| matches!(s, Sighting::Present(i) if i.status == Status::Up))
                            .map(|(peer, _)| peer.as_str())
                            .collect();
                        reassert::reassert(self, &instance, &peers.join(", "), trigger).await;
                    }
                }
            }
            operations.insert(hold.operation_id.clone());
        }
        let held: std::collections::HashSet<_> = holds.iter().map(Hold::key).collect();
        lock(&self.reassertions).retain(|key| held.contains(key));
        state.renotifications.retain(|id| operations.contains(id));
        for id in operations {
            let now = Instant::now();
            if !state.renotifications.due(&id, now) {
                continue;
            }
            match self.renotify_failed(&id).await {
                Ok(true) => state.renotifications.clear(&id),
                Ok(false) => state.renotifications.failed(&id, now, base, max),
                Err(e) => {
                    error!(operation = %id, "cannot retry the nodes that did not answer: {e}");
                    state.renotifications.failed(&id, now, base, max);
                }
            }
        }
    }

    /// Ends one hold (memory and store), without touching the registry.
    pub(super) async fn end_hold(&self, hold: &Hold, why: HoldEnd) {
        let key = hold.key();
        let released = self.holds.release(std::slice::from_ref(&key));
        if released.is_empty() {
            return;
        }
        // Counted as soon as the hold is gone from memory, before the store is written: a
        // reader who sees no hold finds it counted.
        self.metrics
            .holds_ended
            .get_or_create(&HoldEndLabels {
                why: why.as_str().into(),
            })
            .inc();
        if let Err(e) = self.store.release_holds(std::slice::from_ref(&key)).await {
            error!(app = %hold.app, instance = %hold.instance_id, "cannot record the end of a hold: {e}");
        }
        if why == HoldEnd::Departed
            && let Some(memory) = self.registry.operator_state_outlives_instance()
        {
            let now = Instant::now();
            let mut departed = lock(&self.departed);
            departed.retain(|_, until| *until > now);
            departed.insert((hold.ip, hold.port, hold.app.clone()), now + memory);
        }
        let detail = why.detail();
        if why == HoldEnd::Expired {
            warn!(app = %hold.app, instance = %hold.instance_id, ip = %hold.ip, since = %hold.since,
                operation = %hold.operation_id, "hold ended: {detail}; the registry is left as it is");
        } else {
            info!(app = %hold.app, instance = %hold.instance_id, ip = %hold.ip,
                operation = %hold.operation_id, "hold ended: {detail}");
        }
    }

    /// Tells the nodes of a settled operation that failed every attempt, again. True when no
    /// node is left failing.
    async fn renotify_failed(&self, id: &OperationId) -> Result<bool, crate::store::StoreError> {
        if lock(&self.live).contains_key(id) {
            // Its own fan-out is still at it.
            return Ok(true);
        }
        let Some(mut operation) = self.store.operation(id).await? else {
            return Ok(true);
        };
        // Its fan-out has finished but its settle is not journaled yet (the journal is
        // written behind the answers): the record read here would be overwritten by it, and
        // what this retry adds lost. The next pass finds it settled.
        if operation.state == OperationState::InProgress {
            return Ok(true);
        }
        if !operation
            .gateways
            .iter()
            .any(|n| n.state == NodeState::Failed)
        {
            return Ok(true);
        }
        // In the operation's lanes, and only while it still holds: an online that ran meanwhile
        // must stay the last word these nodes hear. Nothing else writes a settled operation,
        // so the record read above is still current once inside.
        let _lane = self
            .lanes
            .enter(operation.instances.iter().map(|i| i.ip))
            .await;
        if !self.holds.any_from(id) {
            return Ok(true);
        }
        let plan = plan_of(&operation);
        let by_app = notifications(&operation, &plan);
        let jobs: Vec<Job> = operation
            .gateways
            .iter()
            .enumerate()
            .filter(|(_, node)| node.state == NodeState::Failed)
            .filter_map(|(slot, _)| {
                let (node, app) = plan.deliveries.get(slot)?;
                Some(Job {
                    slot,
                    node: node.clone(),
                    notification: Arc::clone(by_app.get(app)?),
                    progress: Progress::ignored(),
                })
            })
            .collect();
        let answers: Vec<_> = self.fanout.deliver(jobs).collect().await;
        let scope = super::events::EventScope::of(&operation);
        for (slot, delivery) in answers {
            let Some(node) = operation.gateways.get_mut(slot) else {
                continue;
            };
            node.attempts += delivery.attempts;
            if delivery.acked {
                info!(operation = %id, node = %node.node, group = %node.group,
                    "a node that had failed acknowledged on a later try");
                node.state = NodeState::Acked;
                node.error = None;
                node.latency_ms = Some(delivery.elapsed.as_secs_f64() * 1000.0);
                if delivery.haproxy.is_some() {
                    node.haproxy = delivery.haproxy;
                }
            } else {
                node.error = delivery.error;
            }
            self.events.node(&scope, slot, node);
        }
        let all_acked = operation
            .gateways
            .iter()
            .all(|n| n.state == NodeState::Acked);
        if all_acked && operation.state == OperationState::Partial {
            operation.state = OperationState::Succeeded;
        }
        self.store.update_operation(&operation).await?;
        Ok(all_acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AppName;
    use chrono::Utc;

    fn hold() -> Hold {
        Hold {
            app: AppName::parse("ORDER-SERVICE").unwrap(),
            instance_id: "a".into(),
            ip: "10.0.0.5".parse().unwrap(),
            port: 8080,
            registered_at: Some(100),
            operation_id: OperationId::generate(),
            since: Utc::now(),
        }
    }

    fn seen(id: &str, registered_at: i64, status: Status) -> Sighting {
        Sighting::Present(Instance {
            app: AppName::parse("ORDER-SERVICE").unwrap(),
            instance_id: id.into(),
            ip: "10.0.0.5".parse().unwrap(),
            port: 8080,
            status,
            registered_at: Some(registered_at),
            metadata: Default::default(),
        })
    }

    fn peers(sightings: Vec<Sighting>) -> Vec<(String, Sighting)> {
        sightings
            .into_iter()
            .enumerate()
            .map(|(n, s)| (format!("peer{n}"), s))
            .collect()
    }

    #[test]
    fn one_peer_showing_up_is_enough_to_re_assert() {
        let sightings = peers(vec![
            seen("a", 100, Status::OutOfService),
            seen("a", 100, Status::Up),
        ]);
        assert!(matches!(judge(&hold(), &sightings, true), Verdict::Lost(_)));
    }

    #[test]
    fn a_hold_ends_only_when_every_peer_answered_without_it() {
        let gone = peers(vec![Sighting::Absent, Sighting::Absent]);
        assert!(matches!(judge(&hold(), &gone, true), Verdict::Departed));
        let one_down = peers(vec![Sighting::Absent, Sighting::Unknown("down".into())]);
        assert!(matches!(judge(&hold(), &one_down, true), Verdict::Unknown));
        assert!(matches!(judge(&hold(), &[], true), Verdict::Unknown));
    }

    #[test]
    fn registration_time_tells_processes_apart_only_where_it_identifies_one() {
        let newer = peers(vec![seen("a", 200, Status::Up)]);
        assert!(matches!(judge(&hold(), &newer, true), Verdict::Replaced));
        assert!(matches!(judge(&hold(), &newer, false), Verdict::Lost(_)));
    }

    #[test]
    fn down_or_starting_is_the_instance_own_status_and_kept() {
        let down = peers(vec![seen("a", 100, Status::Down)]);
        assert!(matches!(judge(&hold(), &down, true), Verdict::Kept));
    }
}
