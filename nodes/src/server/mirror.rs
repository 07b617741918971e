//! Mirroring between the two servers of a cluster.
//!
//! The active server dials the standby the coordinator names and opens one stream. Both
//! first send what their journal holds after the other's cursor (kept in
//! `mirror.cursor`: how far this server has the other's journal), so that each gets what
//! it lacks: this is how a returning server catches up before it can serve again, and how
//! the two sides of a split brain merge (every change is idempotent: users only grow,
//! posts are keyed by id, a follow and an unfollow resolve by timestamp). A cursor for
//! another journal (a host that lost its disk), or before the oldest segment kept, gets
//! the checkpointed state and the segments kept instead: a state transfer. Then the
//! active server streams each committed batch; clients are acknowledged when the standby
//! has stored it.
//! A standby that does not acknowledge within [`ACK_TIMEOUT`] is dropped and the active
//! server serves alone (and says so) until the standby is back and caught up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tsn_datastore::{Record, Tail};
use tsn_protocol::mirror::{MirrorMsg, MirrorReply};
use tsn_protocol::sync::Cursor;
use tsn_protocol::{Change, FrameReader};

use super::store::{MirrorJob, Store};
use super::Shared;

/// How long the standby may take to acknowledge a batch before it is dropped.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Changes in one batch of the catch-up exchange (at most
/// [`tsn_protocol::MAX_BATCH_CHANGES`]).
const EXCHANGE_CHUNK: usize = 1024;
/// How long one step of the catch-up exchange may take.
const EXCHANGE_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the cursor into the other server's journal is saved while mirroring (and
/// when mirroring stops): a cursor saved late only makes the next exchange send more.
const CURSOR_SAVE: Duration = Duration::from_secs(1);
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
        let mirrored = mirror_to(
            &shared,
            &endpoint,
            &store,
            &addr,
            role.epoch,
            &mut jobs,
            &mut role_rx,
        )
        .await;
        shared.mirroring.send_replace(false);
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

/// How far this server has the other server's journal (`mirror.cursor`; none yet: log
/// 0).
fn peer_cursor(shared: &Shared) -> Cursor {
    let text = std::fs::read_to_string(shared.dir.mirror_cursor()).unwrap_or_default();
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(log_id)), Some(Ok(offset))) => Cursor { log_id, offset },
        _ => Cursor::default(),
    }
}

fn save_peer_cursor(shared: &Shared, at: Cursor) {
    let path = shared.dir.mirror_cursor();
    let text = format!("{} {}\n", at.log_id, at.offset);
    if let Err(e) =
        tsn_datastore::write_atomic(&path, text.as_bytes(), tsn_datastore::Durability::NoSync)
    {
        tracing::warn!("saving {}: {e}", path.display());
    }
}

/// Reads what this server's journal holds after the other server's cursor, a chunk at a
/// time (so an exchange holds one chunk in memory, however far behind the other is).
struct Outgoing {
    /// The checkpointed state still to send (a state transfer), in chunks.
    state: Vec<Change>,
    tail: Tail,
    /// Where the journal ended when the exchange began: what is sent reaches there.
    end: Cursor,
    /// Whether this is a state transfer.
    transfer: bool,
}

impl Outgoing {
    async fn new(shared: &Arc<Shared>, have: Cursor) -> anyhow::Result<Outgoing> {
        let feed = &shared.journal_feed;
        let segments = feed.segments();
        let end = Cursor {
            log_id: feed.log_id(),
            offset: feed.len(),
        };
        let from_cursor = have.log_id == end.log_id
            && have.offset >= segments.start()
            && have.offset <= end.offset;
        if from_cursor {
            return Ok(Outgoing {
                state: Vec::new(),
                tail: Tail::over(segments, have.offset),
                end,
                transfer: false,
            });
        }
        let dir = shared.dir.clone();
        let state = tokio::task::spawn_blocking(move || crate::checkpoint::load(&dir))
            .await
            .context("checkpoint reader panicked")??
            .map(|cp| cp.state.own)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| match r {
                Record::Change(c) => Some(c),
                Record::Deliver { .. } => None,
            })
            .collect();
        let start = segments.start();
        Ok(Outgoing {
            state,
            tail: Tail::over(segments, start),
            end,
            transfer: true,
        })
    }

    /// The next chunk, or `None` once the journal as it was at the start is sent.
    async fn next(&mut self) -> anyhow::Result<Option<Vec<Change>>> {
        if !self.state.is_empty() {
            let n = self.state.len().min(EXCHANGE_CHUNK);
            return Ok(Some(self.state.drain(..n).collect()));
        }
        if self.tail.offset() >= self.end.offset {
            return Ok(None);
        }
        let mut tail = std::mem::replace(&mut self.tail, Tail::new("", 0));
        let (tail, read) = tokio::task::spawn_blocking(move || {
            let r = tail.read_new(EXCHANGE_CHUNK);
            (tail, r)
        })
        .await
        .context("journal reader panicked")?;
        self.tail = tail;
        let records = read?;
        if records.is_empty() {
            bail!(
                "the journal ended at {} before its length {}",
                self.tail.offset(),
                self.end.offset
            );
        }
        Ok(Some(
            records
                .into_iter()
                .filter_map(|r| match r {
                    Record::Change(c) => Some(c),
                    Record::Deliver { .. } => None,
                })
                .collect(),
        ))
    }
}

