//! The sync service's start: the last checkpoint and both logs after it, the view files
//! completed when the last exit was not clean.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tsn_datastore::{Cursors, Record, RoleDir};
use tsn_protocol::coord::NodeKind;
use tsn_protocol::ClusterId;

use super::logs::{self, Served, ServedLog};
use super::seen::TimelineFiles;
use super::{SyncState, ID_WINDOW};
use crate::checkpoint;
use crate::feed::Reader;
use crate::views::{Side, Views};
use crate::window::Window;

impl SyncState {
    /// Opens the role directory `dir`: the last checkpoint and both logs after it
    /// (completing the view files when the last exit was not clean).
    pub fn open(
        dir: RoleDir,
        cluster: ClusterId,
        clusters: u32,
        checkpoint_bytes: u64,
        max_clock_offset: std::time::Duration,
    ) -> anyhow::Result<SyncState> {
        let started = std::time::Instant::now();
        dir.create()?;
        let cp = checkpoint::load(&dir)?.unwrap_or_default();
        let last_size = std::fs::metadata(checkpoint::path(&dir)).map_or(0, |m| m.len());
        let syncs: Vec<Reader> = (1..=clusters).map(|c| (c, NodeKind::Sync)).collect();
        let servers = vec![(cluster, NodeKind::Primary), (cluster, NodeKind::Secondary)];
        let open = |log: Served, from: u64, readers: Vec<Reader>| {
            let (d, path) = (
                dir.clone(),
                match log {
                    Served::Outbox => dir.outbox(),
                    Served::Journal => dir.journal(),
                },
            );
            ServedLog::open(
                &path,
                from,
                readers,
                Arc::new(move || logs::transfer(&d, log)),
            )
        };
        let (outbox, out_records) = open(Served::Outbox, cp.other, syncs)?;
        let (journal, records) = open(Served::Journal, cp.journal, servers)?;
        let cursors = Cursors::load(&dir.cursors())?;
        crate::recovery::complete_unless_clean(&dir, &[(Side::Sync, &records)])?;
        let mut core = SyncState {
            cluster,
            clusters,
            views: Views::new(dir.clone(), Side::Sync),
            dir: dir.clone(),
            outbox,
            journal,
            cursors,
            checkpoint_bytes,
            max_clock_offset_us: i64::try_from(max_clock_offset.as_micros()).unwrap_or(i64::MAX),
            last: (cp.journal, cp.other, last_size),
            max_ts: cp.clock,
            out_users: HashSet::new(),
            out_posts: Window::new(ID_WINDOW, cp.clock),
            following: HashMap::new(),
            users: HashSet::new(),
            followers: HashMap::new(),
            delivered: Window::new(ID_WINDOW, cp.clock),
            last_seq: HashMap::new(),
            seen: Box::new(TimelineFiles::new(dir.clone())),
            uncommitted: Vec::new(),
        };
        for r in &cp.state.received {
            if let Record::Change(c) = r {
                core.note_local(c);
            }
        }
        for r in &cp.state.own {
            core.note_delivered(r);
        }
        for (user, seq) in &cp.state.seqs {
            core.last_seq.insert(*user, *seq);
        }
        for r in &out_records {
            if let Record::Change(c) = r {
                core.note_local(c);
            }
        }
        for r in &records {
            core.note_delivered(r);
        }
        let counts = (records.len(), out_records.len());
        crate::recovery::log_loaded("outbox", (cp.journal, cp.other), counts, started);
        Ok(core)
    }
}
