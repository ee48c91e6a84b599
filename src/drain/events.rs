//! Every change to an operation, published as it happens, for the event streams
//! (`GET /api/v1/operations/{id}/events`, `GET /api/v1/events`) and whoever else listens.
//!
//! One broadcast channel: publishing never waits for a listener, so a slow reader cannot
//! slow a drain. Each listener reads from a ring of `CAPACITY` events; one that falls
//! further behind is told how many it missed (`lagged`) and re-reads the state it needs.
//! Nothing is built while nobody listens: the fan-out of a hundred nodes pays one atomic
//! load per answer for the streams.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::domain::{AppName, NodeResult, Operation, OperationId};

/// Events kept for listeners that read behind the newest.
const CAPACITY: usize = 4096;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The operation as it stands (the first event of an operation's stream, and after a
    /// listener lagged).
    Snapshot,
    /// The registry step took; the gateways are being told.
    Started,
    /// One node answered: acknowledged or failed, after its attempts (also a later retry
    /// of a node that had failed).
    Node,
    /// A node's HAProxy idle wait or warm-up moved on.
    Progress,
    /// The operation settled (or failed at the registry step): its last event.
    Settled,
    /// The listener fell behind and missed events.
    Lagged,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Started => "started",
            Self::Node => "node",
            Self::Progress => "progress",
            Self::Settled => "settled",
            Self::Lagged => "lagged",
        }
    }
}

/// The IPs and apps an operation touches, for filtering, computed once per operation.
#[derive(Debug, Clone)]
pub struct EventScope {
    pub operation_id: OperationId,
    pub ips: Arc<[IpAddr]>,
    pub apps: Arc<[AppName]>,
}

impl EventScope {
    pub fn of(operation: &Operation) -> Arc<Self> {
        let mut ips: Vec<IpAddr> = operation.instances.iter().map(|i| i.ip).collect();
        ips.push(operation.target.ip);
        ips.extend(operation.targets.iter().map(|target| target.ip));
        ips.sort_unstable();
        ips.dedup();
        let mut apps: Vec<AppName> = operation.instances.iter().map(|i| i.app.clone()).collect();
        apps.sort_unstable();
        apps.dedup();
        Arc::new(Self {
            operation_id: operation.id.clone(),
            ips: ips.into(),
            apps: apps.into(),
        })
    }
}

/// One change, as every stream sends it.
#[derive(Debug, Clone)]
pub struct OperationEvent {
    pub seq: u64,
    pub kind: EventKind,
    pub scope: Arc<EventScope>,
    /// `{"seq", "type", "operationId", ...}`: the operation, or the node and its slot.
    pub data: Value,
}

impl OperationEvent {
    /// The event a stream sends for an operation it reads itself (not from the bus).
    pub fn snapshot(operation: &Operation) -> Self {
        Self::new(
            0,
            EventKind::Snapshot,
            EventScope::of(operation),
            operation_body(operation),
        )
    }

    /// What a lagged listener is told.
    pub fn lagged(missed: u64) -> Value {
        json!({"type": EventKind::Lagged.as_str(), "missed": missed})
    }

    fn new(seq: u64, kind: EventKind, scope: Arc<EventScope>, mut data: Value) -> Self {
        if let Some(fields) = data.as_object_mut() {
            fields.insert("seq".into(), json!(seq));
            fields.insert("type".into(), json!(kind.as_str()));
            fields.insert("operationId".into(), json!(scope.operation_id));
        }
        Self {
            seq,
            kind,
            scope,
            data,
        }
    }

    /// Whether this event concerns `ip` and `app` (each `None`: any).
    pub fn concerns(&self, ip: Option<IpAddr>, app: Option<&AppName>) -> bool {
        ip.is_none_or(|ip| self.scope.ips.contains(&ip))
            && app.is_none_or(|app| self.scope.apps.contains(app))
    }
}

fn operation_body(operation: &Operation) -> Value {
    json!({"operation": operation})
}

/// The bus.
pub struct Events {
    sender: broadcast::Sender<Arc<OperationEvent>>,
    seq: AtomicU64,
    /// Cancelled when the service stops: every stream ends, so none holds the shutdown.
    closed: CancellationToken,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::Sender::new(CAPACITY),
            seq: AtomicU64::new(0),
            closed: CancellationToken::new(),
        }
    }
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OperationEvent>> {
        self.sender.subscribe()
    }

    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    pub fn close(&self) {
        self.closed.cancel();
    }

    fn listened(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    fn publish(&self, kind: EventKind, scope: &Arc<EventScope>, data: impl FnOnce() -> Value) {
        if !self.listened() {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let event = OperationEvent::new(seq, kind, Arc::clone(scope), data());
        // No listener left since the check: nobody to tell.
        let _ = self.sender.send(Arc::new(event));
    }

    pub fn operation(&self, kind: EventKind, scope: &Arc<EventScope>, operation: &Operation) {
        self.publish(kind, scope, || operation_body(operation));
    }

    /// A started or settled operation, when its scope is not at hand.
    pub fn whole(&self, kind: EventKind, operation: &Operation) {
        if self.listened() {
            self.operation(kind, &EventScope::of(operation), operation);
        }
    }

    pub fn node(&self, scope: &Arc<EventScope>, slot: usize, node: &NodeResult) {
        self.publish(
            EventKind::Node,
            scope,
            || json!({"slot": slot, "node": node}),
        );
    }

    pub fn progress(&self, scope: &Arc<EventScope>, slot: usize, node: &NodeResult) {
        self.publish(
            EventKind::Progress,
            scope,
            || json!({"slot": slot, "node": node}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_built_without_a_listener_and_every_listener_gets_each_event_in_order() {
        let events = Events::default();
        let operation = crate::testing::operation_on("10.0.0.5");
        let scope = EventScope::of(&operation);
        events.operation(EventKind::Started, &scope, &operation);
        let mut listener = events.subscribe();
        events.operation(EventKind::Started, &scope, &operation);
        events.operation(EventKind::Settled, &scope, &operation);
        let first = listener.recv().await.unwrap();
        let second = listener.recv().await.unwrap();
        assert_eq!((first.kind, first.seq), (EventKind::Started, 1));
        assert_eq!((second.kind, second.seq), (EventKind::Settled, 2));
        assert_eq!(second.data["operationId"], json!(operation.id));
        assert_eq!(second.data["type"], "settled");
        assert!(first.concerns(Some("10.0.0.5".parse().unwrap()), None));
        assert!(!first.concerns(Some("10.0.0.6".parse().unwrap()), None));
    }

    #[tokio::test]
    async fn a_listener_that_reads_nothing_never_holds_the_publisher() {
        let events = Events::default();
        let operation = crate::testing::operation_on("10.0.0.5");
        let scope = EventScope::of(&operation);
        let mut idle = events.subscribe();
        for _ in 0..CAPACITY * 3 {
            events.operation(EventKind::Started, &scope, &operation);
        }
        match idle.recv().await {
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                assert_eq!(missed, (CAPACITY * 2) as u64);
            }
            other => panic!("expected a lag, got {other:?}"),
        }
    }
}
