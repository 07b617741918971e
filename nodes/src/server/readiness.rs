//! The server's `/ready`.

use std::sync::Arc;

use tokio::sync::watch as tokio_watch;

use super::Shared;

/// Keeps `/ready` true exactly while this server is registered, knows its role, has read
/// its sync service's journal to the end since it learned where that is (or found it
/// down), when the coordinator names a live peer server, mirrors with it, and its clock
/// is within `max_clock_offset` of the coordinator's.
pub(super) async fn readiness(
    shared: Arc<Shared>,
    mut members: tokio_watch::Receiver<crate::link::Membership>,
    mut settled: tokio_watch::Receiver<bool>,
    max_clock_offset: std::time::Duration,
) {
    let mut role = shared.role.subscribe();
    let mut mirroring = shared.mirroring.subscribe();
    loop {
        let (registered, clock_off) = {
            let m = members.borrow_and_update();
            (m.beat.is_some(), m.clock_off(max_clock_offset))
        };
        let caught_up = *settled.borrow_and_update();
        let peer = role.borrow_and_update().peer.clone();
        let mirrored = *mirroring.borrow_and_update();
        let why = match (registered, caught_up) {
            (false, _) => Some("not registered with the coordinator yet".to_string()),
            (true, false) => Some("catching up from the sync service".to_string()),
            (true, true) => match peer {
                Some(p) if !mirrored => Some(format!("setting up mirroring with {p}")),
                _ => clock_off,
            },
        };
        if why.is_none() && shared.metrics.not_ready().is_some() {
            tracing::info!(active = shared.role().active, "ready");
        }
        shared.metrics.set_ready(why);
        tokio::select! {
            r = members.changed() => if r.is_err() { return },
            r = settled.changed() => if r.is_err() { return },
            r = role.changed() => if r.is_err() { return },
            r = mirroring.changed() => if r.is_err() { return },
        }
    }
}
