//! Where a timeline session begins: the last entries on entry, or every entry after the
//! client's position after a reconnect, from memory or from the user's timeline file.

use tsn_datastore::RecordLine;
use tsn_protocol::client::TimelinePos;
use tsn_protocol::{Post, UserId, TIMELINE_BACKLOG, TIMELINE_RESUME_SLACK_US};

use super::Service;

/// The last `n` entries of `user`'s timeline file (by number, oldest first), reading only
/// as much of its end as they need.
fn last_entries(
    path: &std::path::Path,
    user: UserId,
    n: usize,
) -> std::io::Result<Vec<(u64, Post)>> {
    use std::os::unix::fs::FileExt;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut window: u64 = 16 * 1024;
    loop {
        let n_read = window.min(len);
        let mut buf = vec![0u8; usize::try_from(n_read).unwrap_or(0)];
        file.read_exact_at(&mut buf, len - n_read)?;
        let mut lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
        lines.pop(); // after the last newline: empty, or a line being written
        if n_read < len && !lines.is_empty() {
            lines.remove(0); // may begin mid-line
        }
        let mut entries: Vec<(u64, Post)> = lines
            .iter()
            .filter_map(|l| match tsn_datastore::Record::decode_bytes(l) {
                Ok(tsn_datastore::Record::Deliver { to, seq, post }) if to == user => {
                    Some((seq, post))
                }
                _ => None,
            })
            .collect();
        if entries.len() >= n || n_read == len {
            entries.sort_by_key(|(s, _)| *s);
            entries.dedup_by_key(|(s, _)| *s);
            let skip = entries.len().saturating_sub(n);
            entries.drain(..skip);
            return Ok(entries);
        }
        window *= 4;
    }
}

/// What a session starts with: the position its entries follow, and the entries.
#[derive(Debug)]
pub(super) struct Opening {
    pub(super) entries: Vec<(u64, Post)>,
    pub(super) pos: TimelinePos,
}

/// The entries a session begins with: the last [`tsn_protocol::TIMELINE_BACKLOG`] on
/// entry; after a reconnect, every entry after the client's position (from memory, or
/// from the user's timeline file when memory no longer reaches back that far). A position
/// in a sync-service journal that was since begun anew no longer matches this one's
/// numbers: then entries are taken by time, from a little before the client's last one
/// (the client skips what it has shown).
pub(super) fn opening(svc: &Service, user: UserId, since: Option<TimelinePos>) -> Opening {
    let log = svc.sessions.log_id();
    let at = TimelinePos {
        log,
        seq: 0,
        ts_us: 0,
    };
    let Some(since) = since else {
        let (entries, seq) = svc.state.opening(user, None).unwrap_or_else(|| {
            // Not written since this server started: its last entries are in its file.
            let last = last_entries(&svc.node.dir.timeline(user), user, TIMELINE_BACKLOG)
                .unwrap_or_else(|e| {
                    tracing::warn!(user, "reading the end of a timeline file: {e}");
                    Vec::new()
                });
            svc.state.fill_backlog(user, last.clone());
            svc.state.opening(user, None).unwrap_or_else(|| {
                let seq = last.first().map_or(0, |(s, _)| s.saturating_sub(1));
                (last, seq)
            })
        });
        return Opening {
            entries,
            pos: TimelinePos { seq, ..at },
        };
    };
    // Log 0 is "not known yet" (a session opened before this server had read anything of
    // its sync service): the numbers it gave out are those of the journal it then read.
    let same_log = since.log == log || since.log == 0 || log == 0;
    if same_log {
        if let Some((entries, seq)) = svc.state.opening(user, Some(since.seq)) {
            return Opening {
                entries,
                pos: TimelinePos { seq, ..at },
            };
        }
    }
    let path = svc.node.dir.timeline(user);
    let on_disk: Vec<(u64, Post)> = match tsn_datastore::read_records(&path) {
        Ok(records) => records
            .into_iter()
            .filter_map(|r| match r {
                tsn_datastore::Record::Deliver { to, seq, post } if to == user => Some((seq, post)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(user, "reading {} to resume a timeline: {e}", path.display());
            Vec::new()
        }
    };
    let mut entries: Vec<(u64, Post)> = if same_log {
        on_disk
            .into_iter()
            .filter(|(s, _)| *s > since.seq)
            .collect()
    } else {
        let from = since.ts_us.saturating_sub(TIMELINE_RESUME_SLACK_US);
        on_disk
            .into_iter()
            .filter(|(_, p)| p.ts_us >= from)
            .collect()
    };
    entries.sort_by_key(|(s, _)| *s);
    entries.dedup_by_key(|(s, _)| *s);
    let seq = if same_log { since.seq } else { 0 };
    Opening {
        entries,
        pos: TimelinePos { seq, ..at },
    }
}
