//! The SQLite store: one file, WAL journal, migrations embedded in the binary. One room past
//! 500 lines: every statement of the one store, and its write-ahead log's upkeep, together.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{
    DesiredState, IdempotencyKey, OperationFilter, OperationPage, Store, StoreError, decode_key,
    decode_last_operation, decode_operation, encode_operation,
};
use crate::domain::operation::millis;
use crate::domain::{AppName, Hold, InstanceKey, Operation, OperationId, OperationState, Status};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// One connection writes, a few read. SQLite lets one writer at a time in: with several
/// writing connections, a commit that finds another one's lock sleeps in SQLite's busy
/// handler (a millisecond at first, more after) where queueing for the one writer costs the
/// other commit's duration; and the one writer's page cache stays valid between its commits
/// instead of being read again after every other connection's write. Readers never wait for
/// the writer (WAL).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// The write-ahead log's file, whose size `bound_wal` keeps in check.
    wal: std::path::PathBuf,
}

impl SqliteStore {
    /// Opens (creating the file and its folder when missing) and migrates.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // WAL + NORMAL: a commit survives a process crash; only an OS crash can lose the
            // last transactions, which the journal's at-least-once design tolerates.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            // Checkpoints (which fsync) run from `run_checkpoints`, not inside whichever
            // commit crosses the threshold: that commit is on a caller's latency path.
            .pragma("wal_autocheckpoint", "0")
            .foreign_keys(true);
        let mut wal = options.get_filename().as_os_str().to_owned();
        wal.push("-wal");
        if let Some(parent) = options
            .get_filename()
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot create {}: {e}", parent.display()).into(),
                ))
            })?;
        }
        // The default pings every connection before handing it out: one more round trip to
        // the connection's thread on every query, for a database in this process whose
        // connections cannot go stale the way a server's can.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        // Refuse a store that cannot be written now rather than fail the first offline.
        probe_write(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(3)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self {
            writer,
            readers,
            wal: wal.into(),
        })
    }

    /// The write-ahead log's size now (0 when there is none).
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(&self.wal).map_or(0, |m| m.len())
    }

    /// Truncates the write-ahead log once it is past `max` bytes. PASSIVE checkpoints copy
    /// its pages into the database but never shrink the file, and one that a reader kept
    /// from finishing lets it grow through a burst (161 MB after 2,000 calls); a TRUNCATE
    /// waits for readers and writers, so it runs only past the bound.
    pub async fn bound_wal(&self, max: u64) -> Result<(), StoreError> {
        if self.wal_bytes() > max {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.writer)
                .await?;
        }
        Ok(())
    }

    /// Copies the write-ahead log into the database every `every` until `shutdown`, without
    /// blocking writers (PASSIVE), truncating it past `wal_max` bytes, then once more in
    /// full before returning.
    pub async fn run_checkpoints(
        &self,
        every: Duration,
        wal_max: u64,
        metrics: std::sync::Arc<crate::telemetry::Metrics>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            // From a reader: a checkpoint (which fsyncs) on the writer would hold commits up.
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&self.readers)
                .await
            {
                tracing::warn!("store checkpoint failed: {e}");
            }
            if let Err(e) = self.bound_wal(wal_max).await {
                tracing::warn!("store write-ahead log not truncated: {e}");
            }
            metrics
                .store_wal_bytes
                .set(i64::try_from(self.wal_bytes()).unwrap_or(i64::MAX));
        }
    }

    pub async fn close(&self) {
        self.readers.close().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await
        {
            tracing::warn!("final store checkpoint failed: {e}");
        }
        self.writer.close().await;
    }
}

async fn probe_write(writer: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query("UPDATE liveness SET written_at = ? WHERE id = 1")
        .bind(Utc::now().timestamp_millis())
        .execute(writer)
        .await?;
    Ok(())
}

/// Replaces the record of a journaled operation.
async fn write_operation(
    connection: &mut SqliteConnection,
    operation: &Operation,
    body: String,
) -> Result<(), StoreError> {
    let updated =
        sqlx::query("UPDATE operations SET state = ?2, updated_at = ?3, body = ?4 WHERE id = ?1")
            .bind(operation.id.to_string())
            .bind(operation.state.as_str())
            .bind(millis::format(&Utc::now()))
            .bind(body)
            .execute(&mut *connection)
            .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::Corrupt(format!(
            "operation {} was never journaled",
            operation.id
        )));
    }
    Ok(())
}

