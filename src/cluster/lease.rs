//! The leader's lease, one row in PostgreSQL (`leadership`), timed by the database's clock so
//! that no two replicas' clocks need agree. A replica takes it only once it has expired, with
//! the epoch one higher; the leader renews it every third of its length. Each journal write
//! checks the epoch (`store::postgres`), and each registry or gateway write checks the lease's
//! local deadline ([`Leadership::check`]), which runs on this process's monotonic clock: a
//! process paused past it (SIGSTOP, a frozen VM) finds it passed the moment it runs again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::{PgPool, Row};

use crate::sync::lock;

/// The leader as the row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub replica: String,
    /// Where the other replicas relay calls to.
    pub advertise: String,
    pub epoch: i64,
    /// Whether the lease has not expired (by the database's clock).
    pub live: bool,
}

/// Why this replica may no longer act as the leader.
#[derive(Debug, Clone, thiserror::Error)]
#[error("this replica's leadership (epoch {epoch}) lapsed: it did not renew its lease in time")]
pub struct Lapsed {
    pub epoch: i64,
}

/// The statements on the lease row, for one replica.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    pool: PgPool,
    replica: String,
    advertise: String,
    length: Duration,
}

impl LeaseRow {
    pub fn new(pool: PgPool, replica: String, advertise: String, length: Duration) -> Self {
        Self {
            pool,
            replica,
            advertise,
            length,
        }
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    fn seconds(&self) -> f64 {
        self.length.as_secs_f64()
    }

    /// Takes the lease if it has expired; the new epoch when taken.
    pub async fn try_take(&self) -> Result<Option<Leadership>, sqlx::Error> {
        let sent = Instant::now();
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE leadership SET holder = $1, advertise = $2, epoch = epoch + 1,
                 expires_at = now() + make_interval(secs => $3)
             WHERE id = 1 AND expires_at < now()
             RETURNING epoch",
        )
        .bind(&self.replica)
        .bind(&self.advertise)
        .bind(self.seconds())
        .fetch_optional(&self.pool)
        .await?;
        Ok(epoch.map(|epoch| Leadership::new(epoch, sent, self.length)))
    }

    /// Extends the lease of `leadership`; `false` when another replica holds it now.
    pub async fn renew(&self, leadership: &Leadership) -> Result<bool, sqlx::Error> {
        let sent = Instant::now();
        let renewed = sqlx::query(
            "UPDATE leadership SET expires_at = now() + make_interval(secs => $2)
             WHERE id = 1 AND epoch = $1 AND expires_at >= now()",
        )
        .bind(leadership.epoch)
        .bind(self.seconds())
        .execute(&self.pool)
        .await?;
        if renewed.rows_affected() == 0 {
            return Ok(false);
        }
        leadership.extend(sent);
        Ok(true)
    }

    /// Gives the lease up at a clean stop, so that another replica takes over at its next
    /// try instead of after the lease runs out.
    pub async fn release(&self, leadership: &Leadership) -> Result<(), sqlx::Error> {
        leadership.lapse();
        sqlx::query("UPDATE leadership SET expires_at = '-infinity' WHERE id = 1 AND epoch = $1")
            .bind(leadership.epoch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn leader(&self) -> Result<Leader, sqlx::Error> {
        let row = sqlx::query(
            "SELECT holder, advertise, epoch, expires_at > now() AS live
             FROM leadership WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Leader {
            replica: row.get("holder"),
            advertise: row.get("advertise"),
            epoch: row.get("epoch"),
            live: row.get("live"),
        })
    }
}

/// A lease this replica holds: its epoch and how long it may act on it.
#[derive(Debug)]
pub struct Leadership {
    pub epoch: i64,
    length: Duration,
    /// Past this instant this replica acts no more, whatever it believes about the row.
    valid_until: Mutex<Instant>,
}

impl Leadership {
    fn new(epoch: i64, sent: Instant, length: Duration) -> Self {
        Self {
            epoch,
            length,
            valid_until: Mutex::new(Self::deadline(sent, length)),
        }
    }

    /// The database set the expiry from its own clock after `sent`; a tenth is kept back for
    /// clock rates that differ and for a write already on its way.
    fn deadline(sent: Instant, length: Duration) -> Instant {
        sent + length - length / 10
    }

    fn extend(&self, sent: Instant) {
        *lock(&self.valid_until) = Self::deadline(sent, self.length);
    }

    fn lapse(&self) {
        *lock(&self.valid_until) = Instant::now();
    }

    /// Whether this replica may still write to the registry and the gateways.
    pub fn check(&self) -> Result<(), Lapsed> {
        if Instant::now() < *lock(&self.valid_until) {
            Ok(())
        } else {
            Err(Lapsed { epoch: self.epoch })
        }
    }

    /// How long until the local deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        lock(&self.valid_until).saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_acted_on_until_its_deadline_and_a_renewal_moves_it() {
        let leadership = Leadership::new(7, Instant::now(), Duration::from_secs(10));
        assert!(leadership.check().is_ok());
        assert!(leadership.remaining() <= Duration::from_secs(9));
        leadership.lapse();
        assert_eq!(leadership.check().unwrap_err().epoch, 7);
        assert_eq!(leadership.remaining(), Duration::ZERO);
        leadership.extend(Instant::now());
        assert!(leadership.check().is_ok());
    }
}
