//! Feeds between nodes: a node reads another node's log from a cursor that it keeps.
//!
//! Every change that moves between processes (apart from mirroring) travels on a feed:
//!
//! | reader | log it reads | opener sent to |
//! | --- | --- | --- |
//! | a sync service | each server's `journal.data` of its cluster ([`FeedLog::ServerJournal`]) | the server, as [`crate::mirror::MirrorMsg::Subscribe`] |
//! | a sync service | every sync service's outbox, its own included ([`FeedLog::SyncOutbox`]) | the sync service, as [`SyncRequest::Subscribe`] |
//! | a server | its cluster's sync service journal ([`FeedLog::SyncJournal`]) | the sync service, as [`SyncRequest::Subscribe`] |
//!
//! The reader opens one bidirectional stream and sends one [`Subscribe`] with the cursor
//! it persisted. The writer answers with [`SyncReply::Records`] frames for as long as the
//! stream lives: first everything after the cursor, then each record as soon as it is
//! written (no polling; QUIC flow control holds the writer back when the reader is slow).
//! Each frame says where the reader resumes; the reader makes what it received durable
//! before it persists that position, so a crash at any point re-reads, never skips.
//! Records are idempotent, so what is read twice is applied once.
//!
//! A log is identified by a random `log_id` chosen when it was created. A cursor for
//! another id (the log was lost with its disk and begun anew) is read from the start.

use serde::{Deserialize, Serialize};

use crate::types::{ClusterId, Record};

/// Which log a feed reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FeedLog {
    /// A server's journal: every change it stored (its own clients' and mirrored ones).
    ServerJournal,
    /// A sync service's outbox: its cluster's changes, merged from both servers' feeds.
    /// The writer sends only what the reader's cluster needs.
    SyncOutbox,
    /// A sync service's journal: what it delivers to its cluster's servers (users
    /// system-wide, followers of the cluster's users, posts delivered to them).
    SyncJournal,
}

/// A position in a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// The log's id (0: none yet, read from the start).
    pub log_id: u64,
    /// Byte offset just past the last record read.
    pub offset: u64,
}

/// Opens a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// The cluster whose log is read (the writer refuses another).
    pub cluster: ClusterId,
    /// The reader's own cluster (for [`FeedLog::SyncOutbox`], what it is sent).
    pub reader: ClusterId,
    /// Which node of its cluster the reader is (the writer keeps, per reader, how far it
    /// has read, and deletes only what every reader has).
    pub node: crate::coord::NodeKind,
    /// The log.
    pub log: FeedLog,
    /// Where to start.
    pub from: Cursor,
}

/// Reader -> sync service: the first message of a feed stream. After it, the reader
/// sends a [`Cursor`] each time it has made a batch durable, so that the writer knows
/// what it may delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Read a log of this sync service.
    Subscribe(Subscribe),
}

/// Writer -> reader, on every feed stream (to a server or to a sync service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncReply {
    /// The next records of the log.
    Records {
        /// The log's id; when it differs from the reader's cursor the log was read from
        /// its start.
        log_id: u64,
        /// Where the reader resumes after these records.
        next: u64,
        /// How long the log was when they were read: `next == len` means the reader has
        /// caught up.
        len: u64,
        /// The records the reader wants, at most [`crate::MAX_BATCH_CHANGES`] (records
        /// it does not need are skipped, but `next` moves past them).
        records: Vec<Record>,
    },
    /// The feed was refused (wrong cluster, wrong log); retrying as is will not help.
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Change, Post, PostId};

    /// The bytes of a feed frame stay what they have been: a reader and a writer of
    /// different builds of this version understand each other.
    #[test]
    fn a_feed_frame_keeps_its_bytes() {
        let post = Post {
            id: PostId {
                author: 3,
                nonce: 0x0102_0304_0506_0708,
            },
            ts_us: -5,
            text: "h\u{e9}\n".into(),
        };
        let msg = SyncReply::Records {
            log_id: 0xdead_beef_0042,
            next: 300,
            len: 70_000,
            records: [
                Change::User { user: 7 },
                Change::Follow {
                    follower: 1,
                    followee: 200,
                    ts_us: 1_700_000_000_000_000,
                    active: false,
                },
                Change::Post(post.clone()),
                Change::Key {
                    user: 9,
                    generation: 1,
                    ts_us: 42,
                    key: vec![0xab, 0xcd],
                },
            ]
            .into_iter()
            .map(Record::Change)
            .chain([Record::Deliver {
                to: 8,
                seq: 129,
                post,
            }])
            .collect(),
        };
        let bytes: &[u8] = &[
            1, 0, 194, 128, 188, 247, 219, 213, 55, 172, 2, 240, 162, 4, 5, 0, 0, 7, 0, 1, 1, 200,
            1, 128, 128, 242, 129, 131, 137, 133, 6, 0, 0, 2, 3, 136, 142, 152, 168, 192, 224, 128,
            129, 1, 9, 4, 104, 195, 169, 10, 0, 3, 9, 1, 84, 2, 171, 205, 1, 8, 129, 1, 3, 136,
            142, 152, 168, 192, 224, 128, 129, 1, 9, 4, 104, 195, 169, 10,
        ];
        let encoded = crate::encode(&msg).expect("encodes");
        assert_eq!(encoded, bytes);
        assert_eq!(crate::decode::<SyncReply>(bytes).expect("decodes"), msg);
        let refused = crate::encode(&SyncReply::Refused("no".into())).expect("encodes");
        assert_eq!(refused, [1, 1, 2, 110, 111]);
    }
}
