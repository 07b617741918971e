//! Active server -> standby server.
//!
//! The active server opens one long-lived bidirectional stream to the standby. It starts
//! with an exchange so that neither side lacks what the other has (this is how a
//! returning server catches up, and how both sides of a split brain merge):
//!
//! 1. active: [`MirrorMsg::Hello`], with how far it has the standby's journal;
//! 2. standby: what its journal holds after that as [`MirrorReply::Changes`] chunks (its
//!    checkpointed state and kept segments when the active server's cursor is for another
//!    journal or before its oldest segment: a state transfer), then
//!    [`MirrorReply::EndOfState`], with how far it has the active server's journal;
//! 3. active: what its journal holds after that, the same way, as [`MirrorMsg::Changes`]
//!    chunks, then live changes, each chunk numbered; the standby answers every chunk
//!    with [`MirrorReply::Ack`] after it has stored it.
//!
//! Each side keeps the cursor into the other's journal that these messages carry, so a
//! returning standby, or the two sides of a split brain, send each other only what the
//! other lacks.
//!
//! A node stream to a server may instead open a feed of the server's journal
//! ([`MirrorMsg::Subscribe`], see [`crate::sync`]): that is how the sync service reads it.

use serde::{Deserialize, Serialize};

use crate::sync::{Cursor, Subscribe};
use crate::types::{Change, ClusterId};

/// Active -> standby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MirrorMsg {
    /// Opens the mirror stream.
    Hello {
        /// The cluster both servers serve.
        cluster: ClusterId,
        /// The active server's failover epoch.
        epoch: u64,
        /// The id of the active server's journal.
        journal: u64,
        /// How far the active server has the standby's journal: the standby sends what
        /// lies after it (or, when its journal is another or no longer reaches back
        /// there, its checkpointed state and the segments it kept).
        have: Cursor,
    },
    /// Opens a feed of the server's journal instead of a mirror stream; answered with
    /// [`crate::sync::SyncReply`] frames.
    Subscribe(Subscribe),
    /// The active server handed the cluster over to this standby (a planned restart):
    /// the standby asks the coordinator at once instead of at its next heartbeat.
    HandOver {
        /// The epoch from which the standby is active.
        epoch: u64,
    },
    /// An operator's request (the peer holds a node certificate), answered with one
    /// [`AdminReply`].
    Admin(AdminRequest),
    /// Changes to apply, at most [`crate::MAX_BATCH_CHANGES`].
    Changes {
        /// Sequence number, acknowledged by [`MirrorReply::Ack`].
        seq: u64,
        /// The changes.
        changes: Vec<Change>,
        /// How far into the active server's journal the standby has it once these are
        /// stored (0: no further than before).
        upto: u64,
    },
}

/// Standby -> active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MirrorReply {
    /// Part of the standby's state, during the exchange.
    Changes(Vec<Change>),
    /// The standby has sent what the active server lacked.
    EndOfState {
        /// Where in the standby's journal what it sent reaches.
        journal: Cursor,
        /// How far the standby has the active server's journal: the active server sends
        /// what lies after it.
        have: Cursor,
    },
    /// The chunk `seq` is durable on the standby.
    Ack {
        /// Sequence number of the chunk.
        seq: u64,
        /// The standby's journal length once it stored it (everything in it up to there
        /// the active server has).
        end: u64,
    },
    /// The standby refuses the stream (wrong cluster, storage failure).
    Refused(String),
}

/// What an operator may ask a server (with a node certificate, e.g. `tsn_admin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Forget the key `user` is bound to (a lost key): the next login binds anew.
    ResetKey {
        /// The user.
        user: crate::types::UserId,
    },
}

/// Answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    /// Done (and mirrored like any change).
    Done,
    /// Refused, and why.
    Refused(String),
}
