//! The writer task: group commit into the journal, the hand-off to the mirror, the
//! in-memory model and the view files; and the flusher thread behind it.

use crate::Locked;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tsn_datastore::{DatastoreError, Record, SegmentedLog};

use super::checkpoints::CHECKPOINT_CHECK;
use super::{
    complete, AckMode, Done, Env, MirrorJob, Msg, Store, StoreError, WriteReq,
    GROUP_COMMIT_CHANGES, WRITE_QUEUE,
};
use crate::checkpoint::{self, Checkpoint};
use crate::feed::FeedLen;
use crate::server::inbound::InboundHandle;
use crate::views::{Side, Views};

/// Starts the writer task and its flusher thread. The task ends once [`Store::stop`] has
/// been answered (or every handle is dropped); its owner joins it after that.
pub fn spawn(parts: Parts) -> anyhow::Result<(Store, JoinHandle<()>)> {
    let flusher = parts.journal.flusher();
    spawn_with(parts, move || flusher.sync())
}

/// What the writer is made of.
#[derive(Debug)]
pub struct Parts {
    /// What it works with besides its logs.
    pub env: Env,
    /// The journal, open for appending.
    pub journal: SegmentedLog,
    /// The received feed's writer, held still by checkpoints (none: no checkpoints).
    pub inbound: Option<InboundHandle>,
    /// Where committed batches go to the mirror.
    pub mirror_tx: mpsc::Sender<MirrorJob>,
    /// Tells the journal's feed how far the journal is written.
    pub len: FeedLen,
    /// The checkpoint the server started from.
    pub last: Checkpoint,
}

