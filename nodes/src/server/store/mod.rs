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
//!
//! # Layout
//! - here: the handle ([`Store`]), its requests, and what the writer works with ([`Env`]).
//! - `writer`: the writer task (group commit, hand-off, view files) and its flusher.
//! - `checkpoints`: when a checkpoint is due, and taking it in two halves.

mod checkpoints;
mod writer;

pub use checkpoints::{CheckpointTrigger, UNREAD_WARN_INTERVALS};
pub use writer::{spawn, Hurry, Parts};

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tsn_protocol::Change;

use super::model::State;
use super::options::AckMode;
use super::role::Node;
use crate::feed::FeedSource;
use crate::hlc::Hlc;
use crate::metrics::Metrics;

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
    /// Tells the flusher when the requests wait for that flush.
    pub hurry: Hurry,
}

impl MirrorJob {
    /// Completes the requests once the local flush is done, with its outcome: how a job
    /// ends when there is no standby, or when the standby has it and the mode is
    /// [`AckMode::Durable`].
    pub async fn finish(self) {
        self.hurry.now();
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

/// What the two writers of the role directory (the journal writer here and the
/// received feed's writer, [`crate::server::inbound`]) both work with.
#[derive(Debug, Clone)]
pub struct Data {
    /// This server.
    pub node: Node,
    /// What it knows, in memory: what either writer stores is applied to it.
    pub state: Arc<State>,
    /// Timestamps (advanced past every change stored or received).
    pub clock: Arc<Hlc>,
    /// The journal, as a feed for the sync service (what it has read may be deleted;
    /// the view files are rebuilt from it when the sync service's journal is begun anew).
    pub journal_feed: FeedSource,
    /// When a checkpoint is due.
    pub trigger: Arc<CheckpointTrigger>,
}

/// What the journal writer works with besides its logs.
#[derive(Debug, Clone)]
pub struct Env {
    /// What it shares with the received feed's writer.
    pub data: Data,
    /// What an operator sees.
    pub metrics: Arc<Metrics>,
    /// When requests complete.
    pub ack: AckMode,
}

impl Env {
    /// How far this cluster's sync service has read the journal.
    fn read_by_sync(&self) -> Option<u64> {
        let sync = (self.data.node.cluster, tsn_protocol::coord::NodeKind::Sync);
        self.data.journal_feed.consumed_by(&[sync])
    }

    /// A standby primary of cluster 1 whose datastore is under `root`.
    #[cfg(test)]
    pub fn for_test(root: &std::path::Path, ack: AckMode) -> Env {
        let dir =
            tsn_datastore::Datastore::new(root).role(1, tsn_protocol::coord::NodeKind::Primary);
        dir.create().expect("role directory");
        Env {
            data: Data {
                journal_feed: FeedSource::new(tsn_datastore::Segments::single(dir.journal()), 1, 0)
                    .1,
                node: Node {
                    cluster: 1,
                    kind: tsn_protocol::coord::NodeKind::Primary,
                    dir,
                },
                state: Arc::new(State::default()),
                clock: Arc::new(Hlc::new(std::time::Duration::from_millis(500))),
                trigger: Arc::new(CheckpointTrigger::new(u64::MAX, 0, 0)),
            },
            metrics: Metrics::new(crate::metrics::Role::Server),
            ack,
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
    use crate::checkpoint::Checkpoint;
    use tsn_datastore::{DatastoreError, SegmentedLog};
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
        let (mirror_tx, mirror_rx) = mpsc::channel(16);
        let (gate_tx, gate_rx) = std::sync::mpsc::sync_channel::<()>(0);
        let parts = parts(tmp.path(), ack, mirror_tx);
        let (store, _task) = writer::spawn_with(parts, move || {
            gate_rx.recv().map_err(|_| DatastoreError::Io {
                path: "gate".into(),
                source: std::io::Error::other("gate closed"),
            })
        })
        .unwrap();
        (tmp, store, mirror_rx, gate_tx)
    }

    /// A writer's parts: a new journal under `root`, no received feed.
    fn parts(root: &std::path::Path, ack: AckMode, mirror_tx: mpsc::Sender<MirrorJob>) -> Parts {
        let env = Env::for_test(root, ack);
        let (journal, _) = SegmentedLog::open(&env.data.node.dir.journal(), 0).unwrap();
        let (len, _) = crate::feed::FeedSource::new(journal.segments(), 1, 0);
        Parts {
            env,
            journal,
            inbound: None,
            mirror_tx,
            len,
            last: Checkpoint::default(),
        }
    }

    /// A new writer in `mode` with a mirrored post submitted, and the job the mirror
    /// got for it.
    async fn mirrored(
        mode: AckMode,
        nonce: u64,
    ) -> (
        tempfile::TempDir,
        Store,
        oneshot::Receiver<Result<(), StoreError>>,
        MirrorJob,
        std::sync::mpsc::SyncSender<()>,
    ) {
        let (tmp, store, mut mirror, gate) = writer(mode);
        let done = store.submit(post(nonce), true).await;
        let job = mirror.recv().await.unwrap();
        (tmp, store, done, job, gate)
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
        let (mirror_tx, _mirror_rx) = mpsc::channel(1024);
        let parts = parts(tmp.path(), AckMode::Replicated, mirror_tx);
        let dir = parts.env.data.node.dir.clone();
        let (store, _task) = spawn(parts).unwrap();
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
        let view = tsn_datastore::read_records(&dir.following(1)).unwrap();
        assert_eq!(
            view.len(),
            500,
            "every journaled change is in the view file"
        );
        assert_eq!(
            tsn_datastore::read_records(&dir.journal()).unwrap().len(),
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
            let (_tmp, _store, mut done, job, gate) = mirrored(mode, 7).await;
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
            let (_tmp, _store, mut done, job, gate) = mirrored(mode, 9).await;
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
