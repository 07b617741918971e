//! Feeds (see [`tsn_protocol::sync`]): serving one of our logs to a reader from its
//! cursor, and following another node's log.
//!
//! # Layout
//! - this file: [`FeedConfig`], and the writer's side: [`FeedSource`], [`serve`].
//! - [`follow`](mod@follow): the reader's side: [`follow()`], its [`Batch`]es and
//!   [`opener`]; [`follow_local`] for a log of the reader's own process (a sync service's
//!   own outbox), whose session hands its frames to the follower with no connection.
//!
//! The writer of a log publishes its committed length through a [`FeedLen`]; each feed
//! session waits on it, so a record travels as soon as it is published and an idle feed
//! costs nothing. Reads go through a [`Tail`], on the runtime's thread (what a feed
//! reads was just written and is in the page cache). A follower merges the batches that
//! queue up while it makes one durable, so a reader that falls behind catches up in
//! larger writes. How much a session reads at once, how much a follower merges and
//! queues, and which batches it may take on the runtime's thread are one [`FeedConfig`].

pub mod follow;

pub use follow::{follow, follow_local, opener, Batch, Local, Settled};

use crate::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tsn_datastore::{DatastoreError, Record, Segments, Tail};
use tsn_protocol::sync::{Cursor, Subscribe, SyncReply};
use tsn_protocol::{FrameReader, MAX_BATCH_CHANGES};

/// How a feed is served and followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedConfig {
    /// Records a feed session reads from its log for one frame (a state transfer is sent
    /// in frames of as many). At most [`MAX_BATCH_CHANGES`], the wire limit that readers
    /// check.
    pub batch: usize,
    /// Records a follower's merged batch may hold. The default, eight frames of 1,024: a
    /// durable write of 8,192 records costs little more than one of 1,024, and a reader
    /// catching up (a sync service taking a server's journal feed after the other
    /// server's) does an eighth of the writes.
    pub merged: usize,
    /// Batches a follower reads off the stream ahead of the one being applied.
    pub queued: usize,
    /// Batches of at most this many records are marked [`Batch::inline`]: the reader may
    /// take them on the runtime's thread.
    pub inline: usize,
}

impl FeedConfig {
    /// What nodes use; a reader sets its own `inline`.
    pub const DEFAULT: FeedConfig = FeedConfig {
        batch: 1024,
        merged: 8 * 1024,
        queued: 64,
        inline: 0,
    };
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig::DEFAULT
    }
}

