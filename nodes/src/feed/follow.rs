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

/// Where a follower says which cursor it has made durable: the writer may delete what
/// every reader has.
trait CursorReport {
    async fn report(&mut self, at: Cursor) -> anyhow::Result<()>;
}

impl CursorReport for quinn::SendStream {
    async fn report(&mut self, at: Cursor) -> anyhow::Result<()> {
        Ok(tsn_protocol::write_msg(self, &at).await?)
    }
}

/// What a follower keeps from one connection to the next.
#[derive(Debug)]
struct Progress {
    /// Told once the feed has been read to its end.
    settled: Settled,
    /// Where the next connection resumes.
    cursor: Cursor,
    /// The cursor of the last batch taken but not yet settled.
    pending: Option<Cursor>,
    last_settle: tokio::time::Instant,
}

impl Progress {
    fn new(cursor: Cursor, settled: Settled) -> Progress {
        let now = tokio::time::Instant::now();
        Progress {
            settled,
            cursor,
            pending: None,
            last_settle: now.checked_sub(SETTLE_EVERY).unwrap_or(now),
        }
    }

    /// Says the feed has been read to its end (or that its writer is unreachable, so
    /// that whoever waits for it does not wait for a node that is down).
    fn read_to_end(&self) {
        self.settled
            .send_if_modified(|s| !std::mem::replace(s, true));
    }

    /// Settles what was taken but not yet settled (before the writer is dialled again,
    /// however long that takes, or once the feed has ended).
    async fn settle_pending<A, Fut>(&mut self, what: &str, apply: &mut A)
    where
        A: FnMut(Batch) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        if let Some(at) = self.pending.take() {
            if let Err(e) = apply(settle_only(at)).await {
                tracing::warn!(feed = %what, "saving the feed's cursor: {e:#}");
                self.pending = Some(at);
            } else {
                self.last_settle = tokio::time::Instant::now();
            }
        }
    }
}

