//! The replicated state machine: what the coordinator group has decided.
//!
//! It lives in memory and is written down as snapshots (`snapshot.json`, replaced
//! atomically and flushed): after a restart it is the last snapshot, and openraft applies
//! the committed entries after it again. Every applied change is published on a watch
//! channel ([`Committed`]), which the watch streams and the read path use.

use crate::Locked;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Entry, TypeConfig};
use crate::coordinator::tables::Decided;

/// The committed state, as published after each change.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// Index of the last entry applied (0 before any).
    pub revision: u64,
    /// What is decided.
    pub decided: Arc<Decided>,
}

/// What a snapshot file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    decided: Decided,
}

#[derive(Debug, Default)]
struct Inner {
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    decided: Decided,
    snapshot: Option<StoredSnapshot>,
    /// Snapshots built so far, for their ids.
    built: u64,
}

/// The state machine: cheap to clone, every clone the same state.
#[derive(Debug, Clone)]
pub struct Machine {
    dir: tsn_datastore::CoordinatorDir,
    inner: Arc<Mutex<Inner>>,
    out: Arc<watch::Sender<Committed>>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_state_machine(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, &e).into()
}

impl Machine {
    /// The state machine of the coordinator directory `dir`: its last snapshot, if any.
    pub fn open(dir: tsn_datastore::CoordinatorDir) -> anyhow::Result<Machine> {
        use anyhow::Context;
        let mut inner = Inner::default();
        match std::fs::read(dir.snapshot()) {
            Ok(bytes) => {
                let snap: StoredSnapshot = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", dir.snapshot().display()))?;
                inner.applied = snap.meta.last_log_id;
                inner.membership = snap.meta.last_membership.clone();
                inner.decided = snap.decided.clone();
                inner.snapshot = Some(snap);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", dir.snapshot().display()))
            }
        }
        let (out, _) = watch::channel(Committed {
            revision: inner.applied.map_or(0, |l| l.index),
            decided: Arc::new(inner.decided.clone()),
        });
        Ok(Machine {
            dir,
            inner: Arc::new(Mutex::new(inner)),
            out: Arc::new(out),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    /// The committed state now, and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Committed> {
        self.out.subscribe()
    }

    /// The committed state now.
    pub fn committed(&self) -> Committed {
        self.out.borrow().clone()
    }

    fn publish(&self, inner: &Inner) {
        let next = Committed {
            revision: inner.applied.map_or(0, |l| l.index),
            decided: Arc::new(inner.decided.clone()),
        };
        self.out.send_if_modified(|cur| {
            let changed = cur.revision != next.revision || cur.decided != next.decided;
            *cur = next;
            changed
        });
    }

    fn save(&self, snap: &StoredSnapshot) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(snap)?;
        self.dir.create().map_err(std::io::Error::other)?;
        tsn_datastore::write_atomic(
            &self.dir.snapshot(),
            &bytes,
            tsn_datastore::Durability::Sync,
        )
        .map_err(std::io::Error::other)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Machine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let snap = {
            let mut inner = self.lock();
            inner.built += 1;
            let id = format!("{}-{}", inner.applied.map_or(0, |l| l.index), inner.built);
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: inner.applied,
                    last_membership: inner.membership.clone(),
                    snapshot_id: id,
                },
                decided: inner.decided.clone(),
            }
        };
        self.save(&snap).map_err(write_err)?;
        let data = serde_json::to_vec(&snap.decided).map_err(write_err)?;
        let meta = snap.meta.clone();
        self.lock().snapshot = Some(snap);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Machine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        StorageError<u64>,
    > {
        let inner = self.lock();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<bool>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for e in entries {
            inner.applied = Some(e.log_id);
            let applied = match &e.payload {
                EntryPayload::Blank => true,
                EntryPayload::Normal(decisions) => inner.decided.apply(decisions),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    true
                }
            };
            out.push(applied);
        }
        self.publish(&inner);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let decided: Decided = serde_json::from_slice(snapshot.get_ref()).map_err(read_err)?;
        let snap = StoredSnapshot {
            meta: meta.clone(),
            decided,
        };
        self.save(&snap).map_err(write_err)?;
        let mut inner = self.lock();
        inner.applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.decided = snap.decided.clone();
        inner.snapshot = Some(snap);
        self.publish(&inner);
        tracing::info!(
            upto = meta.last_log_id.map_or(0, |l| l.index),
            "installed a snapshot of the group's decisions from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let inner = self.lock();
        let Some(snap) = &inner.snapshot else {
            return Ok(None);
        };
        let data = serde_json::to_vec(&snap.decided).map_err(read_err)?;
        Ok(Some(Snapshot {
            meta: snap.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
