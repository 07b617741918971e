//! Named byte offsets, persisted atomically.

use std::collections::BTreeMap;
use std::path::Path;

use tsn_protocol::sync::Cursor;

use crate::atomic::{write_atomic, Durability};
use crate::error::{io, DatastoreError};

/// Byte offsets by name (a key has no spaces or line breaks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    map: BTreeMap<String, u64>,
}

impl Cursors {
    /// Loads `path`; a missing file is an empty set.
    pub fn load(path: &Path) -> Result<Cursors, DatastoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cursors::default()),
            Err(e) => return Err(io(path)(e)),
        };
        let mut map = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let parsed = line
                .split_once(' ')
                .and_then(|(k, v)| v.parse::<u64>().ok().map(|v| (k.to_string(), v)));
            match parsed {
                Some((k, v)) if !k.is_empty() => {
                    map.insert(k, v);
                }
                _ => {
                    return Err(DatastoreError::Corrupt {
                        path: path.to_path_buf(),
                        line: i + 1,
                        reason: format!("expected \"<key> <offset>\", got {line:?}"),
                    })
                }
            }
        }
        Ok(Cursors { map })
    }

    /// Saves atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), DatastoreError> {
        self.save_with(path, Durability::Sync)
    }

    /// Saves atomically, flushed or not: a cursor into a log that is read again from an
    /// older position (its records recognised as read) need not wait for the disk.
    pub fn save_with(&self, path: &Path, durability: Durability) -> Result<(), DatastoreError> {
        let text: String = self.map.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        write_atomic(path, text.as_bytes(), durability)
    }

    /// The offset named `key`, 0 when absent.
    pub fn get(&self, key: &str) -> u64 {
        self.map.get(key).copied().unwrap_or(0)
    }

    /// Sets the offset named `key`.
    pub fn set(&mut self, key: &str, offset: u64) {
        self.map.insert(key.to_string(), offset);
    }

    /// The feed cursor named `key` (its offset under `key`, its log id under `key.id`).
    pub fn feed(&self, key: &str) -> Cursor {
        Cursor {
            log_id: self.get(&format!("{key}.id")),
            offset: self.get(key),
        }
    }

    /// Sets the feed cursor named `key`.
    pub fn set_feed(&mut self, key: &str, cursor: Cursor) {
        self.set(&format!("{key}.id"), cursor.log_id);
        self.set(key, cursor.offset);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cursors.data");
        assert_eq!(Cursors::load(&p).unwrap(), Cursors::default());
        let mut c = Cursors::default();
        c.set("to-1-from-primary", 42);
        c.set("to-2-from-secondary", 7);
        c.save(&p).unwrap();
        let back = Cursors::load(&p).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get("to-1-from-primary"), 42);
        assert_eq!(back.get("absent"), 0);
        let mut c = back;
        let at = Cursor {
            log_id: 9,
            offset: 100,
        };
        c.set_feed("from-primary", at);
        c.save(&p).unwrap();
        assert_eq!(Cursors::load(&p).unwrap().feed("from-primary"), at);
        assert_eq!(c.feed("absent"), Cursor::default());
        std::fs::write(&p, "garbage\n").unwrap();
        assert!(matches!(
            Cursors::load(&p),
            Err(DatastoreError::Corrupt { line: 1, .. })
        ));
    }
}
