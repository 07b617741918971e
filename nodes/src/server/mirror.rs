//! Mirroring between the two servers of a cluster.
//!
//! The active server dials the standby the coordinator names and opens one stream. Both
//! first send their whole journal, so that each gets what it lacks: this is how a
//! returning server catches up before it can serve again, and how the two sides of a
//! split brain merge (every change is idempotent: users only grow, posts are keyed by
//! id, a follow and an unfollow resolve by timestamp). Then the active server streams
//! each committed batch; clients are acknowledged when the standby has made it durable.
//! A standby that does not acknowledge within [`ACK_TIMEOUT`] is dropped and the active
//! server serves alone (and says so) until the standby is back and caught up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tsn_datastore::Record;
use tsn_protocol::mirror::{MirrorMsg, MirrorReply};
use tsn_protocol::{Change, FrameReader, MAX_BATCH_CHANGES};

use super::store::{MirrorJob, Store};
use super::Shared;

/// How long the standby may take to acknowledge a batch before it is dropped.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one step of the catch-up exchange may take.
const EXCHANGE_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Mirroring that lasted this long was a success: the next failure starts the backoff
/// again from its shortest pause.
const HEALTHY: Duration = Duration::from_secs(10);

/// The active side: runs for the life of the server.
pub async fn run_active(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    store: Store,
    mut jobs: mpsc::Receiver<MirrorJob>,
) {
    let mut role_rx = shared.role.subscribe();
    let mut alone_logged = false;
    // Serving alone before any standby has shown up is how a cluster starts: worth a
    // line, not a warning.
    let mut had_standby = false;
    let mut pauses = crate::net::backoff();
    let mut failures = 0u32;
    loop {
        let role = shared.role();
        let target = role.peer.clone().filter(|_| role.active);
        let Some(addr) = target else {
            if role.active && !alone_logged {
                if had_standby {
                    tracing::warn!(
                        "no standby alive: serving alone, acknowledging without mirroring"
                    );
                } else {
                    tracing::info!("no standby yet: serving alone until one registers");
                }
                alone_logged = true;
            }
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(j) => j.finish().await,
                    None => return,
                },
                _ = role_rx.changed() => {}
            }
            continue;
        };
        alone_logged = false;
        had_standby = true;
        let started = tokio::time::Instant::now();
        match mirror_to(
            &shared,
            &endpoint,
            &store,
            &addr,
            role.epoch,
            &mut jobs,
            &mut role_rx,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => {
                if started.elapsed() > HEALTHY {
                    pauses = crate::net::backoff();
                    failures = 0;
                }
                failures += 1;
                if failures == 1 {
                    tracing::warn!(standby = %addr, "mirroring failed, serving alone until the standby is back: {e:#}");
                } else {
                    tracing::debug!(standby = %addr, failures, "mirroring failed again: {e:#}");
                }
                let pause = tokio::time::sleep(pauses.next().unwrap_or(HEALTHY / 5));
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        job = jobs.recv() => match job {
                            Some(j) => j.finish().await,
                            None => return,
                        },
                        _ = &mut pause => break,
                        _ = role_rx.changed() => break,
                    }
                }
            }
        }
    }
}

/// What this server has of its cluster's changes: the last checkpoint's state and the
/// journal segments kept (so a server that was away longer than the segments are kept
/// gets the checkpointed state: a state transfer).
async fn read_journal(shared: &Arc<Shared>) -> anyhow::Result<Vec<Change>> {
    let s = shared.clone();
    let records = tokio::task::spawn_blocking(move || s.own_records())
        .await
        .context("journal reader panicked")??;
    Ok(records
        .into_iter()
        .filter_map(|r| match r {
            Record::Change(c) => Some(c),
            Record::Deliver { .. } => None,
        })
        .collect())
}

async fn step<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(EXCHANGE_STEP_TIMEOUT, fut)
        .await
        .with_context(|| format!("{what} timed out"))
}

