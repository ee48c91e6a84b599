//! Durable state: the operations journal (the audit trail) and the desired state (holds).
//!
//! [`Store`] is what the rest of the service knows; SQLite is the embedded default for one
//! replica, PostgreSQL serves several (`cluster` leads them over it).

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::net::IpAddr;

use async_trait::async_trait;

use crate::domain::{AppName, Hold, InstanceKey, Operation, OperationId, OperationState, Status};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the store's schema could not be migrated: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a stored record does not parse: {0}")]
    Corrupt(String),
    /// The leader's lease was taken over: this replica may no longer write.
    #[error(
        "this replica's leadership (epoch {held}) was taken over (epoch {current}): it writes nothing more"
    )]
    Fenced { held: i64, current: i64 },
}

/// An operation's record as both stores keep it: its API shape, as JSON text.
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

/// One row of [`Store::last_operation_ids`].
fn decode_last_operation(ip: String, id: String) -> Result<(IpAddr, OperationId), StoreError> {
    Ok((
        ip.parse()
            .map_err(|e| StoreError::Corrupt(format!("operation ip '{ip}': {e}")))?,
        id.parse()
            .map_err(|e| StoreError::Corrupt(format!("operation id: {e}")))?,
    ))
}

/// What a registry step makes synchspeed keep its word on.
#[derive(Debug, Clone)]
pub enum DesiredState {
    /// An offline: these instances are held (replacing any hold on them).
    Hold(Vec<Hold>),
    /// An online: the holds on these instances end.
    Release(Vec<InstanceKey>),
}

/// Which operations to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct OperationFilter {
    /// Target IP or any instance's IP.
    pub ip: Option<IpAddr>,
    /// Target app or any instance's app.
    pub app: Option<AppName>,
    pub state: Option<OperationState>,
    pub limit: u32,
    /// Only operations older than this one (the previous page's `next`).
    pub before: Option<OperationId>,
    /// The page ends once its operations' records add up to this many bytes (the first is
    /// always in it): a list must never build an answer of hundreds of megabytes. 0: no
    /// bound (internal reads that want every match).
    pub max_bytes: usize,
}

/// One page of the audit trail, newest first.
#[derive(Debug, Default)]
pub struct OperationPage {
    pub operations: Vec<Operation>,
    /// More operations match past this page (it was cut by `limit` or by `max_bytes`).
    pub more: bool,
}

/// A page of the audit trail read from its records as they stream in (newest first, one
/// past `limit` asked for), cut at `limit` or `max_bytes`: only what the page holds is ever in
/// memory, however large the records are. The first record is always in it.
async fn read_page(
    mut bodies: impl futures::Stream<Item = Result<String, sqlx::Error>> + Unpin,
    filter: &OperationFilter,
) -> Result<OperationPage, StoreError> {
    use futures::TryStreamExt;
    let mut page = OperationPage::default();
    let mut bytes = 0;
    while let Some(body) = bodies.try_next().await? {
        let taken = page.operations.len();
        let has_room = taken == 0
            || (taken < filter.limit as usize
                && (filter.max_bytes == 0 || bytes + body.len() <= filter.max_bytes));
        if !has_room {
            page.more = true;
            break;
        }
        bytes += body.len();
        page.operations.push(decode_operation(&body)?);
    }
    Ok(page)
}

/// An `Idempotency-Key` as journaled with the operation it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The caller's principal, empty without a token: keys of different callers never meet.
    pub principal: String,
    pub key: String,
    /// What was asked (action and targets), to refuse the same key for another request.
    pub fingerprint: String,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn ping(&self) -> Result<(), StoreError>;

    /// Journals a new operation with the instances it touches, and the caller's
    /// `Idempotency-Key` with it (one transaction: the key never points nowhere).
    async fn insert_operation(
        &self,
        operation: &Operation,
        key: Option<&IdempotencyKey>,
    ) -> Result<(), StoreError>;

    /// The fingerprint and operation of a key journaled after `since`.
    async fn idempotent_operation(
        &self,
        principal: &str,
        key: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(String, OperationId)>, StoreError>;

    /// Forgets settled operations created before `before` (the audit trail's retention),
    /// with their instances and idempotency keys; never one still in progress, nor one that
    /// a hold names. Returns how many went.
    async fn prune_operations(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError>;

    /// Forgets keys journaled before `before`.
    async fn prune_idempotency_keys(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError>;

    /// Replaces the record of a journaled operation (its instances do not change).
    async fn update_operation(&self, operation: &Operation) -> Result<(), StoreError>;

    async fn operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError>;

    async fn operations(&self, filter: &OperationFilter) -> Result<OperationPage, StoreError>;

    /// For every IP, the newest operation that touched it (target or instance).
    async fn last_operation_ids(&self) -> Result<Vec<(IpAddr, OperationId)>, StoreError>;

    /// Operations still `in_progress` (left by a process that stopped mid-way).
    async fn unfinished_operations(&self) -> Result<Vec<Operation>, StoreError>;

    /// Journals a registry step that took: the operation as it stands after it, and the
    /// desired state it set, in one transaction (a hold never names an operation the journal
    /// shows as not having changed the registry).
    async fn record_registry_step(
        &self,
        operation: &Operation,
        desired: &DesiredState,
    ) -> Result<(), StoreError>;

    /// Ends the holds on these instances.
    async fn release_holds(&self, keys: &[InstanceKey]) -> Result<(), StoreError>;

    async fn holds(&self) -> Result<Vec<Hold>, StoreError>;

    /// Statuses of the `file` registry kind.
    async fn file_statuses(&self) -> Result<HashMap<InstanceKey, Status>, StoreError>;

    async fn set_file_status(&self, key: &InstanceKey, status: Status) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(count: usize) -> Vec<String> {
        (0..count)
            .map(|_| encode_operation(&crate::testing::operation_on("10.0.0.5")).unwrap())
            .collect()
    }

    async fn page(bodies: Vec<String>, limit: u32, max_bytes: usize) -> OperationPage {
        let filter = OperationFilter {
            limit,
            max_bytes,
            ..Default::default()
        };
        read_page(futures::stream::iter(bodies.into_iter().map(Ok)), &filter)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_page_ends_at_its_limit_or_its_bytes_and_says_whether_there_is_more() {
        let size = records(1)[0].len();
        // The store asks for one past the limit: that one says there is more.
        let full = page(records(4), 3, 0).await;
        assert_eq!((full.operations.len(), full.more), (3, true));
        let last = page(records(2), 3, 0).await;
        assert_eq!((last.operations.len(), last.more), (2, false));
        // Two records' worth of bytes: the third waits for the next page.
        let cut = page(records(4), 3, 2 * size + size / 2).await;
        assert_eq!((cut.operations.len(), cut.more), (2, true));
        // A record larger than the budget still comes, alone.
        let alone = page(records(3), 3, size / 2).await;
        assert_eq!((alone.operations.len(), alone.more), (1, true));
    }
}
