//! The human-readable per-user files of a role directory.
//!
//! They are views of the role's logs: appended after each commit without a flush, made
//! durable at each checkpoint (a server's), and completed from the records after the last
//! checkpoint after an unclean shutdown ([`reconcile`]).
//!
//! A file that cannot be appended to (out of descriptors, a full disk) is owed its
//! records: [`Views`] keeps them, with those that come for the file later, in order, and
//! completes the file as soon as a write works again ([`Views::repair`], at the next
//! append and every second). Until then the role takes no checkpoint (it would drop the
//! records from the logs after it) and writes no clean-shutdown marker, so a restart
//! completes the file from the logs.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use tsn_datastore::{AppendLog, DatastoreError, Durability, Record, RecordLine, RoleDir};
use tsn_protocol::Change;

/// View files kept open between writes, at least and at most (see [`open_views`]).
const OPEN_VIEWS: (usize, usize) = (64, 16_384);

/// How many view files one [`Views`] keeps open between writes: a quarter of the
/// process's open-file limit (a server has two sets of views, and needs descriptors for
/// its logs, checkpoints and listeners too), within [`OPEN_VIEWS`]. A post to thousands of
/// followers appends to as many timeline files: when they all stay open, it costs a write
/// each, not an open, a stat and a close (a file closed to make room is opened again
/// without reading its end: [`Views`]'s `closed`).
fn open_views() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(OPEN_VIEWS.0, OPEN_VIEWS.1)
}

/// Where a record comes from: the same record lands in a different file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A server's journal: users it created, its users' following.
    Server,
    /// What a server received from its sync service: users system-wide, its users'
    /// followers, posts delivered to them (into the same `timeline.data` as their own
    /// posts: the posts a user sees).
    Received,
    /// A sync service's journal: users system-wide, its users' followers, posts
    /// delivered to them.
    Sync,
}

/// The view file a record belongs in, if any.
pub fn path_of(dir: &RoleDir, side: Side, record: &Record) -> Option<PathBuf> {
    match (side, record) {
        (_, Record::Change(Change::User { .. })) => Some(dir.global_clients()),
        (Side::Server, Record::Change(Change::Follow { follower, .. })) => {
            Some(dir.following(*follower))
        }
        (Side::Sync | Side::Received, Record::Change(Change::Follow { followee, .. })) => {
            Some(dir.followers(*followee))
        }
        // A user's timeline file holds what the timeline shows, numbered: the sync
        // service's deliveries, the user's own posts among them.
        (Side::Server, Record::Change(Change::Post(_))) => None,
        // Key bindings live in the journal only.
        (_, Record::Change(Change::Key { .. })) => None,
        (Side::Sync | Side::Received, Record::Deliver { to, .. }) => Some(dir.timeline(*to)),
        (Side::Sync | Side::Received, Record::Change(Change::Post(_)))
        | (Side::Server, Record::Deliver { .. }) => None,
    }
}

/// Appends records to their view files, keeping recently used files open.
#[derive(Debug)]
pub struct Views {
    dir: RoleDir,
    side: Side,
    open: HashMap<PathBuf, AppendLog>,
    /// How many files `open` may hold.
    capacity: usize,
    /// Files closed to make room in `open`, whole, and how long they were then: opened
    /// again without reading their end ([`AppendLog::open_append_at`]).
    closed: HashMap<PathBuf, u64>,
    /// Records not yet in their file because a write failed, in order, by file. Holds at
    /// most what the logs hold since the last checkpoint (none is taken meanwhile).
    owed: HashMap<PathBuf, Vec<Record>>,
}

impl Views {
    /// Views of `dir` as written by `side`.
    pub fn new(dir: RoleDir, side: Side) -> Self {
        Views {
            dir,
            side,
            open: HashMap::new(),
            capacity: open_views(),
            closed: HashMap::new(),
            owed: HashMap::new(),
        }
    }

    /// Appends each record to its view file. A file that cannot be written is owed the
    /// records (see [`Views::repair`]); the error is that of the first file that failed.
    pub fn append(&mut self, records: &[Record]) -> Result<(), DatastoreError> {
        // One write per file: records grouped by file, in order within each.
        let mut files: Vec<(PathBuf, Vec<&Record>)> = Vec::new();
        let mut index: HashMap<PathBuf, usize> = HashMap::new();
        for r in records {
            let Some(path) = path_of(&self.dir, self.side, r) else {
                continue;
            };
            match index.get(&path) {
                Some(&i) => files[i].1.push(r),
                None => {
                    index.insert(path.clone(), files.len());
                    files.push((path, vec![r]));
                }
            }
        }
        let mut first_error = None;
        for (path, group) in files {
            if let Some(owed) = self.owed.get_mut(&path) {
                owed.extend(group.into_iter().cloned());
                continue;
            }
            if let Err(e) = self.append_to(&path, group.iter().copied()) {
                // The file's length is not known any more: opened afresh when repaired.
                self.open.remove(&path);
                self.owed.insert(path, group.into_iter().cloned().collect());
                first_error.get_or_insert(e);
            }
        }
        if !self.owed.is_empty() && first_error.is_none() {
            let _ = self.repair();
        }
        first_error.map_or(Ok(()), Err)
    }

