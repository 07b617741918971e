//! Heartbeats: tells the coordinator this server is alive and learns its role.

use std::sync::Arc;
use std::time::Duration;

use tsn_protocol::coord::{CoordReply, CoordRequest, Heartbeat};

use super::Shared;

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

/// Sends a heartbeat every `interval` for ever, keeping one connection to the
/// coordinator and re-dialling when it drops. While the coordinator cannot be reached the
/// server keeps its last role: clusters keep serving through a coordinator restart.
pub async fn run(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    coordinator: String,
    advertise: String,
    interval: Duration,
) {
    let mut conn: Option<quinn::Connection> = None;
    let mut unreachable_logged = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if conn.as_ref().is_none_or(|c| c.close_reason().is_some()) {
            conn = match crate::net::connect(&endpoint, &coordinator).await {
                Ok(c) => Some(c),
                Err(e) => {
                    if !unreachable_logged {
                        tracing::warn!(%coordinator, "coordinator unreachable, keeping current role: {e}");
                        unreachable_logged = true;
                    }
                    continue;
                }
            };
        }
        let Some(c) = conn.as_ref() else { continue };
        let current = shared.role();
        let beat = CoordRequest::Heartbeat(Heartbeat {
            cluster: shared.cluster,
            kind: shared.kind,
            addr: advertise.clone(),
            active: current.active,
            epoch: current.epoch,
        });
        match crate::net::call::<_, CoordReply>(c, &beat).await {
            Ok(CoordReply::Beat(r)) => {
                if unreachable_logged {
                    tracing::info!(%coordinator, "coordinator reachable again");
                    unreachable_logged = false;
                }
                let next = RoleState {
                    active: r.active,
                    epoch: r.epoch,
                    peer: r.peer,
                    clusters: r.clusters,
                };
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
            Ok(CoordReply::Failed(e)) => {
                tracing::error!("coordinator refused the heartbeat: {e}");
            }
            Ok(other) => tracing::warn!("unexpected heartbeat reply: {other:?}"),
            Err(e) => {
                tracing::warn!(%coordinator, "heartbeat failed: {e}");
                conn = None;
            }
        }
    }
}
