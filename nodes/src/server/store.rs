//! The journal writer: the one task that writes this server's role directory.
//!
//! Writes are group-committed: every request waiting in the queue joins one append to
//! `journal.data`. The changes are then handed to the mirror, applied to the in-memory
//! model, pushed to open timelines and appended to the per-user view files (without a
//! flush: they are rebuilt from the journal after an unclean shutdown). A flusher thread
//! makes the journal durable (fdatasync) behind the writer, one flush for everything
//! appended since the last, so the writer never waits for the disk.
//!
//! When a request completes depends on the [`AckMode`]: with `replicated`, once its
//! changes are written to the journals of both servers (or flushed here, when there is
//! no standby); with `durable`, once they are flushed on both.
//!
//! The writer also takes the checkpoints (see [`super::checkpoint`]), between two
//! batches and with the received feed's writer held still, so that the state written
//! down is exactly that of the two logs at the offsets recorded.

use crate::Locked;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tsn_datastore::{DatastoreError, Record, SegmentedLog};
use tsn_protocol::Change;

use super::inbound::InboundHandle;
use super::{AckMode, Shared};
use crate::checkpoint::{self, Checkpoint};
use crate::feed::FeedLen;
use crate::views::{Side, Views};

/// Requests waiting for the writer. A full queue makes callers wait (backpressure).
pub const WRITE_QUEUE: usize = 4096;

/// Changes gathered into one write of the journal (group commit): requests are taken
/// off the queue until they hold this many. Each write is mirrored as one batch, so at
/// most about [`tsn_protocol::MAX_BATCH_CHANGES`].
pub const GROUP_COMMIT_CHANGES: usize = 1024;

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The journal could not be written (disk full, read-only, ...). Nothing was stored.
    #[error("journal write failed: {0}")]
    Journal(String),
    /// The writer has stopped (the server is shutting down).
    #[error("the server is shutting down")]
    Stopped,
}

/// Completion of one write request.
pub type Done = oneshot::Sender<Result<(), StoreError>>;

/// One write request.
#[derive(Debug)]
struct WriteReq {
    changes: Vec<Change>,
    /// Whether the request completes only once the standby has the changes.
    mirror: bool,
    done: Done,
}

/// Changes handed to the mirror, with the requests that complete when the standby acks.
#[derive(Debug)]
pub struct MirrorJob {
    /// The new changes, in journal order (already written to this server's journal).
    pub changes: Vec<Change>,
    /// The journal's length once they were written.
    pub upto: u64,
    /// Requests to complete.
    pub dones: Vec<Done>,
    /// Completes when the changes are flushed here too: the journal is flushed while the
    /// standby receives them.
    pub flushed: oneshot::Receiver<Result<(), StoreError>>,
}

impl MirrorJob {
    /// Completes the requests once the local flush is done, with its outcome: how a job
    /// ends when there is no standby, or when the standby has it and the mode is
    /// [`AckMode::Durable`].
    pub async fn finish(self) {
        let outcome = self.flushed.await.unwrap_or(Err(StoreError::Stopped));
        complete(self.dones, outcome);
    }

    /// Completes the requests now that the standby has the changes, waiting for the
    /// local flush only if `mode` asks for it.
    pub async fn acked(self, mode: AckMode) {
        match mode {
            AckMode::Durable => self.finish().await,
            // Written here (the job exists only after the journal write succeeded) and
            // written on the standby: two copies. The flush goes on behind.
            AckMode::Replicated => complete(self.dones, Ok(())),
        }
    }
}

/// What the writer is asked to do.
#[derive(Debug)]
enum Msg {
    Write(WriteReq),
    /// Finish everything queued before, then stop; answered once stopped, with whether
    /// every view file is complete.
    Stop(oneshot::Sender<bool>),
}

/// Handle to the writer.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Msg>,
}

impl Store {
    /// Queues `changes`; the returned receiver completes when they are durable here and,
    /// when `mirror`, on the standby. Queue order is journal order.
    pub async fn submit(
        &self,
        changes: Vec<Change>,
        mirror: bool,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = oneshot::channel();
        let req = WriteReq {
            changes,
            mirror,
            done,
        };
        if let Err(mpsc::error::SendError(Msg::Write(req))) = self.tx.send(Msg::Write(req)).await {
            let _ = req.done.send(Err(StoreError::Stopped));
        }
        rx
    }

