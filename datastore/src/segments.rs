//! Logs kept as segments, so that their old parts can be deleted.
//!
//! A segmented log is one stream of records addressed by *logical* byte offsets that never
//! change. Its newest part, the active segment, is the file the log is named after
//! (`journal.data`); older parts are sealed segments named after the logical offset they
//! begin at (`journal.00000000000000123456.data`). The active segment's own starting
//! offset is kept in `journal.data.base`.
//!
//! The writer seals the active segment ([`SegmentedLog::rotate`]) when a checkpoint has
//! captured everything before it, and deletes sealed segments
//! ([`SegmentedLog::delete_through`]) once nobody needs them any more. Readers in the same
//! process go through a [`Segments`] table shared with the writer, so a rotation never
//! shows them a half-renamed file; a reader whose offset lies before the oldest segment
//! kept gets [`DatastoreError::Compacted`] and must be given the checkpointed state
//! instead.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::atomic::{write_atomic, Durability};
use crate::error::{io, DatastoreError};
use crate::log::AppendLog;
use crate::record::{Record, RecordLine};

/// Where one segment lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The segment's file.
    pub path: PathBuf,
    /// The logical offset of its first byte.
    pub base: u64,
    /// The logical offset just past its last byte, if it is sealed (the active segment
    /// grows).
    pub end: Option<u64>,
}

#[derive(Debug)]
struct Table {
    /// The active segment's file.
    active: PathBuf,
    /// Its logical offset.
    active_base: u64,
    /// Sealed segments, oldest first: (base, file).
    sealed: Vec<(u64, PathBuf)>,
}

impl Table {
    fn start(&self) -> u64 {
        self.sealed.first().map_or(self.active_base, |s| s.0)
    }

    fn locate(&self, offset: u64) -> Option<Located> {
        if offset >= self.active_base {
            return Some(Located {
                path: self.active.clone(),
                base: self.active_base,
                end: None,
            });
        }
        let i = self.sealed.iter().rposition(|s| s.0 <= offset)?;
        let end = self.sealed.get(i + 1).map_or(self.active_base, |s| s.0);
        Some(Located {
            path: self.sealed[i].1.clone(),
            base: self.sealed[i].0,
            end: Some(end),
        })
    }
}

/// The segments of one log, shared between its writer and readers in the same process.
#[derive(Debug, Clone)]
pub struct Segments(Arc<RwLock<Table>>);

impl Segments {
    /// A log that is one plain file (never rotated).
    pub fn single(path: impl Into<PathBuf>) -> Segments {
        Segments(Arc::new(RwLock::new(Table {
            active: path.into(),
            active_base: 0,
            sealed: Vec::new(),
        })))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The oldest logical offset still on disk.
    pub fn start(&self) -> u64 {
        self.read().start()
    }

    /// The active segment's file (the log's name).
    pub fn path(&self) -> PathBuf {
        self.read().active.clone()
    }

    /// The segment holding logical offset `offset` (`None`: it was deleted).
    pub fn locate(&self, offset: u64) -> Option<Located> {
        self.read().locate(offset)
    }

    /// Opens the segment holding `offset` while no rotation can rename it: the file and
    /// where it lies. `Ok(None)`: not created yet.
    pub fn open_at(&self, offset: u64) -> Result<Option<(File, Located)>, DatastoreError> {
        let table = self.read();
        let Some(at) = table.locate(offset) else {
            return Err(DatastoreError::Compacted {
                path: table.active.clone(),
                offset,
                start: table.start(),
            });
        };
        match File::open(&at.path) {
            Ok(f) => Ok(Some((f, at))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&at.path)(e)),
        }
    }
}

/// The file of the sealed segment of the log at `path` that begins at `base`.
pub fn segment_path(path: &Path, base: u64) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("log");
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, "data"));
    path.with_file_name(format!("{stem}.{base:020}.{ext}"))
}

/// The file holding the active segment's logical offset.
fn base_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".base");
    path.with_file_name(name)
}

