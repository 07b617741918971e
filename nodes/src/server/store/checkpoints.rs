//! Checkpoints: when one is due ([`CheckpointTrigger`], told by the received feed's
//! writer and the journal writer), and taking it in two halves: the writer waits only
//! while both logs are sealed and the state copied.

use crate::Locked;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;

use super::writer::{Disk, Writer};
use super::Env;
use crate::checkpoint::{self, Checkpoint};

/// How often the writer checks, when idle, whether the received feed has grown enough for
/// a checkpoint.
pub(super) const CHECKPOINT_CHECK: Duration = Duration::from_secs(1);

/// A journal that holds this many checkpoint intervals that the sync service has not read
/// is reported at each checkpoint: nothing it has not read is deleted, so a sync service
/// that stays away makes the journal grow.
pub const UNREAD_WARN_INTERVALS: u64 = 16;

/// When a checkpoint is due: the logs have grown by `--checkpoint-bytes` since the last.
/// The received feed's writer says how long `received.data` is; the journal writer
/// says what each checkpoint covers.
#[derive(Debug)]
pub struct CheckpointTrigger {
    every: u64,
    /// The logical length of `received.data`.
    received_len: AtomicU64,
    /// The `received.data` offset the last checkpoint covers.
    covered: AtomicU64,
    due: Notify,
}

impl CheckpointTrigger {
    /// A checkpoint every `every` bytes; `received.data` is `received_len` long, and the
    /// last checkpoint covers it up to `covered`.
    pub fn new(every: u64, received_len: u64, covered: u64) -> CheckpointTrigger {
        CheckpointTrigger {
            every,
            received_len: AtomicU64::new(received_len),
            covered: AtomicU64::new(covered),
            due: Notify::new(),
        }
    }

    /// `--checkpoint-bytes`.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// The logical length of `received.data`.
    pub fn received_len(&self) -> u64 {
        self.received_len.load(Ordering::Relaxed)
    }

    /// `received.data` is `len` long now; the writer is told once it has grown by
    /// `--checkpoint-bytes` since the last checkpoint.
    pub fn received_grew(&self, len: u64) {
        if len == self.received_len.swap(len, Ordering::Relaxed) {
            return;
        }
        if len.saturating_sub(self.covered.load(Ordering::Relaxed)) >= self.every {
            self.due.notify_one();
        }
    }

    fn covered(&self, offset: u64) {
        self.covered.store(offset, Ordering::Relaxed);
    }

    /// Completes when the received feed's writer says a checkpoint is due.
    pub async fn due(&self) {
        self.due.notified().await;
    }
}

impl Writer {
    /// Takes a checkpoint if the logs have grown by `--checkpoint-bytes` (and by the last
    /// checkpoint's size) since the last one. The writer waits only while both logs are
    /// sealed and the state copied; the rest (flushing the view files, writing the
    /// checkpoint, deleting what it covers) runs beside it, one checkpoint at a time.
    pub(super) async fn maybe_checkpoint(&mut self) {
        if !self.checkpoint_finished().await {
            return;
        }
        let Some(inbound) = self.inbound.clone() else {
            return;
        };
        let journal_len = self.disk.locked().journal.len();
        let received_len = self.env.data.trigger.received_len();
        let grown =
            journal_len.saturating_sub(self.sealed.0) + received_len.saturating_sub(self.sealed.1);
        if grown < self.env.data.trigger.every().max(self.last.2) {
            return;
        }
        let started = std::time::Instant::now();
        let (env, disk) = (self.env.clone(), self.disk.clone());
        let inb = inbound.clone();
        let sealed = tokio::task::spawn_blocking(move || seal(&env, &disk, &inb)).await;
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
        self.env.data.trigger.covered(cp.other);
        let (env, disk) = (self.env.clone(), self.disk.clone());
        self.finishing = Some(tokio::task::spawn_blocking(move || {
            let done = finish(&env, &disk, &inbound, cp);
            env.metrics
                .checkpoint_seconds
                .observe(started.elapsed().as_secs_f64());
            done
        }));
    }

    /// Waits for the checkpoint being finished, if it is done (or `wait`); returns
    /// whether none is running any more.
    pub(super) async fn finish_checkpoint(&mut self, wait: bool) -> bool {
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
    env: &Env,
    disk: &Mutex<Disk>,
    inbound: &Mutex<crate::server::inbound::Inbound>,
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
    let (state, clock) = (env.data.state.checkpoint(), env.data.clock.now());
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
    env: &Env,
    disk: &Mutex<Disk>,
    inbound: &Mutex<crate::server::inbound::Inbound>,
    cp: Checkpoint,
) -> anyhow::Result<(u64, u64, u64)> {
    crate::views::make_durable(&env.data.node.dir).context("making the view files durable")?;
    let size = checkpoint::save(&env.data.node.dir, &cp)?;
    let (journal, received) = (cp.journal, cp.other);
    inbound.locked().delete_through(received)?;
    let read = env.read_by_sync();
    let mut disk = disk.locked();
    let deleted = disk
        .journal
        .delete_through(read.unwrap_or(0).min(journal))?;
    let kept = disk.journal.len() - disk.journal.start();
    env.metrics
        .journal_bytes
        .set(disk.journal.bytes_on_disk() as i64);
    drop(disk);
    if kept
        > env
            .data
            .trigger
            .every()
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