    /// Lets the writer finish everything queued (journal, mirror hand-off, view files),
    /// then stops it; returns once it has stopped, with whether every view file it
    /// writes is complete (false: a failed append could not be repaired). Later writes
    /// fail with [`StoreError::Stopped`].
    pub async fn stop(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop(tx)).await.is_ok() {
            return rx.await.unwrap_or(false);
        }
        false
    }

    /// Queues and waits.
    pub async fn write(&self, changes: Vec<Change>, mirror: bool) -> Result<(), StoreError> {
        self.submit(changes, mirror)
            .await
            .await
            .unwrap_or(Err(StoreError::Stopped))
    }
}

/// How often the writer checks, when idle, whether the received feed has grown enough for
/// a checkpoint.
const CHECKPOINT_CHECK: Duration = Duration::from_secs(1);

/// A journal that holds this many checkpoint intervals that the sync service has not read
/// is reported at each checkpoint: nothing it has not read is deleted, so a sync service
/// that stays away makes the journal grow.
pub const UNREAD_WARN_INTERVALS: u64 = 16;

/// Starts the writer task and its flusher thread. `len` tells the journal's feed how far
/// the journal is written; `last` is the checkpoint the server started from. Without an
/// `inbound`, no checkpoints are taken.
pub fn spawn(
    shared: Arc<Shared>,
    journal: SegmentedLog,
    inbound: Option<InboundHandle>,
    mirror_tx: mpsc::Sender<MirrorJob>,
    len: FeedLen,
    last: Checkpoint,
) -> anyhow::Result<Store> {
    let flusher = journal.flusher();
    let parts = Parts {
        shared,
        journal,
        inbound,
        mirror_tx,
        len,
        last,
    };
    spawn_with(parts, move || flusher.sync())
}

/// What the writer is made of.
struct Parts {
    shared: Arc<Shared>,
    journal: SegmentedLog,
    inbound: Option<InboundHandle>,
    mirror_tx: mpsc::Sender<MirrorJob>,
    len: FeedLen,
    last: Checkpoint,
}

/// [`spawn`] with the flush the flusher thread runs.
fn spawn_with(
    parts: Parts,
    flush: impl FnMut() -> Result<(), DatastoreError> + Send + 'static,
) -> anyhow::Result<Store> {
    let Parts {
        shared,
        journal,
        inbound,
        mirror_tx,
        len,
        last,
    } = parts;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let (flush_tx, flush_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("journal-flush".into())
        .spawn(move || flush_loop(flush, flush_rx))?;
    let last_size = std::fs::metadata(checkpoint::path(&shared.dir)).map_or(0, |m| m.len());
    let writer = Writer {
        disk: Arc::new(Mutex::new(Disk {
            journal,
            views: Views::new(shared.dir.clone(), Side::Server),
        })),
        shared,
        inbound,
        sealed: (last.journal, last.other),
        last: (last.journal, last.other, last_size),
        finishing: None,
        len,
        mirror_tx,
        flush_tx,
    };
    tokio::spawn(writer.run(rx));
    Ok(Store { tx })
}

/// Requests to complete once everything appended before them is flushed.
type FlushReq = Vec<Done>;

/// The flusher thread: one flush for every request that queued up during the last, so
/// under load flushes follow each other back to back and each covers many batches.
fn flush_loop(
    mut flush: impl FnMut() -> Result<(), DatastoreError>,
    rx: std::sync::mpsc::Receiver<FlushReq>,
) {
    while let Ok(mut dones) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            dones.extend(more);
        }
        let outcome = flush().map_err(|e| {
            tracing::error!("journal flush failed: {e}");
            StoreError::Journal(e.to_string())
        });
        complete(dones, outcome);
    }
    tracing::debug!("journal flusher stopped");
}

/// The journal and the view files of this server's own changes.
struct Disk {
    journal: SegmentedLog,
    views: Views,
}