/// Runs `fut` while completing every job that arrives on the local flush alone, as when
/// no standby is alive. `None` when the jobs end (the server stops).
async fn alone_while<T>(
    jobs: &mut mpsc::Receiver<MirrorJob>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return Some(r),
            job = jobs.recv() => match job {
                Some(j) => j.finish().await,
                None => return None,
            },
        }
    }
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
    // Until the standby has been reached and has sent what it holds, nothing waits for
    // it: a standby that is gone (one that said it is leaving, one that vanished) costs
    // new posts nothing. What is completed here meanwhile is in the journal before the
    // exchange reads it, and so reaches the standby.
    let setup = async {
        let conn = crate::net::connect(endpoint, addr).await?;
        let (mut send, recv) = conn.open_bi().await?;
        let mut recv = FrameReader::new(recv);
        let hello = MirrorMsg::Hello {
            cluster: shared.cluster,
            epoch,
            journal: shared.journal_feed.log_id(),
            have: peer_cursor(shared),
        };
        tsn_protocol::write_msg(&mut send, &hello).await?;

        // 1. What the standby has that we lack.
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
                    store.write(changes, false).await?;
                }
                Some(MirrorReply::EndOfState { journal, have }) => break (journal, have),
                Some(MirrorReply::Refused(why)) => bail!("standby refused: {why}"),
                Some(MirrorReply::Ack { .. }) => {
                    bail!("standby acknowledged before the exchange ended")
                }
                None => bail!("standby closed the stream during the exchange"),
            }
        };
        anyhow::Ok((conn, send, recv, received, peer_at, their_have))
    };
    let Some(setup) = alone_while(jobs, setup).await else {
        bail!("the server is stopping");
    };
    let (conn, mut send, mut recv, received, mut peer_at, their_have) = setup?;
    save_peer_cursor(shared, peer_at);

    // 2. What we have that it lacks. Everything committed before this read is in it;
    //    everything committed after it is in `jobs`. Overlap is harmless.
    let mut ours = Outgoing::new(shared, their_have).await?;
    let mut seq = 0u64;
    let mut sent = 0usize;
    let mut inflight: VecDeque<(u64, Option<MirrorJob>, Instant)> = VecDeque::new();
    while let Some(changes) = ours.next().await? {
        seq += 1;
        sent += changes.len();
        let msg = MirrorMsg::Changes {
            seq,
            changes,
            upto: 0,
        };
        tsn_protocol::write_msg(&mut send, &msg).await?;
        inflight.push_back((seq, None, Instant::now()));
    }
    // Where what was sent reaches, for the standby's cursor.
    seq += 1;
    let msg = MirrorMsg::Changes {
        seq,
        changes: Vec::new(),
        upto: ours.end.offset,
    };
    tsn_protocol::write_msg(&mut send, &msg).await?;
    inflight.push_back((seq, None, Instant::now()));
    tracing::info!(standby = %addr, received, sent, state_transfer = ours.transfer, "mirroring to the standby after exchanging state");
    shared.mirroring.send_replace(true);
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
        &mut peer_at,
    )
    .await;
    save_peer_cursor(shared, peer_at);
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
    peer_at: &mut Cursor,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(CURSOR_SAVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    loop {
        let deadline = inflight.front().map(|f| f.2 + ACK_TIMEOUT);
        tokio::select! {
            _ = tick.tick() => {
                if std::mem::take(&mut dirty) {
                    save_peer_cursor(shared, *peer_at);
                }
            }
            job = jobs.recv() => {
                let Some(mut job) = job else { return Ok(()) };
                if job.changes.is_empty() && inflight.is_empty() {
                    job.finish().await;
                    continue;
                }
                seq += 1;
                let changes = std::mem::take(&mut job.changes);
                let msg = MirrorMsg::Changes { seq, changes, upto: job.upto };
                tsn_protocol::write_msg(send, &msg).await?;
                inflight.push_back((seq, Some(job), Instant::now()));
                shared.metrics.mirror_lag.set(inflight.len() as i64);
            }
            reply = recv.next_msg::<MirrorReply>() => {
                let acked = match reply? {
                    Some(MirrorReply::Ack { seq, end }) => {
                        // The standby's journal grows only with what we send it now.
                        peer_at.offset = peer_at.offset.max(end);
                        dirty = true;
                        seq
                    }
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
    hello: Hello,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let r = standby(&shared, &store, hello, &mut send, &mut recv).await;
    shared.mirroring.send_replace(false);
    match r {
        Err(e) if crate::net::part_of_a_stop(&e) => {
            tracing::info!("the active server stopped mirroring: {e:#}")
        }
        Err(e) => tracing::warn!("mirror stream from the active server ended: {e:#}"),
        Ok(()) => {}
    }
}

/// What an active server's [`MirrorMsg::Hello`] says.
#[derive(Debug, Clone, Copy)]
pub struct Hello {
    /// Its cluster.
    pub cluster: tsn_protocol::ClusterId,
    /// Its epoch.
    pub epoch: u64,
    /// The id of its journal.
    pub journal: u64,
    /// How far it has this server's journal.
    pub have: Cursor,
}

async fn standby(
    shared: &Arc<Shared>,
    store: &Store,
    hello: Hello,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<()> {
    let Hello {
        cluster,
        epoch,
        journal: active_journal,
        have,
    } = hello;
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
    let mut ours = Outgoing::new(shared, have).await?;
    let mut sent = 0usize;
    while let Some(changes) = ours.next().await? {
        sent += changes.len();
        tsn_protocol::write_msg(send, &MirrorReply::Changes(changes)).await?;
    }
    let mine = Some(peer_cursor(shared))
        .filter(|c| c.log_id == active_journal)
        .unwrap_or_default();
    let end = MirrorReply::EndOfState {
        journal: ours.end,
        have: mine,
    };
    tsn_protocol::write_msg(send, &end).await?;
    tracing::info!(
        sent,
        state_transfer = ours.transfer,
        epoch,
        "active server connected for mirroring; state exchanged"
    );
    shared.mirroring.send_replace(true);
    drop(ours);
    let mut at = mine;
    // Group commit: every chunk already received joins one write and one flush, and the
    // highest sequence number is acknowledged (acks are cumulative).
    let (tx, mut rx) = mpsc::channel::<(u64, Vec<Change>, u64)>(256);
    let mut stream = recv;
    let reader = async move {
        loop {
            match tsn_protocol::read_msg::<MirrorMsg, _>(&mut stream).await? {
                Some(MirrorMsg::Changes { seq, changes, upto }) => {
                    if tx.send((seq, changes, upto)).await.is_err() {
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
        let mut tick = tokio::time::interval(CURSOR_SAVE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        loop {
            let (mut last, mut changes, mut upto) = tokio::select! {
                next = rx.recv() => match next {
                    Some(n) => n,
                    None => break,
                },
                _ = tick.tick() => {
                    if std::mem::take(&mut dirty) {
                        save_peer_cursor(shared, at);
                    }
                    continue;
                }
            };
            while changes.len() < super::store::GROUP_COMMIT_CHANGES {
                match rx.try_recv() {
                    Ok((seq, more, more_upto)) => {
                        last = seq;
                        upto = upto.max(more_upto);
                        changes.extend(more);
                    }
                    Err(_) => break,
                }
            }
            match store.write(changes, false).await {
                Ok(()) => {
                    if upto > 0 {
                        at = Cursor {
                            log_id: active_journal,
                            offset: upto.max(at.offset),
                        };
                        dirty = true;
                    }
                    let ack = MirrorReply::Ack {
                        seq: last,
                        end: shared.journal_feed.len(),
                    };
                    tsn_protocol::write_msg(send, &ack).await?
                }
                Err(e) => {
                    tsn_protocol::write_msg(send, &MirrorReply::Refused(e.to_string())).await?;
                    bail!("could not store mirrored changes: {e}");
                }
            }
        }
        anyhow::Ok(())
    };
    let (r, w) = tokio::join!(reader, writer);
    save_peer_cursor(shared, at);
    r.and(w)
}
