//! This server's role, as the coordinator last said (through [`crate::link`]).

use std::sync::Arc;

use tokio::sync::watch;

use super::Shared;
use crate::link::Membership;

/// What the coordinator last said about this server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleState {
    /// This server is its cluster's active server: it serves clients and mirrors.
    pub active: bool,
    /// The cluster's failover epoch.
    pub epoch: u64,
    /// For the active server, the standby to mirror to; for a standby, the active server.
    pub peer: Option<String>,
    /// Number of clusters in the system (0 until the first beat).
    pub clusters: u32,
}

/// Keeps `shared.role` up to date with each heartbeat reply, and logs each change.
pub async fn run(shared: Arc<Shared>, mut members: watch::Receiver<Membership>) {
    loop {
        let next = members
            .borrow_and_update()
            .beat
            .as_ref()
            .map(|b| RoleState {
                active: b.active,
                epoch: b.epoch,
                peer: b.peer.clone(),
                clusters: b.clusters,
            });
        if let Some(next) = next {
            let current = shared.role();
            shared.metrics.active.set(i64::from(next.active));
            shared
                .metrics
                .epoch
                .get_or_create(&crate::metrics::ClusterLabel {
                    cluster: shared.cluster,
                })
                .set(next.epoch as i64);
            if next.epoch > current.epoch && current.epoch != 0 {
                shared.metrics.failovers.inc();
            }
            if next.active != current.active || next.epoch != current.epoch {
                if next.active {
                    tracing::info!(
                        epoch = next.epoch,
                        "this server is now the active server of its cluster"
                    );
                } else {
                    tracing::info!(epoch = next.epoch, active = ?next.peer, "this server is the standby");
                }
            }
            shared.role.send_if_modified(|s| {
                let changed = *s != next;
                *s = next;
                changed
            });
        }
        if members.changed().await.is_err() {
            return;
        }
    }
}
