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
use futures::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{
    DesiredState, IdempotencyKey, OperationFilter, OperationPage, Store, StoreError, decode_key,
    decode_last_operation, decode_operation, encode_operation,
};
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
    /// journal. For the writes off the callers' path (retention); the others check the
    /// epoch in the statement itself ([`FENCE`]), one round trip instead of four.
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

    /// The error for a statement whose [`FENCE`] found another epoch.
    async fn fenced_error(&self) -> StoreError {
        let held = self.fence.unwrap_or_default();
        match sqlx::query_scalar("SELECT epoch FROM leadership WHERE id = 1")
            .fetch_one(&self.pool)
            .await
        {
            Ok(current) => StoreError::Fenced { held, current },
            Err(e) => StoreError::Database(e),
        }
    }

    /// Runs a statement that starts with [`FENCE`] (epoch bound as `$1`) and ends selecting
    /// `fenced` (rows the fence let through) and `written` (rows its main write changed).
    async fn fenced_write(&self, query: FencedQuery<'_>, what: &str) -> Result<(), StoreError> {
        let row = query.fetch_one(&self.pool).await?;
        let fenced: i64 = row.get("fenced");
        let written: i64 = row.get("written");
        if fenced == 0 {
            return Err(self.fenced_error().await);
        }
        if written == 0 {
            return Err(StoreError::Corrupt(format!("{what} was never journaled")));
        }
        Ok(())
    }
}

type FencedQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// The first CTE of every fenced statement: one row while `$1` (the epoch; NULL on a store
/// that does not lead) is the lease's, none after a takeover. `FOR SHARE` orders the
/// statement with a takeover, as [`PgStore::begin`] says.
const FENCE: &str = "fence AS (SELECT 1 FROM leadership
                     WHERE id = 1 AND ($1::bigint IS NULL OR epoch = $1) FOR SHARE)";

/// The operation's record replaced, behind the fence: `$2` id, `$3` state, `$4` body.
const UPDATE_OPERATION: &str = "updated AS (UPDATE operations SET state = $3, updated_at = now(),
                                body = $4 FROM fence WHERE operations.id = $2 RETURNING 1)";

/// Holds set, behind the fence, from the arrays bound from `$first` on (seven of them).
fn upsert_holds(first: usize) -> String {
    let p: Vec<String> = (first..first + 7).map(|n| format!("${n}")).collect();
    format!(
        "held AS (INSERT INTO holds
             (app, instance_id, ip, port, registered_at, operation_id, since)
         SELECT h.app, h.instance_id, h.ip, h.port, h.registered_at, h.operation_id, h.since
         FROM unnest({}::text[], {}::text[], {}::text[], {}::integer[], {}::bigint[],
                     {}::text[], {}::timestamptz[])
              AS h(app, instance_id, ip, port, registered_at, operation_id, since), fence
         ON CONFLICT (app, instance_id) DO UPDATE SET ip = excluded.ip, port = excluded.port,
             registered_at = excluded.registered_at, operation_id = excluded.operation_id,
             since = excluded.since)",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    )
}

/// Holds ended, behind the fence, keyed by the arrays bound at `$first` (apps) and after it
/// (instance ids).
fn delete_holds(first: usize) -> String {
    format!(
        "released AS (DELETE FROM holds USING fence,
             unnest(${first}::text[], ${}::text[]) AS k(app, instance_id)
         WHERE holds.app = k.app AND holds.instance_id = k.instance_id)",
        first + 1
    )
}

fn hold_columns(holds: &[Hold]) -> HoldColumns {
    HoldColumns {
        apps: holds.iter().map(|h| h.app.as_str().to_owned()).collect(),
        ids: holds.iter().map(|h| h.instance_id.clone()).collect(),
        ips: holds.iter().map(|h| h.ip.to_string()).collect(),
        ports: holds.iter().map(|h| i32::from(h.port)).collect(),
        registered: holds.iter().map(|h| h.registered_at).collect(),
        operations: holds.iter().map(|h| h.operation_id.to_string()).collect(),
        since: holds.iter().map(|h| h.since).collect(),
    }
}

/// Holds as the arrays `unnest` takes.
struct HoldColumns {
    apps: Vec<String>,
    ids: Vec<String>,
    ips: Vec<String>,
    ports: Vec<i32>,
    registered: Vec<Option<i64>>,
    operations: Vec<String>,
    since: Vec<DateTime<Utc>>,
}

/// One field of every instance an operation touches, as an array to `unnest`.
fn column<T>(operation: &Operation, field: impl Fn(&crate::domain::InstanceResult) -> T) -> Vec<T> {
    operation.instances.iter().map(field).collect()
}

