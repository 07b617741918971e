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

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tsn_datastore::{AppendLog, DatastoreError, Record};
use tsn_protocol::{Change, PostId, UserId, MAX_BATCH_CHANGES};

use super::{AckMode, Shared};
use crate::feed::FeedLen;
use crate::views::{Side, Views};

/// Requests waiting for the writer. A full queue makes callers wait (backpressure).
pub const WRITE_QUEUE: usize = 4096;

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
    /// Finish everything queued before, then stop; answered once stopped.
    Stop(oneshot::Sender<()>),
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
    /// then stops it; returns once it has stopped. Later writes fail with
    /// [`StoreError::Stopped`].
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Queues and waits.
    pub async fn write(&self, changes: Vec<Change>, mirror: bool) -> Result<(), StoreError> {
        self.submit(changes, mirror)
            .await
            .await
            .unwrap_or(Err(StoreError::Stopped))
    }
}

/// Starts the writer task and its flusher thread. `len` tells the journal's feed how far
/// the journal is written.
pub fn spawn(
    shared: Arc<Shared>,
    journal: AppendLog,
    mirror_tx: mpsc::Sender<MirrorJob>,
    len: FeedLen,
) -> anyhow::Result<Store> {
    let flusher = journal.flusher()?;
    spawn_with(shared, journal, mirror_tx, len, move || flusher.sync())
}

/// [`spawn`] with the flush the flusher thread runs.
fn spawn_with(
    shared: Arc<Shared>,
    journal: AppendLog,
    mirror_tx: mpsc::Sender<MirrorJob>,
    len: FeedLen,
    flush: impl FnMut() -> Result<(), DatastoreError> + Send + 'static,
) -> anyhow::Result<Store> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let (flush_tx, flush_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("journal-flush".into())
        .spawn(move || flush_loop(flush, flush_rx))?;
    let writer = Writer {
        views: Views::new(shared.dir.clone(), Side::Server),
        shared,
        journal,
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

struct Writer {
    shared: Arc<Shared>,
    journal: AppendLog,
    len: FeedLen,
    views: Views,
    mirror_tx: mpsc::Sender<MirrorJob>,
    flush_tx: std::sync::mpsc::Sender<FlushReq>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut stopped = None;
        while let Some(first) = rx.recv().await {
            let first = match first {
                Msg::Write(req) => req,
                Msg::Stop(done) => {
                    stopped = Some(done);
                    break;
                }
            };
            let mut batch = vec![first];
            let mut count = batch[0].changes.len();
            while count < MAX_BATCH_CHANGES {
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
        }
        // Refuse what is still queued, and drop the flusher's channel so it stops.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Write(req) => {
                    let _ = req.done.send(Err(StoreError::Stopped));
                }
                Msg::Stop(done) => {
                    let _ = done.send(());
                }
            }
        }
        drop(self);
        if let Some(done) = stopped {
            let _ = done.send(());
        }
        tracing::debug!("journal writer stopped");
    }

    async fn commit(&mut self, batch: Vec<WriteReq>) {
        // Mirrored and exchanged changes carry the other server's timestamps.
        for c in batch.iter().flat_map(|r| r.changes.iter()) {
            self.shared.clock.observe_change(c);
        }
        // Keep only what is new to the model, and new within this batch.
        let fresh: Vec<Change> = {
            let model = self.shared.model.lock().unwrap_or_else(|e| e.into_inner());
            let mut posts: HashSet<PostId> = HashSet::new();
            let mut users: HashSet<UserId> = HashSet::new();
            batch
                .iter()
                .flat_map(|r| r.changes.iter())
                .filter(|c| model.is_new(c))
                .filter(|c| match c {
                    Change::Post(p) => posts.insert(p.id),
                    Change::User { user } => users.insert(*user),
                    Change::Follow { .. } | Change::Key { .. } => true,
                })
                .cloned()
                .collect()
        };
        // The same lines go to the journal now and to the view files after the hand-off.
        let records: Vec<Record> = fresh.iter().cloned().map(Record::Change).collect();
        if let Err(e) = self.journal.append(&records) {
            tracing::error!(path = %self.journal.path().display(), "journal write failed, changes refused: {e}");
            complete(
                batch.into_iter().map(|r| r.done).collect(),
                Err(StoreError::Journal(e.to_string())),
            );
            return;
        }
        self.len.set(self.journal.len());
        self.shared
            .metrics
            .journal_bytes
            .set(self.journal.len() as i64);
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
        if !fresh.is_empty() {
            let mut model = self.shared.model.lock().unwrap_or_else(|e| e.into_inner());
            for c in &fresh {
                model.apply_own(c);
            }
        }
        // Let the mirror (and whoever waits for a completion) go first: on a one-thread
        // runtime what follows would otherwise delay every acknowledgement.
        tokio::task::yield_now().await;
        // Always queued, even with nothing to complete: the flush must follow the write.
        if self.flush_tx.send(on_flush).is_err() {
            tracing::error!("journal flusher has stopped");
        }
        if !fresh.is_empty() {
            if let Err(e) = self.views.append(&records) {
                tracing::warn!(
                    "view file append failed (rebuilt from the journal at next start): {e}"
                );
            }
        }
    }
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
        let (journal, _) = AppendLog::open(&shared.dir.journal()).unwrap();
        let (mirror_tx, mirror_rx) = mpsc::channel(16);
        let (gate_tx, gate_rx) = std::sync::mpsc::sync_channel::<()>(0);
        let (len, _) = crate::feed::FeedSource::new(shared.dir.journal(), 1, 0);
        let store = spawn_with(shared, journal, mirror_tx, len, move || {
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
        let (journal, _) = AppendLog::open(&shared.dir.journal()).unwrap();
        let (mirror_tx, _mirror_rx) = mpsc::channel(1024);
        let (len, _) = crate::feed::FeedSource::new(shared.dir.journal(), 1, 0);
        let store = spawn(shared.clone(), journal, mirror_tx, len).unwrap();
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
