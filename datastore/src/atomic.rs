//! Atomic replacement of a whole file.

use std::io::Write;
use std::path::Path;

use crate::error::{io, DatastoreError};

/// Whether a rewrite must be durable before returning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before the rename and the directory after it.
    Sync,
    /// Rename only: readers never see a partial file, but a crash may lose the update.
    NoSync,
}

/// Replaces `path` with `bytes`: a temporary file in the same directory is written, then
/// renamed over `path`, so a reader sees the old or the new content, never a mix.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), DatastoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    crate::private::create_dirs(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(tmp.path()))?;
    if durability == Durability::Sync {
        tmp.as_file().sync_all().map_err(io(path))?;
    }
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    if durability == Durability::Sync {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("f.data");
        write_atomic(&p, b"one\n", Durability::Sync).unwrap();
        write_atomic(&p, b"two\n", Durability::NoSync).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.data")]);
    }
}
