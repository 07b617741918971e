//! What the server and the sync service do alike when they start: a clean exit leaves a
//! marker; without one, the view files are completed from the records of the logs after
//! the last checkpoint.

use anyhow::Context;
use tsn_datastore::{Record, RoleDir};

use crate::views::Side;

/// Says in the log what a start loaded: the last checkpoint's offsets into the journal
/// and into the role's other log (`other`: `received` or `outbox`), the records of each
/// after them, and how long it took since `started`.
pub fn log_loaded(
    other: &str,
    checkpoint: (u64, u64),
    records: (usize, usize),
    started: std::time::Instant,
) {
    tracing::info!(
        checkpoint_journal = checkpoint.0,
        checkpoint_other = checkpoint.1,
        other_log = other,
        journal = records.0,
        other = records.1,
        took_ms = started.elapsed().as_millis() as u64,
        "state loaded: the last checkpoint and the records after it"
    );
}

/// Removes the clean-shutdown marker of `dir`; when there was none, completes the view
/// files from `logs` (the records after the last checkpoint). Views are derived from the
/// logs: failing to complete them (a full disk, say) is worth an error in the log, not a
/// refusal to start.
pub fn complete_unless_clean(dir: &RoleDir, logs: &[(Side, &[Record])]) -> anyhow::Result<()> {
    if dir.clean_marker().exists() {
        std::fs::remove_file(dir.clean_marker()).context("removing clean-shutdown marker")?;
        return Ok(());
    }
    if logs.iter().all(|(_, records)| records.is_empty()) {
        return Ok(());
    }
    match crate::views::reconcile(dir, logs) {
        Ok(n) => tracing::info!(files = n, "previous exit was not clean: completed the view files from the records after the last checkpoint"),
        Err(e) => tracing::error!("previous exit was not clean and completing the view files failed; going on from the logs: {e}"),
    }
    Ok(())
}
