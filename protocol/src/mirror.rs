//! Active server -> standby server.
//!
//! The active server opens one long-lived bidirectional stream to the standby. It starts
//! with an exchange so that neither side lacks what the other has (this is how a
//! returning server catches up, and how both sides of a split brain merge):
//!
//! 1. active: [`MirrorMsg::Hello`];
//! 2. standby: its whole state as [`MirrorReply::Changes`] chunks, then
//!    [`MirrorReply::EndOfState`];
//! 3. active: its whole state as [`MirrorMsg::Changes`] chunks, then live changes, each
//!    chunk numbered; the standby answers every chunk with [`MirrorReply::Ack`] after it
//!    has made it durable.
//!
//! A node stream to a server may instead open a feed of the server's journal
//! ([`MirrorMsg::Subscribe`], see [`crate::sync`]): that is how the sync service reads it.

use serde::{Deserialize, Serialize};

use crate::sync::Subscribe;
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
    },
}

/// Standby -> active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MirrorReply {
    /// Part of the standby's state, during the exchange.
    Changes(Vec<Change>),
    /// The standby has sent all of its state.
    EndOfState,
    /// The chunk `seq` is durable on the standby.
    Ack {
        /// Sequence number of the chunk.
        seq: u64,
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
