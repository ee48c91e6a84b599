//! Operations whose callers were told they settled before the journal had the settle.
//!
//! A caller waiting on an operation is answered from memory as soon as the last node
//! answers, and the settled record is journaled right after: the caller does not wait for a
//! store write that changes nothing it is told. Readers served from memory (the operation by
//! id, the instance view) see the settled operation at once. Readers of the journal (the
//! operation list, filtered by state) wait here until every settle answered before they asked
//! is journaled, so a caller told "succeeded" finds the operation among the succeeded ones.
//!
//! A crash between the answer and the journal leaves the operation in progress in the
//! journal with its registry step done: the next start tells its nodes again, which the
//! at-least-once contract allows.

use std::collections::HashSet;

use tokio::sync::watch;

use crate::domain::OperationId;

#[derive(Debug)]
pub struct Settling {
    unjournaled: watch::Sender<HashSet<OperationId>>,
}

impl Default for Settling {
    fn default() -> Self {
        Self {
            unjournaled: watch::Sender::new(HashSet::new()),
        }
    }
}

impl Settling {
    /// `id` is about to be answered as settled; its settle is not journaled yet.
    pub fn answered(&self, id: &OperationId) {
        self.unjournaled.send_modify(|ids| {
            ids.insert(id.clone());
        });
    }

    /// The journal has `id`'s settle (or gave up writing it, which was logged).
    pub fn journaled(&self, id: &OperationId) {
        self.unjournaled.send_if_modified(|ids| ids.remove(id));
    }

    /// Returns once every settle answered before this call is journaled. Settles answered
    /// later are not waited for: a steady stream of operations cannot hold a reader back.
    pub async fn journal_caught_up(&self) {
        let mut receiver = self.unjournaled.subscribe();
        let waiting: Vec<OperationId> = receiver.borrow_and_update().iter().cloned().collect();
        if waiting.is_empty() {
            return;
        }
        // The sender lives in `self`, so the channel cannot close while this borrows it.
        let _ = receiver
            .wait_for(|now| waiting.iter().all(|id| !now.contains(id)))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_waits_for_the_settles_answered_before_it_and_no_others() {
        let settling = Settling::default();
        settling.journal_caught_up().await;

        let first = OperationId::generate();
        settling.answered(&first);
        let reader = settling.journal_caught_up();
        futures::pin_mut!(reader);
        assert!(
            futures::poll!(&mut reader).is_pending(),
            "the first settle is not journaled yet"
        );
        // A settle answered after the reader came is not its concern.
        let later = OperationId::generate();
        settling.answered(&later);
        settling.journaled(&first);
        assert!(
            futures::poll!(&mut reader).is_ready(),
            "the reader does not wait for the later settle"
        );
        assert!(
            futures::poll!(Box::pin(settling.journal_caught_up())).is_pending(),
            "a reader coming now waits for the later settle"
        );
        settling.journaled(&later);
        settling.journal_caught_up().await;
    }
}
