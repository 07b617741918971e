//! Feeds (see [`tsn_protocol::sync`]): serving one of our logs to a reader from its
//! cursor, and following another node's log.
//!
//! The writer of a log publishes its committed length through a [`FeedLen`]; each feed
//! session waits on it, so a record travels as soon as it is published and an idle feed
//! costs nothing. Reads go through a [`Tail`], on the runtime's thread (what a feed
//! reads was just written and is in the page cache). A follower merges the batches that
//! queue up while it makes one durable, so a reader that falls behind catches up in
//! larger writes.

use crate::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;
use tsn_datastore::{DatastoreError, Record, Segments, Tail};
use tsn_protocol::sync::{Cursor, Entry, Subscribe, SyncReply};
use tsn_protocol::{FrameReader, MAX_BATCH_CHANGES};

/// The writer's side of a served log: tells feed sessions how far the log is written.
#[derive(Debug)]
pub struct FeedLen(watch::Sender<u64>);

impl FeedLen {
    /// The log is now `len` bytes long (called after each append).
    pub fn set(&self, len: u64) {
        self.0.send_if_modified(|l| {
            let grew = *l != len;
            *l = len;
            grew
        });
    }
}

/// A feed's reader: its cluster, and which node of it.
pub type Reader = (tsn_protocol::ClusterId, tsn_protocol::coord::NodeKind);

/// The state a reader gets instead of the log when its cursor lies before the oldest
/// segment kept: records that, applied in any order with the log after them, give what
/// the log gave.
pub type Transfer = Arc<dyn Fn() -> anyhow::Result<Vec<Record>> + Send + Sync>;

/// A log that readers may follow.
#[derive(Clone)]
pub struct FeedSource {
    segments: Segments,
    log_id: u64,
    len: watch::Receiver<u64>,
    /// How far each reader has made the log durable on its side, as it last said.
    consumed: Arc<Mutex<HashMap<Reader, u64>>>,
    transfer: Option<Transfer>,
}

impl std::fmt::Debug for FeedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSource")
            .field("log", &self.segments.path())
            .field("log_id", &self.log_id)
            .field("len", &*self.len.borrow())
            .finish_non_exhaustive()
    }
}

impl FeedSource {
    /// The log kept in `segments`, with id `log_id`, `len` bytes long now.
    pub fn new(segments: Segments, log_id: u64, len: u64) -> (FeedLen, FeedSource) {
        let (tx, rx) = watch::channel(len);
        (
            FeedLen(tx),
            FeedSource {
                segments,
                log_id,
                len: rx,
                consumed: Arc::default(),
                transfer: None,
            },
        )
    }

    /// The same, giving readers behind the oldest segment kept what `transfer` returns.
    pub fn with_transfer(mut self, transfer: Transfer) -> FeedSource {
        self.transfer = Some(transfer);
        self
    }

    /// The log's id.
    pub fn log_id(&self) -> u64 {
        self.log_id
    }

    /// The log's segments.
    pub fn segments(&self) -> Segments {
        self.segments.clone()
    }

    /// How far all of `readers` have made the log durable (`None`: one of them has said
    /// nothing since this process started).
    pub fn consumed_by(&self, readers: &[Reader]) -> Option<u64> {
        let consumed = self.consumed.locked();
        readers
            .iter()
            .map(|r| consumed.get(r).copied())
            .min()
            .flatten()
    }

    fn record_consumed(&self, reader: Reader, at: Cursor) {
        if at.log_id == self.log_id {
            self.consumed.locked().insert(reader, at.offset);
        }
    }

    /// How many bytes of the log are written.
    pub fn len(&self) -> u64 {
        *self.len.borrow()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where a reader asking for `from` starts: there if it is a record boundary of this
    /// log, else at the start (the log was begun anew, or the reader's cursor is damaged:
    /// records are idempotent, so reading again is safe and skipping is not).
    fn start(&self, from: Cursor) -> u64 {
        if from.log_id != self.log_id || from.offset == 0 || from.offset > self.len() {
            return 0;
        }
        let at_boundary = (|| -> std::io::Result<bool> {
            use std::os::unix::fs::FileExt;
            let Some(at) = self.segments.locate(from.offset - 1) else {
                return Ok(false);
            };
            let f = std::fs::File::open(&at.path)?;
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, from.offset - 1 - at.base)?;
            Ok(b[0] == b'\n')
        })();
        if at_boundary.unwrap_or(false) {
            from.offset
        } else {
            0
        }
    }
}