#[allow(clippy::too_many_arguments)]
async fn mirror_to(
    shared: &Arc<Shared>,
    endpoint: &quinn::Endpoint,
    store: &Store,
    addr: &str,
    epoch: u64,
    jobs: &mut mpsc::Receiver<MirrorJob>,
    role_rx: &mut tokio::sync::watch::Receiver<super::RoleState>,
) -> anyhow::Result<()> {
    let conn = crate::net::connect(endpoint, addr).await?;
    let (mut send, recv) = conn.open_bi().await?;
    let mut recv = FrameReader::new(recv);
    let hello = MirrorMsg::Hello {
        cluster: shared.cluster,
        epoch,
    };
    tsn_protocol::write_msg(&mut send, &hello).await?;

    // 1. What the standby has that we may lack.
    let mut received = 0usize;
    loop {
        match step(
            "receiving the standby's state",
            recv.next_msg::<MirrorReply>(),
        )
        .await??
        {
            Some(MirrorReply::Changes(changes)) => {
                received += changes.len();
                store.write(changes, false).await?;
            }
            Some(MirrorReply::EndOfState) => break,
            Some(MirrorReply::Refused(why)) => bail!("standby refused: {why}"),
            Some(MirrorReply::Ack { .. }) => {
                bail!("standby acknowledged before the exchange ended")
            }
            None => bail!("standby closed the stream during the exchange"),
        }
    }

    // 2. What we have that it may lack. Everything committed before this read is in it;
    //    everything committed after it is in `jobs`. Overlap is harmless.
    let ours = read_journal(shared).await?;
    let mut seq = 0u64;
    let mut inflight: VecDeque<(u64, Option<MirrorJob>, Instant)> = VecDeque::new();
    for chunk in ours.chunks(MAX_BATCH_CHANGES) {
        seq += 1;
        tsn_protocol::write_msg(
            &mut send,
            &MirrorMsg::Changes {
                seq,
                changes: chunk.to_vec(),
            },
        )
        .await?;
        inflight.push_back((seq, None, Instant::now()));
    }
    tracing::info!(standby = %addr, received, sent = ours.len(), "mirroring to the standby after exchanging state");
    drop(ours);

    // 3. Live.
    let result = live(
        shared,
        addr,
        &mut send,
        &mut recv,
        jobs,
        role_rx,
        &mut inflight,
        seq,
    )
    .await;
    let waiting = inflight.iter().filter(|f| f.1.is_some()).count();
    if waiting > 0 {
        // Said before the waiting requests complete on the local flush alone.
        let why = result
            .as_ref()
            .err()
            .map_or("mirroring stopped".to_string(), |e| format!("{e:#}"));
        tracing::warn!(standby = %addr, waiting, "standby lost ({why}): waiting changes complete once flushed here");
    }
    for (_, job, _) in inflight {
        if let Some(job) = job {
            job.finish().await;
        }
    }
    conn.close(0u32.into(), b"mirror closed");
    result
}

#[allow(clippy::too_many_arguments)]
async fn live(
    shared: &Shared,
    addr: &str,
    send: &mut quinn::SendStream,
    recv: &mut FrameReader<quinn::RecvStream>,
    jobs: &mut mpsc::Receiver<MirrorJob>,
    role_rx: &mut tokio::sync::watch::Receiver<super::RoleState>,
    inflight: &mut VecDeque<(u64, Option<MirrorJob>, Instant)>,
    mut seq: u64,
) -> anyhow::Result<()> {
    loop {
        let deadline = inflight.front().map(|f| f.2 + ACK_TIMEOUT);
        tokio::select! {
            job = jobs.recv() => {
                let Some(mut job) = job else { return Ok(()) };
                if job.changes.is_empty() && inflight.is_empty() {
                    job.finish().await;
                    continue;
                }
                seq += 1;
                let changes = std::mem::take(&mut job.changes);
                tsn_protocol::write_msg(send, &MirrorMsg::Changes { seq, changes }).await?;
                inflight.push_back((seq, Some(job), Instant::now()));
                shared.metrics.mirror_lag.set(inflight.len() as i64);
            }
            reply = recv.next_msg::<MirrorReply>() => {
                let acked = match reply? {
                    Some(MirrorReply::Ack { seq }) => seq,
                    Some(MirrorReply::Refused(why)) => bail!("standby refused the changes: {why}"),
                    Some(_) => bail!("standby sent state after the exchange ended"),
                    None => bail!("standby closed the mirror stream"),
                };
                while inflight.front().is_some_and(|f| f.0 <= acked) {
                    if let Some((_, Some(job), _)) = inflight.pop_front() {
                        job.acked(shared.ack).await;
                    }
                }
                shared.metrics.mirror_lag.set(inflight.len() as i64);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                bail!("standby did not acknowledge within {ACK_TIMEOUT:?}");
            }
            changed = role_rx.changed() => {
                let role = shared.role();
                if changed.is_ok() && !role.active && role.peer.as_deref() == Some(addr) {
                    // Handed over to this standby: it asks the coordinator at once.
                    tsn_protocol::write_msg(send, &MirrorMsg::HandOver { epoch: role.epoch }).await?;
                    let _ = send.finish();
                    // Closing the connection at once could drop the message: wait until
                    // the standby has read it.
                    let _ = tokio::time::timeout(ACK_TIMEOUT, send.stopped()).await;
                    shared.handed_over.notify_one();
                    return Ok(());
                }
                if changed.is_err() || !role.active || role.peer.as_deref() != Some(addr) {
                    return Ok(());
                }
            }
        }
    }
}