struct Writer {
    shared: Arc<Shared>,
    /// Locked only between awaits, and by a checkpoint (on a blocking thread, while the
    /// writer waits for it).
    disk: Arc<Mutex<Disk>>,
    inbound: Option<InboundHandle>,
    /// Where the logs were last sealed for a checkpoint: journal, received.
    sealed: (u64, u64),
    /// The last checkpoint written: journal offset, received offset, size in bytes.
    last: (u64, u64, u64),
    /// The second half of a checkpoint, running off the writer's path.
    finishing: Option<tokio::task::JoinHandle<anyhow::Result<(u64, u64, u64)>>>,
    len: FeedLen,
    mirror_tx: mpsc::Sender<MirrorJob>,
    flush_tx: std::sync::mpsc::Sender<FlushReq>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut stopped = None;
        let mut check = tokio::time::interval(CHECKPOINT_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => m,
                    None => break,
                },
                _ = check.tick() => {
                    self.repair_views();
                    self.delete_read();
                    self.maybe_checkpoint().await;
                    continue;
                }
                _ = self.shared.checkpoint_due.notified() => {
                    self.maybe_checkpoint().await;
                    continue;
                }
            };
            let first = match first {
                Msg::Write(req) => req,
                Msg::Stop(done) => {
                    stopped = Some(done);
                    break;
                }
            };
            let mut batch = vec![first];
            let mut count = batch[0].changes.len();
            while count < GROUP_COMMIT_CHANGES {
                match rx.try_recv() {
                    Ok(Msg::Write(req)) => {
                        count += req.changes.len();
                        batch.push(req);
                    }
                    Ok(Msg::Stop(done)) => {
                        stopped = Some(done);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
            if stopped.is_some() {
                break;
            }
            self.maybe_checkpoint().await;
        }
        // Refuse what is still queued, and drop the flusher's channel so it stops.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Write(req) => {
                    let _ = req.done.send(Err(StoreError::Stopped));
                }
                Msg::Stop(done) => {
                    let _ = done.send(false);
                }
            }
        }
        // A checkpoint being finished completes before the writer says it has stopped.
        self.finish_checkpoint(true).await;
        let complete = self.disk.locked().views.complete_for_shutdown();
        drop(self);
        if let Some(done) = stopped {
            let _ = done.send(complete);
        }
        tracing::debug!("journal writer stopped");
    }

    async fn commit(&mut self, batch: Vec<WriteReq>) {
        // Mirrored and exchanged changes carry the other server's timestamps.
        for c in batch.iter().flat_map(|r| r.changes.iter()) {
            self.shared.clock.observe_change(c);
        }
        // Keep only what is new to the model, and new within this batch.
        let fresh = self
            .shared
            .state
            .fresh(batch.iter().flat_map(|r| r.changes.iter()));
        // The same lines go to the journal now and to the view files after the hand-off.
        let records: Vec<Record> = fresh.iter().cloned().map(Record::Change).collect();
        let written = {
            let mut disk = self.disk.locked();
            match disk.journal.append(&records) {
                Ok(()) => Ok((disk.journal.len(), disk.journal.bytes_on_disk())),
                Err(e) => {
                    tracing::error!(path = %disk.journal.path().display(), "journal write failed, changes refused: {e}");
                    Err(e)
                }
            }
        };
        let (len, on_disk) = match written {
            Ok(w) => w,
            Err(e) => {
                complete(
                    batch.into_iter().map(|r| r.done).collect(),
                    Err(StoreError::Journal(e.to_string())),
                );
                return;
            }
        };
        self.len.set(len);
        self.shared.metrics.journal_bytes.set(on_disk as i64);
        // Requests whose changes are already stored (a resend) complete with the batch
        // that stored them, which is never after this one: completions keep queue order.
        let (mirrored, local): (Vec<WriteReq>, Vec<WriteReq>) =
            batch.into_iter().partition(|r| r.mirror);
        let mut on_flush: Vec<Done> = Vec::new();
        if !mirrored.is_empty() {
            // The standby gets the batch while the flusher flushes this server's copy.
            let (flushed_tx, flushed) = oneshot::channel();
            on_flush.push(flushed_tx);
            let job = MirrorJob {
                changes: fresh.clone(),
                upto: len,
                dones: mirrored.into_iter().map(|r| r.done).collect(),
                flushed,
            };
            if let Err(mpsc::error::SendError(job)) = self.mirror_tx.send(job).await {
                on_flush.extend(job.dones);
            }
        }
        let local = local.into_iter().map(|r| r.done);
        match self.shared.ack {
            AckMode::Replicated => complete(local.collect(), Ok(())),
            AckMode::Durable => on_flush.extend(local),
        }
        self.shared.state.apply_own(&fresh);
        // Let the mirror (and whoever waits for a completion) go first: on a one-thread
        // runtime what follows would otherwise delay every acknowledgement.
        tokio::task::yield_now().await;
        // Always queued, even with nothing to complete: the flush must follow the write.
        if self.flush_tx.send(on_flush).is_err() {
            tracing::error!("journal flusher has stopped");
        }
        if !fresh.is_empty() {
            if let Err(e) = self.disk.locked().views.append(&records) {
                tracing::warn!(
                    "view file append failed (completed once writes work again; no checkpoint until then): {e}"
                );
            }
        }
    }

    /// Retries the view files that a failed append left owed records, this writer's and
    /// the received feed's (unless that one is busy writing: next time).
    fn repair_views(&mut self) {
        let _ = self.disk.locked().views.repair();
        if let Some(Ok(mut inbound)) = self.inbound.as_ref().map(|i| i.try_lock()) {
            let _ = inbound.repair_views();
        }
    }

    /// Deletes the journal segments the last checkpoint covers that the sync service has
    /// read since (it may have been behind when the checkpoint was taken).
    fn delete_read(&mut self) {
        let read = self
            .shared
            .journal_feed
            .consumed_by(&[(self.shared.cluster, tsn_protocol::coord::NodeKind::Sync)]);
        let Some(read) = read else { return };
        let mut disk = self.disk.locked();
        match disk.journal.delete_through(read.min(self.last.0)) {
            Ok(0) => {}
            Ok(_) => {
                let on_disk = disk.journal.bytes_on_disk();
                self.shared.metrics.journal_bytes.set(on_disk as i64);
            }
            Err(e) => tracing::warn!("deleting journal segments read since the checkpoint: {e}"),
        }
    }

    /// Takes a checkpoint if the logs have grown by `--checkpoint-bytes` (and by the last
    /// checkpoint's size) since the last one. The writer waits only while both logs are
    /// sealed and the state copied; the rest (flushing the view files, writing the
    /// checkpoint, deleting what it covers) runs beside it, one checkpoint at a time.
    async fn maybe_checkpoint(&mut self) {
        if !self.checkpoint_finished().await {
            return;
        }
        let Some(inbound) = self.inbound.clone() else {
            return;
        };
        let journal_len = self.disk.locked().journal.len();
        let received_len = self.shared.received_len.load(Ordering::Relaxed);
        let grown =
            journal_len.saturating_sub(self.sealed.0) + received_len.saturating_sub(self.sealed.1);
        if grown < self.shared.checkpoint_bytes.max(self.last.2) {
            return;
        }
        let started = std::time::Instant::now();
        let (shared, disk) = (self.shared.clone(), self.disk.clone());
        let inb = inbound.clone();
        let sealed = tokio::task::spawn_blocking(move || seal(&shared, &disk, &inb)).await;
        let cp = match sealed {
            Ok(Ok(cp)) => cp,
            Ok(Err(e)) => {
                tracing::error!("checkpoint failed (the logs are kept; retrying later): {e:#}");
                // Not again at once: after as much growth again.
                self.sealed = (journal_len, received_len);
                return;
            }
            Err(e) => {
                tracing::error!("checkpoint panicked: {e}");
                return;
            }
        };
        self.sealed = (cp.journal, cp.other);
        self.shared
            .received_checkpointed
            .store(cp.other, Ordering::Relaxed);
        let (shared, disk) = (self.shared.clone(), self.disk.clone());
        self.finishing = Some(tokio::task::spawn_blocking(move || {
            let done = finish(&shared, &disk, &inbound, cp);
            shared
                .metrics
                .checkpoint_seconds
                .observe(started.elapsed().as_secs_f64());
            done
        }));
    }

    /// Waits for the checkpoint being finished, if it is done (or `wait`); returns
    /// whether none is running any more.
    async fn finish_checkpoint(&mut self, wait: bool) -> bool {
        let Some(handle) = self.finishing.take() else {
            return true;
        };
        if !wait && !handle.is_finished() {
            self.finishing = Some(handle);
            return false;
        }
        match handle.await {
            Ok(Ok(done)) => self.last = done,
            Ok(Err(e)) => {
                tracing::error!("checkpoint failed (the logs are kept; retrying later): {e:#}")
            }
            Err(e) => tracing::error!("checkpoint panicked: {e}"),
        }
        true
    }

    async fn checkpoint_finished(&mut self) -> bool {
        self.finish_checkpoint(false).await
    }
}

