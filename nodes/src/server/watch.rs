//! Follows the sync service's journal and pushes deliveries to open timelines.
//!
//! The server is told of changes by file-system notifications on the sync role
//! directory (inotify on Linux), so a delivery reaches an open timeline as soon as the
//! sync service has written it. A slow sweep ([`SAFETY_SWEEP`]) covers notifications
//! lost to an overflowing kernel queue.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::Watcher;
use tokio::sync::mpsc;
use tsn_datastore::Tail;

use super::Shared;

/// Interval of the sweep that runs even without notifications.
pub const SAFETY_SWEEP: Duration = Duration::from_secs(5);
/// Records applied per lock of the model.
const CHUNK: usize = 4096;

/// Loads the sync journal into the model, then follows it in a task.
pub fn load_and_follow(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut tail = Tail::new(shared.sync_dir.journal(), 0);
    let loaded = drain(&shared, &mut tail)?;
    tracing::info!(records = loaded, "sync journal loaded");

    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    })
    .context("starting the file watcher")?;
    watcher
        .watch(shared.sync_dir.path(), notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", shared.sync_dir.path().display()))?;
    tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = rx.recv() => {}
                _ = tokio::time::sleep(SAFETY_SWEEP) => {}
            }
            if let Err(e) = drain(&shared, &mut tail) {
                tracing::error!("reading the sync journal failed: {e:#}");
                tokio::time::sleep(SAFETY_SWEEP).await;
            }
        }
    });
    Ok(())
}

fn drain(shared: &Shared, tail: &mut Tail) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let records = tail.read_new(CHUNK)?;
        if records.is_empty() {
            return Ok(total);
        }
        total += records.len();
        let entries: Vec<_> = {
            let mut model = shared.model.lock().unwrap_or_else(|e| e.into_inner());
            records.iter().filter_map(|r| model.apply_sync(r)).collect()
        };
        shared.publish(entries);
    }
}