/// A record as it travels on a feed.
pub fn entry(record: Record) -> Entry {
    match record {
        Record::Change(c) => Entry::Change(c),
        Record::Deliver { to, seq, post } => Entry::Deliver { to, seq, post },
    }
}

/// A feed entry as a datastore record.
pub fn record(entry: Entry) -> Record {
    match entry {
        Entry::Change(c) => Record::Change(c),
        Entry::Deliver { to, seq, post } => Record::Deliver { to, seq, post },
    }
}

/// Serves `source` to the reader that subscribed with `sub` on `send`, from its cursor,
/// until the reader goes away or the log's writer stops, sending only the records `keep`
/// accepts (the cursor moves past the others). With a `pace`, new records wait for the
/// next tick of that period (the original system's period-driven delivery) instead of
/// travelling as soon as they are written. After each frame, `on_sent` learns how many
/// bytes of the log the reader still lacks. What the reader says it has made durable
/// (`recv`) is kept in the source ([`FeedSource::consumed`]).
///
/// A reader whose cursor lies before the oldest segment kept first gets the source's
/// transfer, in batches whose cursor is the log's start (so that a reader stopped half
/// way begins the transfer again), then the log from its oldest segment on.
pub async fn serve(
    source: FeedSource,
    sub: &Subscribe,
    keep: impl Fn(&Record) -> bool,
    pace: Option<Duration>,
    on_sent: impl Fn(u64),
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let reports = {
        let source = source.clone();
        let reader = (sub.reader, sub.node);
        let mut recv = FrameReader::new(recv);
        tokio::spawn(async move {
            while let Ok(Some(at)) = recv.next_msg::<Cursor>().await {
                source.record_consumed(reader, at);
            }
        })
    };
    let result = serve_from(source, sub.from, keep, pace, on_sent, send).await;
    reports.abort();
    result
}

async fn serve_from(
    source: FeedSource,
    from: Cursor,
    keep: impl Fn(&Record) -> bool,
    pace: Option<Duration>,
    on_sent: impl Fn(u64),
    send: &mut quinn::SendStream,
) -> anyhow::Result<()> {
    let mut tick = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let start = {
        let s = source.clone();
        tokio::task::spawn_blocking(move || s.start(from))
            .await
            .context("feed reader panicked")?
    };
    if start != from.offset || from.log_id != source.log_id {
        tracing::info!(
            log = %source.segments.path().display(),
            asked = from.offset,
            start,
            "feed reader's cursor is for another log or not a record boundary: reading from the start"
        );
    }
    let oldest = source.segments.start();
    let start = if start < oldest {
        transfer(&source, start, &keep, send).await?;
        oldest
    } else {
        start
    };
    let mut tail = Some(Tail::over(source.segments.clone(), start));
    let mut len = source.len.clone();
    // The first answer goes out at once, even empty: it tells a reader that is already
    // at the end that it has caught up.
    let mut first = true;
    loop {
        let Some(mut t) = tail.take() else {
            bail!("feed reader lost its cursor");
        };
        // Read on the runtime's thread: what a feed reads was just written and is in the
        // page cache, a read of it takes microseconds, less than a hand-off to a
        // blocking thread and back. Only up to the length the writer has published:
        // a record appended but not yet flushed is not sent.
        let read = t.read_upto(MAX_BATCH_CHANGES, source.len());
        let offset = t.offset();
        tail = Some(t);
        let records = read?;
        if records.is_empty() && !std::mem::take(&mut first) {
            tokio::select! {
                grown = len.wait_for(|l| *l > offset) => {
                    if grown.is_err() {
                        return Ok(()); // the writer stopped: the node is shutting down
                    }
                }
                _ = send.stopped() => return Ok(()),
            }
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            continue;
        }
        first = false;
        let entries: Vec<Entry> = records.into_iter().filter(&keep).map(entry).collect();
        let msg = SyncReply::Records {
            log_id: source.log_id,
            next: offset,
            len: source.len().max(offset),
            entries,
        };
        tsn_protocol::write_msg(send, &msg).await?;
        on_sent(source.len().saturating_sub(offset));
    }
}