/// The sealed segments of the log at `path` found on disk, oldest first.
fn sealed_on_disk(path: &Path) -> Result<Vec<(u64, PathBuf)>, DatastoreError> {
    let dir = dir_of(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("log");
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, "data"));
    let (prefix, suffix) = (format!("{stem}."), format!(".{ext}"));
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let digits = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix));
        if let Some(base) = digits
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        {
            found.push((base, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn file_len(path: &Path) -> Result<u64, DatastoreError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(io(path))
}

/// The directory holding `path`.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Every complete record of `path` from byte `from` of the file on (a torn last line is
/// left out).
fn read_file_from(path: &Path, from: u64) -> Result<Vec<Record>, DatastoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    let mut records = Vec::new();
    for (line, chunk) in bytes[from..].split_inclusive(|&b| b == b'\n').enumerate() {
        let line = line + 1;
        let Some(body) = chunk.strip_suffix(b"\n") else {
            break; // torn tail
        };
        records.push(
            Record::decode_bytes(body).map_err(|e| DatastoreError::Corrupt {
                path: path.to_path_buf(),
                line: 0,
                reason: format!("record {line} after byte {from}: {e}"),
            })?,
        );
    }
    Ok(records)
}

/// Every record of the sealed segments (oldest first; the active one begins at
/// `active_base`) from logical offset `from` on.
fn read_sealed_from(
    sealed: &[(u64, PathBuf)],
    active_base: u64,
    from: u64,
) -> Result<Vec<Record>, DatastoreError> {
    let mut records = Vec::new();
    for (i, (base, file)) in sealed.iter().enumerate() {
        let end = sealed.get(i + 1).map_or(active_base, |s| s.0);
        if end > from {
            records.extend(read_file_from(file, from.saturating_sub(*base))?);
        }
    }
    Ok(records)
}

/// Flushes a [`SegmentedLog`]'s active segment from another thread; follows rotations.
#[derive(Debug, Clone)]
pub struct SegmentFlusher {
    file: Arc<Mutex<File>>,
    path: PathBuf,
}

impl SegmentFlusher {
    /// Makes everything appended so far durable (fdatasync). Sealed segments were made
    /// durable when they were sealed.
    pub fn sync(&self) -> Result<(), DatastoreError> {
        let f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.sync_data().map_err(io(&self.path))
    }
}

/// The writer of a segmented log.
#[derive(Debug)]
pub struct SegmentedLog {
    segments: Segments,
    active: AppendLog,
    flush: Arc<Mutex<File>>,
}

impl SegmentedLog {
    /// Opens the log whose active segment is `path` (creating it), repairing a torn last
    /// line, and returns every record from logical offset `from` on.
    pub fn open(path: &Path, from: u64) -> Result<(SegmentedLog, Vec<Record>), DatastoreError> {
        let sealed = sealed_on_disk(path)?;
        let mut base = match std::fs::read_to_string(base_path(path)) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| DatastoreError::Corrupt {
                    path: base_path(path),
                    line: 1,
                    reason: e.to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&base_path(path))(e)),
        };
        if let Some((last, file)) = sealed.last() {
            if *last >= base {
                // Sealed, but stopped before the new active segment's offset was written.
                base = last + file_len(file)?;
                write_atomic(
                    &base_path(path),
                    format!("{base}\n").as_bytes(),
                    Durability::Sync,
                )?;
            }
        }
        let (active, active_records) = AppendLog::open(path)?;
        let mut records = read_sealed_from(&sealed, base, from)?;
        if from <= base {
            records.extend(active_records);
        } else {
            records.extend(read_file_from(path, from - base)?);
        }
        let flush = Arc::new(Mutex::new(active.flusher_file().map_err(io(path))?));
        Ok((
            SegmentedLog {
                segments: Segments(Arc::new(RwLock::new(Table {
                    active: path.to_path_buf(),
                    active_base: base,
                    sealed,
                }))),
                active,
                flush,
            },
            records,
        ))
    }

    /// The table readers go through.
    pub fn segments(&self) -> Segments {
        self.segments.clone()
    }

    /// The logical offset just past the last record.
    pub fn len(&self) -> u64 {
        self.segments.read().active_base + self.active.len()
    }

    /// Whether nothing was ever appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest logical offset still on disk.
    pub fn start(&self) -> u64 {
        self.segments.start()
    }

    /// The active segment's file.
    pub fn path(&self) -> &Path {
        self.active.path()
    }

    /// Appends with one write (see [`AppendLog::append`]).
    pub fn append(&mut self, records: &[Record]) -> Result<(), DatastoreError> {
        self.active.append(records)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<(), DatastoreError> {
        self.active.sync()
    }

    /// A handle that flushes the active segment from another thread.
    pub fn flusher(&self) -> SegmentFlusher {
        SegmentFlusher {
            file: self.flush.clone(),
            path: self.active.path().to_path_buf(),
        }
    }

    /// Seals the active segment (if it holds anything) and begins a new one at the
    /// current end; returns that offset. Everything appended before is durable after.
    ///
    /// Every file the rotation needs is opened before anything is renamed, and the two
    /// renames are undone if the second fails: a failure (out of descriptors, a full disk)
    /// leaves the log either as it was or sealed, never without its active segment, so
    /// appends go on and the next rotation works. A new offset file that could not be
    /// written after the seal is derived again at the next [`SegmentedLog::open`].
    pub fn rotate(&mut self) -> Result<u64, DatastoreError> {
        let end = self.len();
        if self.active.is_empty() {
            return Ok(end);
        }
        self.active.sync()?;
        let path = self.active.path().to_path_buf();
        let mut next_name = path.file_name().unwrap_or_default().to_os_string();
        next_name.push(".next");
        let next_path = path.with_file_name(next_name);
        // Left by a crash during an earlier rotation, if at all.
        let _ = std::fs::remove_file(&next_path);
        let next = AppendLog::open_append(&next_path)?;
        let opened = next
            .flusher_file()
            .and_then(|flush| Ok((flush, File::open(dir_of(&path))?)));
        let (flush, dir) = match opened {
            Ok(files) => files,
            Err(e) => {
                let _ = std::fs::remove_file(&next_path);
                return Err(io(&next_path)(e));
            }
        };
        let mut table = self.segments.0.write().unwrap_or_else(|e| e.into_inner());
        let sealed = segment_path(&path, table.active_base);
        if let Err(e) = std::fs::rename(&path, &sealed) {
            let _ = std::fs::remove_file(&next_path);
            return Err(io(&path)(e));
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let placed = crate::failpoint::check(&format!("seal-{name}"), &path)
            .and_then(|()| std::fs::rename(&next_path, &path).map_err(io(&path)));
        if let Err(e) = placed {
            // Renames need no descriptor: the segment goes back to being the active one.
            let _ = std::fs::rename(&sealed, &path);
            let _ = std::fs::remove_file(&next_path);
            return Err(e);
        }
        let base = table.active_base;
        table.sealed.push((base, sealed));
        table.active_base = end;
        *self.flush.lock().unwrap_or_else(|e| e.into_inner()) = flush;
        self.active = next.renamed(&path);
        write_atomic(
            &base_path(&path),
            format!("{end}\n").as_bytes(),
            Durability::Sync,
        )?;
        dir.sync_all().map_err(io(dir_of(&path)))?;
        Ok(end)
    }

    /// Deletes the sealed segments that end at or before `offset`; returns how many bytes
    /// that freed.
    pub fn delete_through(&mut self, offset: u64) -> Result<u64, DatastoreError> {
        {
            // Called after every batch: most of the time there is nothing to delete, and
            // readers need not wait for the write lock to learn that.
            let t = self.segments.read();
            let first_end = t.sealed.get(1).map_or(t.active_base, |s| s.0);
            if t.sealed.is_empty() || first_end > offset {
                return Ok(0);
            }
        }
        let mut table = self.segments.0.write().unwrap_or_else(|e| e.into_inner());
        let mut freed = 0;
        while let Some((base, file)) = table.sealed.first().cloned() {
            let end = table.sealed.get(1).map_or(table.active_base, |s| s.0);
            if end > offset {
                break;
            }
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&file)(e)),
            }
            freed += end - base;
            table.sealed.remove(0);
        }
        Ok(freed)
    }

    /// Every record from logical offset `from` on, read from disk (for a reader that
    /// needs them all at once).
    pub fn read_from(segments: &Segments, from: u64) -> Result<Vec<Record>, DatastoreError> {
        let (sealed, active, base) = {
            let t = segments.read();
            (t.sealed.clone(), t.active.clone(), t.active_base)
        };
        let mut records = read_sealed_from(&sealed, base, from)?;
        records.extend(read_file_from(&active, from.saturating_sub(base))?);
        Ok(records)
    }

    /// Bytes of every segment on disk.
    pub fn bytes_on_disk(&self) -> u64 {
        let t = self.segments.read();
        let sealed: u64 = t
            .sealed
            .iter()
            .enumerate()
            .map(|(i, s)| t.sealed.get(i + 1).map_or(t.active_base, |n| n.0) - s.0)
            .sum();
        sealed + self.active.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tail::Tail;
    use tsn_protocol::Change;

    fn user(u: u32) -> Record {
        Record::Change(Change::User { user: u })
    }

    /// `journal.data` in a temporary directory, holding `user 1`.
    fn journal_with_one_user() -> (tempfile::TempDir, PathBuf, SegmentedLog) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.data");
        let (mut log, _) = SegmentedLog::open(&p, 0).unwrap();
        log.append(&[user(1)]).unwrap();
        (dir, p, log)
    }

    #[test]
    fn offsets_survive_rotation_deletion_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.data");
        let (mut log, recs) = SegmentedLog::open(&p, 0).unwrap();
        assert!(recs.is_empty());
        log.append(&[user(1), user(2)]).unwrap();
        let first = log.rotate().unwrap();
        assert_eq!(first, 14);
        assert!(segment_path(&p, 0).exists());
        log.append(&[user(3)]).unwrap();
        let second = log.rotate().unwrap();
        log.append(&[user(4)]).unwrap();
        assert_eq!(log.len(), 28);

        let segs = log.segments();
        let mut tail = Tail::over(segs.clone(), 0);
        assert_eq!(
            tail.read_new(10).unwrap(),
            vec![user(1), user(2)],
            "one segment at a time"
        );
        assert_eq!(tail.read_new(10).unwrap(), vec![user(3)]);
        assert_eq!(tail.read_new(10).unwrap(), vec![user(4)]);
        assert_eq!(tail.offset(), 28);

        assert_eq!(log.delete_through(first).unwrap(), 14);
        assert_eq!(log.start(), first);
        assert!(!segment_path(&p, 0).exists());
        assert!(matches!(
            Tail::over(segs.clone(), 7).read_new(10),
            Err(DatastoreError::Compacted { start: 14, .. })
        ));
        assert_eq!(
            SegmentedLog::read_from(&segs, first).unwrap(),
            vec![user(3), user(4)]
        );
        drop(log);

        let (log, recs) = SegmentedLog::open(&p, second).unwrap();
        assert_eq!(recs, vec![user(4)]);
        assert_eq!(log.len(), 28);
        assert_eq!(log.start(), first);
        let (_, recs) = SegmentedLog::open(&p, first).unwrap();
        assert_eq!(recs, vec![user(3), user(4)]);
    }

    #[test]
    fn a_rotation_that_fails_leaves_the_log_as_it_was_and_the_next_one_works() {
        let (dir, p, mut log) = journal_with_one_user();
        // The new active segment cannot be created.
        let next = dir.path().join("journal.data.next");
        std::fs::create_dir_all(next.join("x")).unwrap();
        assert!(log.rotate().is_err());
        assert!(p.exists() && !segment_path(&p, 0).exists());
        log.append(&[user(2)]).unwrap();
        std::fs::remove_dir_all(&next).unwrap();
        let end = log.rotate().unwrap();
        assert_eq!(end, 14);
        log.append(&[user(3)]).unwrap();
        assert!(!next.exists());
        drop(log);
        let (log, recs) = SegmentedLog::open(&p, 0).unwrap();
        assert_eq!(recs, vec![user(1), user(2), user(3)]);
        assert_eq!(log.len(), 21);
    }

    #[test]
    fn a_reader_at_the_end_of_the_active_segment_follows_a_rotation() {
        let (_dir, _, mut log) = journal_with_one_user();
        let mut tail = Tail::over(log.segments(), 0);
        assert_eq!(tail.read_new(10).unwrap(), vec![user(1)]);
        log.rotate().unwrap();
        log.append(&[user(2)]).unwrap();
        assert_eq!(tail.read_new(10).unwrap(), vec![user(2)]);
    }

    #[test]
    fn a_stop_between_sealing_and_recording_the_new_base_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("received.data");
        let (mut log, _) = SegmentedLog::open(&p, 0).unwrap();
        log.append(&[user(1)]).unwrap();
        log.sync().unwrap();
        drop(log);
        // The rename happened, the base file was not written.
        std::fs::rename(&p, segment_path(&p, 0)).unwrap();
        let (mut log, recs) = SegmentedLog::open(&p, 0).unwrap();
        assert_eq!(recs, vec![user(1)]);
        assert_eq!(log.len(), 7);
        log.append(&[user(2)]).unwrap();
        drop(log);
        let (_, recs) = SegmentedLog::open(&p, 0).unwrap();
        assert_eq!(recs, vec![user(1), user(2)]);
    }
}
