//! What a caller asks of the orchestrator, and what it gets back.

use std::time::Duration;

use crate::domain::{Action, Caller, Operation, Origin, Target};
use crate::groups::GroupsError;
use crate::registry::RegistryError;
use crate::store::StoreError;

/// One offline or online request, parsed.
#[derive(Debug, Clone)]
pub struct DrainRequest {
    pub action: Action,
    /// One target for the instance calls; several for a batch.
    pub targets: Vec<Target>,
    pub reason: Option<String>,
    pub caller: Caller,
    /// How it came in: decides what the operation continues (a re-assertion keeps the hold's
    /// start), never the caller's principal.
    pub origin: Origin,
    pub dry_run: bool,
    /// `Some` when the caller waits for every node, at most this long.
    pub wait: Option<Duration>,
    /// Offline of instances already held runs again (registry and every node) instead of
    /// answering with the operation that holds them.
    pub force: bool,
    /// The caller's `Idempotency-Key`: the same key for the same request returns the
    /// operation the first one created.
    pub idempotency_key: Option<String>,
}

/// How a request ended, from the caller's point of view.
#[derive(Debug)]
pub enum DrainOutcome {
    /// A dry run: the plan, nothing changed.
    Planned(Operation),
    /// The registry took it; the fan-out goes on in the background.
    Accepted(Operation),
    /// The caller waited and every node answered (state `succeeded` or `partial`).
    Settled(Operation),
    /// The caller waited and the timeout came first (state `in_progress`).
    TimedOut(Operation),
    /// The caller waited and synchspeed is stopping before every node answered (state
    /// `in_progress`; the next start carries it on).
    Interrupted(Operation),
    /// Offline of instances already held (and out of service): the operation that holds
    /// them, nothing done again.
    AlreadyHeld(Operation),
    /// An `Idempotency-Key` seen before: the operation the first request created, as it is now.
    Replayed(Operation),
}

/// Why a request changed nothing (or was undone).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no registered instance matches {0}")]
    NoMatch(String),
    #[error("too many operations in flight")]
    Busy,
    /// `drain.min_up` refuses it; nothing was changed.
    #[error("{0}")]
    MinUp(String),
    #[error("synchspeed is shutting down")]
    ShuttingDown,
    /// Nothing could be looked up or written: no operation was recorded, or the recorded one
    /// failed with nothing changed. `message` says what could not be reached.
    #[error("{message}")]
    RegistryUnavailable {
        message: String,
        operation: Option<Box<Operation>>,
        /// The lookup's own error, when one lookup failed (a registry step's failures are
        /// several, one per instance, and named in `message`).
        #[source]
        source: Option<RegistryError>,
    },
    #[error("the registry refused the change: {message}")]
    RegistryRefused {
        message: String,
        operation: Box<Operation>,
    },
    #[error("Idempotency-Key '{0}' was used for another request")]
    IdempotencyKeyReused(String),
    #[error("a request with Idempotency-Key '{0}' is still being handled")]
    IdempotencyKeyInFlight(String),
    /// A re-assertion whose turn (its lane) came after what it was decided on changed: an
    /// online or a departure ended the hold (the caller's word is the last), or the registry
    /// shows the instance out of service again (the operation that held it was still
    /// writing). Nothing is changed.
    #[error("{0}; the re-assertion is dropped")]
    Superseded(String),
    /// The plan is larger than `drain.max_*` allows; nothing was changed.
    #[error("{0}")]
    PlanTooLarge(String),
    #[error("the gateway groups cannot be looked up: {0}")]
    Groups(#[source] GroupsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DrainError {
    pub(super) fn registry_unavailable(error: RegistryError) -> Self {
        DrainError::RegistryUnavailable {
            message: error.to_string(),
            operation: None,
            source: Some(error),
        }
    }
}
