//! The Raft log and vote of one coordinator, on disk.
//!
//! One file, `raft.log` in the coordinator's directory: one JSON object a line, each an
//! operation (a vote, the committed index, entries appended, a truncation, a purge), so
//! every write is an append and replaying the file in order rebuilds the log. A torn last
//! line (a crash in the middle of a write) is dropped when the file is read. Appends are
//! flushed (fdatasync) before openraft is told they are stored; a vote is flushed before
//! it is returned.
//!
//! The file does not grow with history: after a purge (entries folded into a snapshot) it
//! is written anew with only what is still needed, through a temporary file and a rename,
//! once what it holds is more than [`REWRITE_SLACK`] lines beyond that.

use crate::Locked;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::{Entry, TypeConfig};

/// Lines the file may hold beyond what is needed before it is written anew.
pub const REWRITE_SLACK: usize = 256;

/// One line of the file.
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Vote(Vote<u64>),
    Committed(Option<LogId<u64>>),
    Append(Entry),
    /// Entries from this index on are gone.
    Truncate(u64),
    /// Entries up to this id are gone (they are in a snapshot).
    Purge(LogId<u64>),
}

#[derive(Debug, Default)]
struct Inner {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    entries: BTreeMap<u64, Entry>,
    /// Lines in the file.
    lines: usize,
    file: Option<File>,
}

/// The log store: cheap to clone, every clone the same log.
#[derive(Debug, Clone)]
pub struct LogStore {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<LogStore> {
        use anyhow::Context;
        let cdir = tsn_datastore::CoordinatorDir::new(dir);
        cdir.create()
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = cdir.raft_log();
        let mut inner = Inner::default();
        let mut good_len = 0u64;
        if let Ok(f) = File::open(&path) {
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader
                    .read_line(&mut line)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                let op: Op = match serde_json::from_str(line.trim_end()) {
                    Ok(op) => op,
                    // A torn line is the last thing written before a crash; what follows
                    // it, if anything, was never acknowledged.
                    Err(_) => break,
                };
                inner.replay(op);
                inner.lines += 1;
                good_len += n as u64;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.metadata()?.len() != good_len {
            tracing::warn!(path = %path.display(), "dropped a torn last line of the Raft log");
            file.set_len(good_len)?;
        }
        inner.file = Some(file);
        Ok(LogStore {
            path,
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    /// Whether this member has never taken part in a group (no vote, no entry).
    pub fn pristine(&self) -> bool {
        let inner = self.lock();
        inner.vote.is_none() && inner.entries.is_empty() && inner.purged.is_none()
    }

    /// Writes `op` as a line (not flushed).
    fn write(&self, inner: &mut Inner, op: &Op) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(op)?;
        line.push(b'\n');
        let file = inner
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("raft log closed"))?;
        file.write_all(&line)?;
        inner.lines += 1;
        Ok(())
    }

    /// Writes the file anew with only what is needed, when it has grown past that.
    fn compact(&self, inner: &mut Inner) -> std::io::Result<()> {
        let needed = inner.entries.len() + 3;
        if inner.lines <= needed + REWRITE_SLACK {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(needed);
        if let Some(v) = inner.vote {
            ops.push(Op::Vote(v));
        }
        ops.push(Op::Committed(inner.committed));
        if let Some(p) = inner.purged {
            ops.push(Op::Purge(p));
        }
        ops.extend(inner.entries.values().cloned().map(Op::Append));
        let mut bytes = Vec::new();
        for op in &ops {
            serde_json::to_writer(&mut bytes, op)?;
            bytes.push(b'\n');
        }
        tsn_datastore::write_atomic(&self.path, &bytes, tsn_datastore::Durability::Sync)
            .map_err(std::io::Error::other)?;
        inner.file = Some(OpenOptions::new().append(true).open(&self.path)?);
        inner.lines = ops.len();
        Ok(())
    }

    /// Flushes what was written so far.
    fn flush(inner: &Inner) -> std::io::Result<()> {
        match &inner.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Index of the last entry known committed (0 before any).
    pub fn committed_index(&self) -> u64 {
        self.lock().committed.map_or(0, |l| l.index)
    }

    /// Bytes of the file, for tests and the log.
    pub fn bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

impl Inner {
    fn replay(&mut self, op: Op) {
        match op {
            Op::Vote(v) => self.vote = Some(v),
            Op::Committed(c) => self.committed = c,
            Op::Append(e) => {
                self.entries.insert(e.log_id.index, e);
            }
            Op::Truncate(from) => {
                self.entries.split_off(&from);
            }
            Op::Purge(upto) => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.purged = Some(upto);
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        self.write(&mut inner, &Op::Vote(*vote)).map_err(io_err)?;
        Self::flush(&inner).map_err(io_err)?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Not flushed: a committed index that is lost is learned again from the leader
        // (or, alone, from the entries, which are flushed).
        let mut inner = self.lock();
        self.write(&mut inner, &Op::Committed(committed))
            .map_err(io_err)?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let file = {
            let mut inner = self.lock();
            for e in entries {
                self.write(&mut inner, &Op::Append(e.clone()))
                    .map_err(io_err)?;
                inner.entries.insert(e.log_id.index, e);
            }
            inner
                .file
                .as_ref()
                .map(File::try_clone)
                .transpose()
                .map_err(io_err)?
        };
        // The flush runs off the runtime: the coordinator keeps answering meanwhile.
        tokio::task::spawn_blocking(move || {
            let r = file.map_or(Ok(()), |f| f.sync_data());
            callback.log_io_completed(r);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        self.write(&mut inner, &Op::Truncate(log_id.index))
            .map_err(io_err)?;
        Self::flush(&inner).map_err(io_err)?;
        inner.replay(Op::Truncate(log_id.index));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        self.write(&mut inner, &Op::Purge(log_id)).map_err(io_err)?;
        inner.replay(Op::Purge(log_id));
        self.compact(&mut inner).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(store: &LogStore, from: u64, to: u64) {
        let mut inner = store.lock();
        for i in from..=to {
            store.write(&mut inner, &Op::Append(entry(i))).unwrap();
            inner.entries.insert(i, entry(i));
        }
        LogStore::flush(&inner).unwrap();
    }

    #[tokio::test]
    async fn the_log_survives_a_reopen_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(store.pristine());
        store.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        append(&store, 1, 5);
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
        drop(store);
        let path = tsn_datastore::CoordinatorDir::new(dir.path()).raft_log();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"Append\":{\"log_id\"").unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(!store.pristine());
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 2))
        );
        let got = store.try_get_log_entries(0..100).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, vec![1, 2, 3]);
        // The torn line is gone: appending after it reads back.
        append(&store, 4, 4);
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.try_get_log_entries(0..100).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn purging_keeps_the_file_small_whatever_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        for round in 0..20u64 {
            let from = round * 100 + 1;
            append(&store, from, from + 99);
            store
                .purge(LogId::new(CommittedLeaderId::new(1, 1), from + 89))
                .await
                .unwrap();
        }
        let lines =
            std::fs::read_to_string(tsn_datastore::CoordinatorDir::new(dir.path()).raft_log())
                .unwrap()
                .lines()
                .count();
        assert!(lines <= 10 + 3 + REWRITE_SLACK + 100, "{lines} lines");
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(2000));
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1990));
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        let idx: Vec<u64> = store
            .try_get_log_entries(0..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(idx, (1991..=2000).collect::<Vec<_>>());
    }
}
