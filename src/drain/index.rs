//! In-memory views the read path serves from, kept in step with every store write so that
//! `GET /api/v1/instances/{ip}` and `GET /api/v1/offline` never scan the store: the desired
//! state (holds) and, per IP, the newest operation that touched it. Loaded from the store at
//! start.
//!
//! One process owns these views; several replicas sharing a PostgreSQL store would need to
//! refresh them from the store instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;

use crate::domain::{Hold, InstanceKey, Operation, OperationId};
use crate::sync::{read, write};

/// The instances held out of service.
#[derive(Debug, Default)]
pub struct HoldIndex {
    holds: RwLock<HashMap<InstanceKey, Hold>>,
}

impl HoldIndex {
    pub fn load(holds: Vec<Hold>) -> Self {
        Self {
            holds: RwLock::new(holds.into_iter().map(|h| (h.key(), h)).collect()),
        }
    }

    pub fn put(&self, holds: &[Hold]) {
        let mut map = write(&self.holds);
        for hold in holds {
            map.insert(hold.key(), hold.clone());
        }
    }

    /// Removes the holds on `keys` and returns them (to be put back if the change fails).
    pub fn release(&self, keys: &[InstanceKey]) -> Vec<Hold> {
        let mut map = write(&self.holds);
        keys.iter().filter_map(|key| map.remove(key)).collect()
    }

    /// Every hold, oldest first.
    pub fn all(&self) -> Vec<Hold> {
        let mut holds: Vec<Hold> = read(&self.holds).values().cloned().collect();
        holds.sort_by(|a, b| {
            (a.since, &a.app, &a.instance_id).cmp(&(b.since, &b.app, &b.instance_id))
        });
        holds
    }

    /// Whether any hold still comes from operation `id`.
    pub fn any_from(&self, id: &OperationId) -> bool {
        read(&self.holds).values().any(|h| h.operation_id == *id)
    }

    pub fn on_ip(&self, ip: IpAddr) -> Vec<Hold> {
        // Holds are few (what is out of service right now); a scan beats a second index.
        read(&self.holds)
            .values()
            .filter(|h| h.ip == ip)
            .cloned()
            .collect()
    }
}

/// Per IP, the id of the newest operation whose target or instances are on it.
#[derive(Debug, Default)]
pub struct LastOperationIndex {
    by_ip: RwLock<HashMap<IpAddr, OperationId>>,
}

impl LastOperationIndex {
    pub fn load(entries: Vec<(IpAddr, OperationId)>) -> Self {
        Self {
            by_ip: RwLock::new(entries.into_iter().collect()),
        }
    }

    /// Records an operation; ids sort by creation time, so the newest wins whatever the order
    /// of the writes.
    pub fn record(&self, operation: &Operation) {
        let ips = std::iter::once(operation.target.ip)
            .chain(operation.targets.iter().map(|t| t.ip))
            .chain(operation.instances.iter().map(|i| i.ip));
        let mut map = write(&self.by_ip);
        for ip in ips {
            let newer = map.get(&ip).is_none_or(|current| *current < operation.id);
            if newer {
                map.insert(ip, operation.id.clone());
            }
        }
    }

    pub fn get(&self, ip: IpAddr) -> Option<OperationId> {
        read(&self.by_ip).get(&ip).cloned()
    }
}