/// Hands every batch of `queued` to `apply` (those that queued up behind it merged, see
/// [`FeedConfig::merged`]), settling at most every [`SETTLE_EVERY`] and reporting each
/// settled cursor; `taken` runs after each batch taken. Returns once the queue's writer
/// has stopped.
async fn take_batches<A, Fut>(
    config: &FeedConfig,
    queued: &mut tokio::sync::mpsc::Receiver<Batch>,
    progress: &mut Progress,
    apply: &mut A,
    report: &mut impl CursorReport,
    mut taken: impl FnMut(),
) -> anyhow::Result<()>
where
    A: FnMut(Batch) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut held = None;
    loop {
        let due = progress.last_settle + SETTLE_EVERY;
        let merged = tokio::select! {
            b = next_merged(config, queued, &mut held) => b,
            () = tokio::time::sleep_until(due), if progress.pending.is_some() => {
                let at = progress.pending.take().expect("checked by the guard");
                apply(settle_only(at)).await?;
                progress.last_settle = tokio::time::Instant::now();
                report.report(at).await?;
                continue;
            }
        };
        let Some(mut merged) = merged else {
            return Ok(());
        };
        let (next, len) = (merged.next, merged.len);
        merged.settle = progress.last_settle.elapsed() >= SETTLE_EVERY;
        let settle = merged.settle;
        apply(merged).await?;
        progress.cursor = next;
        taken();
        if settle {
            progress.last_settle = tokio::time::Instant::now();
            progress.pending = None;
            report.report(next).await?;
        } else {
            progress.pending = Some(next);
        }
        if next.offset >= len {
            progress.read_to_end();
        }
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
    cursor: Cursor,
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
    let mut progress = Progress::new(cursor, settled);
    loop {
        let target = addr.current();
        if target.is_some() && target != known {
            progress
                .settled
                .send_if_modified(|s| std::mem::replace(s, false));
            known = target.clone();
        }
        let Some(target) = target else {
            // Nobody to read from yet: whoever waits for this feed need not wait.
            progress.read_to_end();
            if addr.changed().await.is_err() {
                return;
            }
            continue;
        };
        let attempt = async {
            let conn = crate::net::connect(&endpoint, &target).await?;
            let (mut send, recv) = conn.open_bi().await?;
            tsn_protocol::write_frame(&mut send, &open(progress.cursor)).await?;
            // Batches are read off the stream as they come and handed on to `apply`
            // merged: whatever arrived while the previous merged batch was being made
            // durable goes in one, so a reader slower than the writer catches up in
            // fewer, larger writes instead of falling further behind one small batch at
            // a time.
            let (queue, mut queued) = tokio::sync::mpsc::channel::<Batch>(config.queued);
            let receive = receive_batches(FrameReader::new(recv), queue);
            let taken = || {
                if failing || !ever {
                    tracing::info!(feed = %what, from = %target, "feed connected");
                    failing = false;
                    ever = true;
                }
                pauses = crate::net::backoff();
            };
            let take = take_batches(
                &config,
                &mut queued,
                &mut progress,
                &mut apply,
                &mut send,
                taken,
            );
            tokio::try_join!(receive, take)?;
            anyhow::Ok(())
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = addr.changed() => Ok(()),
        };
        progress.settle_pending(what, &mut apply).await;
        if let Err(e) = result {
            progress.read_to_end();
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

/// A log of this process read by this process (a sync service reading its own outbox):
/// what a reader at the other end of a feed would get, with no connection between.
#[derive(Debug)]
pub struct Local<K, T, S> {
    /// The log.
    pub source: super::FeedSource,
    /// Who reads it, as a remote reader would say (what it consumed counts as theirs).
    pub reader: Reader,
    /// Which records it gets (see [`super::serve`]).
    pub keep: K,
    /// When they go (see [`super::Pace`]).
    pub pace: super::Pace<T>,
    /// Learns after each batch how many bytes of the log are left.
    pub on_sent: S,
}

/// Where a local follower's batches come from: the feed session's frames, as batches.
struct LocalSink(tokio::sync::mpsc::Sender<Batch>);

impl super::FrameSink for LocalSink {
    async fn records(&mut self, f: super::Frame) -> anyhow::Result<()> {
        let batch = Batch {
            records: f.records,
            next: Cursor {
                log_id: f.log_id,
                offset: f.next,
            },
            len: f.len,
            inline: false,
            settle: true,
        };
        self.0
            .send(batch)
            .await
            .map_err(|_| anyhow::anyhow!("the local follower stopped"))
    }

    async fn gone(&mut self) {
        self.0.closed().await;
    }
}

/// What a local follower consumed, recorded in its log's source.
struct LocalReport(super::FeedSource, Reader);

impl CursorReport for LocalReport {
    async fn report(&mut self, at: Cursor) -> anyhow::Result<()> {
        self.0.record_consumed(self.1, at);
        Ok(())
    }
}

/// [`follow`] for a log of this process ([`Local`]): the same batches, merges, settling
/// and `apply`, with the feed session serving it in this task instead of at the other
/// end of a connection. Returns once the log's writer has stopped.
pub async fn follow_local<K, T, S, A, Fut>(
    config: FeedConfig,
    what: &str,
    local: Local<K, T, S>,
    cursor: Cursor,
    settled: Settled,
    mut apply: A,
) where
    K: Fn(&Record) -> bool,
    S: Fn(u64),
    A: FnMut(Batch) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let Local {
        source,
        reader,
        keep,
        mut pace,
        on_sent,
    } = local;
    let mut progress = Progress::new(cursor, settled);
    let mut pauses = crate::net::backoff();
    loop {
        let (queue, mut queued) = tokio::sync::mpsc::channel::<Batch>(config.queued);
        let mut sink = LocalSink(queue);
        let from = progress.cursor;
        let serve = async {
            let r = super::serve_from(
                config.batch,
                source.clone(),
                from,
                &keep,
                &mut pace,
                &on_sent,
                &mut sink,
            )
            .await;
            // The follower takes what is queued, then sees the end.
            drop(sink);
            r
        };
        let mut report = LocalReport(source.clone(), reader);
        let take = take_batches(
            &config,
            &mut queued,
            &mut progress,
            &mut apply,
            &mut report,
            || {},
        );
        let result = tokio::try_join!(serve, take);
        progress.settle_pending(what, &mut apply).await;
        match result {
            // The writer stopped: the process is shutting down.
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(feed = %what, "reading this node's own log failed, retrying: {e:#}");
                tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(2))).await;
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

    /// Waits (bounded) until `cond` holds.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 5 s: {what}");
    }

    #[tokio::test]
    async fn a_local_follower_takes_what_is_kept_reports_it_consumed_and_ends_with_the_writer() {
        use std::sync::{Arc, Mutex};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("outbox.data");
        let (mut log, _) = tsn_datastore::SegmentedLog::open(&path, 0).unwrap();
        let user = |user| Record::Change(Change::User { user });
        log.append(&(1..=5).map(user).collect::<Vec<_>>()).unwrap();
        let (len, source) = super::super::FeedSource::new(log.segments(), 7, log.len());
        let reader = (1, tsn_protocol::coord::NodeKind::Sync);
        let taken = Arc::new(Mutex::new(Vec::new()));
        let apply = {
            let taken = taken.clone();
            move |b: Batch| {
                taken.lock().unwrap().extend(b.records);
                async { anyhow::Ok(()) }
            }
        };
        let local = Local {
            source: source.clone(),
            reader,
            keep: |r: &Record| *r != Record::Change(Change::User { user: 3 }),
            pace: super::super::Pace::fixed(None),
            on_sent: |_| {},
        };
        let (settled, mut read_to_end) = watch::channel(false);
        let from = Cursor {
            log_id: 7,
            offset: 0,
        };
        let task = tokio::spawn(follow_local(
            FeedConfig::DEFAULT,
            "test outbox",
            local,
            from,
            settled,
            apply,
        ));
        tokio::time::timeout(Duration::from_secs(5), read_to_end.wait_for(|s| *s))
            .await
            .unwrap()
            .unwrap();
        // What is written later comes too, as the writer publishes it.
        log.append(&[user(6)]).unwrap();
        len.set(log.len());
        until("the later record taken", || {
            taken.lock().unwrap().len() == 5
        })
        .await;
        assert_eq!(
            *taken.lock().unwrap(),
            [1, 2, 4, 5, 6].map(user).to_vec(),
            "in order, without the one not kept"
        );
        // Settled within SETTLE_EVERY: the source counts the log read by this reader.
        let end = log.len();
        until("the cursor reported", || {
            source.consumed_by(&[reader]) == Some(end)
        })
        .await;
        // The writer stops: so does the follower.
        drop(len);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the follower ends with its writer")
            .unwrap();
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
