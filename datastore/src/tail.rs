//! Following a file another process appends to.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{io, DatastoreError};
use crate::record::Record;

/// Most bytes read per call.
const READ_CHUNK: usize = 1 << 20;

/// Reads the complete records a writer appends to a file, from a byte offset on.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    file: Option<File>,
    buf: Vec<u8>,
}

impl Tail {
    /// Follows `path` from `offset`.
    pub fn new(path: impl Into<PathBuf>, offset: u64) -> Tail {
        Tail {
            path: path.into(),
            offset,
            file: None,
            buf: Vec::new(),
        }
    }

    /// Offset just past the last record returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `max` complete records after the offset; the offset moves past exactly those.
    /// A line still being written (no newline yet) is left for a later call.
    pub fn read_new(&mut self, max: usize) -> Result<Vec<Record>, DatastoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io(&self.path)(e)),
            }
        }
        let Some(file) = self.file.as_ref() else {
            return Ok(Vec::new());
        };
        let len = file.metadata().map_err(io(&self.path))?.len();
        if len < self.offset {
            tracing::warn!(path = %self.path.display(), offset = self.offset, len, "file shrank below the cursor; continuing from its end");
            self.offset = len;
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        let want = usize::try_from(len - self.offset)
            .unwrap_or(READ_CHUNK)
            .min(READ_CHUNK);
        self.buf.resize(want, 0);
        let got = file
            .read_at(&mut self.buf, self.offset)
            .map_err(io(&self.path))?;
        let bytes = &self.buf[..got];
        let mut records = Vec::new();
        let mut pos = 0usize;
        while records.len() < max {
            let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
                break;
            };
            let end = pos + nl;
            let r =
                Record::decode_bytes(&bytes[pos..end]).map_err(|e| DatastoreError::Corrupt {
                    path: self.path.clone(),
                    line: 0,
                    reason: format!("at byte {}: {e}", self.offset + pos as u64),
                })?;
            records.push(r);
            pos = end + 1;
        }
        if records.is_empty() && got == READ_CHUNK {
            return Err(DatastoreError::Corrupt {
                path: self.path.clone(),
                line: 0,
                reason: format!(
                    "no line end within {READ_CHUNK} bytes after byte {}",
                    self.offset
                ),
            });
        }
        self.offset += pos as u64;
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;
    use tsn_protocol::Change;

    fn user(u: u32) -> Record {
        Record::Change(Change::User { user: u })
    }

    #[test]
    fn partial_lines_wait_and_max_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.data");
        let mut t = Tail::new(&p, 0);
        assert!(t.read_new(10).unwrap().is_empty(), "missing file");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        f.write_all(b"user 1\nuser 2\nuse").unwrap();
        assert_eq!(t.read_new(1).unwrap(), vec![user(1)]);
        assert_eq!(t.offset(), 7);
        assert_eq!(t.read_new(10).unwrap(), vec![user(2)]);
        assert!(
            t.read_new(10).unwrap().is_empty(),
            "partial line left alone"
        );
        f.write_all(b"r 3\n").unwrap();
        assert_eq!(t.read_new(10).unwrap(), vec![user(3)]);
        assert!(t.read_new(10).unwrap().is_empty());
        let mut again = Tail::new(&p, t.offset());
        f.write_all(b"user 4\n").unwrap();
        assert_eq!(again.read_new(10).unwrap(), vec![user(4)]);
        assert_eq!(again.offset(), std::fs::metadata(&p).unwrap().len());

        // A file shorter than the offset: continue from its end.
        let mut ahead = Tail::new(&p, 10_000);
        assert!(ahead.read_new(10).unwrap().is_empty());
        assert_eq!(ahead.offset(), std::fs::metadata(&p).unwrap().len());
        assert!(t.read_new(0).unwrap().is_empty());
    }

    #[test]
    fn corrupt_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.data");
        std::fs::write(&p, "user 1\nbogus\n").unwrap();
        let mut t = Tail::new(&p, 0);
        assert!(matches!(
            t.read_new(10),
            Err(DatastoreError::Corrupt { .. })
        ));
        // The good line before it is still returned by a reader that stops in time.
        let mut t = Tail::new(&p, 0);
        assert_eq!(t.read_new(1).unwrap(), vec![user(1)]);
    }
}
