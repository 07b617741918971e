//! The server's `/ready`.

use std::sync::Arc;

use tokio::sync::watch as tokio_watch;

use super::role::Role;
use crate::metrics::Metrics;

/// What `/ready` waits for.
#[derive(Debug)]
pub(super) struct Inputs {
    /// Active or standby, and the peer.
    pub role: Role,
    /// Whether the mirror stream is up.
    pub mirroring: tokio_watch::Receiver<bool>,
    /// What the coordinator last said.
    pub members: tokio_watch::Receiver<crate::link::Membership>,
    /// Whether the sync service's journal was read to its end.
    pub settled: tokio_watch::Receiver<bool>,
    /// `--max-clock-offset-ms`.
    pub max_clock_offset: std::time::Duration,
}

/// Keeps `/ready` true exactly while this server is registered, knows its role, has read
/// its sync service's journal to the end since it learned where that is (or found it
/// down), when the coordinator names a live peer server, mirrors with it, and its clock
/// is within `max_clock_offset` of the coordinator's.
pub(super) async fn readiness(inputs: Inputs, metrics: Arc<Metrics>) {
    let Inputs {
        role: server_role,
        mut mirroring,
        mut members,
        mut settled,
        max_clock_offset,
    } = inputs;
    let mut role = server_role.subscribe();
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
        if why.is_none() && metrics.not_ready().is_some() {
            tracing::info!(active = server_role.is_active(), "ready");
        }
        metrics.set_ready(why);
        tokio::select! {
            r = members.changed() => if r.is_err() { return },
            r = settled.changed() => if r.is_err() { return },
            r = role.changed() => if r.is_err() { return },
            r = mirroring.changed() => if r.is_err() { return },
        }
    }
}
