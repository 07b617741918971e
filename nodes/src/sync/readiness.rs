//! The sync service's `/ready`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::link::Membership;

/// Keeps `/ready` true exactly while this sync service is registered, has read each of
/// its feeds (its servers' journals, every cluster's outbox) to the end since it learned
/// where that feed's writer is, or found it down, and its clock is within
/// `max_clock_offset` of the coordinator's.
pub(super) async fn readiness(
    metrics: Arc<crate::metrics::Metrics>,
    mut members: watch::Receiver<Membership>,
    mut feeds: Vec<watch::Receiver<bool>>,
    max_clock_offset: std::time::Duration,
) {
    metrics.set_ready(Some("not registered with the coordinator yet".into()));
    if members.wait_for(|m| m.beat.is_some()).await.is_err() {
        return;
    }
    let mut was_ready = false;
    loop {
        let behind = feeds
            .iter_mut()
            .map(|f| *f.borrow_and_update())
            .filter(|done| !done)
            .count();
        let why = match members.borrow_and_update().clock_off(max_clock_offset) {
            Some(off) => Some(off),
            None => (behind > 0).then(|| format!("{behind} of its feeds not read to the end yet")),
        };
        let ready = why.is_none();
        metrics.set_ready(why);
        if ready && !was_ready {
            tracing::info!("ready");
        }
        was_ready = ready;
        let changes = feeds.iter_mut().map(|f| Box::pin(f.changed()));
        tokio::select! {
            r = futures_select_all(changes) => if r.is_err() { return },
            r = members.changed() => if r.is_err() { return },
        }
    }
}

/// Waits for the first of `futs` to finish.
async fn futures_select_all<F>(futs: impl Iterator<Item = F>) -> Result<(), watch::error::RecvError>
where
    F: std::future::Future<Output = Result<(), watch::error::RecvError>> + Unpin,
{
    let mut futs: Vec<F> = futs.collect();
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(r) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(r);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
