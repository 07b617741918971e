//! The TSN datastore: where each role keeps what it knows, on disk, human-readable.
//!
//! # Layout
//!
//! ```text
//! <root>/<cluster>/<role>/            role = primary | secondary | sync
//!     journal.data                    the records this role wrote since its last checkpoint
//!     journal.<offset>.data           older segments some reader has not read yet
//!     journal.data.base               the logical offset journal.data begins at
//!     global_clients.data             users (a server: created here; sync: system-wide)
//!     journal.data.id                 the journal's log id (readers' cursors carry it)
//!     outbox.data (+ .id)             sync only: this cluster's changes, from its servers
//!     received.data (+ .base)         server only: what the sync service's feed delivered
//!     checkpoint.data                 the role's state at its last checkpoint
//!     cursors.data                    read cursors into other processes' logs
//!     clean-shutdown                  present after a clean exit
//!     local_clients/<cid>/
//!         timeline.data               server: cid's posts; sync: posts delivered to cid
//!         following.data              server: whom cid follows
//!         followers.data              sync: who follows cid
//! <root>/coordinator/                 a coordinator (one member of its group)
//!     raft.log                        its Raft vote, entries, truncations, purges
//!     snapshot.json                   the decided routing state up to a log entry
//! ```
//!
//! Each role directory is written and read by exactly one process: others learn its
//! contents over the network, through feeds that the owner serves from its logs (with a
//! byte cursor, see [`Tail`]). Directories are created 0700 and files 0600.
//!
//! # Records
//! One record a line, fields separated by one space, free text last and escaped
//! (see [`record`]). A [`Record`] is the protocol's own type, the one that feeds carry;
//! the datastore adds its line codec ([`RecordLine`]).
//!
//! # fsync policy
//! - `journal.data` is the truth. Writers group many changes into one append, and make
//!   appends durable with [`AppendLog::sync`] or, from another thread while the log goes
//!   on appending, with a [`SegmentFlusher`] (fdatasync). When an acknowledgement may go out
//!   relative to that flush is the writer's policy: a sync service flushes before it
//!   acknowledges a batch; a server flushes right behind every write and, by default,
//!   acknowledges once the change is written on both servers of its cluster (see the
//!   server's `--ack`).
//! - The per-user view files and `global_clients.data` are appended after the journal,
//!   without a flush, and made durable at each checkpoint. A writer removes
//!   `clean-shutdown` when it starts and writes it on a clean exit; when it finds the
//!   marker missing, it completes the views from the records after the last checkpoint.
//! - Logs are segmented ([`segments`]): offsets are logical and never change; sealed
//!   segments are deleted once a checkpoint covers them and every reader has read them.
//! - Rewrites go through [`write_atomic`]: temporary file in the same directory, then
//!   rename; for `checkpoint.data` and rebuilt views with an fsync of the file before and
//!   of the directory after. Feed cursors (`cursors.data`) are not flushed: one lost with
//!   power makes its feed be read again from an older position, which is safe.
//!
//! # Torn lines
//! A crash can leave the last line of a file incomplete. A line without its newline, or a
//! last line that does not parse, is torn: [`AppendLog::open`] and
//! [`AppendLog::open_append`] drop it and truncate the file to the end of its last good
//! line. A bad line that is not the last one is corruption ([`DatastoreError::Corrupt`]).

pub mod atomic;
pub mod cursors;
pub mod error;
pub mod failpoint;
pub mod layout;
pub mod log;
pub mod logid;
pub mod private;
pub mod record;
pub mod segments;
pub mod tail;

pub use atomic::{write_atomic, Durability};
pub use cursors::Cursors;
pub use error::DatastoreError;
pub use layout::{CoordinatorDir, Datastore, RoleDir};
pub use log::{read_records, AppendLog};
pub use logid::log_id;
pub use record::{Record, RecordError, RecordLine};
pub use segments::{SegmentFlusher, SegmentedLog, Segments};
pub use tail::Tail;
