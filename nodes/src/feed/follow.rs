//! The reader's side of a feed: dials the log's writer, reads its batches ahead while
//! one is applied, merges those that queued up, and reconnects from the last cursor the
//! reader made durable.

use std::time::Duration;

use anyhow::bail;
use tokio::sync::watch;
use tsn_datastore::Record;
use tsn_protocol::sync::{Cursor, FeedLog, Subscribe, SyncReply};
use tsn_protocol::{FrameReader, MAX_BATCH_CHANGES};

use super::{FeedConfig, Reader};

/// The first message of a feed of `log` of `cluster`, read by a node of `reader`, from a
/// cursor: the [`Subscribe`] wrapped as the writer's kind of node expects it
/// (`MirrorMsg::Subscribe` for a server, `SyncRequest::Subscribe` for a sync service).
pub fn opener<M: serde::Serialize>(
    cluster: tsn_protocol::ClusterId,
    (reader, node): Reader,
    log: FeedLog,
    wrap: fn(Subscribe) -> M,
) -> impl Fn(Cursor) -> Vec<u8> {
    move |from| {
        tsn_protocol::encode(&wrap(Subscribe {
            cluster,
            reader,
            node,
            log,
            from,
        }))
        .unwrap_or_default()
    }
}

/// One batch read from a feed.
#[derive(Debug)]
pub struct Batch {
    /// The records.
    pub records: Vec<Record>,
    /// Where the reader resumes after applying them.
    pub next: Cursor,
    /// How long the writer's log was when it sent the last of them.
    pub len: u64,
    /// Whether it is small enough ([`FeedConfig::inline`]) to be taken on the runtime's
    /// thread.
    pub inline: bool,
    /// Whether the reader makes it, and every batch taken before it, durable and saves
    /// `next` as its cursor now. When false, that waits for a later batch (or for a
    /// batch of no records that only settles): see [`SETTLE_EVERY`].
    pub settle: bool,
}

/// A feed's cursor is saved (and what its reader wrote flushed, where that waits for the
/// cursor) at most this often while batches keep coming, and right away for the first
/// batch after a quiet moment: a busy feed saves its cursor ten times a second instead
/// of once per batch, an idle one as soon as its batch is taken. A crash re-reads at
/// most this much of the feed, and what was taken already is recognised (by ids and
/// delivery numbers) as after any re-read. The writer learns only settled cursors, so it
/// never deletes what a reader could still have to read again.
pub const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// Whether a follower has read its log to the end at least once since it learned where
/// the log's writer is, or found that writer unreachable (so that whoever waits for it
/// does not wait for a node that is down). A writer at a new address makes it false
/// again until then.
pub type Settled = watch::Sender<bool>;

/// Reads a feed's batches into `queue` until the stream ends (an error) or the queue's
/// reader is gone.
async fn receive_batches(
    mut recv: FrameReader<quinn::RecvStream>,
    queue: tokio::sync::mpsc::Sender<Batch>,
) -> anyhow::Result<()> {
    loop {
        match recv.next_msg::<SyncReply>().await? {
            Some(SyncReply::Records {
                log_id,
                next,
                len,
                records,
            }) => {
                if records.len() > MAX_BATCH_CHANGES {
                    bail!(
                        "batch of {} records exceeds {MAX_BATCH_CHANGES}",
                        records.len()
                    );
                }
                let batch = Batch {
                    records,
                    next: Cursor {
                        log_id,
                        offset: next,
                    },
                    len,
                    inline: false,
                    settle: true,
                };
                if queue.send(batch).await.is_err() {
                    return Ok(());
                }
            }
            Some(SyncReply::Refused(why)) => bail!("refused: {why}"),
            None => bail!("the feed was closed"),
        }
    }
}

/// `first` and the batches queued behind it of the same log, up to `merged` records: one
/// batch whose cursor is the last one's. A batch taken off the queue that does not fit
/// is left in `held`, to come next.
fn merge(
    merged: usize,
    mut first: Batch,
    queued: &mut tokio::sync::mpsc::Receiver<Batch>,
    held: &mut Option<Batch>,
) -> Batch {
    while let Ok(more) = queued.try_recv() {
        if more.next.log_id != first.next.log_id
            || first.records.len() + more.records.len() > merged
        {
            *held = Some(more);
            break;
        }
        first.records.extend(more.records);
        first.next = more.next;
        first.len = more.len;
    }
    first
}

