//! Domain values shared by every conversation and by the datastore.

use serde::{Deserialize, Serialize};

/// A user, known to the original system as a numeric client id.
pub type UserId = u32;

/// A cluster, numbered from 1.
pub type ClusterId = u32;

/// The cluster that serves `user` when there are `clusters` clusters: `(user % N) + 1`.
///
/// `clusters` must be at least 1; 0 is treated as 1 so that the function is total.
pub fn cluster_of(user: UserId, clusters: u32) -> ClusterId {
    (user % clusters.max(1)) + 1
}

/// Globally unique id of a post: its author and a nonce the author's client chose at
/// random when the user sent it, so that a resend after a reconnect is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PostId {
    /// Author of the post.
    pub author: UserId,
    /// Client-chosen random nonce.
    pub nonce: u64,
}

/// Whether a post may not hold `c`: it would be a command to a terminal, not text. C0
/// controls other than tab (ESC starts every escape sequence; CR and BS overwrite what is
/// shown), DEL, C1 controls (U+009B is a one-character CSI), and the bidirectional
/// overrides and isolates (U+202A-U+202E, U+2066-U+2069), which make a line read other
/// than it is stored. One rule for the server that refuses such posts and for every
/// display that escapes them in data written before the rule.
pub fn is_control_char(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0a'..='\x1f' | '\x7f'..='\u{9f}')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The first character of `text` that a post may not hold (see [`is_control_char`]).
pub fn first_control_char(text: &str) -> Option<char> {
    text.chars().find(|&c| is_control_char(c))
}

/// `text` with every character a post may not hold written visibly as a Rust-style
/// escape (`\x1b`, `\u{202e}`): what a display shows of another user's text moves no
/// cursor, sets no title and colours nothing.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if first_control_char(text).is_none() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(c, &mut out);
    }
    std::borrow::Cow::Owned(out)
}

/// Appends `c` to `out`, as `\xNN` (ASCII) or `\u{N}` if it is a control character (see
/// [`is_control_char`]), else as it is.
pub fn push_escaped(c: char, out: &mut String) {
    use std::fmt::Write;
    let code = u32::from(c);
    let _ = match c {
        c if !is_control_char(c) => {
            out.push(c);
            Ok(())
        }
        _ if code < 0x80 => write!(out, "\\x{code:02x}"),
        _ => write!(out, "\\u{{{code:x}}}"),
    };
}

/// A post as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// Unique id (author and nonce).
    pub id: PostId,
    /// When the accepting server stored it, in microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The message, at most [`crate::MAX_POST_BYTES`] bytes.
    pub text: String,
}

/// One change to the state of a cluster: what servers journal, mirror to each other and
/// what sync services ship between clusters. Every change is idempotent: applying it
/// twice has the effect of applying it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A user exists (created by their first login).
    User {
        /// The user.
        user: UserId,
    },
    /// `follower` started (`active`) or stopped (`!active`) following `followee` at
    /// `ts_us`. Between two changes of the same pair, the later timestamp wins.
    Follow {
        /// Who follows.
        follower: UserId,
        /// Who is followed.
        followee: UserId,
        /// When, in microseconds since the Unix epoch.
        ts_us: i64,
        /// `true` for FOLLOW, `false` for UNFOLLOW.
        active: bool,
    },
    /// A post, keyed by its id.
    Post(Post),
    /// `user` is bound to the public key `key` (Ed25519, 32 bytes; empty: unbound, as
    /// an operator's reset leaves it). Between two bindings of a user, see
    /// [`key_supersedes`].
    Key {
        /// The user.
        user: UserId,
        /// Generation: 0 for the first binding, one more after each reset.
        generation: u64,
        /// When, in microseconds since the Unix epoch (a hybrid logical clock).
        ts_us: i64,
        /// The public key, or empty.
        key: Vec<u8>,
    },
}

/// One record of a log, the same from the wire to the disk: what a feed carries
/// ([`crate::sync::SyncReply::Records`]) is what the reader's datastore files hold, one
/// line each (the datastore's text codec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A change (user, follow, post, key), as a server journals it or a sync service
    /// passes it on.
    Change(Change),
    /// A post delivered to `to`'s timeline by a sync service.
    Deliver {
        /// The recipient.
        to: UserId,
        /// Its place in `to`'s timeline: 1 for the first post delivered to `to` by this
        /// sync journal, then one more for each (a client resumes its timeline from it).
        seq: u64,
        /// The post.
        post: Post,
    },
}

impl Record {
    /// The change this record is, if it is one (not a delivery).
    pub fn change(&self) -> Option<&Change> {
        match self {
            Record::Change(c) => Some(c),
            Record::Deliver { .. } => None,
        }
    }