fn key_columns(keys: &[InstanceKey]) -> (Vec<String>, Vec<String>) {
    keys.iter()
        .map(|k| (k.app.as_str().to_owned(), k.instance_id.to_string()))
        .unzip()
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
        // The operation, the instances it touches and the caller's key: one statement,
        // behind the fence, atomic without a transaction of its own.
        let statement = format!(
            "WITH {FENCE},
             op AS (
                 INSERT INTO operations (id, action, state, ip, app, created_at, updated_at, body)
                 SELECT $2, $3, $4, $5, $6, $7, now(), $8 FROM fence
                 RETURNING id),
             touched AS (
                 INSERT INTO operation_instances (operation_id, app, instance_id, ip, port)
                 SELECT op.id, i.app, i.instance_id, i.ip, i.port
                 FROM op, unnest($12::text[], $13::text[], $14::text[], $15::integer[])
                      AS i(app, instance_id, ip, port)),
             keyed AS (
                 INSERT INTO idempotency_keys (principal, key, fingerprint, operation_id, created_at)
                 SELECT $9, $10, $11, op.id, $7 FROM op WHERE $9::text IS NOT NULL
                 ON CONFLICT (principal, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                     operation_id = excluded.operation_id, created_at = excluded.created_at)
             SELECT (SELECT count(*) FROM fence) AS fenced, (SELECT count(*) FROM op) AS written"
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(self.fence)
            .bind(operation.id.to_string())
            .bind(operation.action.as_str())
            .bind(operation.state.as_str())
            .bind(operation.target.ip.to_string())
            .bind(operation.target.app.as_ref().map(AppName::as_str))
            .bind(operation.created_at)
            .bind(&body)
            .bind(key.map(|k| k.principal.as_str()))
            .bind(key.map(|k| k.key.as_str()))
            .bind(key.map(|k| k.fingerprint.as_str()))
            .bind(column(operation, |i| i.app.as_str().to_owned()))
            .bind(column(operation, |i| i.instance_id.clone()))
            .bind(column(operation, |i| i.ip.to_string()))
            .bind(column(operation, |i| i32::from(i.port)));
        self.fenced_write(query, &format!("operation {}", operation.id))
            .await
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
        let statement = format!(
            "WITH {FENCE}, {UPDATE_OPERATION}
             SELECT (SELECT count(*) FROM fence) AS fenced, (SELECT count(*) FROM updated) AS written"
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(self.fence)
            .bind(operation.id.to_string())
            .bind(operation.state.as_str())
            .bind(body);
        self.fenced_write(query, &format!("operation {}", operation.id))
            .await
    }

    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        let row = sqlx::query("SELECT body FROM operations WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| decode_operation(row.get("body"))).transpose()
    }

    async fn operations(&self, filter: &OperationFilter) -> Result<OperationPage, StoreError> {
        let rows = sqlx::query(
            "SELECT o.body FROM operations o
             WHERE ($1::text IS NULL OR o.state = $1)
               AND ($2::text IS NULL OR o.id IN (
                     SELECT id FROM operations WHERE ip = $2
                     UNION SELECT operation_id FROM operation_instances WHERE ip = $2))
               AND ($3::text IS NULL OR o.id IN (
                     SELECT id FROM operations WHERE app = $3
                     UNION SELECT operation_id FROM operation_instances WHERE app = $3))
               AND ($5::text IS NULL OR o.id < $5)
             ORDER BY o.id DESC
             LIMIT $4 + 1",
        )
        .bind(filter.state.map(OperationState::as_str))
        .bind(filter.ip.map(|ip| ip.to_string()))
        .bind(filter.app.as_ref().map(AppName::as_str))
        .bind(i64::from(filter.limit))
        .bind(filter.before.as_ref().map(ToString::to_string))
        .fetch(&self.pool);
        super::read_page(rows.map_ok(|row| row.get("body")), filter).await
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
            .map(|row| decode_last_operation(row.get("ip"), row.get("id")))
            .collect()
    }

    async fn unfinished_operations(&self) -> Result<Vec<Operation>, StoreError> {
        let rows =
            sqlx::query("SELECT body FROM operations WHERE state = 'in_progress' ORDER BY id")
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
        let change = match desired {
            DesiredState::Hold(_) => upsert_holds(5),
            DesiredState::Release(_) => delete_holds(5),
        };
        // The desired state and the operation that set it: one statement, so a hold never
        // names an operation the journal shows as not having changed the registry.
        let statement = format!(
            "WITH {FENCE}, {change}, {UPDATE_OPERATION}
             SELECT (SELECT count(*) FROM fence) AS fenced, (SELECT count(*) FROM updated) AS written"
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(self.fence)
            .bind(operation.id.to_string())
            .bind(operation.state.as_str())
            .bind(body);
        let query = match desired {
            DesiredState::Hold(holds) => {
                let columns = hold_columns(holds);
                query
                    .bind(columns.apps)
                    .bind(columns.ids)
                    .bind(columns.ips)
                    .bind(columns.ports)
                    .bind(columns.registered)
                    .bind(columns.operations)
                    .bind(columns.since)
            }
            DesiredState::Release(keys) => {
                let (apps, ids) = key_columns(keys);
                query.bind(apps).bind(ids)
            }
        };
        self.fenced_write(query, &format!("operation {}", operation.id))
            .await
    }

    async fn release_holds(&self, keys: &[InstanceKey]) -> Result<(), StoreError> {
        let statement = format!(
            "WITH {FENCE}, {}
             SELECT (SELECT count(*) FROM fence) AS fenced, 1::bigint AS written",
            delete_holds(2)
        );
        let (apps, ids) = key_columns(keys);
        let query = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(self.fence)
            .bind(apps)
            .bind(ids);
        self.fenced_write(query, "a hold").await
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

#[cfg(test)]
mod tests;
