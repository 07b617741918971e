//! The active side of the mirror: dials the standby the coordinator names, exchanges
//! what each lacks, then streams each committed batch and completes its requests as the
//! standby acknowledges; a hand-over is told to the standby on this stream.

use std::collections::VecDeque;

use anyhow::bail;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tsn_protocol::mirror::{MirrorMsg, MirrorReply};
use tsn_protocol::sync::Cursor;
use tsn_protocol::FrameReader;

use super::outgoing::Outgoing;
use super::{alone_while, step, Mirror, ACK_TIMEOUT, CURSOR_SAVE, HEALTHY};
use crate::server::role::RoleState;
use crate::server::store::MirrorJob;

/// The active side: runs for the life of the server.
pub async fn run_active(
    mirror: Mirror,
    endpoint: quinn::Endpoint,
    mut jobs: mpsc::Receiver<MirrorJob>,
) {
    let mut role_rx = mirror.role.subscribe();
    let mut alone_logged = false;
    // Serving alone before any standby has shown up is how a cluster starts: worth a
    // line, not a warning.
    let mut had_standby = false;
    let mut pauses = crate::net::backoff();
    let mut failures = 0u32;
    loop {
        let role = mirror.role.current();
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
        let mirrored = mirror_to(
            &mirror,
            &endpoint,
            &addr,
            role.epoch,
            &mut jobs,
            &mut role_rx,
        )
        .await;
        mirror.up.send_replace(false);
        match mirrored {
            Ok(()) => {}
            Err(e) => {
                if started.elapsed() > HEALTHY {
                    pauses = crate::net::backoff();
                    failures = 0;
                }
                failures += 1;
                if failures == 1 && crate::net::part_of_a_stop(&e) {
                    tracing::info!(standby = %addr, "the standby stopped: serving alone until it is back: {e:#}");
                } else if failures == 1 {
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

/// Batches sent to the standby and not acknowledged yet: sequence number, the job to
/// complete (none for the exchange's chunks), when it was sent.
type InFlight = VecDeque<(u64, Option<MirrorJob>, Instant)>;

/// One mirror stream to the standby, once the exchange has begun.
struct Stream {
    send: quinn::SendStream,
    recv: FrameReader<quinn::RecvStream>,
    inflight: InFlight,
    seq: u64,
    /// How far this server has the standby's journal.
    peer_at: Cursor,
}

impl Stream {
    async fn send_changes(
        &mut self,
        changes: Vec<tsn_protocol::Change>,
        upto: u64,
        job: Option<MirrorJob>,
    ) -> anyhow::Result<()> {
        self.seq += 1;
        let msg = MirrorMsg::Changes {
            seq: self.seq,
            changes,
            upto,
        };
        tsn_protocol::write_msg(&mut self.send, &msg).await?;
        self.inflight.push_back((self.seq, job, Instant::now()));
        Ok(())
    }
}

async fn mirror_to(
    mirror: &Mirror,
    endpoint: &quinn::Endpoint,
    addr: &str,
    epoch: u64,
    jobs: &mut mpsc::Receiver<MirrorJob>,
    role_rx: &mut watch::Receiver<RoleState>,
) -> anyhow::Result<()> {
    // Until the standby has been reached and has sent what it holds, nothing waits for
    // it: a standby that is gone (one that said it is leaving, one that vanished) costs
    // new posts nothing. What is completed here meanwhile is in the journal before the
    // exchange reads it, and so reaches the standby.
    let Some(setup) = alone_while(jobs, receive_theirs(mirror, endpoint, addr, epoch)).await else {
        bail!("the server is stopping");
    };
    let (conn, mut stream, received, their_have) = setup?;
    mirror.save_peer_cursor(stream.peer_at);

    // 2. What we have that it lacks. Everything committed before this read is in it;
    //    everything committed after it is in `jobs`. Overlap is harmless.
    let mut ours = Outgoing::new(mirror, their_have).await?;
    let mut sent = 0usize;
    while let Some(changes) = ours.next().await? {
        sent += changes.len();
        stream.send_changes(changes, 0, None).await?;
    }
    // Where what was sent reaches, for the standby's cursor.
    stream
        .send_changes(Vec::new(), ours.end.offset, None)
        .await?;
    tracing::info!(standby = %addr, received, sent, state_transfer = ours.transfer, "mirroring to the standby after exchanging state");
    mirror.up.send_replace(true);
    drop(ours);

    // 3. Live.
    let result = live(mirror, addr, &mut stream, jobs, role_rx).await;
    mirror.save_peer_cursor(stream.peer_at);
    let waiting = stream.inflight.iter().filter(|f| f.1.is_some()).count();
    if waiting > 0 {
        // Said before the waiting requests complete on the local flush alone.
        let why = result
            .as_ref()
            .err()
            .map_or("mirroring stopped".to_string(), |e| format!("{e:#}"));
        tracing::warn!(standby = %addr, waiting, "standby lost ({why}): waiting changes complete once flushed here");
    }
    for (_, job, _) in stream.inflight {
        if let Some(job) = job {
            job.finish().await;
        }
    }
    conn.close(0u32.into(), b"mirror closed");
    result
}

/// Dials the standby, says hello, and stores what the standby has that this server
/// lacks (step 1 of the exchange). Returns the connection, the stream, how many changes
/// were received, and how far the standby has this server's journal.
async fn receive_theirs(
    mirror: &Mirror,
    endpoint: &quinn::Endpoint,
    addr: &str,
    epoch: u64,
) -> anyhow::Result<(quinn::Connection, Stream, usize, Cursor)> {
    let conn = crate::net::connect(endpoint, addr).await?;
    let (mut send, recv) = conn.open_bi().await?;
    let mut recv = FrameReader::new(recv);
    let hello = MirrorMsg::Hello {
        cluster: mirror.node.cluster,
        epoch,
        journal: mirror.journal.log_id(),
        have: mirror.peer_cursor(),
    };
    tsn_protocol::write_msg(&mut send, &hello).await?;
    let mut received = 0usize;
    let (peer_at, their_have) = loop {
        match step(
            "receiving the standby's state",
            recv.next_msg::<MirrorReply>(),
        )
        .await??
        {
            Some(MirrorReply::Changes(changes)) => {
                received += changes.len();
                mirror.store.write(changes, false).await?;
            }
            Some(MirrorReply::EndOfState { journal, have }) => break (journal, have),
            Some(MirrorReply::Refused(why)) => bail!("standby refused: {why}"),
            Some(MirrorReply::Ack { .. }) => {
                bail!("standby acknowledged before the exchange ended")
            }
            None => bail!("standby closed the stream during the exchange"),
        }
    };
    let stream = Stream {
        send,
        recv,
        inflight: VecDeque::new(),
        seq: 0,
        peer_at,
    };
    Ok((conn, stream, received, their_have))
}

/// Streams each committed batch until mirroring stops: the standby is lost, this server
/// stops being active or hands over to it, or the server stops.
async fn live(
    mirror: &Mirror,
    addr: &str,
    stream: &mut Stream,
    jobs: &mut mpsc::Receiver<MirrorJob>,
    role_rx: &mut watch::Receiver<RoleState>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(CURSOR_SAVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    loop {
        let deadline = stream.inflight.front().map(|f| f.2 + ACK_TIMEOUT);
        tokio::select! {
            _ = tick.tick() => {
                if std::mem::take(&mut dirty) {
                    mirror.save_peer_cursor(stream.peer_at);
                }
            }
            job = jobs.recv() => {
                let Some(mut job) = job else { return Ok(()) };
                if job.changes.is_empty() && stream.inflight.is_empty() {
                    job.finish().await;
                    continue;
                }
                let changes = std::mem::take(&mut job.changes);
                let upto = job.upto;
                stream.send_changes(changes, upto, Some(job)).await?;
                mirror.metrics.mirror_lag.set(stream.inflight.len() as i64);
            }
            reply = stream.recv.next_msg::<MirrorReply>() => {
                let acked = match reply? {
                    Some(MirrorReply::Ack { seq, end }) => {
                        // The standby's journal grows only with what we send it now.
                        stream.peer_at.offset = stream.peer_at.offset.max(end);
                        dirty = true;
                        seq
                    }
                    Some(MirrorReply::Refused(why)) => bail!("standby refused the changes: {why}"),
                    Some(_) => bail!("standby sent state after the exchange ended"),
                    None => bail!("standby closed the mirror stream"),
                };
                while stream.inflight.front().is_some_and(|f| f.0 <= acked) {
                    if let Some((_, Some(job), _)) = stream.inflight.pop_front() {
                        job.acked(mirror.ack).await;
                    }
                }
                mirror.metrics.mirror_lag.set(stream.inflight.len() as i64);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                bail!("standby did not acknowledge within {ACK_TIMEOUT:?}");
            }
            changed = role_rx.changed() => {
                let role = mirror.role.current();
                if changed.is_ok() && !role.active && role.peer.as_deref() == Some(addr) {
                    return tell_hand_over(mirror, &mut stream.send, role.epoch).await;
                }
                if changed.is_err() || !role.active || role.peer.as_deref() != Some(addr) {
                    return Ok(());
                }
            }
        }
    }
}

/// Handed over to this standby: it asks the coordinator at once.
async fn tell_hand_over(
    mirror: &Mirror,
    send: &mut quinn::SendStream,
    epoch: u64,
) -> anyhow::Result<()> {
    tsn_protocol::write_msg(send, &MirrorMsg::HandOver { epoch }).await?;
    let _ = send.finish();
    // Closing the connection at once could drop the message: wait until the standby has
    // read it.
    let _ = tokio::time::timeout(ACK_TIMEOUT, send.stopped()).await;
    mirror.standby_told.notify_one();
    Ok(())
}
