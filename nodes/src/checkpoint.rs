//! Checkpoints: what a role knows, written down so that neither start-up nor a reader
//! needs the whole history.
//!
//! `checkpoint.data` in the role directory holds the in-memory state of the role's two
//! logs (users, follow edges, keys, the number of each user's last timeline entry) and
//! the logical offsets of both logs it covers: a server's `journal.data` and
//! `received.data` (see [`Model::checkpoint`](crate::server::model::Model::checkpoint)),
//! a sync service's `journal.data` and `outbox.data`. It is written (atomically, durably)
//! after both logs were sealed at those offsets and every view file was made durable;
//! segments before them may then be deleted once every reader has read them. Start-up
//! loads it and replays only the records after it.
//!
//! Format, one item a line:
//!
//! ```text
//! checkpoint journal <offset> <other log> <offset> clock <us>
//! <the journal's state: records (user, follow, key)>
//! <other log>
//! <the other log's state: records (user, follow)>
//! seq <user> <number>
//! end
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context};
use tsn_datastore::{Durability, Record, RecordLine, RoleDir};
use tsn_protocol::UserId;

/// The state a checkpoint holds, as records.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Checkpointed {
    /// The journal's: a server's users created here, follow edges and keys; a sync
    /// service's users system-wide and followers of its cluster's users.
    pub own: Vec<Record>,
    /// The other log's: a server's users system-wide and followers (from `received.data`);
    /// a sync service's users and follow edges of its cluster (from `outbox.data`).
    pub received: Vec<Record>,
    /// The number of each user's last timeline entry.
    pub seqs: Vec<(UserId, u64)>,
}

impl Checkpointed {
    /// The state of both logs, and each user's last timeline number (in user order).
    pub fn new(
        own: Vec<Record>,
        received: Vec<Record>,
        last_seq: &std::collections::HashMap<UserId, u64>,
    ) -> Checkpointed {
        let mut seqs: Vec<(UserId, u64)> = last_seq.iter().map(|(u, s)| (*u, *s)).collect();
        seqs.sort_unstable();
        Checkpointed {
            own,
            received,
            seqs,
        }
    }
}

/// A checkpoint.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Checkpoint {
    /// The journal offset it covers: replay from here.
    pub journal: u64,
    /// The other log's name (`received` or `outbox`).
    pub other_name: String,
    /// The other log's offset it covers.
    pub other: u64,
    /// The hybrid clock when it was taken.
    pub clock: i64,
    /// The state.
    pub state: Checkpointed,
}

/// Where a role directory keeps its checkpoint.
pub fn path(dir: &RoleDir) -> PathBuf {
    dir.checkpoint()
}

impl Checkpoint {
    /// The file's text.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "checkpoint journal {} {} {} clock {}\n",
            self.journal, self.other_name, self.other, self.clock
        );
        for r in &self.state.own {
            text.push_str(&r.encode_line());
        }
        text.push_str(&format!("{}\n", self.other_name));
        for r in &self.state.received {
            text.push_str(&r.encode_line());
        }
        for (user, seq) in &self.state.seqs {
            text.push_str(&format!("seq {user} {seq}\n"));
        }
        text.push_str("end\n");
        text
    }

    /// Parses a file's text.
    pub fn decode(text: &str) -> anyhow::Result<Checkpoint> {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
        let num = |i: usize| -> anyhow::Result<i64> {
            head.get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bad header field {i}"))
        };
        if head.len() != 7
            || head[0] != "checkpoint"
            || head[1] != "journal"
            || !head[3].bytes().all(|b| b.is_ascii_lowercase())
            || head[5] != "clock"
        {
            bail!("not a checkpoint header");
        }
        let mut cp = Checkpoint {
            journal: num(2)?.try_into()?,
            other_name: head[3].to_string(),
            other: num(4)?.try_into()?,
            clock: num(6)?,
            state: Checkpointed::default(),
        };
        let mut received = false;
        for (n, line) in lines.enumerate() {
            let n = n + 2;
            if line == "end" {
                return Ok(cp);
            }
            if line == cp.other_name {
                received = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("seq ") {
                let (user, seq) = rest
                    .split_once(' ')
                    .and_then(|(u, s)| Some((u.parse().ok()?, s.parse().ok()?)))
                    .with_context(|| format!("line {n}: bad seq line"))?;
                cp.state.seqs.push((user, seq));
                continue;
            }
            let r = Record::decode_line(line).with_context(|| format!("line {n}"))?;
            if received {
                cp.state.received.push(r);
            } else {
                cp.state.own.push(r);
            }
        }
        bail!("no end line: the checkpoint is incomplete")
    }
}

/// The checkpoint of `dir`, if it has one.
pub fn load(dir: &RoleDir) -> anyhow::Result<Option<Checkpoint>> {
    let path = path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Checkpoint::decode(&text)
            .map(Some)
            .with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the checkpoint of `dir` (atomically and durably); returns its size in bytes.
pub fn save(dir: &RoleDir, cp: &Checkpoint) -> anyhow::Result<u64> {
    let text = cp.encode();
    tsn_datastore::write_atomic(&path(dir), text.as_bytes(), Durability::Sync)
        .with_context(|| format!("writing {}", path(dir).display()))?;
    Ok(text.len() as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tsn_protocol::{Change, Post, PostId};

    #[test]
    fn a_checkpoint_reads_back_as_written_and_a_cut_one_is_refused() {
        let cp = Checkpoint {
            journal: 120,
            other_name: "received".into(),
            other: 7,
            clock: 1_700_000_000_000_000,
            state: Checkpointed {
                own: vec![
                    Record::Change(Change::User { user: 1 }),
                    Record::Change(Change::Follow {
                        follower: 1,
                        followee: 2,
                        ts_us: 5,
                        active: true,
                    }),
                ],
                received: vec![
                    Record::Change(Change::User { user: 2 }),
                    Record::Deliver {
                        to: 1,
                        seq: 3,
                        post: Post {
                            id: PostId {
                                author: 2,
                                nonce: 9,
                            },
                            ts_us: 4,
                            text: "a line\nand another".into(),
                        },
                    },
                ],
                seqs: vec![(1, 3), (4, 10)],
            },
        };
        let text = cp.encode();
        assert_eq!(Checkpoint::decode(&text).unwrap(), cp);
        let cut = &text[..text.len() - 4];
        assert!(Checkpoint::decode(cut).is_err());
        assert!(Checkpoint::decode("user 1\nend\n").is_err());
    }
}
