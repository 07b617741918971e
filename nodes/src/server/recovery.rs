//! A server's start: its state is the last checkpoint and the records of its own logs
//! after it; the view files are completed from those records unless the last exit was
//! clean.

use anyhow::Context;
use tsn_datastore::{Record, RoleDir, SegmentedLog};

use super::inbound::Inbound;
use super::model::Model;
use crate::checkpoint::{self, Checkpoint};
use crate::feed::FeedSource;
use crate::hlc::Hlc;

/// What a server starts from.
#[derive(Debug)]
pub struct Recovered {
    /// The last checkpoint (the default when there is none).
    pub checkpoint: Checkpoint,
    /// The journal, open for appending.
    pub journal: SegmentedLog,
    /// The journal's id.
    pub journal_id: u64,
    /// The received feed's writer.
    pub inbound: Inbound,
    /// The state in memory.
    pub model: Model,
    /// The clock, past every timestamp recovered.
    pub clock: Hlc,
}

/// Recovers the server whose role directory is `dir`; `clock` starts the clock.
pub fn recover(dir: &RoleDir, clock: Hlc) -> anyhow::Result<Recovered> {
    let started = std::time::Instant::now();
    let cp = checkpoint::load(dir)?.unwrap_or_default();
    let (journal, records) = SegmentedLog::open(&dir.journal(), cp.journal)
        .with_context(|| format!("loading journal {}", dir.journal().display()))?;
    let journal_id = tsn_datastore::log_id(&dir.journal())
        .with_context(|| format!("reading the id of {}", dir.journal().display()))?;
    let (inbound, received) = Inbound::open(dir, cp.other)
        .with_context(|| format!("loading {}", dir.received().display()))?;
    let logs = [
        (crate::views::Side::Server, records.as_slice()),
        (crate::views::Side::Received, received.as_slice()),
    ];
    crate::recovery::complete_unless_clean(dir, &logs)?;
    let mut model = Model::default();
    model.restore(&cp.state);
    clock.observe(cp.clock);
    for r in &records {
        if let Record::Change(c) = r {
            clock.observe_change(c);
            model.apply_own(c);
        }
    }
    for r in &received {
        observe_record(&clock, r);
        model.apply_sync(r);
    }
    let counts = (records.len(), received.len());
    crate::recovery::log_loaded("received", (cp.journal, cp.other), counts, started);
    Ok(Recovered {
        checkpoint: cp,
        journal,
        journal_id,
        inbound,
        model,
        clock,
    })
}

/// Advances `clock` past the timestamp a record carries.
pub fn observe_record(clock: &Hlc, r: &Record) {
    match r {
        Record::Change(c) => clock.observe_change(c),
        Record::Deliver { post, .. } => clock.observe(post.ts_us),
    }
}

/// Everything this cluster's servers stored that this server still has: the last
/// checkpoint's users, follow edges and keys, then the journal segments kept (what the
/// mirror exchange sends the other server, and what the view files of this server's own
/// changes are rebuilt from).
pub fn own_records(dir: &RoleDir, journal: &FeedSource) -> anyhow::Result<Vec<Record>> {
    let mut records = checkpoint::load(dir)?
        .map(|cp| cp.state.own)
        .unwrap_or_default();
    let segments = journal.segments();
    records.extend(SegmentedLog::read_from(&segments, segments.start())?);
    Ok(records)
}

/// What the sync service gets instead of this server's journal when its cursor lies
/// before the oldest segment kept (its disk was lost): the last checkpoint's users,
/// follow edges and keys, and every post of this cluster's users that reached their own
/// timeline files; the posts after those are in the segments kept, which follow.
pub fn journal_transfer(dir: &RoleDir) -> anyhow::Result<Vec<Record>> {
    let own = checkpoint::load(dir)?
        .map(|cp| cp.state.own)
        .unwrap_or_default();
    let mut records = Vec::with_capacity(own.len());
    for r in own {
        if let Record::Change(tsn_protocol::Change::User { user }) = &r {
            for d in tsn_datastore::read_records(&dir.timeline(*user))? {
                if let Record::Deliver { to, post, .. } = d {
                    if post.id.author == to {
                        records.push(Record::Change(tsn_protocol::Change::Post(post)));
                    }
                }
            }
        }
        records.push(r);
    }
    Ok(records)
}
