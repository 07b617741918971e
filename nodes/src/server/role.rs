//! Who this server is ([`Node`]), and its role as the coordinator last said ([`Role`],
//! kept up to date from [`crate::link`]).

use std::sync::Arc;

use tokio::sync::watch;
use tsn_datastore::RoleDir;
use tsn_protocol::coord::NodeKind;
use tsn_protocol::ClusterId;

use crate::link::Membership;
use crate::metrics::Metrics;

/// Who this server is: its cluster, which of the pair, and its role directory.
#[derive(Debug, Clone)]
pub struct Node {
    /// This server's cluster.
    pub cluster: ClusterId,
    /// Primary or secondary.
    pub kind: NodeKind,
    /// This server's role directory.
    pub dir: RoleDir,
}

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

/// Active or standby, as last told by the coordinator; every clone sees the same role.
#[derive(Debug, Clone, Default)]
pub struct Role {
    tx: Arc<watch::Sender<RoleState>>,
}

impl Role {
    /// The current role.
    pub fn current(&self) -> RoleState {
        self.tx.borrow().clone()
    }

    /// Whether this server is its cluster's active server now.
    pub fn is_active(&self) -> bool {
        self.tx.borrow().active
    }

    /// Tells of every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<RoleState> {
        self.tx.subscribe()
    }

    /// This server handed its cluster over to `to` at `epoch`: it is the standby now.
    pub fn handed_over(&self, epoch: u64, to: String) {
        self.tx.send_modify(|r| {
            r.active = false;
            r.epoch = epoch;
            r.peer = Some(to);
        });
    }

    fn set(&self, next: RoleState) {
        self.tx.send_if_modified(|s| {
            let changed = *s != next;
            *s = next;
            changed
        });
    }
}

/// Keeps `role` up to date with each heartbeat reply, and logs each change.
pub async fn follow(
    role: Role,
    cluster: ClusterId,
    metrics: Arc<Metrics>,
    mut members: watch::Receiver<Membership>,
) {
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
            let current = role.current();
            metrics.active.set(i64::from(next.active));
            metrics
                .epoch
                .get_or_create(&crate::metrics::ClusterLabel { cluster })
                .set(next.epoch as i64);
            if next.epoch > current.epoch && current.epoch != 0 {
                metrics.failovers.inc();
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
            role.set(next);
        }
        if members.changed().await.is_err() {
            return;
        }
    }
}
