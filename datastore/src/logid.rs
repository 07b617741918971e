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

/// The id of the log at `log`, chosen now (at random, never 0) and written durably if it
/// has none yet.
pub fn log_id(log: &Path) -> Result<u64, DatastoreError> {
    let path = id_path(log);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            if let Ok(id) = text.trim().parse::<u64>() {
                if id != 0 {
                    return Ok(id);
                }
            }
            tracing::warn!(path = %path.display(), "unreadable log id; choosing a new one (readers start this log from its beginning)");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let id = rand::random::<u64>().max(1);
    write_atomic(&path, format!("{id}\n").as_bytes(), Durability::Sync)?;
    Ok(id)
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
}
