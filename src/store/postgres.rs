//! The PostgreSQL store: the journal and desired state of several replicas, over a server the
//! platform team already runs. The statements mirror SQLite's; what differs is fencing: the
//! leader's store carries the epoch of its lease, and every write checks it under a share
//! lock on the leadership row, so a replica whose lease another took over writes nothing
//! (`cluster::lease` takes and renews the lease).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use super::{DesiredState, IdempotencyKey, OperationFilter, Store, StoreError};
use crate::domain::{AppName, Hold, InstanceKey, Operation, OperationId, OperationState, Status};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How the pool reaches the server.
#[derive(Debug, Clone, Copy)]
pub struct PgPoolSettings {
    pub max_connections: u32,
    /// Bounds both a new connection and the wait for a free one.
    pub connect_timeout: Duration,
    /// The server cancels a statement past this (`statement_timeout`).
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The lease epoch every write is checked against; `None` for a replica that does not
    /// lead (it writes only the liveness probe).
    fence: Option<i64>,
}

impl PgStore {
    /// Connects and migrates (migrations take an advisory lock: replicas starting together
    /// run them once).
    pub async fn connect(url: &str, settings: PgPoolSettings) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let statement_timeout = format!("{}ms", settings.statement_timeout.as_millis());
        let options = options
            .application_name("synchspeed")
            .options([("statement_timeout", statement_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.connect_timeout)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let store = Self { pool, fence: None };
        store.ping().await?;
        Ok(store)
    }

    /// The same pool, every write checked against `epoch`.
    pub fn fenced(&self, epoch: i64) -> Self {
        Self {
            pool: self.pool.clone(),
            fence: Some(epoch),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A transaction whose writes commit only while this store's epoch is the lease's. The
    /// share lock makes a takeover (which updates that row) wait for it, or it for the
    /// takeover and then see the new epoch: never a write after the new leader read the
    /// journal.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(epoch) = self.fence {
            let current: i64 =
                sqlx::query_scalar("SELECT epoch FROM leadership WHERE id = 1 FOR SHARE")
                    .fetch_one(&mut *tx)
                    .await?;
            if current != epoch {
                return Err(StoreError::Fenced {
                    held: epoch,
                    current,
                });
            }
        }
        Ok(tx)
    }
}

fn encode_operation(operation: &Operation) -> Result<String, StoreError> {
    serde_json::to_string(operation)
        .map_err(|e| StoreError::Corrupt(format!("operation does not serialize: {e}")))
}

fn decode_operation(body: &str) -> Result<Operation, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("operation: {e}")))
}

fn decode_key(app: &str, instance_id: String) -> Result<InstanceKey, StoreError> {
    Ok(InstanceKey {
        app: AppName::parse(app).map_err(|e| StoreError::Corrupt(format!("app '{app}': {e}")))?,
        instance_id: instance_id.into(),
    })
}

async fn write_operation(
    connection: &mut PgConnection,
    operation: &Operation,
    body: String,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE operations SET state = $2, updated_at = now(), body = $3::jsonb WHERE id = $1",
    )
    .bind(operation.id.to_string())
    .bind(operation.state.as_str())
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