    /// The same, by value.
    pub fn into_change(self) -> Option<Change> {
        match self {
            Record::Change(c) => Some(c),
            Record::Deliver { .. } => None,
        }
    }
}

/// A user's key binding: (generation, timestamp, key).
pub type KeyBinding = (u64, i64, Vec<u8>);

/// The merge rule for key bindings: whether `new` replaces `existing`. A later
/// generation wins (an operator's reset); within a generation a key beats no key, and the
/// earliest binding wins (then the smaller key), so both sides of a split brain end with
/// the same binding, the one made first.
pub fn key_supersedes(existing: Option<&KeyBinding>, new: &KeyBinding) -> bool {
    let Some(old) = existing else {
        return true;
    };
    if new.0 != old.0 {
        return new.0 > old.0;
    }
    match (old.2.is_empty(), new.2.is_empty()) {
        (true, false) => true,
        (false, true) | (true, true) => false,
        (false, false) => (new.1, &new.2) < (old.1, &old.2),
    }
}

/// What a client signs to prove at login that it holds `user`'s key: a fixed context,
/// the user id and the server's fresh challenge.
pub fn login_message(user: UserId, challenge: &[u8]) -> Vec<u8> {
    let mut m = b"tsn login v1\0".to_vec();
    m.extend_from_slice(&user.to_be_bytes());
    m.extend_from_slice(challenge);
    m
}

/// The merge rule for follow relations: whether a change of a pair at `ts_us` (following
/// when `active`) replaces the pair's current state `existing` (timestamp, following).
/// The later timestamp wins; at equal timestamps an unfollow wins, so every replica ends
/// in the same state whatever order it sees the changes in.
pub fn follow_supersedes(existing: Option<(i64, bool)>, ts_us: i64, active: bool) -> bool {
    match existing {
        None => true,
        Some((ts, was)) => ts_us > ts || (ts_us == ts && was && !active),
    }
}

/// Applies a change of the pair `key` at `ts_us` to `edges` if it supersedes what they
/// hold ([`follow_supersedes`]); returns whether it did.
pub fn apply_follow<K: Eq + std::hash::Hash>(
    edges: &mut std::collections::HashMap<K, (i64, bool)>,
    key: K,
    ts_us: i64,
    active: bool,
) -> bool {
    let new = follow_supersedes(edges.get(&key).copied(), ts_us, active);
    if new {
        edges.insert(key, (ts_us, active));
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_key_wins_within_a_generation_and_a_reset_starts_the_next() {
        let a = (0, 5, vec![1u8; 32]);
        let b = (0, 7, vec![2u8; 32]);
        assert!(key_supersedes(None, &a));
        assert!(key_supersedes(Some(&b), &a), "earlier wins");
        assert!(!key_supersedes(Some(&a), &b));
        let reset = (1, 9, Vec::new());
        assert!(key_supersedes(Some(&a), &reset));
        let c = (1, 11, vec![3u8; 32]);
        assert!(
            key_supersedes(Some(&reset), &c),
            "a key binds after a reset"
        );
        assert!(!key_supersedes(Some(&c), &reset));
        assert!(
            !key_supersedes(Some(&c), &a),
            "an old generation never comes back"
        );
    }

    #[test]
    fn control_characters_are_found_and_escaped_visibly() {
        for bad in [
            '\x1b', '\x07', '\r', '\n', '\x08', '\0', '\x7f', '\u{9b}', '\u{85}', '\u{202e}',
            '\u{2066}', '\u{2069}',
        ] {
            assert!(is_control_char(bad), "{bad:?}");
        }
        for good in [
            '\t', ' ', 'a', '\u{a0}', 'é', '😀', '\u{2029}', '\u{202f}', '\u{2065}', '\u{206a}',
        ] {
            assert!(!is_control_char(good), "{good:?}");
        }
        assert_eq!(first_control_char("ok\tfine"), None);
        assert_eq!(first_control_char("a\x1b[2Jb\r"), Some('\x1b'));
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(
            escape_controls("\x1b]0;pwned\x07 \u{9b}31m \u{202e}x\ty"),
            "\\x1b]0;pwned\\x07 \\u{9b}31m \\u{202e}x\ty"
        );
    }

    #[test]
    fn later_wins_and_unfollow_breaks_ties() {
        assert!(follow_supersedes(None, 1, true));
        assert!(follow_supersedes(Some((1, true)), 2, false));
        assert!(!follow_supersedes(Some((2, false)), 1, true));
        assert!(follow_supersedes(Some((2, true)), 2, false));
        assert!(!follow_supersedes(Some((2, false)), 2, true));
        assert!(!follow_supersedes(Some((2, true)), 2, true));
    }
}