/// The first half of a checkpoint, with both logs' writers held still: seals both logs
/// and copies the state they hold.
fn seal(
    shared: &Shared,
    disk: &Mutex<Disk>,
    inbound: &Mutex<super::inbound::Inbound>,
) -> anyhow::Result<Checkpoint> {
    let mut inbound = inbound.locked();
    let mut disk = disk.locked();
    // The logs after the last checkpoint hold what a view file still lacks: none is
    // taken while a file is owed records.
    disk.views
        .repair()
        .context("completing a view file that a write failed")?;
    inbound
        .repair_views()
        .context("completing a view file that a write failed")?;
    let (state, clock) = (shared.state.checkpoint(), shared.clock.now());
    let journal = disk.journal.rotate().context("sealing the journal")?;
    let received = inbound.seal().context("sealing received.data")?;
    Ok(Checkpoint {
        journal,
        other_name: "received".into(),
        other: received,
        clock,
        state,
    })
}

/// The second half, while the writers go on: makes the view files durable (everything
/// written before the seal with them), writes the checkpoint, and deletes what it covers:
/// all of `received.data` before it, and the journal segments before it that the sync
/// service has read. Returns the checkpoint's offsets and size.
fn finish(
    shared: &Shared,
    disk: &Mutex<Disk>,
    inbound: &Mutex<super::inbound::Inbound>,
    cp: Checkpoint,
) -> anyhow::Result<(u64, u64, u64)> {
    crate::views::make_durable(&shared.dir).context("making the view files durable")?;
    let size = checkpoint::save(&shared.dir, &cp)?;
    let (journal, received) = (cp.journal, cp.other);
    inbound.locked().delete_through(received)?;
    let read = shared
        .journal_feed
        .consumed_by(&[(shared.cluster, tsn_protocol::coord::NodeKind::Sync)]);
    let mut disk = disk.locked();
    let deleted = disk
        .journal
        .delete_through(read.unwrap_or(0).min(journal))?;
    let kept = disk.journal.len() - disk.journal.start();
    shared
        .metrics
        .journal_bytes
        .set(disk.journal.bytes_on_disk() as i64);
    drop(disk);
    if kept
        > shared
            .checkpoint_bytes
            .saturating_mul(UNREAD_WARN_INTERVALS)
    {
        tracing::warn!(
            kept_bytes = kept,
            read_by_sync = ?read,
            "journal segments pile up: the sync service has not read them (it is down or far behind); they are kept until it has"
        );
    }
    tracing::debug!(
        journal,
        received,
        bytes = size,
        deleted_journal_bytes = deleted,
        "checkpoint written"
    );
    Ok((journal, received, size))
}