/// Sends a reader at `start`, before the oldest segment kept, the source's transfer.
async fn transfer(
    source: &FeedSource,
    start: u64,
    keep: &impl Fn(&Record) -> bool,
    send: &mut quinn::SendStream,
) -> anyhow::Result<()> {
    let Some(make) = source.transfer.clone() else {
        return Err(DatastoreError::Compacted {
            path: source.segments.path(),
            offset: start,
            start: source.segments.start(),
        }
        .into());
    };
    let records = tokio::task::spawn_blocking(move || make())
        .await
        .context("state transfer panicked")??;
    tracing::info!(
        log = %source.segments.path().display(),
        records = records.len(),
        "the feed's reader is behind the oldest segment kept: sending it the checkpointed state first"
    );
    let entries: Vec<Entry> = records.into_iter().filter(keep).map(entry).collect();
    for chunk in entries.chunks(MAX_BATCH_CHANGES) {
        let msg = SyncReply::Records {
            log_id: source.log_id,
            next: 0,
            len: source.len(),
            entries: chunk.to_vec(),
        };
        tsn_protocol::write_msg(send, &msg).await?;
    }
    Ok(())
}

/// The first message of a feed of `log` of `cluster`, read by a node of `reader`, from a
/// cursor: the [`Subscribe`] wrapped as the writer's kind of node expects it
/// (`MirrorMsg::Subscribe` for a server, `SyncRequest::Subscribe` for a sync service).
pub fn opener<M: serde::Serialize>(
    cluster: tsn_protocol::ClusterId,
    (reader, node): Reader,
    log: tsn_protocol::sync::FeedLog,
    wrap: fn(tsn_protocol::sync::Subscribe) -> M,
) -> impl Fn(Cursor) -> Vec<u8> {
    move |from| {
        tsn_protocol::encode(&wrap(tsn_protocol::sync::Subscribe {
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
    pub entries: Vec<Entry>,
    /// Where the reader resumes after applying them.
    pub next: Cursor,
}

/// Whether a follower has read its log to the end at least once since it learned where
/// the log's writer is, or found that writer unreachable (so that whoever waits for it
/// does not wait for a node that is down). A writer at a new address makes it false
/// again until then.
pub type Settled = watch::Sender<bool>;

/// Batches read off a feed's stream ahead of the one being applied.
const QUEUED_BATCHES: usize = 64;

/// Records a merged batch may hold: eight of the writer's batches. A durable write of
/// 8,192 records costs little more than one of 1,024, and a reader catching up (a sync
/// service taking a server's journal feed after the other server's) does an eighth of
/// the writes.
pub const MERGED_CHANGES: usize = 8 * MAX_BATCH_CHANGES;

/// One batch as received, with the writer's log length when it was sent.
struct Received {
    batch: Batch,
    len: u64,
}

/// Reads a feed's batches into `queue` until the stream ends (an error) or the queue's
/// reader is gone.
async fn receive_batches(
    mut recv: FrameReader<quinn::RecvStream>,
    queue: tokio::sync::mpsc::Sender<Received>,
) -> anyhow::Result<()> {
    loop {
        match recv.next_msg::<SyncReply>().await? {
            Some(SyncReply::Records {
                log_id,
                next,
                len,
                entries,
            }) => {
                if entries.len() > MAX_BATCH_CHANGES {
                    bail!(
                        "batch of {} records exceeds {MAX_BATCH_CHANGES}",
                        entries.len()
                    );
                }
                let batch = Batch {
                    entries,
                    next: Cursor {
                        log_id,
                        offset: next,
                    },
                };
                if queue.send(Received { batch, len }).await.is_err() {
                    return Ok(());
                }
            }
            Some(SyncReply::Refused(why)) => bail!("refused: {why}"),
            None => bail!("the feed was closed"),
        }
    }
}

/// `first` and the batches queued behind it of the same log, up to [`MERGED_CHANGES`]
/// records: one batch whose cursor is the last one's. A batch taken off the queue that
/// does not fit is left in `held`, to come next.
fn merge(
    mut first: Received,
    queued: &mut tokio::sync::mpsc::Receiver<Received>,
    held: &mut Option<Received>,
) -> Received {
    while let Ok(more) = queued.try_recv() {
        if more.batch.next.log_id != first.batch.next.log_id
            || first.batch.entries.len() + more.batch.entries.len() > MERGED_CHANGES
        {
            *held = Some(more);
            break;
        }
        first.batch.entries.extend(more.batch.entries);
        first.batch.next = more.batch.next;
        first.len = more.len;
    }
    first
}

/// Follows a remote log for ever: dials whatever address `addr` holds, sends the opener
/// that `open` builds from the current cursor, and hands every batch to `apply` (the
/// batches that arrived while it was busy merged into one, see [`MERGED_CHANGES`]), which
/// must make it durable (with its cursor) before it returns. Reconnects after any
/// failure and whenever `addr` changes, from the last cursor `apply` accepted.
pub async fn follow<O, A, Fut>(
    what: String,
    endpoint: quinn::Endpoint,
    mut addr: watch::Receiver<Option<String>>,
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
    // Before the first success a failure is the other node not being up yet: said once,
    // quietly. After it, losing the feed is worth a warning.
    let mut ever = false;
    let mut known: Option<String> = None;
    loop {
        let target = addr.borrow_and_update().clone();
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
            let (queue, mut queued) = tokio::sync::mpsc::channel::<Received>(QUEUED_BATCHES);
            let receive = receive_batches(FrameReader::new(recv), queue);
            let take = async {
                let mut held = None;
                loop {
                    let first = match held.take() {
                        Some(b) => b,
                        None => match queued.recv().await {
                            Some(b) => b,
                            None => break,
                        },
                    };
                    let merged = merge(first, &mut queued, &mut held);
                    if failing || !ever {
                        tracing::info!(feed = %what, from = %target, "feed connected");
                        failing = false;
                        ever = true;
                    }
                    let next = merged.batch.next;
                    apply(merged.batch).await?;
                    cursor = next;
                    // The writer may delete what every reader has made durable.
                    tsn_protocol::write_msg(&mut send, &next).await?;
                    pauses = crate::net::backoff();
                    if next.offset >= merged.len {
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
        if let Err(e) = result {
            settled.send_if_modified(|s| !std::mem::replace(s, true));
            if !failing {
                if ever && crate::net::part_of_a_stop(&e) {
                    tracing::info!(feed = %what, from = %target, "the feed's node stopped; retrying: {e:#}");
                } else if ever {
                    tracing::warn!(feed = %what, from = %target, "feed interrupted, retrying: {e:#}");
                } else {
                    tracing::info!(feed = %what, from = %target, "waiting for the feed's node: {e:#}");
                }
                failing = true;
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

    fn received(log_id: u64, users: std::ops::Range<u32>, next: u64) -> Received {
        Received {
            batch: Batch {
                entries: users
                    .map(|user| Entry::Change(Change::User { user }))
                    .collect(),
                next: Cursor {
                    log_id,
                    offset: next,
                },
            },
            len: next + 100,
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
        let m = merge(received(7, 0..2, 10), &mut rx, &mut held);
        assert_eq!(m.batch.entries.len(), 5);
        assert_eq!(
            m.batch.next,
            Cursor {
                log_id: 7,
                offset: 30
            }
        );
        assert_eq!(m.len, 130);
        let h = held.take().unwrap();
        assert_eq!(
            h.batch.next,
            Cursor {
                log_id: 8,
                offset: 5
            }
        );
        // Nothing queued: the batch alone.
        let m = merge(h, &mut rx, &mut held);
        assert_eq!(m.batch.entries.len(), 1);
        assert!(held.is_none());
    }

    #[test]
    fn merge_stops_at_the_size_limit() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let per = MAX_BATCH_CHANGES as u32;
        for k in 1..10u32 {
            tx.try_send(received(1, k * per..(k + 1) * per, u64::from(k + 1)))
                .unwrap();
        }
        let mut held = None;
        let m = merge(received(1, 0..per, 1), &mut rx, &mut held);
        assert_eq!(m.batch.entries.len(), MERGED_CHANGES);
        assert_eq!(m.batch.next.offset, 8);
        assert_eq!(held.as_ref().map(|h| h.batch.next.offset), Some(9));
    }
}
