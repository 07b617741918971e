//! Client <-> server.
//!
//! The client opens one bidirectional stream per command, sends one [`ClientRequest`]
//! and reads one [`ClientReply`]. [`ClientRequest::Timeline`] is the exception: after
//! the `Ok` reply the stream stays open for the session, carrying [`TimelineUp`] frames
//! from the client (posts) and [`TimelineDown`] frames from the server (the backlog,
//! live entries and acknowledgements).

use serde::{Deserialize, Serialize};

use crate::types::{Post, UserId};

/// A command from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// A fresh challenge for this connection's login (see [`ClientRequest::Login`]).
    Challenge,
    /// Log in as `user` on this connection, creating the user on first login. The proof
    /// is the user's public key and its signature of
    /// [`crate::types::login_message`] over the connection's last challenge; the user's
    /// home cluster binds the user to the first key it sees. Every later request on the
    /// connection must be for this user.
    Login {
        /// The user logging in.
        user: UserId,
        /// Proof of holding the user's key.
        proof: Option<LoginProof>,
    },
    /// `user` follows `target`.
    Follow {
        /// Who follows.
        user: UserId,
        /// Whom.
        target: UserId,
    },
    /// `user` stops following `target`.
    Unfollow {
        /// Who unfollows.
        user: UserId,
        /// Whom.
        target: UserId,
    },
    /// All users, and `user`'s followers.
    List {
        /// The asking user.
        user: UserId,
    },
    /// Enter timeline mode on this stream.
    Timeline {
        /// The user whose timeline to show.
        user: UserId,
        /// `None` on first entry: show the last [`crate::TIMELINE_BACKLOG`] entries. When
        /// a client reopens its timeline after a reconnect, the position it had reached:
        /// the server then sends every entry after it, however many, so nothing
        /// delivered while the client was away is skipped.
        since: Option<TimelinePos>,
    },
}

/// Proof that a client holds a user's private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginProof {
    /// The Ed25519 public key (32 bytes).
    pub key: Vec<u8>,
    /// The signature (64 bytes).
    pub signature: Vec<u8>,
}

/// A position in a user's timeline. Entries are numbered 1, 2, 3, ... in the order the
/// cluster's sync service delivered them (`seq`), within one sync-service journal (`log`):
/// both servers of a cluster number them alike, so a position holds across a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TimelinePos {
    /// The sync-service journal the numbers belong to.
    pub log: u64,
    /// The last entry seen (0: none).
    pub seq: u64,
    /// The time of that entry, in microseconds since the Unix epoch: used only when the
    /// journal was begun anew (its host lost its disk) and numbers no longer match.
    pub ts_us: i64,
}

/// The answer to one [`ClientRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// The command completed.
    Ok,
    /// Answer to [`ClientRequest::Challenge`]: 32 random bytes to sign.
    Challenge(Vec<u8>),
    /// Answer to [`ClientRequest::List`]: both lists sorted ascending.
    List {
        /// Every user known system-wide.
        all_users: Vec<UserId>,
        /// The users following the asker.
        followers: Vec<UserId>,
    },
    /// The command failed.
    Failed(CommandError),
}

/// Why a command failed. The client maps each to the original system's wording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// Following oneself or someone already followed.
    #[error("input username already exists")]
    AlreadyExists,
    /// The target user is not known.
    #[error("input username does not exist")]
    NoSuchUser,
    /// The id is not acceptable here (e.g. unfollowing someone not followed, or a user
    /// who has not logged in on this connection).
    #[error("invalid username")]
    InvalidUser,
    /// The server does not know the command.
    #[error("invalid command")]
    InvalidCommand,
    /// This server is not the active one of its cluster: ask the coordinator again.
    #[error("this server is not the active server of its cluster")]
    NotActive,
    /// A post was longer than [`crate::MAX_POST_BYTES`].
    #[error("post of {len} bytes is longer than the maximum of {max}")]
    PostTooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The server could not store the change (e.g. its disk is full).
    #[error("server could not store the change: {0}")]
    Storage(String),
    /// The login's proof is missing or wrong, or no challenge was asked for.
    #[error("login proof missing or invalid")]
    BadProof,
    /// The user is bound to another key.
    #[error("user {user} is registered with another key")]
    KeyMismatch {
        /// The user.
        user: UserId,
    },
    /// The user sends faster than the server's per-user limit; nothing was stored.
    #[error("too many requests: at most {per_second} a second per user")]
    RateLimited {
        /// The limit.
        per_second: u32,
    },
    /// A post held a character that is a command to a terminal rather than text (see
    /// [`crate::is_control_char`]); nothing was stored.
    #[error("post holds the control character U+{code:04X}, which a post may not hold")]
    ControlChar {
        /// The first such character, as a code point.
        code: u32,
    },
}

/// Whether a server stores `text` as a post: at most [`crate::MAX_POST_BYTES`] bytes, and
/// text only (no [`crate::is_control_char`]).
pub fn check_post(text: &str) -> Result<(), CommandError> {
    if text.len() > crate::MAX_POST_BYTES {
        return Err(CommandError::PostTooLong {
            len: text.len(),
            max: crate::MAX_POST_BYTES,
        });
    }
    match crate::first_control_char(text) {
        Some(c) => Err(CommandError::ControlChar { code: u32::from(c) }),
        None => Ok(()),
    }
}

/// Timeline stream, client -> server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimelineUp {
    /// A new post; `nonce` makes its id unique and is echoed in the acknowledgement.
    Post {
        /// Client-chosen random nonce (see [`crate::PostId`]).
        nonce: u64,
        /// The message.
        text: String,
    },
}

/// Timeline stream, server -> client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimelineDown {
    /// An entry of the user's timeline: one of the last posts on entry, then each new
    /// one as it arrives.
    Entry {
        /// The post.
        post: Post,
        /// Its number in the user's timeline (see [`TimelinePos`]).
        seq: u64,
    },
    /// Sent once, first: the position the session's entries follow (every entry after
    /// it is sent, in order, each with its number).
    Position(TimelinePos),
    /// The post with this nonce is stored (and mirrored, where a standby is alive).
    Ack {
        /// Nonce of the acknowledged post.
        nonce: u64,
    },
    /// The post with this nonce was refused and will not be stored.
    Refused {
        /// Nonce of the refused post.
        nonce: u64,
        /// Why.
        reason: CommandError,
    },
    /// This server stopped being the active one: reconnect through the coordinator.
    NotActive,
    /// The session is closed (it fell behind, or the cluster's timeline numbering was
    /// begun anew): reopen the timeline from the last position seen.
    Reopen,
}
