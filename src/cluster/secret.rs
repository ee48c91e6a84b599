//! The relay secret: what a follower proves a relayed call with, read from the store and read
//! again when it may have changed. A store that was dropped and created again (a restore, a
//! new database under the same URL) holds a new secret while running replicas keep the old
//! one; without a second read the leader would take every relayed call for the follower's
//! own, and record the follower's address as the caller.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::sync::{lock, read, write};

/// A leader refuses a relayed call whose secret it does not know with this header on its
/// answer, so that the follower reads the secret again and retries (nothing was done).
pub const REFUSED: &str = "x-synchspeed-relay-refused";

/// How often a mismatch may send a read to the store: a caller who forges the header cannot
/// make every request a query.
const REREAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

pub struct RelaySecret {
    pool: PgPool,
    current: RwLock<Arc<str>>,
    /// When the store was last asked (`None`: only at start).
    read_at: Mutex<Option<Instant>>,
}

impl RelaySecret {
    /// Reads the secret the store holds now.
    pub async fn load(pool: PgPool) -> Result<Self, sqlx::Error> {
        let current = Self::fetch(&pool).await?;
        Ok(Self {
            pool,
            current: RwLock::new(current),
            read_at: Mutex::new(None),
        })
    }

    async fn fetch(pool: &PgPool) -> Result<Arc<str>, sqlx::Error> {
        let secret: String = sqlx::query_scalar("SELECT secret FROM relay_secret WHERE id = 1")
            .fetch_one(pool)
            .await?;
        Ok(secret.into())
    }

    /// The secret as last read.
    pub fn current(&self) -> Arc<str> {
        Arc::clone(&read(&self.current))
    }

    fn is_current(&self, presented: &[u8]) -> bool {
        bool::from(presented.ct_eq(read(&self.current).as_bytes()))
    }

    /// Reads the secret again (at most once a second); whether it changed.
    pub async fn reread(&self) -> bool {
        {
            let mut read_at = lock(&self.read_at);
            if read_at.is_some_and(|at| at.elapsed() < REREAD_AT_MOST_EVERY) {
                return false;
            }
            *read_at = Some(Instant::now());
        }
        match Self::fetch(&self.pool).await {
            Ok(fresh) => {
                let mut current = write(&self.current);
                let changed = *current != fresh;
                if changed {
                    tracing::warn!(
                        "the relay secret in the store changed (the store was created anew?); \
                         the new one is used from now on"
                    );
                    *current = fresh;
                }
                changed
            }
            Err(e) => {
                tracing::warn!("cannot read the relay secret again: {e}");
                false
            }
        }
    }

    /// Whether `presented` is this deployment's secret, reading it again once when it is not
    /// (the store's may be newer than the one read at start).
    pub async fn verify(&self, presented: &[u8]) -> bool {
        self.is_current(presented) || (self.reread().await && self.is_current(presented))
    }
}
