//! What the server and the sync service do alike when they start: a clean exit leaves a
//! marker; without one, the view files are completed from the records of the logs after
//! the last checkpoint.

use anyhow::Context;
use tsn_datastore::{Record, RoleDir};

use crate::views::Side;

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
