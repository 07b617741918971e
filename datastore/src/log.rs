//! Append-only record files, written by one process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{io, DatastoreError};
use crate::record::{Record, RecordLine};

/// How far back [`AppendLog::open_append`] looks for the start of the last line.
const TAIL_PROBE: u64 = 64 * 1024;

/// An append-only file of records.
#[derive(Debug)]
pub struct AppendLog {
    file: File,
    path: PathBuf,
    len: u64,
}

/// Result of scanning a file's bytes.
struct Scan {
    records: Vec<Record>,
    /// Bytes up to the end of the last good line.
    good_len: u64,
    /// Whether anything after `good_len` (a torn line) was found.
    torn: bool,
}

/// Parses complete lines; a bad last line or an unterminated tail is torn, a bad line
/// followed by more lines is corruption.
fn scan(path: &Path, bytes: &[u8]) -> Result<Scan, DatastoreError> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut line_no = 0usize;
    while pos < bytes.len() {
        let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') else {
            break;
        };
        line_no += 1;
        let end = pos + nl;
        match Record::decode_bytes(&bytes[pos..end]) {
            Ok(r) => records.push(r),
            Err(e) => {
                if end + 1 == bytes.len() {
                    break;
                }
                return Err(DatastoreError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_no,
                    reason: e.to_string(),
                });
            }
        }
        pos = end + 1;
    }
    Ok(Scan {
        records,
        good_len: pos as u64,
        torn: pos < bytes.len(),
    })
}

fn open_file(path: &Path) -> Result<File, DatastoreError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            crate::private::create_dirs(dir)?;
        }
    }
    crate::private::options()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io(path))
}

impl AppendLog {
    fn repair(&mut self, good_len: u64, total: u64) -> Result<(), DatastoreError> {
        tracing::warn!(
            path = %self.path.display(),
            dropped_bytes = total - good_len,
            "dropping a torn last record left by a crash"
        );
        self.file.set_len(good_len).map_err(io(&self.path))?;
        self.file.sync_all().map_err(io(&self.path))?;
        self.len = good_len;
        Ok(())
    }

    /// Opens (creating the file and its directories) and loads every record, repairing
    /// a torn last line.
    pub fn open(path: &Path) -> Result<(AppendLog, Vec<Record>), DatastoreError> {
        let mut file = open_file(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(path))?;
        let scan = scan(path, &bytes)?;
        let mut log = AppendLog {
            file,
            path: path.to_path_buf(),
            len: bytes.len() as u64,
        };
        if scan.torn {
            log.repair(scan.good_len, bytes.len() as u64)?;
        }
        Ok((log, scan.records))
    }

    /// [`AppendLog::open_append`] for a file that this process last left `len` bytes
    /// long, ending with a whole line: if it is still that long, nothing of it is read
    /// (a file only grows by appends and shrinks by cutting a torn end, so the same
    /// length is the same whole lines) and its directory is not created again. Otherwise
    /// it is opened as by [`AppendLog::open_append`].
    pub fn open_append_at(path: &Path, len: u64) -> Result<AppendLog, DatastoreError> {
        if let Ok(file) = crate::private::options().read(true).append(true).open(path) {
            if file.metadata().map_err(io(path))?.len() == len {
                return Ok(AppendLog {
                    file,
                    path: path.to_path_buf(),
                    len,
                });
            }
        }
        AppendLog::open_append(path)
    }

