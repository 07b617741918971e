//! The timeline stream of one client session: posts up, entries and acks down.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tsn_datastore::RecordLine;
use tsn_protocol::client::{ClientReply, CommandError, TimelineDown, TimelinePos, TimelineUp};
use tsn_protocol::{
    Change, FrameReader, Post, PostId, UserId, TIMELINE_BACKLOG, TIMELINE_RESUME_SLACK_US,
};

use super::store::{Store, StoreError};
use super::Shared;

/// Posts of one session whose acknowledgement is outstanding; more make the session wait.
const IN_FLIGHT: usize = 256;

/// Entries of one session written to its stream at once, at most.
const ENTRY_BURST: usize = 256;

/// Runs a timeline session on the stream until the client leaves, the connection drops
/// or this server stops being active.
pub async fn run(
    shared: Arc<Shared>,
    store: Store,
    conn: super::commands::Conn,
    user: UserId,
    since: Option<TimelinePos>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let refuse = match super::commands::check_user(&shared, user)
        .and_then(|()| super::commands::check_login(&conn, user))
    {
        Err(e) => Some(e),
        Ok(()) if !shared.state.is_local(user) => Some(CommandError::InvalidUser),
        Ok(()) => None,
    };
    if let Some(e) = refuse {
        if tsn_protocol::write_msg(&mut send, &ClientReply::Failed(e))
            .await
            .is_ok()
        {
            let _ = send.finish();
        }
        return;
    }
    // Subscribe before reading the backlog so that nothing falls between the two.
    let (sub_id, mut inbox) = shared.subscribe(user);
    let start = opening(&shared, user, since);
    let result = session(&shared, &store, user, &mut send, recv, start, &mut inbox).await;
    shared.unsubscribe(user, sub_id);
    match result {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => tracing::debug!(user, "timeline session ended: {e}"),
    }
}

async fn session(
    shared: &Shared,
    store: &Store,
    user: UserId,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
    start: Opening,
    inbox: &mut mpsc::Receiver<(u64, Post)>,
) -> anyhow::Result<()> {
    tsn_protocol::write_msg(send, &ClientReply::Ok).await?;
    tsn_protocol::write_msg(send, &TimelineDown::Position(start.pos)).await?;
    // However many there are: the stream's flow control paces them.
    let mut last = start.pos.seq;
    for (seq, post) in start.entries {
        last = last.max(seq);
        tsn_protocol::write_msg(send, &TimelineDown::Entry { post, seq }).await?;
    }

    let mut recv = FrameReader::new(recv);
    // Posts waiting for their acknowledgement, oldest first. The store completes requests
    // in the order they were queued, so only the oldest needs watching.
    let mut pending: VecDeque<Waiting> = VecDeque::new();
    let mut role = shared.role.subscribe();
    let mut client_done = false;
    // A post read while delivery was behind, waiting to be stored (see `admission`):
    // meanwhile no more are read, and their stream's flow control holds the client.
    let mut held: Option<(u64, String)> = None;
    // When to look at it again (kept across the loop: entries coming in must not put it
    // off).
    let mut recheck = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(recheck), if held.is_some() => {
                if shared.admission.behind(crate::now_us()) {
                    shared.metrics.admission_pauses.inc();
                    recheck = tokio::time::Instant::now() + super::admission::PAUSE;
                } else if let Some((nonce, text)) = held.take() {
                    pending.push_back(submit(shared, store, user, nonce, text).await);
                }
            }
            up = recv.next_msg::<TimelineUp>(), if !client_done && held.is_none() && pending.len() < IN_FLIGHT => match up? {
                Some(TimelineUp::Post { nonce, text }) => {
                    if let Err(reason) = tsn_protocol::client::check_post(&text) {
                        tsn_protocol::write_msg(send, &TimelineDown::Refused { nonce, reason }).await?;
                        continue;
                    }
                    if !shared.role().active {
                        tsn_protocol::write_msg(send, &TimelineDown::NotActive).await?;
                        return Ok(());
                    }
                    if let Err(reason) = shared.limit(user) {
                        tsn_protocol::write_msg(send, &TimelineDown::Refused { nonce, reason }).await?;
                        continue;
                    }
                    if shared.admission.behind(crate::now_us()) {
                        shared.metrics.admission_pauses.inc();
                        held = Some((nonce, text));
                        recheck = tokio::time::Instant::now() + super::admission::PAUSE;
                    } else {
                        pending.push_back(submit(shared, store, user, nonce, text).await);
                    }
                }
                None => client_done = true,
            },
            done = async { (&mut pending.front_mut().expect("guarded by the branch condition").done).await }, if !pending.is_empty() => {
                let w = pending.pop_front().expect("guarded by the branch condition");
                let mut out = Vec::new();
                ack(shared, &mut out, &w, done)?;
                // Acks that completed meanwhile go out in the same write.
                while let Some(done) = pending.front_mut().and_then(|p| p.done.try_recv().ok()) {
                    let w = pending.pop_front().expect("front exists");
                    ack(shared, &mut out, &w, Ok(done))?;
                }
                send.write_all(&out).await?;
            }
            entry = inbox.recv() => match entry {
                Some(first) => {
                    // Entries queued behind it go out in the same write (up to a
                    // burst): a timeline that grows by tens of thousands of entries a
                    // second costs one stream write per burst, not one per entry.
                    let mut out = Vec::new();
                    let mut next = Some(first);
                    let mut taken = 0;
                    while let Some((seq, post)) = next {
                        // Entries published while the opening was read come twice.
                        if seq > last {
                            last = seq;
                            tsn_protocol::push_msg(&mut out, &TimelineDown::Entry { post, seq })?;
                        }
                        taken += 1;
                        next = if taken < ENTRY_BURST { inbox.try_recv().ok() } else { None };
                    }
                    send.write_all(&out).await?;
                }
                None => {
                    // Fell behind (or the numbering was begun anew): the client reopens
                    // the timeline from the last entry it has.
                    tsn_protocol::write_msg(send, &TimelineDown::Reopen).await?;
                    return Ok(());
                }
            },
            changed = role.changed() => {
                if changed.is_err() || !role.borrow().active {
                    tsn_protocol::write_msg(send, &TimelineDown::NotActive).await?;
                    return Ok(());
                }
            }
        }
        if client_done && pending.is_empty() && held.is_none() {
            return Ok(());
        }
    }
}

