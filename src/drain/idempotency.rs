//! `Idempotency-Key`: the same key for the same request returns the operation the first one
//! created, never a second change or fan-out.
//!
//! A key is claimed in memory for as long as its first request runs (a second request with
//! it meanwhile is told to wait: 409), and journaled with the operation it created, in the
//! same transaction, so a replay after the first answered finds it in the store.

use std::collections::HashSet;
use std::sync::Mutex;

use super::{DrainError, DrainRequest, Orchestrator, ago};
use crate::domain::Operation;
use crate::store::IdempotencyKey;
use crate::sync::lock;

/// Keys (principal, key) whose first request is still running.
#[derive(Debug, Default)]
pub(super) struct ClaimedKeys {
    claimed: Mutex<HashSet<(String, String)>>,
}

/// An idempotency key whose request is running; released when that request returns.
pub(super) struct KeyClaim<'a> {
    keys: &'a ClaimedKeys,
    id: (String, String),
}

impl ClaimedKeys {
    /// Claims `key` for the request now running, or says it is claimed already.
    pub(super) fn claim(&self, key: &IdempotencyKey) -> Result<KeyClaim<'_>, DrainError> {
        let id = (key.principal.clone(), key.key.clone());
        if !lock(&self.claimed).insert(id.clone()) {
            return Err(DrainError::IdempotencyKeyInFlight(key.key.clone()));
        }
        Ok(KeyClaim { keys: self, id })
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        lock(&self.keys.claimed).remove(&self.id);
    }
}

/// The key of `request` as journaled: keys of different principals never meet.
pub(super) fn key_of(request: &DrainRequest) -> Option<IdempotencyKey> {
    request.idempotency_key.as_ref().map(|key| IdempotencyKey {
        principal: request.caller.principal.clone().unwrap_or_default(),
        key: key.clone(),
        fingerprint: fingerprint(request),
    })
}

/// What a request asks, for comparing two uses of one `Idempotency-Key`: the action and the
/// targets (not how the caller waits, nor the reason).
fn fingerprint(request: &DrainRequest) -> String {
    let targets: Vec<String> = request
        .targets
        .iter()
        .map(|t| {
            format!(
                "{}:{}:{}",
                t.ip,
                t.port.map(|p| p.to_string()).unwrap_or_default(),
                t.app.as_ref().map(|a| a.as_str()).unwrap_or_default()
            )
        })
        .collect();
    format!("{} {}", request.action.as_str(), targets.join(","))
}

impl Orchestrator {
    /// The operation a key created, if the key was seen within `drain.idempotency_ttl`.
    pub(super) async fn replay(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Operation>, DrainError> {
        let since = ago(self.settings.idempotency_ttl);
        let Some((fingerprint, id)) = self
            .store
            .idempotent_operation(&key.principal, &key.key, since)
            .await?
        else {
            return Ok(None);
        };
        if fingerprint != key.fingerprint {
            return Err(DrainError::IdempotencyKeyReused(key.key.clone()));
        }
        Ok(self.operation(&id).await?)
    }
}