    /// Opens for appending, reading only the end of the file to repair a torn last line.
    pub fn open_append(path: &Path) -> Result<AppendLog, DatastoreError> {
        let mut file = open_file(path)?;
        let len = file.metadata().map_err(io(path))?.len();
        if len == 0 {
            return Ok(AppendLog {
                file,
                path: path.to_path_buf(),
                len,
            });
        }
        let start = len.saturating_sub(TAIL_PROBE);
        file.seek(SeekFrom::Start(start)).map_err(io(path))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(io(path))?;
        // The probe must begin at a line start: the file start, or just after a newline.
        let skip = if start == 0 {
            0
        } else {
            match tail.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                // One line longer than the probe: fall back to a full scan.
                None => return AppendLog::open(path).map(|(log, _)| log),
            }
        };
        let base = start + skip as u64;
        let scan = match scan(path, &tail[skip..]) {
            Ok(s) => s,
            // Corruption before the last line is not ours to judge here; a full open
            // reports it with the right line number.
            Err(_) => return AppendLog::open(path).map(|(log, _)| log),
        };
        let mut log = AppendLog {
            file,
            path: path.to_path_buf(),
            len,
        };
        if scan.torn {
            log.repair(base + scan.good_len, len)?;
        }
        Ok(log)
    }

    /// Appends the records with one write. If the write fails part-way, the file is cut
    /// back to where it was, so a later append never lands after half a line.
    pub fn append(&mut self, records: &[Record]) -> Result<(), DatastoreError> {
        self.append_all(records)
    }

    /// [`AppendLog::append`] for records that are not in one slice.
    pub fn append_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<(), DatastoreError> {
        let mut buf = String::new();
        for r in records {
            buf.push_str(&r.encode_line());
        }
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(buf.as_bytes()) {
            let _ = self.file.set_len(self.len);
            return Err(io(&self.path)(e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far durable (fdatasync).
    pub fn sync(&self) -> Result<(), DatastoreError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    /// The same log, known by the name its file was renamed to.
    pub(crate) fn renamed(self, path: &Path) -> AppendLog {
        AppendLog {
            path: path.to_path_buf(),
            ..self
        }
    }

    /// A second handle on the file, for [`crate::segments::SegmentFlusher`].
    pub(crate) fn flusher_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every complete record of a file another process writes (a missing file is
/// empty). A torn last line is skipped, not repaired; corruption before it is an error.
pub fn read_records(path: &Path) -> Result<Vec<Record>, DatastoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    Ok(scan(path, &bytes)?.records)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tsn_protocol::{Change, Post, PostId};

    fn post(n: u64) -> Record {
        Record::Change(Change::Post(Post {
            id: PostId {
                author: 1,
                nonce: n,
            },
            ts_us: n as i64,
            text: format!("message {n}"),
        }))
    }

    #[test]
    fn a_file_reopened_at_its_known_length_appends_and_one_that_changed_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/timeline.data");
        let mut log = AppendLog::open_append(&p).unwrap();
        log.append(&[post(1), post(2)]).unwrap();
        let len = log.len();
        drop(log);
        let mut log = AppendLog::open_append_at(&p, len).unwrap();
        assert_eq!(log.len(), len);
        log.append(&[post(3)]).unwrap();
        let len = log.len();
        drop(log);
        assert_eq!(
            crate::read_records(&p).unwrap(),
            vec![post(1), post(2), post(3)]
        );
        // Torn behind the process's back: not the length it knows, so its end is read
        // and the torn line cut.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"post 1 4 4 torn").unwrap();
        drop(f);
        let mut log = AppendLog::open_append_at(&p, len).unwrap();
        assert_eq!(log.len(), len);
        log.append(&[post(4)]).unwrap();
        drop(log);
        assert_eq!(
            crate::read_records(&p).unwrap(),
            vec![post(1), post(2), post(3), post(4)]
        );
        // Gone meanwhile: created again, directory and all.
        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        let mut log = AppendLog::open_append_at(&p, len).unwrap();
        assert_eq!(log.len(), 0);
        log.append(&[post(5)]).unwrap();
        assert_eq!(crate::read_records(&p).unwrap(), vec![post(5)]);
    }

    #[test]
    fn torn_last_record_is_dropped_and_file_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/timeline.data");
        let (mut log, recs) = AppendLog::open(&p).unwrap();
        assert!(recs.is_empty());
        log.append(&[post(1), post(2), post(3)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let full = std::fs::read(&p).unwrap();
        let cut = full.len() - 5; // in the middle of the third record
        std::fs::write(&p, &full[..cut]).unwrap();

        let (mut log, recs) = AppendLog::open(&p).unwrap();
        assert_eq!(recs, vec![post(1), post(2)]);
        let good = post(1).encode_line().len() + post(2).encode_line().len();
        assert_eq!(std::fs::metadata(&p).unwrap().len() as usize, good);
        log.append(&[post(4)]).unwrap();
        drop(log);
        let (_, recs) = AppendLog::open(&p).unwrap();
        assert_eq!(recs, vec![post(1), post(2), post(4)]);
    }

    #[test]
    fn unparseable_complete_last_line_is_torn_but_middle_one_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.data");
        std::fs::write(&p, format!("{}post 1 2\n", post(1).encode_line())).unwrap();
        let (_, recs) = AppendLog::open(&p).unwrap();
        assert_eq!(recs, vec![post(1)]);
        std::fs::write(
            &p,
            format!(
                "{}garbage\n{}",
                post(1).encode_line(),
                post(2).encode_line()
            ),
        )
        .unwrap();
        match AppendLog::open(&p) {
            Err(DatastoreError::Corrupt { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(read_records(&p).is_err());
    }

    #[test]
    fn open_append_repairs_only_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.data");
        let mut text = String::new();
        for n in 0..2000 {
            text.push_str(&post(n).encode_line());
        }
        text.push_str("post 1 99 9 half a rec");
        std::fs::write(&p, &text).unwrap();
        let mut log = AppendLog::open_append(&p).unwrap();
        log.append(&[post(5000)]).unwrap();
        drop(log);
        let recs = read_records(&p).unwrap();
        assert_eq!(recs.len(), 2001);
        assert_eq!(recs.last(), Some(&post(5000)));
    }

    #[test]
    fn open_append_truncates_a_small_torn_file_and_reports_middle_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u/following.data");
        let good = format!("{}{}", post(1).encode_line(), post(2).encode_line());
        let torn = post(3).encode_line();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{good}{}", &torn[..torn.len() / 2])).unwrap();
        let mut log = AppendLog::open_append(&p).unwrap();
        assert_eq!(log.len() as usize, good.len());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), good);
        log.append(&[post(4)]).unwrap();
        drop(log);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{good}{}", post(4).encode_line())
        );

        // A complete but unparseable last line is torn too.
        std::fs::write(&p, format!("{good}post 9\n")).unwrap();
        let log = AppendLog::open_append(&p).unwrap();
        assert_eq!(log.len() as usize, good.len());

        std::fs::write(&p, format!("{good}bogus\n{good}")).unwrap();
        match AppendLog::open_append(&p) {
            Err(DatastoreError::Corrupt { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn read_records_skips_a_torn_tail_without_repairing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.data");
        assert!(read_records(&p).unwrap().is_empty());
        let text = format!("{}post 1 2 3 unfinish", post(1).encode_line());
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read_records(&p).unwrap(), vec![post(1)]);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }
}
