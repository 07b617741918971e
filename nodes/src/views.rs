//! The human-readable per-user files of a role directory.
//!
//! They are views of the role's journal: appended after each journal commit without a
//! flush, and rewritten from the journal after an unclean shutdown.

use std::collections::HashMap;
use std::path::PathBuf;

use tsn_datastore::{AppendLog, DatastoreError, Durability, Record, RoleDir};
use tsn_protocol::Change;

/// View files kept open between writes.
const OPEN_VIEWS: usize = 1024;

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
}

impl Views {
    /// Views of `dir` as written by `side`.
    pub fn new(dir: RoleDir, side: Side) -> Self {
        Views {
            dir,
            side,
            open: HashMap::new(),
        }
    }

    /// Appends each record to its view file.
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
        for (path, group) in files {
            if !self.open.contains_key(&path) {
                if self.open.len() >= OPEN_VIEWS {
                    self.open.clear();
                }
                let log = AppendLog::open_append(&path)?;
                self.open.insert(path.clone(), log);
            }
            if let Some(log) = self.open.get_mut(&path) {
                log.append_all(group)?;
            }
        }
        Ok(())
    }
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
    let users = dir.path().join("local_clients");
    if let Ok(entries) = std::fs::read_dir(&users) {
        for e in entries.flatten() {
            for name in ["timeline.data", "following.data", "followers.data"] {
                remove(&e.path().join(name))?;
            }
        }
    }
    rebuild(dir, logs)
}
