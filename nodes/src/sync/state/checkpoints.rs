//! The sync service's checkpoints: when one is due, taking it, and deleting the segments
//! it covers once every reader has read them.

use tsn_datastore::Record;
use tsn_protocol::{Change, UserId};

use super::{Edge, SyncState};
use crate::checkpoint::{self, Checkpoint, Checkpointed};

/// A log that holds this many checkpoint intervals some reader has not read is reported
/// at each checkpoint.
pub const UNREAD_WARN_INTERVALS: u64 = 16;

impl SyncState {
    /// The state a checkpoint keeps.
    fn checkpointed(&self) -> Checkpointed {
        let user = |u: &UserId| Record::Change(Change::User { user: *u });
        let follow = |followee: UserId, follower: UserId, (ts_us, active): Edge| {
            Record::Change(Change::Follow {
                follower,
                followee,
                ts_us,
                active,
            })
        };
        let mut own: Vec<Record> = self.users.iter().map(user).collect();
        own.extend(
            self.followers
                .iter()
                .map(|((followee, follower), e)| follow(*followee, *follower, *e)),
        );
        let mut received: Vec<Record> = self.out_users.iter().map(user).collect();
        received.extend(self.following.iter().flat_map(|(followee, m)| {
            m.iter()
                .map(move |(follower, e)| follow(*followee, *follower, *e))
        }));
        Checkpointed::new(own, received, &self.last_seq)
    }

    /// Whether both logs together have grown by `--checkpoint-bytes` (and by the last
    /// checkpoint's size) since the last checkpoint.
    fn checkpoint_due(&self) -> bool {
        let grown = self.journal.log.len().saturating_sub(self.last.0)
            + self.outbox.log.len().saturating_sub(self.last.1);
        grown >= self.checkpoint_bytes.max(self.last.2)
    }

    /// Takes a checkpoint if one is due ([`SyncState::checkpoint_due`]); otherwise deletes
    /// the segments the last one covers that slow readers have read since. Called after
    /// each batch taken.
    pub fn maybe_checkpoint(&mut self) {
        if !self.checkpoint_due() {
            // Segments the last checkpoint covers that a slow reader has read since.
            let warn_over = u64::MAX;
            let deleted = self
                .journal
                .delete_read(self.last.0, warn_over)
                .and_then(|()| self.outbox.delete_read(self.last.1, warn_over));
            if let Err(e) = deleted {
                tracing::warn!("deleting segments read since the checkpoint: {e}");
            }
            return;
        }
        let journal_len = self.journal.log.len();
        let outbox_len = self.outbox.log.len();
        if let Err(e) = self.checkpoint() {
            tracing::error!("checkpoint failed (the logs are kept; retrying later): {e:#}");
            self.last.0 = journal_len;
            self.last.1 = outbox_len;
        }
    }

    fn checkpoint(&mut self) -> anyhow::Result<()> {
        // The checkpoint covers the logs to their ends: all of it durable first.
        self.commit()?;
        // The journal after the last checkpoint holds what a view file still lacks: none
        // is taken while a file is owed records.
        anyhow::Context::context(
            self.views.repair(),
            "completing a view file that a write failed",
        )?;
        let state = self.checkpointed();
        let journal = self.journal.log.rotate()?;
        let outbox = self.outbox.log.rotate()?;
        crate::views::make_durable(&self.dir)?;
        let cp = Checkpoint {
            journal,
            other_name: "outbox".into(),
            other: outbox,
            clock: self.max_ts,
            state,
        };
        let size = checkpoint::save(&self.dir, &cp)?;
        let warn_over = self.checkpoint_bytes.saturating_mul(UNREAD_WARN_INTERVALS);
        self.journal.delete_read(journal, warn_over)?;
        self.outbox.delete_read(outbox, warn_over)?;
        tracing::debug!(journal, outbox, bytes = size, "checkpoint written");
        self.last = (journal, outbox, size);
        Ok(())
    }
}
