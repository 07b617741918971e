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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn what_the_datastore_creates_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ds = crate::Datastore::new(dir.path().join("store"));
        let role = ds.role(1, tsn_protocol::coord::NodeKind::Primary);
        role.create().unwrap();
        let (mut log, _) = crate::AppendLog::open(&role.journal()).unwrap();
        log.append(&[crate::Record::Change(tsn_protocol::Change::User {
            user: 1,
        })])
        .unwrap();
        crate::write_atomic(&role.cursors(), b"x 1\n", crate::Durability::NoSync).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for d in [
            dir.path().join("store/1"),
            role.path().to_path_buf(),
            role.path().join("local_clients"),
        ] {
            assert_eq!(mode(&d), DIR_MODE, "{}", d.display());
        }
        assert_eq!(mode(&role.journal()), FILE_MODE);
        assert_eq!(mode(&role.cursors()), FILE_MODE);
    }
}