/// Completes requests with one outcome.
pub fn complete(dones: Vec<Done>, outcome: Result<(), StoreError>) {
    for d in dones {
        let _ = d.send(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use tsn_protocol::{Post, PostId};

    /// A writer whose flushes wait until the test lets them through.
    fn writer(
        ack: AckMode,
    ) -> (
        tempfile::TempDir,
        Store,
        mpsc::Receiver<MirrorJob>,
        std::sync::mpsc::SyncSender<()>,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let shared = Arc::new(Shared::for_test(tmp.path(), ack));
        let (journal, _) = SegmentedLog::open(&shared.dir.journal(), 0).unwrap();
        let (mirror_tx, mirror_rx) = mpsc::channel(16);
        let (gate_tx, gate_rx) = std::sync::mpsc::sync_channel::<()>(0);
        let (len, _) = crate::feed::FeedSource::new(journal.segments(), 1, 0);
        let parts = Parts {
            shared,
            journal,
            inbound: None,
            mirror_tx,
            len,
            last: Checkpoint::default(),
        };
        let store = spawn_with(parts, move || {
            gate_rx.recv().map_err(|_| DatastoreError::Io {
                path: "gate".into(),
                source: std::io::Error::other("gate closed"),
            })
        })
        .unwrap();
        (tmp, store, mirror_rx, gate_tx)
    }

    fn post(nonce: u64) -> Vec<Change> {
        vec![Change::Post(Post {
            id: PostId { author: 1, nonce },
            ts_us: 1,
            text: "hi".into(),
        })]
    }

    async fn pending<T>(rx: &mut oneshot::Receiver<T>) -> bool {
        tokio::time::timeout(Duration::from_millis(100), rx)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn stop_returns_once_every_queued_write_is_in_the_view_files() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = Arc::new(Shared::for_test(tmp.path(), AckMode::Replicated));
        let (journal, _) = SegmentedLog::open(&shared.dir.journal(), 0).unwrap();
        let (mirror_tx, _mirror_rx) = mpsc::channel(1024);
        let (len, _) = crate::feed::FeedSource::new(journal.segments(), 1, 0);
        let store = spawn(
            shared.clone(),
            journal,
            None,
            mirror_tx,
            len,
            Checkpoint::default(),
        )
        .unwrap();
        let mut pending = Vec::new();
        for followee in 2..502 {
            let follow = Change::Follow {
                follower: 1,
                followee,
                ts_us: 1,
                active: true,
            };
            pending.push(store.submit(vec![follow], false).await);
        }
        store.stop().await;
        let view = tsn_datastore::read_records(&shared.dir.following(1)).unwrap();
        assert_eq!(
            view.len(),
            500,
            "every journaled change is in the view file"
        );
        assert_eq!(
            tsn_datastore::read_records(&shared.dir.journal())
                .unwrap()
                .len(),
            500
        );
        assert!(matches!(
            store.write(post(9999), false).await,
            Err(StoreError::Stopped)
        ));
    }

    #[tokio::test]
    async fn replicated_completes_once_written_durable_once_flushed() {
        let (_tmp, store, _mirror, gate) = writer(AckMode::Replicated);
        let mut done = store.submit(post(1), false).await;
        assert!(
            !pending(&mut done).await,
            "replicated: complete once written"
        );

        let (_tmp, store, _mirror, gate2) = writer(AckMode::Durable);
        let mut done = store.submit(post(1), false).await;
        assert!(pending(&mut done).await, "durable: not before the flush");
        gate2.send(()).unwrap();
        assert!(done.await.unwrap().is_ok());
        drop(gate);
    }

    #[tokio::test]
    async fn a_mirrored_change_waits_for_the_flush_only_when_asked_to() {
        for mode in [AckMode::Replicated, AckMode::Durable] {
            let (_tmp, store, mut mirror, gate) = writer(mode);
            let mut done = store.submit(post(7), true).await;
            let job = mirror.recv().await.unwrap();
            assert_eq!(
                job.changes.len(),
                1,
                "the standby gets the change before any flush"
            );
            assert!(
                pending(&mut done).await,
                "{mode:?}: not before the standby has it"
            );
            let acked = tokio::spawn(job.acked(mode));
            if mode == AckMode::Durable {
                assert!(
                    pending(&mut done).await,
                    "durable: the standby's ack is not enough"
                );
                gate.send(()).unwrap();
            }
            let outcome = tokio::time::timeout(Duration::from_secs(5), done).await;
            assert!(outcome.unwrap().unwrap().is_ok(), "{mode:?}");
            acked.await.unwrap();
        }
    }

    #[tokio::test]
    async fn serving_alone_waits_for_the_flush_in_either_mode() {
        for mode in [AckMode::Replicated, AckMode::Durable] {
            let (_tmp, store, mut mirror, gate) = writer(mode);
            let mut done = store.submit(post(9), true).await;
            let job = mirror.recv().await.unwrap();
            let finished = tokio::spawn(job.finish());
            assert!(
                pending(&mut done).await,
                "{mode:?}: one copy must be on disk"
            );
            gate.send(()).unwrap();
            assert!(done.await.unwrap().is_ok());
            finished.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_resend_completes_after_the_batch_that_stored_it() {
        let (_tmp, store, mut mirror, gate) = writer(AckMode::Durable);
        let mut first = store.submit(post(3), true).await;
        let job1 = mirror.recv().await.unwrap();
        let mut again = store.submit(post(3), true).await;
        let job2 = mirror.recv().await.unwrap();
        assert!(job2.changes.is_empty(), "stored once");
        let a = tokio::spawn(job1.finish());
        let b = tokio::spawn(job2.finish());
        assert!(pending(&mut first).await && pending(&mut again).await);
        // Let every flush through from now on (the feeder ends with the flusher).
        std::thread::spawn(move || while gate.send(()).is_ok() {});
        assert!(first.await.unwrap().is_ok());
        assert!(tokio::time::timeout(Duration::from_secs(5), again)
            .await
            .unwrap()
            .unwrap()
            .is_ok());
        a.await.unwrap();
        b.await.unwrap();
    }
}
