//! The sending side: one task per destination cluster.
//!
//! Each task keeps a byte cursor per source journal (the cluster's primary and
//! secondary), persisted in `cursors.data` once the destination has acknowledged what
//! lies before it. The journals are the queue: after a crash or while a destination is
//! unreachable nothing is lost, the cursor simply stays where it was, and the backlog is
//! re-read and sent in order when the destination is back. An idle cycle costs one read
//! per source journal.
//!
//! What goes where: users to every cluster (for LIST); a follow to the followee's
//! cluster (for its followers list); a post to every cluster (each keeps only what its
//! own users follow, which also covers a follow that is still on its way).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tsn_datastore::{Cursors, RoleDir, Tail};
use tsn_protocol::sync::{SyncReply, SyncRequest};
use tsn_protocol::types::cluster_of;
use tsn_protocol::{Change, ClusterId, MAX_BATCH_CHANGES};

use super::{Peers, SyncShared};

fn wanted(change: &Change, dest: ClusterId, clusters: u32) -> bool {
    match change {
        Change::User { .. } | Change::Post(_) => true,
        Change::Follow { followee, .. } => cluster_of(*followee, clusters) == dest,
    }
}

/// The cursor key of a (destination, source) pair.
pub fn cursor_key(dest: ClusterId, source: &str) -> String {
    format!("to-{dest}-from-{source}")
}

/// Ships this cluster's changes to `dest` every `period`, for ever.
pub async fn run(
    shared: Arc<SyncShared>,
    dest: ClusterId,
    clusters: u32,
    sources: [(String, RoleDir); 2],
    period: Duration,
) {
    let mut tails = open_tails(&shared.cursors, dest, &sources);
    let mut conn: Option<(String, quinn::Connection)> = None;
    let mut seq = 0u64;
    let mut failing = false;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Drain everything new, batch by batch, before sleeping again.
        loop {
            match cycle(
                &shared, dest, clusters, &sources, &mut tails, &mut conn, &mut seq,
            )
            .await
            {
                Ok(more) => {
                    if failing {
                        tracing::info!(dest, "cluster reachable again; backlog delivered in order");
                        failing = false;
                    }
                    if !more {
                        break;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            dest,
                            "cannot deliver to cluster {dest} yet, work waits: {e:#}"
                        );
                        failing = true;
                    }
                    conn = None;
                    tails = open_tails(&shared.cursors, dest, &sources);
                    break;
                }
            }
        }
    }
}

fn open_tails(
    cursors: &Mutex<Cursors>,
    dest: ClusterId,
    sources: &[(String, RoleDir); 2],
) -> Vec<Tail> {
    let c = cursors.lock().unwrap_or_else(|e| e.into_inner());
    sources
        .iter()
        .map(|(name, dir)| Tail::new(dir.journal(), c.get(&cursor_key(dest, name))))
        .collect()
}

/// One batch. Returns whether there may be more to send right away.
#[allow(clippy::too_many_arguments)]
async fn cycle(
    shared: &SyncShared,
    dest: ClusterId,
    clusters: u32,
    sources: &[(String, RoleDir); 2],
    tails: &mut [Tail],
    conn: &mut Option<(String, quinn::Connection)>,
    seq: &mut u64,
) -> anyhow::Result<bool> {
    let before: Vec<u64> = tails.iter().map(Tail::offset).collect();
    let mut changes = Vec::new();
    let mut full = false;
    for tail in tails.iter_mut() {
        let room = MAX_BATCH_CHANGES - changes.len();
        if room == 0 {
            full = true;
            break;
        }
        let records = tail.read_new(room)?;
        full |= records.len() == room;
        changes.extend(records.into_iter().filter_map(|r| match r {
            tsn_datastore::Record::Change(c) if wanted(&c, dest, clusters) => Some(c),
            _ => None,
        }));
    }
    let after: Vec<u64> = tails.iter().map(Tail::offset).collect();
    if before == after {
        return Ok(false);
    }
    if !changes.is_empty() {
        if dest == shared.cluster {
            let inbox = shared.inbox.clone();
            tokio::task::spawn_blocking(move || {
                inbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(&changes)
            })
            .await
            .context("inbox panicked")??;
        } else {
            *seq += 1;
            send_batch(shared, dest, conn, *seq, changes).await?;
        }
    }
    let snapshot = {
        let mut c = shared.cursors.lock().unwrap_or_else(|e| e.into_inner());
        for ((name, _), off) in sources.iter().zip(&after) {
            c.set(&cursor_key(dest, name), *off);
        }
        c.clone()
    };
    let path = shared.dir.cursors();
    tokio::task::spawn_blocking(move || snapshot.save(&path))
        .await
        .context("cursor writer panicked")??;
    Ok(full)
}

async fn send_batch(
    shared: &SyncShared,
    dest: ClusterId,
    conn: &mut Option<(String, quinn::Connection)>,
    seq: u64,
    changes: Vec<Change>,
) -> anyhow::Result<()> {
    let addr = peer_addr(&shared.peers, dest)?;
    if conn
        .as_ref()
        .is_none_or(|(a, c)| *a != addr || c.close_reason().is_some())
    {
        let c = crate::net::connect(&shared.endpoint, &addr).await?;
        tracing::info!(dest, %addr, "connected to sync service");
        *conn = Some((addr.clone(), c));
    }
    let Some((_, c)) = conn.as_ref() else {
        bail!("no connection")
    };
    let req = SyncRequest::Batch {
        from: shared.cluster,
        to: dest,
        seq,
        changes,
    };
    match crate::net::call::<_, SyncReply>(c, &req).await? {
        SyncReply::Applied { seq: s } if s == seq => Ok(()),
        SyncReply::Applied { seq: s } => bail!("acknowledged batch {s}, expected {seq}"),
        SyncReply::Refused(why) => bail!("refused: {why}"),
    }
}

fn peer_addr(peers: &Peers, dest: ClusterId) -> anyhow::Result<String> {
    peers
        .borrow()
        .get(&dest)
        .cloned()
        .ok_or_else(|| anyhow!("no live sync service registered for cluster {dest}"))
}