/// [`spawn`] with the flush the flusher thread runs.
pub(super) fn spawn_with(
    parts: Parts,
    flush: impl FnMut() -> Result<(), DatastoreError> + Send + 'static,
) -> anyhow::Result<(Store, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let (flush_tx, flush_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("journal-flush".into())
        .spawn(move || flush_loop(flush, flush_rx))?;
    let dir = &parts.env.data.node.dir;
    let last_size = std::fs::metadata(checkpoint::path(dir)).map_or(0, |m| m.len());
    let views = Views::new(dir.clone(), Side::Server);
    let (journal, other) = (parts.last.journal, parts.last.other);
    let writer = Writer {
        disk: Arc::new(Mutex::new(Disk {
            journal: parts.journal,
            views,
        })),
        env: parts.env,
        inbound: parts.inbound,
        sealed: (journal, other),
        last: (journal, other, last_size),
        finishing: None,
        len: parts.len,
        mirror_tx: parts.mirror_tx,
        flush_tx,
    };
    let task = tokio::spawn(writer.run(rx));
    Ok((Store { tx }, task))
}

/// What the flusher thread is sent.
#[derive(Debug)]
pub(super) enum FlushReq {
    /// Flush everything appended before this request, then complete `dones`. `waited`:
    /// an acknowledgement waits for this flush (`--ack durable`).
    After { dones: Vec<Done>, waited: bool },
    /// An acknowledgement now waits for the flush of what was appended before (a mirror
    /// job that no standby took: [`MirrorJob::finish`]).
    Hurry,
}

/// Tells the flusher thread that an acknowledgement waits for its next flush.
#[derive(Debug, Clone)]
pub struct Hurry(std::sync::mpsc::Sender<FlushReq>);

impl Hurry {
    /// The next flush keeps [`crate::FLUSH_PACE`], not [`crate::FLUSH_BEHIND_PACE`].
    pub fn now(&self) {
        // A stopped flusher completes nothing more; its waiters learn it on their own.
        let _ = self.0.send(FlushReq::Hurry);
    }
}

/// What the flusher has gathered for its next flush.
#[derive(Debug, Default)]
struct Gathered {
    dones: Vec<Done>,
    /// Something was appended since the last flush.
    owed: bool,
    /// An acknowledgement waits for the next flush.
    waited: bool,
}

impl Gathered {
    fn take(&mut self, req: FlushReq) {
        match req {
            FlushReq::After { dones, waited } => {
                self.dones.extend(dones);
                self.owed = true;
                self.waited |= waited;
            }
            FlushReq::Hurry => self.waited = true,
        }
    }
}

/// The flusher thread: one flush for every request that queued up during the last and
/// the moment after it, so under load each flush covers many batches, and an idle
/// journal is flushed as soon as it is written. The moment is [`crate::FLUSH_PACE`] when
/// an acknowledgement waits for the flush, and [`crate::FLUSH_BEHIND_PACE`] when none
/// does (`--ack replicated` with the standby answering).
fn flush_loop(
    mut flush: impl FnMut() -> Result<(), DatastoreError>,
    rx: std::sync::mpsc::Receiver<FlushReq>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut pace = crate::FlushPace::default();
    let mut next = Gathered::default();
    'run: loop {
        while !next.owed {
            match rx.recv() {
                Ok(req) => next.take(req),
                Err(_) => break 'run,
            }
        }
        loop {
            let moment = if next.waited {
                crate::FLUSH_PACE
            } else {
                crate::FLUSH_BEHIND_PACE
            };
            let wait = pace.wait_for(moment);
            if wait.is_zero() {
                break;
            }
            match rx.recv_timeout(wait) {
                Ok(req) => next.take(req),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        pace.begin();
        while let Ok(req) = rx.try_recv() {
            next.take(req);
        }
        let outcome = flush().map_err(|e| {
            tracing::error!("journal flush failed: {e}");
            StoreError::Journal(e.to_string())
        });
        complete(std::mem::take(&mut next).dones, outcome);
    }
    tracing::debug!("journal flusher stopped");
}

/// The journal and the view files of this server's own changes.
pub(super) struct Disk {
    pub(super) journal: SegmentedLog,
    pub(super) views: Views,
}

pub(super) struct Writer {
    pub(super) env: Env,
    /// Locked only between awaits, and by a checkpoint (on a blocking thread, while the
    /// writer waits for it).
    pub(super) disk: Arc<Mutex<Disk>>,
    pub(super) inbound: Option<InboundHandle>,
    /// Where the logs were last sealed for a checkpoint: journal, received.
    pub(super) sealed: (u64, u64),
    /// The last checkpoint written: journal offset, received offset, size in bytes.
    pub(super) last: (u64, u64, u64),
    /// The second half of a checkpoint, running off the writer's path.
    pub(super) finishing: Option<tokio::task::JoinHandle<anyhow::Result<(u64, u64, u64)>>>,
    pub(super) len: FeedLen,
    pub(super) mirror_tx: mpsc::Sender<MirrorJob>,
    pub(super) flush_tx: std::sync::mpsc::Sender<FlushReq>,
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
                () = self.env.data.trigger.due() => {
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
            self.env.data.clock.observe_change(c);
        }
        // Keep only what is new to the model, and new within this batch.
        let fresh = self
            .env
            .data
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
        self.env.metrics.journal_bytes.set(on_disk as i64);
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
                hurry: Hurry(self.flush_tx.clone()),
            };
            if let Err(mpsc::error::SendError(job)) = self.mirror_tx.send(job).await {
                on_flush.extend(job.dones);
            }
        }
        let local = local.into_iter().map(|r| r.done);
        match self.env.ack {
            AckMode::Replicated => complete(local.collect(), Ok(())),
            AckMode::Durable => on_flush.extend(local),
        }
        self.env.data.state.apply_own(&fresh);
        // Let the mirror (and whoever waits for a completion) go first: on a one-thread
        // runtime what follows would otherwise delay every acknowledgement.
        tokio::task::yield_now().await;
        // Always queued, even with nothing to complete: the flush must follow the write.
        let waited = self.env.ack == AckMode::Durable;
        let req = FlushReq::After {
            dones: on_flush,
            waited,
        };
        if self.flush_tx.send(req).is_err() {
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
        let read = self.env.read_by_sync();
        let Some(read) = read else { return };
        let mut disk = self.disk.locked();
        match disk.journal.delete_through(read.min(self.last.0)) {
            Ok(0) => {}
            Ok(_) => {
                let on_disk = disk.journal.bytes_on_disk();
                self.env.metrics.journal_bytes.set(on_disk as i64);
            }
            Err(e) => tracing::warn!("deleting journal segments read since the checkpoint: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;

    /// Runs a flusher that notes when each flush began; sends `reqs`, one every `every`.
    fn flushes(reqs: Vec<FlushReq>, every: Duration) -> Vec<Instant> {
        let at = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let noted = at.clone();
        let flusher = std::thread::spawn(move || {
            flush_loop(
                move || {
                    noted.lock().unwrap().push(Instant::now());
                    Ok(())
                },
                rx,
            );
        });
        for req in reqs {
            tx.send(req).unwrap();
            std::thread::sleep(every);
        }
        // Long enough for the last flush to come of itself (a stopped writer is flushed
        // at once).
        std::thread::sleep(3 * crate::FLUSH_BEHIND_PACE);
        drop(tx);
        flusher.join().unwrap();
        let at = at.lock().unwrap().clone();
        at
    }

    fn after(waited: bool) -> (FlushReq, oneshot::Receiver<Result<(), StoreError>>) {
        let (done, rx) = oneshot::channel();
        let req = FlushReq::After {
            dones: vec![done],
            waited,
        };
        (req, rx)
    }

    #[test]
    fn a_flush_nobody_waits_for_comes_at_most_every_behind_pace_and_completes_all() {
        let (reqs, mut dones): (Vec<_>, Vec<_>) = (0..40).map(|_| after(false)).unzip();
        let at = flushes(reqs, Duration::from_millis(1));
        // The first is at once (the journal was idle); the others keep the moment.
        assert!(at.len() >= 2, "{} flushes", at.len());
        for w in at.windows(2) {
            assert!(w[1] - w[0] >= crate::FLUSH_BEHIND_PACE, "{:?}", w[1] - w[0]);
        }
        for d in &mut dones {
            assert!(matches!(d.try_recv(), Ok(Ok(()))));
        }
    }

    #[test]
    fn a_waited_flush_keeps_the_short_pace_and_a_hurry_alone_flushes_nothing() {
        // A hurry with nothing appended is remembered, not a flush of its own.
        let (req, mut done) = after(true);
        let at = flushes(vec![FlushReq::Hurry, req], Duration::from_millis(1));
        assert_eq!(at.len(), 1);
        assert!(matches!(done.try_recv(), Ok(Ok(()))));
        let (reqs, _dones): (Vec<_>, Vec<_>) = (0..20).map(|_| after(true)).unzip();
        for w in flushes(reqs, Duration::from_millis(1)).windows(2) {
            assert!(w[1] - w[0] >= crate::FLUSH_PACE, "{:?}", w[1] - w[0]);
        }
    }
}