/// The standby side of one mirror stream (opened by a node peer with a hello for
/// `cluster` at `epoch`).
pub async fn serve_standby(
    shared: Arc<Shared>,
    store: Store,
    cluster: tsn_protocol::ClusterId,
    epoch: u64,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    if let Err(e) = standby(&shared, &store, cluster, epoch, &mut send, &mut recv).await {
        tracing::warn!("mirror stream from the active server ended: {e:#}");
    }
}

async fn standby(
    shared: &Arc<Shared>,
    store: &Store,
    cluster: tsn_protocol::ClusterId,
    epoch: u64,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<()> {
    let role = shared.role();
    let refusal = if cluster != shared.cluster {
        Some(format!(
            "this server serves cluster {}, not {cluster}",
            shared.cluster
        ))
    } else if role.active && epoch < role.epoch {
        Some(format!(
            "this server is active at epoch {}, newer than {epoch}",
            role.epoch
        ))
    } else {
        None
    };
    if let Some(why) = refusal {
        tsn_protocol::write_msg(send, &MirrorReply::Refused(why.clone())).await?;
        let _ = send.finish();
        bail!("refused a mirror stream: {why}");
    }
    let ours = read_journal(shared).await?;
    for chunk in ours.chunks(MAX_BATCH_CHANGES) {
        tsn_protocol::write_msg(send, &MirrorReply::Changes(chunk.to_vec())).await?;
    }
    tsn_protocol::write_msg(send, &MirrorReply::EndOfState).await?;
    tracing::info!(
        sent = ours.len(),
        epoch,
        "active server connected for mirroring; state exchanged"
    );
    drop(ours);
    // Group commit: every chunk already received joins one write and one flush, and the
    // highest sequence number is acknowledged (acks are cumulative).
    let (tx, mut rx) = mpsc::channel::<(u64, Vec<Change>)>(256);
    let mut stream = recv;
    let reader = async move {
        loop {
            match tsn_protocol::read_msg::<MirrorMsg, _>(&mut stream).await? {
                Some(MirrorMsg::Changes { seq, changes }) => {
                    if tx.send((seq, changes)).await.is_err() {
                        return Ok(());
                    }
                }
                Some(MirrorMsg::HandOver { epoch }) => {
                    tracing::info!(
                        epoch,
                        "the active server handed the cluster over: asking the coordinator now"
                    );
                    shared.beat_now.notify_one();
                    return Ok(());
                }
                Some(MirrorMsg::Hello { .. } | MirrorMsg::Subscribe(_) | MirrorMsg::Admin(_)) => {
                    bail!("a mirror stream carries only changes after its hello")
                }
                None => return Ok(()),
            }
        }
    };
    let writer = async {
        while let Some((mut last, mut changes)) = rx.recv().await {
            while changes.len() < MAX_BATCH_CHANGES {
                match rx.try_recv() {
                    Ok((seq, more)) => {
                        last = seq;
                        changes.extend(more);
                    }
                    Err(_) => break,
                }
            }
            match store.write(changes, false).await {
                Ok(()) => tsn_protocol::write_msg(send, &MirrorReply::Ack { seq: last }).await?,
                Err(e) => {
                    tsn_protocol::write_msg(send, &MirrorReply::Refused(e.to_string())).await?;
                    bail!("could not store mirrored changes: {e}");
                }
            }
        }
        anyhow::Ok(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}
