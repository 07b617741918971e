//! The sync service's two served logs (the outbox and the journal), and what a reader
//! behind a log's oldest segment gets instead: a state transfer.

use std::time::Duration;

use tsn_datastore::{DatastoreError, Record, RoleDir, SegmentedLog};
use tsn_protocol::Change;

use crate::checkpoint;
use crate::feed::{FeedLen, FeedSource, Reader, Transfer};

/// A log this process writes and serves.
#[derive(Debug)]
pub(super) struct ServedLog {
    pub(super) log: SegmentedLog,
    len: FeedLen,
    pub(super) source: FeedSource,
    /// Who reads it: what they have read may be deleted.
    readers: Vec<Reader>,
    /// When it was last flushed.
    pace: crate::FlushPace,
}

impl ServedLog {
    /// Opens the log at `path`, returning its records from `from` on.
    pub(super) fn open(
        path: &std::path::Path,
        from: u64,
        readers: Vec<Reader>,
        transfer: Transfer,
    ) -> Result<(ServedLog, Vec<Record>), DatastoreError> {
        let (log, records) = SegmentedLog::open(path, from)?;
        let id = tsn_datastore::log_id(path)?;
        let (len, source) = FeedSource::new(log.segments(), id, log.len());
        let source = source.with_transfer(transfer);
        Ok((
            ServedLog {
                log,
                len,
                source,
                readers,
                pace: crate::FlushPace::default(),
            },
            records,
        ))
    }

    /// Deletes the segments before `covered` that every reader has read; warns when what
    /// some reader has not read piles up.
    pub(super) fn delete_read(
        &mut self,
        covered: u64,
        warn_over: u64,
    ) -> Result<(), DatastoreError> {
        let read = self.source.consumed_by(&self.readers);
        self.log.delete_through(read.unwrap_or(0).min(covered))?;
        let kept = self.log.len() - self.log.start();
        if kept > warn_over {
            tracing::warn!(
                log = %self.log.path().display(),
                kept_bytes = kept,
                read_by_all = ?read,
                "log segments pile up: a reader has not read them (it is down or far behind); they are kept until it has"
            );
        }
        Ok(())
    }

    /// Appends `records`; they are served once [`ServedLog::commit`] has made them
    /// durable.
    pub(super) fn append(&mut self, records: &[Record]) -> Result<(), DatastoreError> {
        self.log.append(records)
    }

    /// Whether records were appended that are not served yet.
    pub(super) fn owed(&self) -> bool {
        self.log.len() != self.len.get()
    }

    /// How long until what is owed may be committed ([`crate::FLUSH_PACE`] after the
    /// last flush; zero when that has passed); `None` when nothing is owed.
    pub(super) fn due_in(&self) -> Option<Duration> {
        self.owed().then(|| self.pace.wait())
    }

    /// Flushes what was appended since the last commit, then serves it: a reader never
    /// gets a record that a power cut could take back. Returns whether it flushed.
    pub(super) fn commit(&mut self) -> Result<bool, DatastoreError> {
        if !self.owed() {
            return Ok(false);
        }
        self.pace.begin();
        self.log.sync()?;
        self.len.set(self.log.len());
        Ok(true)
    }
}

/// Every delivery in the timeline files of `dir` (to the file's user), and with
/// `own_only`, only each user's own posts.
fn timeline_files(dir: &RoleDir, own_only: bool) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    for user in dir.users() {
        for r in tsn_datastore::read_records(&dir.timeline(user))? {
            match r {
                Record::Deliver { to, post, .. } if own_only && post.id.author == to => {
                    out.push(Record::Change(Change::Post(post)));
                }
                Record::Deliver { .. } if !own_only => out.push(r),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Which of the two served logs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Served {
    /// The outbox: a sync service behind its oldest segment gets the checkpoint's users
    /// and follow edges of this cluster, and this cluster's users' own posts.
    Outbox,
    /// The journal: a server behind its oldest segment gets the checkpoint's users and
    /// followers, and every delivery, with its number.
    Journal,
}

/// What a reader behind the oldest segment of `log` gets.
pub(super) fn transfer(dir: &RoleDir, log: Served) -> anyhow::Result<Vec<Record>> {
    let cp = checkpoint::load(dir)?;
    let (kept, own_only) = match log {
        Served::Outbox => (cp.map(|cp| cp.state.received), true),
        Served::Journal => (cp.map(|cp| cp.state.own), false),
    };
    let mut records = kept.unwrap_or_default();
    records.extend(timeline_files(dir, own_only)?);
    Ok(records)
}
