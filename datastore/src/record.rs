//! One record a line: the text codec of [`Record`] ([`RecordLine`]), the type every log
//! holds and every feed carries.
//!
//! ```text
//! user <uid>
//! follow <follower> <followee> <ts_us>
//! unfollow <follower> <followee> <ts_us>
//! post <author> <nonce> <ts_us> <text>
//! deliver <to> <seq> <author> <nonce> <ts_us> <text>
//! key <uid> <generation> <ts_us> <hex public key, or - for none>
//! ```
//!
//! In `<text>`, `\` is written `\\`, a newline `\n`, a carriage return `\r`, and every
//! other character that is a command to a terminal rather than text
//! ([`tsn_protocol::is_control_char`]: ESC, BEL, BS, C1 controls, bidi overrides) `\xNN`
//! or `\u{N}`, so that `cat` or `tail -f` of a file shows them and obeys none. Spaces and
//! tabs stay as typed. Files written before these escapes hold such characters raw; they
//! load as they are.

use std::str::FromStr;

pub use tsn_protocol::Record;
use tsn_protocol::{Change, Post, PostId};

/// Why a line is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The line is not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// The first word is not a record kind.
    #[error("unknown record kind {0:?}")]
    UnknownKind(String),
    /// A field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A number does not parse.
    #[error("field {field}: {value:?} is not a number")]
    BadNumber {
        /// The field.
        field: &'static str,
        /// What was there.
        value: String,
    },
    /// A record without text has more fields than it should.
    #[error("unexpected trailing fields")]
    Trailing,
    /// An unknown escape in the text.
    #[error("invalid escape in text")]
    BadEscape,
    /// The line contains a raw newline or carriage return.
    #[error("raw line break inside a record")]
    LineBreak,
}

fn escape(text: &str, out: &mut String) {
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => tsn_protocol::push_escaped(c, out),
        }
    }
}

/// The character of an `\xNN` or `\u{N}` escape, `chars` just after the `x` or `u`.
fn unescape_code(chars: &mut std::str::Chars<'_>, braced: bool) -> Result<char, RecordError> {
    let mut digits = String::new();
    if braced {
        if chars.next() != Some('{') {
            return Err(RecordError::BadEscape);
        }
        loop {
            match chars.next() {
                Some('}') => break,
                Some(c) if digits.len() < 6 => digits.push(c),
                _ => return Err(RecordError::BadEscape),
            }
        }
    } else {
        digits.extend(chars.by_ref().take(2));
        if digits.len() != 2 {
            return Err(RecordError::BadEscape);
        }
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RecordError::BadEscape);
    }
    u32::from_str_radix(&digits, 16)
        .ok()
        .and_then(char::from_u32)
        .ok_or(RecordError::BadEscape)
}

fn unescape(text: &str) -> Result<String, RecordError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('x') => out.push(unescape_code(&mut chars, false)?),
            Some('u') => out.push(unescape_code(&mut chars, true)?),
            _ => return Err(RecordError::BadEscape),
        }
    }
    Ok(out)
}

/// Lower-case hex to bytes; `None` unless it is an even number of hex digits.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            let pair = s.get(i..i + 2)?;
            if pair.chars().any(|c| c.is_ascii_uppercase()) {
                return None;
            }
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

struct Fields<'a> {
    rest: &'a str,
    /// Whether the last word read was followed by a separator.
    sep: bool,
}

impl<'a> Fields<'a> {
    fn word(&mut self, name: &'static str) -> Result<&'a str, RecordError> {
        if self.rest.is_empty() {
            return Err(RecordError::Missing(name));
        }
        let (w, rest, sep) = match self.rest.split_once(' ') {
            Some((w, rest)) => (w, rest, true),
            None => (self.rest, "", false),
        };
        self.rest = rest;
        self.sep = sep;
        Ok(w)
    }

    fn num<T: FromStr>(&mut self, name: &'static str) -> Result<T, RecordError> {
        let w = self.word(name)?;
        // FromStr for integers accepts a leading '+'; the format writes none.
        if w.starts_with('+') {
            return Err(RecordError::BadNumber {
                field: name,
                value: w.to_string(),
            });
        }
        w.parse().map_err(|_| RecordError::BadNumber {
            field: name,
            value: w.to_string(),
        })
    }

    /// The text: everything after the separator, which may be empty.
    fn text(&mut self) -> Result<String, RecordError> {
        if !self.sep {
            return Err(RecordError::Missing("text"));
        }
        let t = std::mem::take(&mut self.rest);
        unescape(t)
    }

    fn end(&self) -> Result<(), RecordError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Trailing)
        }
    }
}

