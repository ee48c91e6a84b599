//! Telling many nodes at once, with a bound on notifications in flight across all operations.

use std::sync::Arc;

use futures::stream::{FuturesUnordered, Stream};
use tokio::sync::Semaphore;

use super::{Delivery, GatewayNode, Notification, Notifier, Progress};

#[derive(Clone)]
pub struct FanOut {
    notifier: Arc<dyn Notifier>,
    /// Shared by every operation: `gateway.concurrency` is a service-wide bound, so a mass
    /// drain cannot open thousands of sockets at once.
    permits: Arc<Semaphore>,
}

/// One notification for one node; `slot` says where its result goes.
pub struct Job {
    pub slot: usize,
    pub node: GatewayNode,
    pub notification: Arc<Notification>,
    pub progress: Progress,
}

impl FanOut {
    pub fn new(notifier: Arc<dyn Notifier>, concurrency: usize) -> Self {
        Self {
            notifier,
            permits: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// Starts every job and yields `(slot, delivery)` as each node answers, in answer order.
    pub fn deliver(
        &self,
        jobs: Vec<Job>,
    ) -> impl Stream<Item = (usize, Delivery)> + Send + 'static {
        jobs.into_iter()
            .map(|job| {
                let notifier = Arc::clone(&self.notifier);
                let permits = Arc::clone(&self.permits);
                async move {
                    // The semaphore is never closed, so acquiring cannot fail; if it ever
                    // were, delivering unbounded is better than not delivering.
                    let _permit = permits.acquire_owned().await.ok();
                    let delivery = notifier
                        .notify(&job.node, &job.notification, &job.progress)
                        .await;
                    (job.slot, delivery)
                }
            })
            .collect::<FuturesUnordered<_>>()
    }
}
