//! What this server's journal holds after the other server's cursor, read a chunk at a
//! time (so an exchange holds one chunk in memory, however far behind the other is); a
//! cursor for another journal, or before the oldest segment kept, gets the checkpointed
//! state and the segments kept instead (a state transfer).

use anyhow::{bail, Context};
use tsn_datastore::{Record, Tail};
use tsn_protocol::sync::Cursor;
use tsn_protocol::Change;

use super::{Mirror, EXCHANGE_CHUNK};

/// Reads what this server's journal holds after the other server's cursor, a chunk at a
/// time (so an exchange holds one chunk in memory, however far behind the other is).
pub(super) struct Outgoing {
    /// The checkpointed state still to send (a state transfer), in chunks.
    state: Vec<Change>,
    tail: Tail,
    /// Where the journal ended when the exchange began: what is sent reaches there.
    pub(super) end: Cursor,
    /// Whether this is a state transfer.
    pub(super) transfer: bool,
}

impl Outgoing {
    pub(super) async fn new(mirror: &Mirror, have: Cursor) -> anyhow::Result<Outgoing> {
        let feed = &mirror.journal;
        let segments = feed.segments();
        let end = Cursor {
            log_id: feed.log_id(),
            offset: feed.len(),
        };
        let from_cursor = have.log_id == end.log_id
            && have.offset >= segments.start()
            && have.offset <= end.offset;
        if from_cursor {
            return Ok(Outgoing {
                state: Vec::new(),
                tail: Tail::over(segments, have.offset),
                end,
                transfer: false,
            });
        }
        let dir = mirror.node.dir.clone();
        let state = tokio::task::spawn_blocking(move || crate::checkpoint::load(&dir))
            .await
            .context("checkpoint reader panicked")??
            .map(|cp| cp.state.own)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| match r {
                Record::Change(c) => Some(c),
                Record::Deliver { .. } => None,
            })
            .collect();
        let start = segments.start();
        Ok(Outgoing {
            state,
            tail: Tail::over(segments, start),
            end,
            transfer: true,
        })
    }

    /// The next chunk, or `None` once the journal as it was at the start is sent.
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<Vec<Change>>> {
        if !self.state.is_empty() {
            let n = self.state.len().min(EXCHANGE_CHUNK);
            return Ok(Some(self.state.drain(..n).collect()));
        }
        if self.tail.offset() >= self.end.offset {
            return Ok(None);
        }
        let mut tail = std::mem::replace(&mut self.tail, Tail::new("", 0));
        let (tail, read) = tokio::task::spawn_blocking(move || {
            let r = tail.read_new(EXCHANGE_CHUNK);
            (tail, r)
        })
        .await
        .context("journal reader panicked")?;
        self.tail = tail;
        let records = read?;
        if records.is_empty() {
            bail!(
                "the journal ended at {} before its length {}",
                self.tail.offset(),
                self.end.offset
            );
        }
        Ok(Some(
            records
                .into_iter()
                .filter_map(|r| match r {
                    Record::Change(c) => Some(c),
                    Record::Deliver { .. } => None,
                })
                .collect(),
        ))
    }
}
