//! Log ids: a random number chosen when a log is begun, kept beside it in `<log>.id`.
//!
//! A reader's cursor into another process's log carries the log's id. When a host loses
//! its disk and begins its logs anew, the new logs get new ids, so every reader sees that
//! its cursor belongs to a log that is gone and reads the new one from its start, instead
//! of skipping what lies before its old offset.

use std::path::{Path, PathBuf};

use crate::atomic::{write_atomic, Durability};
use crate::error::{io, DatastoreError};

/// The id file of a log.
pub fn id_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".id");
    log.with_file_name(name)
}

/// A log's id, and the id it had before it was last renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogIds {
    /// The id readers' cursors name now.
    pub id: u64,
    /// The previous id and the log's length when it was renewed: a cursor of that id up
    /// to that length points at the same records under both.
    pub prev: Option<(u64, u64)>,
}

/// The id of the log at `log`, chosen now (at random, never 0) and written durably if it
/// has none yet.
pub fn log_id(log: &Path) -> Result<u64, DatastoreError> {
    Ok(log_ids(log)?.id)
}

/// The ids of the log at `log` (see [`renew_log_id`]); an id is chosen now (at random,
/// never 0) and written durably if it has none yet.
pub fn log_ids(log: &Path) -> Result<LogIds, DatastoreError> {
    let path = id_path(log);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut lines = text.lines();
            if let Some(id) = lines.next().and_then(|l| l.trim().parse::<u64>().ok()) {
                if id != 0 {
                    let prev = lines.next().and_then(|l| {
                        let (prev, len) = l.trim().split_once(' ')?;
                        Some((prev.parse().ok()?, len.parse().ok()?))
                    });
                    return Ok(LogIds { id, prev });
                }
            }
            tracing::warn!(path = %path.display(), "unreadable log id; choosing a new one (readers start this log from its beginning)");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    write_ids(&path, new_id(), None)
}

/// Gives the log at `log`, now `len` bytes long, a new id, keeping the current one as its
/// predecessor up to `len`. A log that may have shown readers records that did not
/// survive (it publishes before it flushes, and the last exit was not clean) is renewed
/// when it is opened: a reader whose cursor lies beyond `len` read records that are gone,
/// and reads the log again from its start; any other reader goes on where it was.
pub fn renew_log_id(log: &Path, len: u64) -> Result<LogIds, DatastoreError> {
    let current = log_ids(log)?;
    write_ids(&id_path(log), new_id(), Some((current.id, len)))
}

fn new_id() -> u64 {
    rand::random::<u64>().max(1)
}

fn write_ids(path: &Path, id: u64, prev: Option<(u64, u64)>) -> Result<LogIds, DatastoreError> {
    let mut text = format!("{id}\n");
    if let Some((prev, len)) = prev {
        text.push_str(&format!("{prev} {len}\n"));
    }
    write_atomic(path, text.as_bytes(), Durability::Sync)?;
    Ok(LogIds { id, prev })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_id_is_chosen_once_and_a_new_log_gets_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("journal.data");
        assert_eq!(id_path(&log), dir.path().join("journal.data.id"));
        let a = log_id(&log).unwrap();
        assert_ne!(a, 0);
        assert_eq!(log_id(&log).unwrap(), a);
        std::fs::remove_file(id_path(&log)).unwrap();
        assert_ne!(log_id(&log).unwrap(), a);
    }

    #[test]
    fn a_renewed_id_keeps_the_one_before_with_the_length_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("outbox.data");
        let a = log_id(&log).unwrap();
        assert_eq!(log_ids(&log).unwrap(), LogIds { id: a, prev: None });
        let renewed = renew_log_id(&log, 1234).unwrap();
        assert_ne!(renewed.id, a);
        assert_eq!(renewed.prev, Some((a, 1234)));
        assert_eq!(log_ids(&log).unwrap(), renewed);
        assert_eq!(log_id(&log).unwrap(), renewed.id);
        // Renewed again: only the last predecessor is kept.
        let again = renew_log_id(&log, 2000).unwrap();
        assert_eq!(again.prev, Some((renewed.id, 2000)));
    }
}