/// The text codec of a [`Record`]: one line of a datastore file.
pub trait RecordLine: Sized {
    /// The line, with its trailing newline.
    fn encode_line(&self) -> String;

    /// Parses a line given without its newline.
    fn decode_line(line: &str) -> Result<Self, RecordError>;

    /// Parses a line given as bytes (without its newline); non-UTF-8 is an error.
    fn decode_bytes(line: &[u8]) -> Result<Self, RecordError> {
        let s = std::str::from_utf8(line).map_err(|_| RecordError::NotUtf8)?;
        Self::decode_line(s)
    }
}

impl RecordLine for Record {
    fn encode_line(&self) -> String {
        let mut s = match self {
            Record::Change(Change::User { user }) => format!("user {user}"),
            Record::Change(Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            }) => {
                let kind = if *active { "follow" } else { "unfollow" };
                format!("{kind} {follower} {followee} {ts_us}")
            }
            Record::Change(Change::Post(p)) => {
                let mut s = format!("post {} {} {} ", p.id.author, p.id.nonce, p.ts_us);
                escape(&p.text, &mut s);
                s
            }
            Record::Deliver { to, seq, post: p } => {
                let mut s = format!(
                    "deliver {to} {seq} {} {} {} ",
                    p.id.author, p.id.nonce, p.ts_us
                );
                escape(&p.text, &mut s);
                s
            }
            Record::Change(Change::Key {
                user,
                generation,
                ts_us,
                key,
            }) => {
                let hex: String = if key.is_empty() {
                    "-".into()
                } else {
                    key.iter().map(|b| format!("{b:02x}")).collect()
                };
                format!("key {user} {generation} {ts_us} {hex}")
            }
        };
        s.push('\n');
        s
    }

    fn decode_line(line: &str) -> Result<Record, RecordError> {
        if line.contains(['\n', '\r']) {
            return Err(RecordError::LineBreak);
        }
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut f = Fields {
            rest,
            sep: !rest.is_empty(),
        };
        let post = |f: &mut Fields<'_>| -> Result<Post, RecordError> {
            let author = f.num("author")?;
            let nonce = f.num("nonce")?;
            let ts_us = f.num("ts_us")?;
            Ok(Post {
                id: PostId { author, nonce },
                ts_us,
                text: f.text()?,
            })
        };
        let record = match kind {
            "user" => Record::Change(Change::User {
                user: f.num("uid")?,
            }),
            "follow" | "unfollow" => Record::Change(Change::Follow {
                follower: f.num("follower")?,
                followee: f.num("followee")?,
                ts_us: f.num("ts_us")?,
                active: kind == "follow",
            }),
            "post" => return Ok(Record::Change(Change::Post(post(&mut f)?))),
            "key" => {
                let user = f.num("uid")?;
                let generation = f.num("generation")?;
                let ts_us = f.num("ts_us")?;
                let hex = f.word("key")?;
                let key = if hex == "-" {
                    Vec::new()
                } else {
                    unhex(hex).ok_or(RecordError::BadNumber {
                        field: "key",
                        value: hex.chars().take(80).collect(),
                    })?
                };
                Record::Change(Change::Key {
                    user,
                    generation,
                    ts_us,
                    key,
                })
            }
            "deliver" => {
                let to = f.num("to")?;
                let seq = f.num("seq")?;
                return Ok(Record::Deliver {
                    to,
                    seq,
                    post: post(&mut f)?,
                });
            }
            other => return Err(RecordError::UnknownKind(other.chars().take(32).collect())),
        };
        f.end()?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_formats() {
        let f = Record::Change(Change::Follow {
            follower: 1,
            followee: 2,
            ts_us: 5,
            active: false,
        });
        assert_eq!(f.encode_line(), "unfollow 1 2 5\n");
        assert_eq!(
            Record::Change(Change::User { user: 7 }).encode_line(),
            "user 7\n"
        );
        let p = Post {
            id: PostId {
                author: 3,
                nonce: 9,
            },
            ts_us: -4,
            text: "a b\\c\nd".into(),
        };
        assert_eq!(
            Record::Change(Change::Post(p.clone())).encode_line(),
            "post 3 9 -4 a b\\\\c\\nd\n"
        );
        assert_eq!(
            Record::Deliver {
                to: 8,
                seq: 12,
                post: p.clone()
            }
            .encode_line(),
            "deliver 8 12 3 9 -4 a b\\\\c\\nd\n"
        );
        let hostile = Post {
            text: "\x1b[2J\x07\x08 \u{9b}31m \u{202e}\t\\x1b".into(),
            ..p.clone()
        };
        let line = Record::Change(Change::Post(hostile.clone())).encode_line();
        assert_eq!(
            line,
            "post 3 9 -4 \\x1b[2J\\x07\\x08 \\u{9b}31m \\u{202e}\t\\\\x1b\n"
        );
        assert!(!line.contains('\x1b'), "no raw escape reaches the file");
        assert_eq!(
            Record::decode_line(line.trim_end_matches('\n')).unwrap(),
            Record::Change(Change::Post(hostile))
        );
        // Files written before these escapes hold such characters raw.
        let raw = Record::decode_line("post 3 9 1 a\x1b[31mb\u{202e}").unwrap();
        assert!(matches!(raw, Record::Change(Change::Post(p)) if p.text == "a\x1b[31mb\u{202e}"));
        let empty = Record::decode_line("post 3 9 1 ").unwrap();
        assert!(matches!(empty, Record::Change(Change::Post(p)) if p.text.is_empty()));
    }

    #[test]
    fn bad_lines_are_errors() {
        for bad in [
            "",
            "user",
            "user x",
            "user 1 2",
            "user +1",
            "follow 1 2",
            "post 1 2 3",
            "post 1 2 3 bad\\escape",
            "post 1 2 3 trailing\\",
            "post 1 2 3 \\x1",
            "post 1 2 3 \\xzz",
            "post 1 2 3 \\u1b",
            "post 1 2 3 \\u{}",
            "post 1 2 3 \\u{d800}",
            "post 1 2 3 \\u{1234567}",
            "post 1 2 3 \\u{1b",
            "nope 1",
            "deliver 1 2 3",
            "deliver 1 2 3 4 5",
            "key 1 0 5",
            "key 1 0 5 abc",
            "key 1 0 5 zz",
            "key 1 0 5 AB",
            "user -1",
        ] {
            assert!(Record::decode_line(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            Record::decode_bytes(&[0xff, 0xfe]),
            Err(RecordError::NotUtf8)
        );
    }

    fn post() -> impl Strategy<Value = Post> {
        (any::<u32>(), any::<u64>(), any::<i64>(), any::<String>()).prop_map(
            |(author, nonce, ts_us, text)| Post {
                id: PostId { author, nonce },
                ts_us,
                text,
            },
        )
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            any::<u32>().prop_map(|user| Record::Change(Change::User { user })),
            (any::<u32>(), any::<u32>(), any::<i64>(), any::<bool>()).prop_map(
                |(follower, followee, ts_us, active)| {
                    Record::Change(Change::Follow {
                        follower,
                        followee,
                        ts_us,
                        active,
                    })
                }
            ),
            post().prop_map(|p| Record::Change(Change::Post(p))),
            (
                any::<u32>(),
                any::<u64>(),
                any::<i64>(),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(user, generation, ts_us, key)| Record::Change(
                    Change::Key {
                        user,
                        generation,
                        ts_us,
                        key
                    }
                )),
            (any::<u32>(), any::<u64>(), post()).prop_map(|(to, seq, post)| Record::Deliver {
                to,
                seq,
                post
            }),
            (any::<u32>(), "[ \\t\\\\\\n\\r\\x00-\\x1f\\x7f-\\u{9f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}a-zé😀xu{}]{0,40}").prop_map(|(to, text)| Record::Deliver {
                to,
                seq: 1,
                post: Post {
                    id: PostId {
                        author: 1,
                        nonce: 2
                    },
                    ts_us: 3,
                    text,
                },
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(r in record()) {
            let line = r.encode_line();
            prop_assert!(line.ends_with('\n'));
            let body = &line[..line.len() - 1];
            prop_assert!(!body.contains('\n'));
            prop_assert_eq!(Record::decode_line(body).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode_bytes(&bytes);
        }
    }
}