async fn upsert_holds(connection: &mut PgConnection, holds: &[Hold]) -> Result<(), StoreError> {
    for hold in holds {
        sqlx::query(
            "INSERT INTO holds (app, instance_id, ip, port, registered_at, operation_id, since)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (app, instance_id) DO UPDATE SET ip = excluded.ip, port = excluded.port,
                 registered_at = excluded.registered_at, operation_id = excluded.operation_id,
                 since = excluded.since",
        )
        .bind(hold.app.as_str())
        .bind(&hold.instance_id)
        .bind(hold.ip.to_string())
        .bind(i32::from(hold.port))
        .bind(hold.registered_at)
        .bind(hold.operation_id.to_string())
        .bind(hold.since)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

async fn delete_holds(
    connection: &mut PgConnection,
    keys: &[InstanceKey],
) -> Result<(), StoreError> {
    for key in keys {
        sqlx::query("DELETE FROM holds WHERE app = $1 AND instance_id = $2")
            .bind(key.app.as_str())
            .bind(key.instance_id.as_ref())
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    /// A write: a server that answers reads but takes no write (a read-only standby) would
    /// take no operation.
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE liveness SET written_at = now() WHERE id = 1")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_operation(
        &self,
        operation: &Operation,
        key: Option<&IdempotencyKey>,
    ) -> Result<(), StoreError> {
        let body = encode_operation(operation)?;
        let id = operation.id.to_string();
        let mut tx = self.begin().await?;
        // The operation and the instances it touches, in one statement.
        sqlx::query(
            "WITH op AS (
                 INSERT INTO operations (id, action, state, ip, app, created_at, updated_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6, now(), $7::jsonb)
                 RETURNING id, body)
             INSERT INTO operation_instances (operation_id, app, instance_id, ip, port)
             SELECT op.id, e->>'app', e->>'instanceId', e->>'ip', (e->>'port')::integer
             FROM op, jsonb_array_elements(op.body->'instances') AS e",
        )
        .bind(&id)
        .bind(operation.action.as_str())
        .bind(operation.state.as_str())
        .bind(operation.target.ip.to_string())
        .bind(operation.target.app.as_ref().map(AppName::as_str))
        .bind(operation.created_at)
        .bind(&body)
        .execute(&mut *tx)
        .await?;
        if let Some(key) = key {
            sqlx::query(
                "INSERT INTO idempotency_keys (principal, key, fingerprint, operation_id, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (principal, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                     operation_id = excluded.operation_id, created_at = excluded.created_at",
            )
            .bind(&key.principal)
            .bind(&key.key)
            .bind(&key.fingerprint)
            .bind(&id)
            .bind(operation.created_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn idempotent_operation(
        &self,
        principal: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<(String, OperationId)>, StoreError> {
        let row = sqlx::query(
            "SELECT fingerprint, operation_id FROM idempotency_keys
             WHERE principal = $1 AND key = $2 AND created_at >= $3",
        )
        .bind(principal)
        .bind(key)
        .bind(since)
        .fetch_optional(&self.pool)
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

    async fn prune_operations(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "DELETE FROM operations WHERE created_at < $1 AND state <> 'in_progress'
               AND id NOT IN (SELECT operation_id FROM holds)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn prune_idempotency_keys(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn update_operation(&self, operation: &Operation) -> Result<(), StoreError> {
        let body = encode_operation(operation)?;
        let mut tx = self.begin().await?;
        write_operation(&mut tx, operation, body).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        let row = sqlx::query("SELECT body::text AS body FROM operations WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| decode_operation(row.get("body"))).transpose()
    }

    async fn operations(&self, filter: &OperationFilter) -> Result<Vec<Operation>, StoreError> {
        let rows = sqlx::query(
            "SELECT o.body::text AS body FROM operations o
             WHERE ($1::text IS NULL OR o.state = $1)
               AND ($2::text IS NULL OR o.id IN (
                     SELECT id FROM operations WHERE ip = $2
                     UNION SELECT operation_id FROM operation_instances WHERE ip = $2))
               AND ($3::text IS NULL OR o.id IN (
                     SELECT id FROM operations WHERE app = $3
                     UNION SELECT operation_id FROM operation_instances WHERE app = $3))
             ORDER BY o.id DESC
             LIMIT $4",
        )
        .bind(filter.state.map(OperationState::as_str))
        .bind(filter.ip.map(|ip| ip.to_string()))
        .bind(filter.app.as_ref().map(AppName::as_str))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| decode_operation(row.get("body")))
            .collect()
    }

    async fn last_operation_ids(&self) -> Result<Vec<(IpAddr, OperationId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, MAX(id) AS id FROM (
                 SELECT ip, id FROM operations
                 UNION ALL
                 SELECT ip, operation_id AS id FROM operation_instances) AS touched
             GROUP BY ip",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let ip: String = row.get("ip");
                let id: String = row.get("id");
                Ok((
                    ip.parse()
                        .map_err(|e| StoreError::Corrupt(format!("operation ip '{ip}': {e}")))?,
                    id.parse()
                        .map_err(|e| StoreError::Corrupt(format!("operation id: {e}")))?,
                ))
            })
            .collect()
    }

    async fn unfinished_operations(&self) -> Result<Vec<Operation>, StoreError> {
        let rows = sqlx::query(
            "SELECT body::text AS body FROM operations WHERE state = 'in_progress' ORDER BY id",
        )
        .fetch_all(&self.pool)
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
        let mut tx = self.begin().await?;
        match desired {
            DesiredState::Hold(holds) => upsert_holds(&mut tx, holds).await?,
            DesiredState::Release(keys) => delete_holds(&mut tx, keys).await?,
        }
        write_operation(&mut tx, operation, body).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn release_holds(&self, keys: &[InstanceKey]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        delete_holds(&mut tx, keys).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn holds(&self) -> Result<Vec<Hold>, StoreError> {
        let rows = sqlx::query(
            "SELECT app, instance_id, ip, port, registered_at, operation_id, since
             FROM holds ORDER BY since, app, instance_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let corrupt = |what: &str, e: &dyn std::fmt::Display| {
                    StoreError::Corrupt(format!("hold {what}: {e}"))
                };
                let key = decode_key(row.get("app"), row.get("instance_id"))?;
                let ip: String = row.get("ip");
                let port: i32 = row.get("port");
                let operation_id: String = row.get("operation_id");
                Ok(Hold {
                    app: key.app,
                    instance_id: key.instance_id.to_string(),
                    ip: ip.parse().map_err(|e| corrupt("ip", &e))?,
                    port: u16::try_from(port).map_err(|e| corrupt("port", &e))?,
                    registered_at: row.get("registered_at"),
                    operation_id: operation_id
                        .parse()
                        .map_err(|e| corrupt("operation id", &e))?,
                    since: row.get("since"),
                })
            })
            .collect()
    }

    async fn file_statuses(&self) -> Result<HashMap<InstanceKey, Status>, StoreError> {
        let rows = sqlx::query("SELECT app, instance_id, status FROM file_registry_status")
            .fetch_all(&self.pool)
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
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO file_registry_status (app, instance_id, status, updated_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (app, instance_id) DO UPDATE SET status = excluded.status,
                 updated_at = excluded.updated_at",
        )
        .bind(key.app.as_str())
        .bind(&key.instance_id)
        .bind(status.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
