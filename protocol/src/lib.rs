//! The TSN wire protocol: what every role says to every other, and nothing else.
//!
//! This crate holds no sockets and no clocks. Time travels in messages as plain numbers
//! chosen by the caller, and the only I/O is reading or writing one frame on a stream
//! handed in by the caller, which is what makes every decoder easy to fuzz.
//!
//! # Layout
//! - [`frame`]: the length-prefixed framing and the one maximum frame size that both the
//!   reader and the writer check, before anything is allocated.
//! - [`codec`]: the versioned postcard envelope around every message, and typed
//!   `read_msg` / `write_msg` helpers on top of [`frame`].
//! - [`types`]: the domain values shared by every conversation and by the datastore:
//!   user and cluster ids, post ids, posts, the [`types::Change`]s that mirroring and
//!   synchronisation move around, and the [`types::Record`]s of every log, the same on
//!   a feed and in a datastore file.
//! - [`client`]: client <-> server commands and the timeline stream.
//! - [`coord`]: nodes and clients <-> coordinator (heartbeats, assignment, routing tables).
//! - [`mirror`]: active server -> standby server (catch-up exchange and live mirroring).
//! - [`sync`]: sync service <-> sync service batches.
//!
//! Every conversation has one request enum and one reply enum. Each bidirectional QUIC
//! stream carries one conversation; see each module for who opens it.

pub mod client;
pub mod codec;
pub mod coord;
pub mod frame;
pub mod mirror;
pub mod sync;
pub mod types;

pub use codec::{decode, encode, push_msg, read_msg, write_msg, CodecError};
pub use frame::{read_frame, write_frame, FrameError, FrameReader, MAX_FRAME_LEN};
pub use types::{
    escape_controls, first_control_char, is_control_char, push_escaped, Change, ClusterId, Post,
    PostId, Record, UserId,
};

/// ALPN protocol id negotiated by every TSN connection.
pub const ALPN: &[u8] = b"tsn/1";

/// Version carried in every message envelope. A peer speaking another version is refused
/// with [`CodecError::Version`] instead of a confusing decode failure.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest post text, in bytes of UTF-8, that a server accepts.
pub const MAX_POST_BYTES: usize = 256;

/// The wire limit: most changes or records one mirror or sync batch may hold, which a
/// reader checks of what arrives (a feed's reader refuses a larger batch). 1,024 posts of
/// the maximum size encode to well under [`MAX_FRAME_LEN`], so a full batch always fits
/// one frame. Writers choose their own batch sizes, at most this.
pub const MAX_BATCH_CHANGES: usize = 1024;

/// Number of past posts a timeline shows when it is opened.
pub const TIMELINE_BACKLOG: usize = 20;

/// When a client resumes its timeline from a position in a sync-service journal that was
/// since begun anew, the entries it may have missed are taken by time: those no older
/// than its last entry less this slack (the client skips what it has shown).
pub const TIMELINE_RESUME_SLACK_US: i64 = 60_000_000;
