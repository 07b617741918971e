//! The standby side of the mirror: exchanges what each lacks with the active server
//! that dialled, then group-commits what arrives and acknowledges it; a hand-over told
//! on the stream makes this server ask the coordinator at once.

use anyhow::bail;
use tokio::sync::mpsc;
use tsn_protocol::mirror::{MirrorMsg, MirrorReply};
use tsn_protocol::sync::Cursor;
use tsn_protocol::Change;

use super::outgoing::Outgoing;
use super::{Mirror, CURSOR_SAVE};

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

/// Serves one mirror stream (opened by a node peer with `hello`).
pub async fn serve_standby(
    mirror: Mirror,
    hello: Hello,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let r = standby(&mirror, hello, &mut send, recv).await;
    mirror.up.send_replace(false);
    match r {
        Err(e) if crate::net::part_of_a_stop(&e) => {
            tracing::info!("the active server stopped mirroring: {e:#}")
        }
        Err(e) => tracing::warn!("mirror stream from the active server ended: {e:#}"),
        Ok(()) => {}
    }
}

/// Why a hello is refused, if it is: another cluster, or an older epoch than this
/// server's own while active.
fn refusal(mirror: &Mirror, hello: &Hello) -> Option<String> {
    let role = mirror.role.current();
    let (cluster, epoch) = (hello.cluster, hello.epoch);
    if cluster != mirror.node.cluster {
        Some(format!(
            "this server serves cluster {}, not {cluster}",
            mirror.node.cluster
        ))
    } else if role.active && epoch < role.epoch {
        Some(format!(
            "this server is active at epoch {}, newer than {epoch}",
            role.epoch
        ))
    } else {
        None
    }
}

async fn standby(
    mirror: &Mirror,
    hello: Hello,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    if let Some(why) = refusal(mirror, &hello) {
        tsn_protocol::write_msg(send, &MirrorReply::Refused(why.clone())).await?;
        let _ = send.finish();
        bail!("refused a mirror stream: {why}");
    }
    let at = send_ours(mirror, &hello, send).await?;
    mirror.up.send_replace(true);
    // Group commit: every chunk already received joins one write and one flush, and the
    // highest sequence number is acknowledged (acks are cumulative).
    let (tx, rx) = mpsc::channel::<(u64, Vec<Change>, u64)>(256);
    let mut at = at;
    let (r, w) = tokio::join!(
        read(mirror, recv, tx),
        write(mirror, hello.journal, send, rx, &mut at)
    );
    mirror.save_peer_cursor(at);
    r.and(w)
}

/// Sends what this server has that the active server lacks, then where its journal
/// ends and how far it has the active server's; returns the latter.
async fn send_ours(
    mirror: &Mirror,
    hello: &Hello,
    send: &mut quinn::SendStream,
) -> anyhow::Result<Cursor> {
    let mut ours = Outgoing::new(mirror, hello.have).await?;
    let mut sent = 0usize;
    while let Some(changes) = ours.next().await? {
        sent += changes.len();
        tsn_protocol::write_msg(send, &MirrorReply::Changes(changes)).await?;
    }
    let mine = Some(mirror.peer_cursor())
        .filter(|c| c.log_id == hello.journal)
        .unwrap_or_default();
    let end = MirrorReply::EndOfState {
        journal: ours.end,
        have: mine,
    };
    tsn_protocol::write_msg(send, &end).await?;
    tracing::info!(
        sent,
        state_transfer = ours.transfer,
        epoch = hello.epoch,
        "active server connected for mirroring; state exchanged"
    );
    Ok(mine)
}

/// Reads the active server's chunks into `tx`, until the stream ends or a hand-over.
async fn read(
    mirror: &Mirror,
    mut stream: quinn::RecvStream,
    tx: mpsc::Sender<(u64, Vec<Change>, u64)>,
) -> anyhow::Result<()> {
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
                mirror.beat_now.notify_one();
                return Ok(());
            }
            Some(MirrorMsg::Hello { .. } | MirrorMsg::Subscribe(_) | MirrorMsg::Admin(_)) => {
                bail!("a mirror stream carries only changes after its hello")
            }
            None => return Ok(()),
        }
    }
}

/// Stores what [`read`] received, every chunk waiting joining one write, and
/// acknowledges it; `at` is how far this server has the active server's journal
/// (`active_journal`).
async fn write(
    mirror: &Mirror,
    active_journal: u64,
    send: &mut quinn::SendStream,
    mut rx: mpsc::Receiver<(u64, Vec<Change>, u64)>,
    at: &mut Cursor,
) -> anyhow::Result<()> {
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
                    mirror.save_peer_cursor(*at);
                }
                continue;
            }
        };
        while changes.len() < crate::server::store::GROUP_COMMIT_CHANGES {
            match rx.try_recv() {
                Ok((seq, more, more_upto)) => {
                    last = seq;
                    upto = upto.max(more_upto);
                    changes.extend(more);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = mirror.store.write(changes, false).await {
            tsn_protocol::write_msg(send, &MirrorReply::Refused(e.to_string())).await?;
            bail!("could not store mirrored changes: {e}");
        }
        if upto > 0 {
            *at = Cursor {
                log_id: active_journal,
                offset: upto.max(at.offset),
            };
            dirty = true;
        }
        let ack = MirrorReply::Ack {
            seq: last,
            end: mirror.journal.len(),
        };
        tsn_protocol::write_msg(send, &ack).await?;
    }
    anyhow::Ok(())
}
