//! The journal writer: the one task that writes this server's role directory.
//!
//! Writes are group-committed: every request waiting in the queue joins one append to
//! `journal.data` and one fdatasync, so a burst of posts costs one disk flush. Only then
//! are the changes applied to the in-memory model, pushed to open timelines and handed
//! to the mirror, whose acknowledgement from the standby completes the requests. The
//! per-user view files are appended after the journal without a flush: they are rebuilt
//! from the journal after an unclean shutdown.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tsn_datastore::{AppendLog, Record};
use tsn_protocol::{Change, PostId, UserId, MAX_BATCH_CHANGES};

use super::Shared;
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
    /// The new changes, in journal order.
    pub changes: Vec<Change>,
    /// Requests to complete.
    pub dones: Vec<Done>,
    /// Whether the changes became durable here too: the journal is flushed while the
    /// standby receives them.
    pub local: oneshot::Receiver<Result<(), StoreError>>,
}

impl MirrorJob {
    /// Completes the requests once the local flush is done, with its outcome.
    pub async fn finish(self) {
        let outcome = self.local.await.unwrap_or(Err(StoreError::Stopped));
        complete(self.dones, outcome);
    }
}

/// Handle to the writer.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<WriteReq>,
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
        if let Err(mpsc::error::SendError(req)) = self.tx.send(req).await {
            let _ = req.done.send(Err(StoreError::Stopped));
        }
        rx
    }

    /// Queues and waits.
    pub async fn write(&self, changes: Vec<Change>, mirror: bool) -> Result<(), StoreError> {
        self.submit(changes, mirror)
            .await
            .await
            .unwrap_or(Err(StoreError::Stopped))
    }
}

/// Starts the writer task.
pub fn spawn(shared: Arc<Shared>, journal: AppendLog, mirror_tx: mpsc::Sender<MirrorJob>) -> Store {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let writer = Writer {
        views: Views::new(shared.dir.clone(), Side::Server),
        shared,
        journal,
        mirror_tx,
    };
    tokio::spawn(writer.run(rx));
    Store { tx }
}

struct Writer {
    shared: Arc<Shared>,
    journal: AppendLog,
    views: Views,
    mirror_tx: mpsc::Sender<MirrorJob>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<WriteReq>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let mut count = batch[0].changes.len();
            while count < MAX_BATCH_CHANGES {
                match rx.try_recv() {
                    Ok(req) => {
                        count += req.changes.len();
                        batch.push(req);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
        }
        tracing::debug!("journal writer stopped");
    }

    async fn commit(&mut self, batch: Vec<WriteReq>) {
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
                    Change::Follow { .. } => true,
                })
                .cloned()
                .collect()
        };
        let (mirrored, local): (Vec<WriteReq>, Vec<WriteReq>) =
            batch.into_iter().partition(|r| r.mirror);
        // The same lines go to the journal now and to the view files after the flush.
        let records: Vec<Record> = fresh.iter().cloned().map(Record::Change).collect();
        if !fresh.is_empty() {
            if let Err(e) = self.journal.append(&records) {
                self.refuse(mirrored.into_iter().chain(local), &e);
                return;
            }
        }
        // The standby gets the batch while this server flushes its own copy; the requests
        // complete when both are durable (see `MirrorJob::local`).
        let (local_tx, local_rx) = oneshot::channel();
        if !mirrored.is_empty() {
            let job = MirrorJob {
                changes: fresh.clone(),
                dones: mirrored.into_iter().map(|r| r.done).collect(),
                local: local_rx,
            };
            if let Err(mpsc::error::SendError(job)) = self.mirror_tx.send(job).await {
                complete(job.dones, Ok(()));
            }
        }
        if !fresh.is_empty() {
            if let Err(e) = self.journal.sync() {
                let _ = local_tx.send(Err(StoreError::Journal(e.to_string())));
                self.refuse(local.into_iter(), &e);
                return;
            }
        }
        let _ = local_tx.send(Ok(()));
        if !fresh.is_empty() {
            let entries: Vec<(UserId, tsn_protocol::Post)> = {
                let mut model = self.shared.model.lock().unwrap_or_else(|e| e.into_inner());
                fresh.iter().filter_map(|c| model.apply_own(c)).collect()
            };
            self.shared.publish(entries);
            if let Err(e) = self.views.append(&records) {
                tracing::warn!(
                    "view file append failed (rebuilt from the journal at next start): {e}"
                );
            }
        }
        complete(local.into_iter().map(|r| r.done).collect(), Ok(()));
    }

    fn refuse(&self, reqs: impl Iterator<Item = WriteReq>, e: &tsn_datastore::DatastoreError) {
        tracing::error!(path = %self.journal.path().display(), "journal write failed, changes refused: {e}");
        let err = StoreError::Journal(e.to_string());
        for req in reqs {
            let _ = req.done.send(Err(err.clone()));
        }
    }
}

/// Completes requests with one outcome.
pub fn complete(dones: Vec<Done>, outcome: Result<(), StoreError>) {
    for d in dones {
        let _ = d.send(outcome.clone());
    }
}
