//! Sync service <-> sync service.
//!
//! Each sync service keeps one QUIC connection to every peer and sends each batch on a
//! stream of its own: one [`SyncRequest`], one [`SyncReply`]. Batches are idempotent;
//! a batch that was not acknowledged is sent again after a reconnect.

use serde::{Deserialize, Serialize};

use crate::types::{Change, ClusterId};

/// Sender -> receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Changes made in cluster `from`, in the order they were made there.
    Batch {
        /// The sending cluster.
        from: ClusterId,
        /// The receiver's cluster as the sender believes it; refused on mismatch.
        to: ClusterId,
        /// Sender-side sequence number, echoed in the reply.
        seq: u64,
        /// At most [`crate::MAX_BATCH_CHANGES`] changes.
        changes: Vec<Change>,
    },
}

/// Receiver -> sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncReply {
    /// The batch is durable in the receiver's datastore.
    Applied {
        /// The batch's sequence number.
        seq: u64,
    },
    /// The batch was refused and must not be retried as is.
    Refused(String),
}