/// Queues `user`'s post for storing. A resend of a stored post goes through the store
/// too: it is then acknowledged only once the batch that stored it is.
async fn submit(shared: &Shared, store: &Store, user: UserId, nonce: u64, text: String) -> Waiting {
    let post = Post {
        id: PostId {
            author: user,
            nonce,
        },
        ts_us: shared.clock.now(),
        text,
    };
    shared.admission.stored(post.ts_us);
    let since = Instant::now();
    let done = store.submit(vec![Change::Post(post)], true).await;
    Waiting { nonce, since, done }
}

/// Adds to `out` how the client's post ended: stored, or refused with the store's reason.
/// A store that stopped says nothing (the server is going away; the client resends).
fn ack(
    shared: &Shared,
    out: &mut Vec<u8>,
    w: &Waiting,
    done: Result<Result<(), StoreError>, oneshot::error::RecvError>,
) -> anyhow::Result<()> {
    let nonce = w.nonce;
    let msg = match done {
        Ok(Ok(())) => {
            shared.metrics.acked("post", w.since);
            TimelineDown::Ack { nonce }
        }
        Ok(Err(e)) => TimelineDown::Refused {
            nonce,
            reason: CommandError::Storage(e.to_string()),
        },
        Err(_) => return Ok(()),
    };
    tsn_protocol::push_msg(out, &msg)?;
    Ok(())
}

/// A post waiting for its acknowledgement.
#[derive(Debug)]
struct Waiting {
    nonce: u64,
    /// When it came in.
    since: Instant,
    done: oneshot::Receiver<Result<(), StoreError>>,
}

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
struct Opening {
    entries: Vec<(u64, Post)>,
    pos: TimelinePos,
}

/// The entries a session begins with: the last [`tsn_protocol::TIMELINE_BACKLOG`] on
/// entry; after a reconnect, every entry after the client's position (from memory, or
/// from the user's timeline file when memory no longer reaches back that far). A position
/// in a sync-service journal that was since begun anew no longer matches this one's
/// numbers: then entries are taken by time, from a little before the client's last one
/// (the client skips what it has shown).
fn opening(shared: &Shared, user: UserId, since: Option<TimelinePos>) -> Opening {
    let log = shared.sync_log.load(Ordering::Relaxed);
    let at = TimelinePos {
        log,
        seq: 0,
        ts_us: 0,
    };
    let Some(since) = since else {
        let (entries, seq) = shared.state.opening(user, None).unwrap_or_else(|| {
            // Not written since this server started: its last entries are in its file.
            let last = last_entries(&shared.dir.timeline(user), user, TIMELINE_BACKLOG)
                .unwrap_or_else(|e| {
                    tracing::warn!(user, "reading the end of a timeline file: {e}");
                    Vec::new()
                });
            shared.state.fill_backlog(user, last.clone());
            shared.state.opening(user, None).unwrap_or_else(|| {
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
        if let Some((entries, seq)) = shared.state.opening(user, Some(since.seq)) {
            return Opening {
                entries,
                pos: TimelinePos { seq, ..at },
            };
        }
    }
    let path = shared.dir.timeline(user);
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
