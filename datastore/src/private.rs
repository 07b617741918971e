//! Files and directories private to their owner: a datastore holds users' posts.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{io, DatastoreError};

/// Mode of every directory the datastore creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the datastore creates.
pub const FILE_MODE: u32 = 0o600;

/// `mkdir -p` with [`DIR_MODE`] for the directories it creates.
pub fn create_dirs(path: &Path) -> Result<(), DatastoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(io(path))
}

/// Options that create a missing file with [`FILE_MODE`].
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}