/// The next batch to apply: the one held back, else the next to arrive, merged with those
/// queued behind it (see [`merge`]); `None` once the stream's reader has stopped.
async fn next_merged(
    config: &FeedConfig,
    queued: &mut tokio::sync::mpsc::Receiver<Batch>,
    held: &mut Option<Batch>,
) -> Option<Batch> {
    let first = match held.take() {
        Some(b) => b,
        None => queued.recv().await?,
    };
    let mut merged = merge(config.merged, first, queued, held);
    merged.inline = merged.records.len() <= config.inline;
    Some(merged)
}

/// A batch of no records that settles what was taken up to `next`.
fn settle_only(next: Cursor) -> Batch {
    Batch {
        records: Vec::new(),
        next,
        len: 0,
        inline: true,
        settle: true,
    }
}

/// Says why a feed failed, the first time in a run of failures. Before the first success
/// a failure is the other node not being up yet: said quietly. After it, losing the feed
/// is worth a warning, unless its node stopped.
fn say_failed(what: &str, target: &str, ever: bool, e: &anyhow::Error) {
    if ever && crate::net::part_of_a_stop(e) {
        tracing::info!(feed = %what, from = %target, "the feed's node stopped; retrying: {e:#}");
    } else if ever {
        tracing::warn!(feed = %what, from = %target, "feed interrupted, retrying: {e:#}");
    } else {
        tracing::info!(feed = %what, from = %target, "waiting for the feed's node: {e:#}");
    }
}

