//! Per-IP ordering: operations on the same IP run one after another, in the order they
//! arrived, from the plan to the last node's answer. An online racing an offline therefore
//! reaches the registry and every gateway after the offline did, never interleaved with it,
//! so the last word the registry and the gateways hear is the same.
//!
//! A lane is a fair (FIFO) async mutex per IP, created on first use and dropped when nobody
//! holds or waits for it. Several IPs (a batch) are taken in address order, so two batches
//! that overlap cannot deadlock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::sync::lock;

type LaneMap = Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>;

#[derive(Debug, Default, Clone)]
pub struct Lanes {
    lanes: Arc<LaneMap>,
}

/// The lanes of one operation, held until it settles.
#[derive(Debug)]
pub struct LaneGuard {
    held: Vec<(IpAddr, OwnedMutexGuard<()>)>,
    lanes: Arc<LaneMap>,
}

impl Lanes {
    /// Waits for every lane of `ips`, in address order.
    pub async fn enter(&self, ips: impl IntoIterator<Item = IpAddr>) -> LaneGuard {
        let mut ips: Vec<IpAddr> = ips.into_iter().collect();
        ips.sort_unstable();
        ips.dedup();
        let mut guard = LaneGuard {
            held: Vec::with_capacity(ips.len()),
            lanes: Arc::clone(&self.lanes),
        };
        for ip in ips {
            let lane = Arc::clone(lock(&self.lanes).entry(ip).or_default());
            guard.held.push((ip, lane.lock_owned().await));
        }
        guard
    }

    /// Lanes in use (held or waited for): for tests of the clean-up.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.lanes).len()
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.held);
        let mut map = lock(&self.lanes);
        for (ip, guard) in held {
            drop(guard);
            // Only the map's own reference left: nobody holds or waits for this lane.
            if map
                .get(&ip)
                .is_some_and(|lane| Arc::strong_count(lane) == 1)
            {
                map.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn the_second_waits_for_the_first_and_lanes_are_dropped_after() {
        let lanes = Lanes::default();
        let first = lanes.enter([ip(5)]).await;
        let second = tokio::spawn({
            let lanes = lanes.clone();
            async move { lanes.enter([ip(5), ip(6)]).await }
        });
        // Another IP is free meanwhile.
        drop(lanes.enter([ip(7)]).await);
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "ip 5 is still held by the first");
        drop(first);
        let second = second.await.unwrap();
        drop(second);
        assert_eq!(lanes.len(), 0, "no lane outlives its last user");
    }

    #[tokio::test]
    async fn waiters_enter_in_arrival_order() {
        let lanes = Lanes::default();
        let first = lanes.enter([ip(1)]).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 0..5 {
            let waiting = lanes.clone();
            let order = Arc::clone(&order);
            waiters.push(tokio::spawn(async move {
                let _guard = waiting.enter([ip(1)]).await;
                order.lock().unwrap().push(n);
            }));
            // Each waiter is queued before the next one arrives.
            while Arc::strong_count(lock(&lanes.lanes).get(&ip(1)).unwrap()) < n + 3 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}
