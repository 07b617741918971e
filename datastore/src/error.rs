//! Errors of the datastore.

use std::path::PathBuf;

/// What can go wrong reading or writing the datastore.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// I/O on a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A record that is not the last of its file does not parse.
    #[error("{path}:{line}: corrupt record: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number; 0 from a [`crate::Tail`], which does not count lines and
        /// gives the byte offset in `reason` instead.
        line: usize,
        /// Why it does not parse.
        reason: String,
    },
    /// The part of a segmented log holding an offset was deleted (a checkpoint covers
    /// it): the reader needs the checkpointed state instead.
    #[error("{path}: offset {offset} lies before the oldest segment kept (at {start})")]
    Compacted {
        /// The log.
        path: PathBuf,
        /// The offset asked for.
        offset: u64,
        /// The oldest offset kept.
        start: u64,
    },
}

/// Attaches a path to an I/O error.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DatastoreError + '_ {
    move |source| DatastoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
