//! Following a file another process appends to.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::error::{io, DatastoreError};
use crate::record::{Record, RecordLine};
use crate::segments::{Located, Segments};

/// Most bytes read per call.
const READ_CHUNK: usize = 1 << 20;

/// Reads the complete records a writer appends to a log, from a byte offset on. The log
/// may be segmented ([`Segments`]): offsets are logical, and the reader moves from one
/// segment to the next.
#[derive(Debug)]
pub struct Tail {
    segments: Segments,
    offset: u64,
    /// The segment being read, and where it lies.
    file: Option<(File, Located)>,
    buf: Vec<u8>,
}

impl Tail {
    /// Follows the plain file `path` from `offset`.
    pub fn new(path: impl Into<PathBuf>, offset: u64) -> Tail {
        Tail::over(Segments::single(path), offset)
    }

    /// Follows a segmented log from logical offset `offset`.
    pub fn over(segments: Segments, offset: u64) -> Tail {
        Tail {
            segments,
            offset,
            file: None,
            buf: Vec::new(),
        }
    }

    /// Offset just past the last record returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The log followed (its active segment).
    pub fn path(&self) -> PathBuf {
        self.segments.path()
    }

    /// Up to `max` complete records after the offset; the offset moves past exactly those.
    /// A line still being written (no newline yet) is left for a later call. An offset
    /// in a segment that was deleted is [`DatastoreError::Compacted`].
    pub fn read_new(&mut self, max: usize) -> Result<Vec<Record>, DatastoreError> {
        self.read_upto(max, u64::MAX)
    }

    /// [`Tail::read_new`], reading nothing past logical offset `upto`: what the writer
    /// has said is committed (durable, for a log flushed before it is published), when
    /// more may already be in the file.
    pub fn read_upto(&mut self, max: usize, upto: u64) -> Result<Vec<Record>, DatastoreError> {
        // Read to where the writer said: nothing to look at (a feed asks once more after
        // each frame it sends).
        if max == 0 || upto <= self.offset {
            return Ok(Vec::new());
        }
        // At most: the segment in hand, then the one after it (a rotation in between).
        for _ in 0..2 {
            if self.file.is_none() {
                self.file = self.segments.open_at(self.offset)?;
            }
            let records = self.read_segment(max, upto)?;
            if !records.is_empty() {
                return Ok(records);
            }
            // Nothing new here: has the segment been sealed and another begun after it?
            let here = self.file.as_ref().map(|(_, at)| at.base);
            match self.segments.locate(self.offset) {
                Some(at) if Some(at.base) != here => self.file = None,
                _ => return Ok(Vec::new()),
            }
        }
        Ok(Vec::new())
    }

    fn read_segment(&mut self, max: usize, upto: u64) -> Result<Vec<Record>, DatastoreError> {
        let Some((file, at)) = self.file.as_ref() else {
            return Ok(Vec::new());
        };
        let at_byte = self.offset - at.base;
        // With a bound from the writer the file holds at least that much (or its segment
        // was sealed before it): no need to ask the file's length first.
        let bounded = upto != u64::MAX;
        let limit = upto.saturating_sub(at.base);
        let len = if bounded {
            limit
        } else {
            let file_len = file.metadata().map_err(io(&at.path))?.len();
            if self.shrank(file_len) {
                return Ok(Vec::new());
            }
            file_len.min(limit)
        };
        if len <= at_byte {
            return Ok(Vec::new());
        }
        let want = usize::try_from(len - at_byte)
            .unwrap_or(READ_CHUNK)
            .min(READ_CHUNK);
        self.buf.resize(want, 0);
        let (file, at) = self.file.as_ref().expect("checked above");
        let got = file.read_at(&mut self.buf, at_byte).map_err(io(&at.path))?;
        if got == 0 && bounded {
            // Nothing where the writer said there is: the segment was sealed before
            // it (the next one holds the rest), or the file shrank.
            let file_len = file.metadata().map_err(io(&at.path))?.len();
            self.shrank(file_len);
            return Ok(Vec::new());
        }
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
                    path: at.path.clone(),
                    line: 0,
                    reason: format!("at byte {}: {e}", at_byte + pos as u64),
                })?;
            records.push(r);
            pos = end + 1;
        }
        if records.is_empty() && got == READ_CHUNK {
            return Err(DatastoreError::Corrupt {
                path: at.path.clone(),
                line: 0,
                reason: format!("no line end within {READ_CHUNK} bytes after byte {at_byte}"),
            });
        }
        self.offset += pos as u64;
        Ok(records)
    }
}

impl Tail {
    /// Whether the segment in hand, now `file_len` bytes long, shrank below the offset
    /// (then the offset moves to its end, with a warning).
    fn shrank(&mut self, file_len: u64) -> bool {
        let Some((_, at)) = self.file.as_ref() else {
            return false;
        };
        if file_len >= self.offset - at.base {
            return false;
        }
        tracing::warn!(path = %at.path.display(), offset = self.offset, len = file_len, "file shrank below the cursor; continuing from its end");
        self.offset = at.base + file_len;
        true
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
    fn read_upto_stops_at_the_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.data");
        let mut f = std::fs::File::create(&p).unwrap();
        let (one, two) = (user(1).encode_line(), user(2).encode_line());
        f.write_all(one.as_bytes()).unwrap();
        f.write_all(two.as_bytes()).unwrap();
        let mut t = Tail::new(&p, 0);
        assert!(t.read_upto(10, 0).unwrap().is_empty());
        // Half of the second line committed: only the first is read.
        let first_end = one.len() as u64;
        assert_eq!(t.read_upto(10, first_end + 2).unwrap(), vec![user(1)]);
        assert_eq!(t.offset(), first_end);
        assert!(t.read_upto(10, first_end + 2).unwrap().is_empty());
        assert_eq!(t.read_upto(10, u64::MAX).unwrap(), vec![user(2)]);
    }

    #[test]
    fn a_bounded_read_crosses_a_sealed_segment_and_notices_a_shrunk_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbox.data");
        let (mut log, _) = crate::SegmentedLog::open(&p, 0).unwrap();
        log.append(&[user(1), user(2)]).unwrap();
        let mut t = Tail::over(log.segments(), 0);
        assert_eq!(t.read_upto(1, log.len()).unwrap(), vec![user(1)]);
        // Sealed with a record still unread in it; the next segment holds more.
        log.rotate().unwrap();
        log.append(&[user(3)]).unwrap();
        let end = log.len();
        assert_eq!(t.read_upto(10, end).unwrap(), vec![user(2)]);
        assert_eq!(t.read_upto(10, end).unwrap(), vec![user(3)]);
        assert_eq!(t.offset(), end);
        assert!(t.read_upto(10, end).unwrap().is_empty());
        // The active segment cut below the cursor (say, by hand): the cursor moves to
        // its end rather than waiting for bytes that will never be there.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert!(t.read_upto(10, end + 100).unwrap().is_empty());
        assert!(t.offset() < end, "offset {} end {end}", t.offset());
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