const _: () = assert!(FeedConfig::DEFAULT.batch <= MAX_BATCH_CHANGES);

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

    /// How long the log is, as readers were last told.
    pub fn get(&self) -> u64 {
        *self.0.borrow()
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

    /// Sends `records` as one frame, after which the reader resumes at `next`; the log is
    /// at least `read` bytes long.
    async fn send(
        &self,
        send: &mut impl FrameSink,
        next: u64,
        read: u64,
        records: Vec<Record>,
    ) -> anyhow::Result<()> {
        send.records(Frame {
            log_id: self.log_id,
            next,
            len: self.len().max(read),
            records,
        })
        .await
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

/// How often a feed session may send what was written since it last sent: the period
/// that `period` finds in what `rx` holds now (`None`: as soon as it is written). A
/// change of it takes effect at once, also for records already waiting.
#[derive(Debug)]
pub struct Pace<T> {
    /// What the period follows.
    pub rx: watch::Receiver<T>,
    /// The period it gives.
    pub period: fn(&T) -> Option<Duration>,
}

impl Pace<Option<Duration>> {
    /// A period that never changes.
    pub fn fixed(period: Option<Duration>) -> Self {
        Pace {
            rx: watch::channel(period).1,
            period: |p| *p,
        }
    }
}

impl<T> Pace<T> {
    /// Waits until records may go, when the last frame went at `sent_at`.
    async fn wait(&mut self, sent_at: Option<tokio::time::Instant>) {
        let Some(sent_at) = sent_at else { return };
        loop {
            let Some(period) = (self.period)(&self.rx.borrow_and_update()) else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(sent_at + period) => return,
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // Nothing changes it any more.
                        tokio::time::sleep_until(sent_at + period).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Serves `source` to the reader that subscribed with `sub` on `send`, from its cursor,
/// until the reader goes away or the log's writer stops, sending only the records `keep`
/// accepts (the cursor moves past the others). While `pace` gives a period, new records
/// wait until that long after the last frame (the original system's period-driven
/// delivery, or a standby's journal) instead of travelling as soon as they are written.
/// After each frame, `on_sent` learns how many
/// bytes of the log the reader still lacks. What the reader says it has made durable
/// (`recv`) is kept in the source ([`FeedSource::consumed`]).
///
/// A reader whose cursor lies before the oldest segment kept first gets the source's
/// transfer, in batches whose cursor is the log's start (so that a reader stopped half
/// way begins the transfer again), then the log from its oldest segment on. Frames hold
/// at most `config.batch` records.
#[allow(clippy::too_many_arguments)]
pub async fn serve<T>(
    config: &FeedConfig,
    source: FeedSource,
    sub: &Subscribe,
    keep: impl Fn(&Record) -> bool,
    mut pace: Pace<T>,
    on_sent: impl Fn(u64),
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let reports = {
        let source = source.clone();
        let reader = (sub.reader, sub.node);
        let mut recv = FrameReader::new(recv);
        async move {
            while let Ok(Some(at)) = recv.next_msg::<Cursor>().await {
                source.record_consumed(reader, at);
            }
            // The reader stopped reporting: serving goes on until the stream fails.
            std::future::pending::<std::convert::Infallible>().await
        }
    };
    tokio::select! {
        result = serve_from(config.batch, source, sub.from, keep, &mut pace, on_sent, send) => result,
        never = reports => match never {},
    }
}

/// One frame of records of a feed: a [`SyncReply::Records`].
#[derive(Debug)]
struct Frame {
    log_id: u64,
    next: u64,
    len: u64,
    records: Vec<Record>,
}

/// Where a feed session's frames go: a reader's stream, or the queue of a follower in
/// the same process ([`follow::follow_local`]).
trait FrameSink {
    /// Sends one frame.
    async fn records(&mut self, frame: Frame) -> anyhow::Result<()>;
    /// Returns once the reader has gone away.
    async fn gone(&mut self);
}

impl FrameSink for quinn::SendStream {
    async fn records(&mut self, f: Frame) -> anyhow::Result<()> {
        let msg = SyncReply::Records {
            log_id: f.log_id,
            next: f.next,
            len: f.len,
            records: f.records,
        };
        Ok(tsn_protocol::write_msg(self, &msg).await?)
    }

    async fn gone(&mut self) {
        let _ = quinn::SendStream::stopped(self).await;
    }
}

async fn serve_from<T>(
    batch: usize,
    source: FeedSource,
    from: Cursor,
    keep: impl Fn(&Record) -> bool,
    pace: &mut Pace<T>,
    on_sent: impl Fn(u64),
    send: &mut impl FrameSink,
) -> anyhow::Result<()> {
    let mut sent_at = None;
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
        transfer(batch, &source, start, &keep, send).await?;
        oldest
    } else {
        start
    };
    let mut tail = Tail::over(source.segments.clone(), start);
    let mut len = source.len.clone();
    // The first answer goes out at once, even empty: it tells a reader that is already
    // at the end that it has caught up.
    let mut first = true;
    loop {
        // Read on the runtime's thread: what a feed reads was just written and is in the
        // page cache, a read of it takes microseconds, less than a hand-off to a
        // blocking thread and back. Only up to the length the writer has published:
        // a record appended but not yet flushed is not sent.
        let records = tail.read_upto(batch, source.len())?;
        let offset = tail.offset();
        if records.is_empty() && !std::mem::take(&mut first) {
            tokio::select! {
                grown = len.wait_for(|l| *l > offset) => {
                    if grown.is_err() {
                        return Ok(()); // the writer stopped: the node is shutting down
                    }
                }
                () = send.gone() => return Ok(()),
            }
            pace.wait(sent_at).await;
            continue;
        }
        first = false;
        let records = records.into_iter().filter(&keep).collect();
        source.send(send, offset, offset, records).await?;
        sent_at = Some(tokio::time::Instant::now());
        on_sent(source.len().saturating_sub(offset));
    }
}

/// Sends a reader at `start`, before the oldest segment kept, the source's transfer.
async fn transfer(
    batch: usize,
    source: &FeedSource,
    start: u64,
    keep: &impl Fn(&Record) -> bool,
    send: &mut impl FrameSink,
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
    let records: Vec<Record> = records.into_iter().filter(keep).collect();
    for chunk in records.chunks(batch) {
        source.send(send, 0, 0, chunk.to_vec()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_fixed_pace_waits_its_period_after_the_last_frame_and_none_waits_not_at_all() {
        let period = Duration::from_millis(50);
        let sent = Instant::now();
        Pace::fixed(Some(period)).wait(Some(sent)).await;
        assert!(sent.elapsed() >= period);
        // Nothing sent yet: the first frame goes at once.
        let before = Instant::now();
        Pace::fixed(Some(Duration::from_secs(3600)))
            .wait(None)
            .await;
        Pace::fixed(None).wait(Some(before)).await;
        assert!(before.elapsed() < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_pace_that_is_lifted_lets_what_waits_go_at_once() {
        let (tx, rx) = watch::channel(true);
        let mut pace = Pace {
            rx,
            period: |paced| paced.then_some(Duration::from_secs(3600)),
        };
        let waiting = tokio::spawn(async move { pace.wait(Some(Instant::now())).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        tx.send(false).unwrap();
        tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("the wait ends when the pace is lifted")
            .unwrap();
    }
}