    fn append_to<'a>(
        &mut self,
        path: &std::path::Path,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<(), DatastoreError> {
        tsn_datastore::failpoint::check("view-append", path)?;
        if !self.open.contains_key(path) {
            if self.open.len() >= self.capacity {
                self.closed
                    .extend(self.open.drain().map(|(path, log)| (path, log.len())));
            }
            let log = match self.closed.remove(path) {
                Some(len) => AppendLog::open_append_at(path, len)?,
                None => AppendLog::open_append(path)?,
            };
            self.open.insert(path.to_path_buf(), log);
        }
        match self.open.get_mut(path) {
            Some(log) => log.append_all(records),
            None => Ok(()),
        }
    }

    /// Completes every file owed records: appends those its end lacks (a failed write
    /// may have left some of them there). Fails while any file is still owed.
    pub fn repair(&mut self) -> Result<(), DatastoreError> {
        let owed: Vec<PathBuf> = self.owed.keys().cloned().collect();
        let mut first_error = None;
        for path in owed {
            let Some(records) = self.owed.get(&path) else {
                continue;
            };
            let lines = records
                .iter()
                .map(|r| (r.encode_line(), r))
                .collect::<Vec<_>>();
            let done = tsn_datastore::failpoint::check("view-append", &path)
                .and_then(|()| complete_file(&path, &lines));
            match done {
                Ok(_) => {
                    tracing::info!(path = %path.display(), records = lines.len(), "view file completed after a failed append");
                    self.owed.remove(&path);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`Views::repair`] at shutdown: whether every file is complete (said in the log
    /// when not: the clean-shutdown marker must then not be written).
    pub fn complete_for_shutdown(&mut self) -> bool {
        match self.repair() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    records = self.owed(),
                    "view files still owed records at shutdown: {e}"
                );
                false
            }
        }
    }

    /// How many records are owed to files that could not be written.
    pub fn owed(&self) -> usize {
        self.owed.values().map(Vec::len).sum()
    }
}

/// Makes everything written under `dir`'s file system durable (one `syncfs(2)`: cheaper
/// than a flush of each of thousands of view files).
pub fn make_durable(dir: &RoleDir) -> Result<(), DatastoreError> {
    let io = |source| DatastoreError::Io {
        path: dir.path().to_path_buf(),
        source,
    };
    let d = std::fs::File::open(dir.path()).map_err(io)?;
    nix::unistd::syncfs(&d).map_err(|e| io(std::io::Error::from(e)))
}

/// Completes the view files of `dir` after an unclean shutdown: each record of the logs
/// after the last checkpoint (with the side it comes from) is appended to its file unless
/// the file already ends with it. Records after a checkpoint are appended after it, each
/// at most once, so the file's part written since then is no longer than those records
/// together: only that much of its end is read. Returns the number of files completed.
pub fn reconcile(dir: &RoleDir, logs: &[(Side, &[Record])]) -> Result<usize, DatastoreError> {
    let mut files: Vec<(PathBuf, Vec<(String, &Record)>)> = Vec::new();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    for (side, records) in logs {
        for r in *records {
            let Some(path) = path_of(dir, *side, r) else {
                continue;
            };
            let i = *index.entry(path.clone()).or_insert_with(|| {
                files.push((path, Vec::new()));
                files.len() - 1
            });
            let line = r.encode_line();
            if seen.insert((i, line.clone())) {
                files[i].1.push((line, r));
            }
        }
    }
    let mut completed = 0;
    for (path, expected) in files {
        if complete_file(&path, &expected)? {
            completed += 1;
        }
    }
    Ok(completed)
}

/// Appends to the file at `path` each of the `expected` records (with their lines) that
/// its end does not already hold; returns whether it appended any. The records were
/// appended, if at all, after the file's other lines: only as much of its end as they
/// take together is read.
fn complete_file(
    path: &std::path::Path,
    expected: &[(String, &Record)],
) -> Result<bool, DatastoreError> {
    if let Some(parent) = path.parent() {
        tsn_datastore::private::create_dirs(parent)?;
    }
    // Opening for append drops a torn last line.
    let mut log = AppendLog::open_append(path)?;
    let want: u64 = expected.iter().map(|(l, _)| l.len() as u64).sum();
    // One byte more: the end of the line before, if the window starts on a line.
    let n = (want + 1).min(log.len());
    let mut tail = vec![0u8; usize::try_from(n).unwrap_or(0)];
    let io = |source| DatastoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    f.read_exact_at(&mut tail, log.len() - n).map_err(io)?;
    let text = String::from_utf8_lossy(&tail);
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    if n < log.len() && !lines.is_empty() {
        lines.remove(0); // up to the first line start in the window
    }
    let present: HashSet<&str> = lines.into_iter().collect();
    let missing: Vec<&Record> = expected
        .iter()
        .filter(|(l, _)| !present.contains(l.as_str()))
        .map(|(_, r)| *r)
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    log.append_all(missing)?;
    Ok(true)
}

/// Rewrites every view file of `dir` from the logs' records (each with the side it comes
/// from), each line once per file. Returns the number of files written.
pub fn rebuild(dir: &RoleDir, logs: &[(Side, &[Record])]) -> Result<usize, DatastoreError> {
    let mut files: HashMap<PathBuf, (String, std::collections::HashSet<String>)> = HashMap::new();
    for (side, records) in logs {
        for r in *records {
            if let Some(path) = path_of(dir, *side, r) {
                let (text, seen) = files.entry(path).or_default();
                let line = r.encode_line();
                if seen.insert(line.clone()) {
                    text.push_str(&line);
                }
            }
        }
    }
    for (path, (text, _)) in &files {
        if let Some(parent) = path.parent() {
            tsn_datastore::private::create_dirs(parent)?;
        }
        tsn_datastore::write_atomic(path, text.as_bytes(), Durability::NoSync)?;
    }
    Ok(files.len())
}

/// [`rebuild`], after removing every view file of `dir` (those the logs no longer have
/// anything for too).
pub fn rebuild_clean(dir: &RoleDir, logs: &[(Side, &[Record])]) -> Result<usize, DatastoreError> {
    let remove = |path: &std::path::Path| match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DatastoreError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    };
    remove(&dir.global_clients())?;
    for user in dir.users() {
        for path in [dir.timeline(user), dir.following(user), dir.followers(user)] {
            remove(&path)?;
        }
    }
    rebuild(dir, logs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tsn_protocol::{Post, PostId};

    /// A primary's role directory, created, in a temporary directory.
    fn role_dir() -> (tempfile::TempDir, RoleDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tsn_datastore::Datastore::new(tmp.path())
            .role(1, tsn_protocol::coord::NodeKind::Primary);
        dir.create().unwrap();
        (tmp, dir)
    }

    fn deliver(to: u32, seq: u64) -> Record {
        Record::Deliver {
            to,
            seq,
            post: Post {
                id: PostId {
                    author: 9,
                    nonce: seq,
                },
                ts_us: seq as i64,
                text: format!("post {seq}"),
            },
        }
    }

    #[test]
    fn a_file_that_could_not_be_written_is_completed_once_it_can() {
        let (tmp, dir) = role_dir();
        let mut views = Views::new(dir.clone(), Side::Received);
        views.append(&[deliver(1, 1)]).unwrap();
        // The file cannot be opened: held elsewhere as a directory for a moment.
        let path = dir.timeline(1);
        std::fs::rename(&path, tmp.path().join("aside")).unwrap();
        std::fs::create_dir(&path).unwrap();
        views.open.clear();
        assert!(views.append(&[deliver(1, 2)]).is_err());
        views.append(&[deliver(1, 3)]).unwrap();
        assert_eq!(views.owed(), 2, "owed, in order, behind the failed one");
        assert!(views.repair().is_err(), "still failing");
        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(tmp.path().join("aside"), &path).unwrap();
        views.append(&[deliver(1, 4)]).unwrap();
        assert_eq!(views.owed(), 0);
        views.append(&[deliver(1, 5)]).unwrap();
        assert_eq!(
            tsn_datastore::read_records(&path).unwrap(),
            (1..=5).map(|s| deliver(1, s)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn more_files_than_stay_open_each_get_every_record_in_order() {
        let (_tmp, dir) = role_dir();
        let mut views = Views::new(dir.clone(), Side::Received);
        views.capacity = 3;
        for seq in 1..=4 {
            let batch: Vec<Record> = (1..=10).map(|to| deliver(to, seq)).collect();
            views.append(&batch).unwrap();
        }
        assert!(views.open.len() <= 3);
        assert!(
            !views.closed.is_empty(),
            "files were closed and opened again"
        );
        for to in 1..=10 {
            assert_eq!(
                tsn_datastore::read_records(&dir.timeline(to)).unwrap(),
                (1..=4).map(|s| deliver(to, s)).collect::<Vec<_>>(),
                "user {to}"
            );
        }
    }

    #[test]
    fn reconcile_appends_what_the_files_lack_and_nothing_twice() {
        let (_tmp, dir) = role_dir();
        let before: Vec<Record> = (1..=50).map(|s| deliver(1, s)).collect();
        let after: Vec<Record> = (51..=60).map(|s| deliver(1, s)).collect();
        let mut views = Views::new(dir.clone(), Side::Received);
        views.append(&before).unwrap();
        // The crash: only 3 of the 10 records after the checkpoint reached the file,
        // the last of them torn.
        views.append(&after[..3]).unwrap();
        drop(views);
        let path = dir.timeline(1);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 4]).unwrap();

        assert_eq!(reconcile(&dir, &[(Side::Received, &after)]).unwrap(), 1);
        let all = tsn_datastore::read_records(&path).unwrap();
        assert_eq!(
            all,
            before.iter().chain(&after).cloned().collect::<Vec<_>>()
        );
        // Again: nothing to add.
        assert_eq!(reconcile(&dir, &[(Side::Received, &after)]).unwrap(), 0);
        assert_eq!(tsn_datastore::read_records(&path).unwrap().len(), 60);
    }
}