/// Follows a remote log for ever: dials whatever address `addr` holds, sends the opener
/// that `open` builds from the current cursor, and hands every batch to `apply` (the
/// batches that arrived while it was busy merged into one, see [`FeedConfig::merged`]),
/// which takes it and, when [`Batch::settle`] says so, makes it durable with its cursor
/// before it returns. Reconnects after any
/// failure and whenever `addr` changes, from the last cursor `apply` accepted.
#[allow(clippy::too_many_arguments)]
pub async fn follow<O, A, Fut>(
    config: FeedConfig,
    what: &str,
    endpoint: quinn::Endpoint,
    mut addr: crate::link::PeerAddr,
    mut cursor: Cursor,
    settled: Settled,
    open: O,
    mut apply: A,
) where
    O: Fn(Cursor) -> Vec<u8>,
    A: FnMut(Batch) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut pauses = crate::net::backoff();
    let mut failing = false;
    // Whether the feed ever worked (see `say_failed`).
    let mut ever = false;
    let mut known: Option<String> = None;
    // The cursor of the last batch taken but not yet settled.
    let mut pending: Option<Cursor> = None;
    let now = tokio::time::Instant::now();
    let mut last_settle = now.checked_sub(SETTLE_EVERY).unwrap_or(now);
    loop {
        let target = addr.current();
        if target.is_some() && target != known {
            settled.send_if_modified(|s| std::mem::replace(s, false));
            known = target.clone();
        }
        let Some(target) = target else {
            // Nobody to read from yet: whoever waits for this feed need not wait.
            settled.send_if_modified(|s| !std::mem::replace(s, true));
            if addr.changed().await.is_err() {
                return;
            }
            continue;
        };
        let attempt = async {
            let conn = crate::net::connect(&endpoint, &target).await?;
            let (mut send, recv) = conn.open_bi().await?;
            tsn_protocol::write_frame(&mut send, &open(cursor)).await?;
            // Batches are read off the stream as they come and handed on to `apply`
            // merged: whatever arrived while the previous merged batch was being made
            // durable goes in one, so a reader slower than the writer catches up in
            // fewer, larger writes instead of falling further behind one small batch at
            // a time.
            let (queue, mut queued) = tokio::sync::mpsc::channel::<Batch>(config.queued);
            let receive = receive_batches(FrameReader::new(recv), queue);
            let take = async {
                let mut held = None;
                loop {
                    let due = last_settle + SETTLE_EVERY;
                    let merged = tokio::select! {
                        b = next_merged(&config, &mut queued, &mut held) => b,
                        () = tokio::time::sleep_until(due), if pending.is_some() => {
                            let at = pending.take().expect("checked by the guard");
                            apply(settle_only(at)).await?;
                            last_settle = tokio::time::Instant::now();
                            tsn_protocol::write_msg(&mut send, &at).await?;
                            continue;
                        }
                    };
                    let Some(mut merged) = merged else { break };
                    if failing || !ever {
                        tracing::info!(feed = %what, from = %target, "feed connected");
                        failing = false;
                        ever = true;
                    }
                    let (next, len) = (merged.next, merged.len);
                    merged.settle = last_settle.elapsed() >= SETTLE_EVERY;
                    let settle = merged.settle;
                    apply(merged).await?;
                    cursor = next;
                    if settle {
                        last_settle = tokio::time::Instant::now();
                        pending = None;
                        // The writer may delete what every reader has made durable.
                        tsn_protocol::write_msg(&mut send, &next).await?;
                    } else {
                        pending = Some(next);
                    }
                    pauses = crate::net::backoff();
                    if next.offset >= len {
                        settled.send_if_modified(|s| !std::mem::replace(s, true));
                    }
                }
                anyhow::Ok(())
            };
            tokio::try_join!(receive, take)?;
            anyhow::Ok(())
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = addr.changed() => Ok(()),
        };
        // What was taken but not yet settled is settled before the writer is dialled
        // again, however long that takes.
        if let Some(at) = pending.take() {
            if let Err(e) = apply(settle_only(at)).await {
                tracing::warn!(feed = %what, "saving the feed's cursor: {e:#}");
                pending = Some(at);
            } else {
                last_settle = tokio::time::Instant::now();
            }
        }
        if let Err(e) = result {
            settled.send_if_modified(|s| !std::mem::replace(s, true));
            if !std::mem::replace(&mut failing, true) {
                say_failed(what, &target, ever, &e);
            }
            let pause = pauses.next().unwrap_or(Duration::from_secs(2));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = addr.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tsn_protocol::Change;

    const MERGED: usize = FeedConfig::DEFAULT.merged;

    fn received(log_id: u64, users: std::ops::Range<u32>, next: u64) -> Batch {
        Batch {
            records: users
                .map(|user| Record::Change(Change::User { user }))
                .collect(),
            next: Cursor {
                log_id,
                offset: next,
            },
            len: next + 100,
            inline: false,
            settle: true,
        }
    }

    #[test]
    fn merge_takes_what_queued_up_of_the_same_log_and_holds_the_rest() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        tx.try_send(received(7, 2..4, 20)).unwrap();
        tx.try_send(received(7, 4..5, 30)).unwrap();
        // Another log (the writer began anew): applied on its own, next.
        tx.try_send(received(8, 0..1, 5)).unwrap();
        let mut held = None;
        let m = merge(MERGED, received(7, 0..2, 10), &mut rx, &mut held);
        assert_eq!(m.records.len(), 5);
        assert_eq!(
            m.next,
            Cursor {
                log_id: 7,
                offset: 30
            }
        );
        assert_eq!(m.len, 130);
        let h = held.take().unwrap();
        assert_eq!(
            h.next,
            Cursor {
                log_id: 8,
                offset: 5
            }
        );
        // Nothing queued: the batch alone.
        let m = merge(MERGED, h, &mut rx, &mut held);
        assert_eq!(m.records.len(), 1);
        assert!(held.is_none());
    }

    #[test]
    fn merge_stops_at_the_size_limit() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let per = FeedConfig::DEFAULT.batch as u32;
        for k in 1..10u32 {
            tx.try_send(received(1, k * per..(k + 1) * per, u64::from(k + 1)))
                .unwrap();
        }
        let mut held = None;
        let m = merge(MERGED, received(1, 0..per, 1), &mut rx, &mut held);
        assert_eq!(m.records.len(), MERGED);
        assert_eq!(m.next.offset, 8);
        assert_eq!(held.as_ref().map(|h| h.next.offset), Some(9));
    }
}
