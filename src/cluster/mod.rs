//! Several replicas over one PostgreSQL store: one leads, the others relay to it.
//!
//! The leader does all the work of today's single process (journal, registry, gateways,
//! reconciler), with its in-memory state rebuilt from the store when it takes over; the others
//! relay every call to it ([`relay`]) and try for the lease every second ([`Election`]). A
//! leader that cannot renew its lease in time stops writing at once ([`fenced`], and the
//! epoch check of every journal write) and the process exits, so that it starts again as a
//! follower with nothing in memory to be wrong about. `docs/design.md` weighs this against
//! every replica working.

pub mod fenced;
pub mod lease;
pub mod relay;
pub mod secret;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::telemetry::{Metrics, ReplicaLabels};
use lease::{Leader, Leadership, LeaseRow};

/// How often a follower tries for the lease (and reads who leads).
const TRY_EVERY: Duration = Duration::from_secs(1);
/// How soon a leader whose renewal failed (the store unreachable) tries again.
const RENEW_RETRY: Duration = Duration::from_millis(500);

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipEnd {
    #[error("another replica took the lease over (this one held epoch {epoch})")]
    TakenOver { epoch: i64 },
    #[error("the lease (epoch {epoch}) could not be renewed in time: {last_error}")]
    NotRenewed { epoch: i64, last_error: String },
}

/// This replica's part in the election.
pub struct Election {
    row: LeaseRow,
    replica: String,
    leader: watch::Sender<Option<Leader>>,
    metrics: Arc<Metrics>,
}

impl Election {
    pub fn new(row: LeaseRow, replica: String, metrics: Arc<Metrics>) -> Self {
        let (leader, _) = watch::channel(None);
        metrics
            .cluster_leader
            .get_or_create(&ReplicaLabels {
                replica: replica.clone(),
            })
            .set(0);
        Self {
            row,
            replica,
            leader,
            metrics,
        }
    }

    /// The leader as last read, for the relay.
    pub fn leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader.subscribe()
    }

    fn publish(&self, leader: Option<Leader>) {
        if let Some(leader) = &leader {
            self.metrics.cluster_epoch.set(leader.epoch);
        }
        self.leader.send_if_modified(|known| {
            let changed = *known != leader;
            *known = leader;
            changed
        });
    }

    /// Follows whoever leads until this replica takes the lease (`None`: stopping first).
    pub async fn until_leading(&self, shutdown: &CancellationToken) -> Option<Arc<Leadership>> {
        let mut ticker = tokio::time::interval(TRY_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reachable = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                _ = ticker.tick() => {}
            }
            let read = match self.row.try_take().await {
                Ok(Some(leadership)) => {
                    info!(replica = %self.replica, epoch = leadership.epoch,
                        "this replica leads: rebuilding the state from the store");
                    self.metrics.cluster_epoch.set(leadership.epoch);
                    self.metrics
                        .cluster_leader
                        .get_or_create(&ReplicaLabels {
                            replica: self.replica.clone(),
                        })
                        .set(1);
                    self.leader.send_replace(None);
                    return Some(Arc::new(leadership));
                }
                Ok(None) => self.row.leader().await,
                Err(e) => Err(e),
            };
            match read {
                Ok(leader) => {
                    if !reachable {
                        info!("the store answers again");
                        reachable = true;
                    }
                    self.publish(Some(leader));
                }
                Err(e) => {
                    if reachable {
                        warn!("cannot read who leads from the store: {e}");
                        reachable = false;
                    }
                    self.publish(None);
                }
            }
        }
    }

    /// Renews the lease every third of its length until it is lost (the reason) or
    /// `shutdown` (then it is given up for the next replica and `None` is returned).
    pub async fn keep(
        &self,
        leadership: &Leadership,
        shutdown: &CancellationToken,
    ) -> Option<LeadershipEnd> {
        let every = self.row.length() / 3;
        let mut wait = every;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    if let Err(e) = self.row.release(leadership).await {
                        warn!("cannot give the lease up (the next leader waits for it to run out): {e}");
                    }
                    return None;
                }
                () = tokio::time::sleep(wait) => {}
            }
            let renewed = tokio::time::timeout(leadership.remaining(), self.row.renew(leadership))
                .await
                .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
            match renewed {
                Ok(true) => wait = every,
                Ok(false) => {
                    return Some(self.lost(LeadershipEnd::TakenOver {
                        epoch: leadership.epoch,
                    }));
                }
                Err(e) if leadership.check().is_err() => {
                    return Some(self.lost(LeadershipEnd::NotRenewed {
                        epoch: leadership.epoch,
                        last_error: e.to_string(),
                    }));
                }
                Err(e) => {
                    warn!(remaining = ?leadership.remaining(), "the lease was not renewed, trying again: {e}");
                    wait = RENEW_RETRY.min(leadership.remaining());
                }
            }
        }
    }

    fn lost(&self, end: LeadershipEnd) -> LeadershipEnd {
        error!(replica = %self.replica, "leadership lost: {end}; stopping");
        self.metrics
            .cluster_leader
            .get_or_create(&ReplicaLabels {
                replica: self.replica.clone(),
            })
            .set(0);
        end
    }
}