async fn upsert_holds(connection: &mut SqliteConnection, holds: &[Hold]) -> Result<(), StoreError> {
    for hold in holds {
        sqlx::query(
            "INSERT INTO holds (app, instance_id, ip, port, registered_at, operation_id, since)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (app, instance_id) DO UPDATE SET ip = excluded.ip, port = excluded.port,
                 registered_at = excluded.registered_at, operation_id = excluded.operation_id,
                 since = excluded.since",
        )
        .bind(hold.app.as_str())
        .bind(&hold.instance_id)
        .bind(hold.ip.to_string())
        .bind(i64::from(hold.port))
        .bind(hold.registered_at)
        .bind(hold.operation_id.to_string())
        .bind(millis::format(&hold.since))
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

async fn delete_holds(
    connection: &mut SqliteConnection,
    keys: &[InstanceKey],
) -> Result<(), StoreError> {
    for key in keys {
        sqlx::query("DELETE FROM holds WHERE app = ?1 AND instance_id = ?2")
            .bind(key.app.as_str())
            .bind(key.instance_id.as_ref())
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    /// A write, not a read: a store that answers reads but cannot be written (a full
    /// disk, a read-only mount) would take no operation.
    async fn ping(&self) -> Result<(), StoreError> {
        probe_write(&self.writer).await
    }

    async fn insert_operation(
        &self,
        operation: &Operation,
        key: Option<&IdempotencyKey>,
    ) -> Result<(), StoreError> {
        let body = encode_operation(operation)?;
        let id = operation.id.to_string();
        // One statement: the operation's instances follow from its body (migration 0003), so
        // without a key the insert needs no transaction of its own.
        let insert = sqlx::query(
            "INSERT INTO operations (id, action, state, ip, app, created_at, updated_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&id)
        .bind(operation.action.as_str())
        .bind(operation.state.as_str())
        .bind(operation.target.ip.to_string())
        .bind(operation.target.app.as_ref().map(AppName::as_str))
        .bind(millis::format(&operation.created_at))
        .bind(millis::format(&Utc::now()))
        .bind(&body);
        let Some(key) = key else {
            insert.execute(&self.writer).await?;
            return Ok(());
        };
        let mut tx = self.writer.begin().await?;
        insert.execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO idempotency_keys (principal, key, fingerprint, operation_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (principal, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                 operation_id = excluded.operation_id, created_at = excluded.created_at",
        )
        .bind(&key.principal)
        .bind(&key.key)
        .bind(&key.fingerprint)
        .bind(&id)
        .bind(millis::format(&operation.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn idempotent_operation(
        &self,
        principal: &str,
        key: &str,
        since: chrono::DateTime<Utc>,
    ) -> Result<Option<(String, OperationId)>, StoreError> {
        let row = sqlx::query(
            "SELECT fingerprint, operation_id FROM idempotency_keys
             WHERE principal = ?1 AND key = ?2 AND created_at >= ?3",
        )
        .bind(principal)
        .bind(key)
        .bind(millis::format(&since))
        .fetch_optional(&self.readers)
        .await?;
        row.map(|row| {
            let id: String = row.get("operation_id");
            let id = id
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("idempotency key operation: {e}")))?;
            Ok((row.get("fingerprint"), id))
        })
        .transpose()
    }

    async fn prune_operations(&self, before: chrono::DateTime<Utc>) -> Result<u64, StoreError> {
        // Their instances and keys go with them (ON DELETE CASCADE).
        let done = sqlx::query(
            "DELETE FROM operations WHERE created_at < ?1 AND state <> 'in_progress'
               AND id NOT IN (SELECT operation_id FROM holds)",
        )
        .bind(millis::format(&before))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_idempotency_keys(
        &self,
        before: chrono::DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?1")
            .bind(millis::format(&before))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn update_operation(&self, operation: &Operation) -> Result<(), StoreError> {
        let body = encode_operation(operation)?;
        let mut connection = self.writer.acquire().await?;
        write_operation(&mut connection, operation, body).await
    }

    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        let row = sqlx::query("SELECT body FROM operations WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.readers)
            .await?;
        row.map(|row| decode_operation(row.get("body"))).transpose()
    }

    async fn operations(&self, filter: &OperationFilter) -> Result<OperationPage, StoreError> {
        let rows = sqlx::query(
            "SELECT o.body FROM operations o
             WHERE (?1 IS NULL OR o.state = ?1)
               AND (?2 IS NULL OR o.id IN (
                     SELECT id FROM operations WHERE ip = ?2
                     UNION SELECT operation_id FROM operation_instances WHERE ip = ?2))
               AND (?3 IS NULL OR o.id IN (
                     SELECT id FROM operations WHERE app = ?3
                     UNION SELECT operation_id FROM operation_instances WHERE app = ?3))
               AND (?5 IS NULL OR o.id < ?5)
             ORDER BY o.id DESC
             LIMIT ?4 + 1",
        )
        .bind(filter.state.map(OperationState::as_str))
        .bind(filter.ip.map(|ip| ip.to_string()))
        .bind(filter.app.as_ref().map(AppName::as_str))
        .bind(i64::from(filter.limit))
        .bind(filter.before.as_ref().map(ToString::to_string))
        .fetch(&self.readers);
        super::read_page(rows.map_ok(|row| row.get("body")), filter).await
    }

    async fn last_operation_ids(&self) -> Result<Vec<(IpAddr, OperationId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, MAX(id) AS id FROM (
                 SELECT ip, id FROM operations
                 UNION ALL
                 SELECT ip, operation_id AS id FROM operation_instances)
             GROUP BY ip",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(|row| decode_last_operation(row.get("ip"), row.get("id")))
            .collect()
    }

    async fn unfinished_operations(&self) -> Result<Vec<Operation>, StoreError> {
        let rows =
            sqlx::query("SELECT body FROM operations WHERE state = 'in_progress' ORDER BY id")
                .fetch_all(&self.readers)
                .await?;
        rows.iter()
            .map(|row| decode_operation(row.get("body")))
            .collect()
    }

    async fn record_registry_step(
        &self,
        operation: &Operation,
        desired: &DesiredState,
    ) -> Result<(), StoreError> {
        let body = encode_operation(operation)?;
        let mut tx = self.writer.begin().await?;
        match desired {
            DesiredState::Hold(holds) => upsert_holds(&mut tx, holds).await?,
            DesiredState::Release(keys) => delete_holds(&mut tx, keys).await?,
        }
        write_operation(&mut tx, operation, body).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn release_holds(&self, keys: &[InstanceKey]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        delete_holds(&mut tx, keys).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn holds(&self) -> Result<Vec<Hold>, StoreError> {
        let rows = sqlx::query(
            "SELECT app, instance_id, ip, port, registered_at, operation_id, since
             FROM holds ORDER BY since, app, instance_id",
        )
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(|row| {
                let corrupt = |what: &str, e: &dyn std::fmt::Display| {
                    StoreError::Corrupt(format!("hold {what}: {e}"))
                };
                let key = decode_key(row.get("app"), row.get("instance_id"))?;
                let ip: String = row.get("ip");
                let port: i64 = row.get("port");
                let operation_id: String = row.get("operation_id");
                let since: String = row.get("since");
                Ok(Hold {
                    app: key.app,
                    instance_id: key.instance_id.to_string(),
                    ip: ip.parse().map_err(|e| corrupt("ip", &e))?,
                    port: u16::try_from(port).map_err(|e| corrupt("port", &e))?,
                    registered_at: row.get("registered_at"),
                    operation_id: operation_id
                        .parse()
                        .map_err(|e| corrupt("operation id", &e))?,
                    since: chrono::DateTime::parse_from_rfc3339(&since)
                        .map_err(|e| corrupt("since", &e))?
                        .with_timezone(&Utc),
                })
            })
            .collect()
    }

    async fn file_statuses(&self) -> Result<HashMap<InstanceKey, Status>, StoreError> {
        let rows = sqlx::query("SELECT app, instance_id, status FROM file_registry_status")
            .fetch_all(&self.readers)
            .await?;
        rows.into_iter()
            .map(|row| {
                let key = decode_key(row.get("app"), row.get("instance_id"))?;
                let status: String = row.get("status");
                Ok((key, Status::from_registry(&status)))
            })
            .collect()
    }

    async fn set_file_status(&self, key: &InstanceKey, status: Status) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO file_registry_status (app, instance_id, status, updated_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (app, instance_id) DO UPDATE SET status = excluded.status,
                 updated_at = excluded.updated_at",
        )
        .bind(key.app.as_str())
        .bind(&key.instance_id)
        .bind(status.as_str())
        .bind(millis::format(&Utc::now()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_write_ahead_log_is_truncated_past_its_bound_and_left_alone_below() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        // Each probe write is a frame of the log, which nothing checkpoints here.
        for _ in 0..5000 {
            if store.wal_bytes() > 256 * 1024 {
                break;
            }
            store.ping().await.unwrap();
        }
        let grown = store.wal_bytes();
        assert!(grown > 256 * 1024, "the log grew: {grown}");
        store.bound_wal(grown * 2).await.unwrap();
        assert_eq!(store.wal_bytes(), grown, "below the bound: left alone");
        store.bound_wal(64 * 1024).await.unwrap();
        assert!(store.wal_bytes() <= 64 * 1024, "{}", store.wal_bytes());
        store.ping().await.unwrap();
    }
}
