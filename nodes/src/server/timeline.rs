//! The timeline stream of one client session: posts up, entries and acks down.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tsn_protocol::client::{ClientReply, CommandError, TimelineDown, TimelineUp};
use tsn_protocol::{
    Change, FrameReader, Post, PostId, UserId, MAX_POST_BYTES, TIMELINE_RESUME_MAX,
};

use super::store::{Store, StoreError};
use super::Shared;

/// Posts of one session whose acknowledgement is outstanding; more make the session wait.
const IN_FLIGHT: usize = 256;

/// Runs a timeline session on the stream until the client leaves, the connection drops
/// or this server stops being active.
pub async fn run(
    shared: Arc<Shared>,
    store: Store,
    user: UserId,
    since_us: Option<i64>,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let refuse = match super::commands::check_user(&shared, user) {
        Err(e) => Some(e),
        Ok(())
            if !shared
                .model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_local(user) =>
        {
            Some(CommandError::InvalidUser)
        }
        Ok(()) => None,
    };
    if let Some(e) = refuse {
        if tsn_protocol::write_msg(&mut send, &ClientReply::Failed(e))
            .await
            .is_ok()
        {
            let _ = send.finish();
        }
        return;
    }
    // Subscribe before reading the backlog so that nothing falls between the two.
    let (sub_id, mut inbox) = shared.subscribe(user);
    let backlog = match since_us {
        None => shared
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .backlog(user),
        Some(since) => resume(&shared, user, since),
    };
    let result = session(&shared, &store, user, &mut send, recv, backlog, &mut inbox).await;
    shared.unsubscribe(user, sub_id);
    match result {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => tracing::debug!(user, "timeline session ended: {e}"),
    }
}

async fn session(
    shared: &Shared,
    store: &Store,
    user: UserId,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
    backlog: Vec<Post>,
    inbox: &mut mpsc::Receiver<Post>,
) -> anyhow::Result<()> {
    tsn_protocol::write_msg(send, &ClientReply::Ok).await?;
    let mut shown: HashSet<PostId> = HashSet::new();
    for p in backlog {
        shown.insert(p.id);
        tsn_protocol::write_msg(send, &TimelineDown::Entry(p)).await?;
    }

    let mut recv = FrameReader::new(recv);
    // Posts waiting for their acknowledgement, oldest first. The store completes requests
    // in the order they were queued, so only the oldest needs watching.
    let mut pending: VecDeque<(u64, oneshot::Receiver<Result<(), StoreError>>)> = VecDeque::new();
    let mut role = shared.role.subscribe();
    let mut mine: HashSet<PostId> = HashSet::new();
    let mut client_done = false;
    loop {
        tokio::select! {
            up = recv.next_msg::<TimelineUp>(), if !client_done && pending.len() < IN_FLIGHT => match up? {
                Some(TimelineUp::Post { nonce, text }) => {
                    let id = PostId { author: user, nonce };
                    mine.insert(id);
                    if text.len() > MAX_POST_BYTES {
                        let reason = CommandError::PostTooLong { len: text.len(), max: MAX_POST_BYTES };
                        tsn_protocol::write_msg(send, &TimelineDown::Refused { nonce, reason }).await?;
                        continue;
                    }
                    if !shared.role().active {
                        tsn_protocol::write_msg(send, &TimelineDown::NotActive).await?;
                        return Ok(());
                    }
                    // A resend of a stored post goes through the store too: it is then
                    // acknowledged only once the batch that stored it is.
                    let post = Post { id, ts_us: shared.clock.now(), text };
                    pending.push_back((nonce, store.submit(vec![Change::Post(post)], true).await));
                }
                None => client_done = true,
            },
            done = async { (&mut pending.front_mut().expect("guarded by the branch condition").1).await }, if !pending.is_empty() => {
                let (nonce, _) = pending.pop_front().expect("guarded by the branch condition");
                ack(send, nonce, done).await?;
                // Acks that completed meanwhile go out together.
                while let Some(done) = pending.front_mut().and_then(|p| p.1.try_recv().ok()) {
                    let (nonce, _) = pending.pop_front().expect("front exists");
                    ack(send, nonce, Ok(done)).await?;
                }
            }
            entry = inbox.recv() => match entry {
                Some(p) => {
                    if mine.contains(&p.id) || !shown.insert(p.id) {
                        continue;
                    }
                    tsn_protocol::write_msg(send, &TimelineDown::Entry(p)).await?;
                }
                None => anyhow::bail!("session fell behind"),
            },
            changed = role.changed() => {
                if changed.is_err() || !role.borrow().active {
                    tsn_protocol::write_msg(send, &TimelineDown::NotActive).await?;
                    return Ok(());
                }
            }
        }
        if client_done && pending.is_empty() {
            return Ok(());
        }
    }
}

/// Tells the client how its post ended: stored, or refused with the store's reason. A
/// store that stopped sends nothing (the server is going away; the client resends).
async fn ack(
    send: &mut quinn::SendStream,
    nonce: u64,
    done: Result<Result<(), StoreError>, oneshot::error::RecvError>,
) -> anyhow::Result<()> {
    let msg = match done {
        Ok(Ok(())) => TimelineDown::Ack { nonce },
        Ok(Err(e)) => TimelineDown::Refused {
            nonce,
            reason: CommandError::Storage(e.to_string()),
        },
        Err(_) => return Ok(()),
    };
    tsn_protocol::write_msg(send, &msg).await?;
    Ok(())
}

/// Every entry of `user`'s timeline from `since` on (at most [`TIMELINE_RESUME_MAX`], the
/// newest), for a client reopening its timeline after a reconnect. Entries older than the
/// in-memory backlog are read from the user's timeline file; equal
/// timestamps are included, the client drops what it has already shown.
fn resume(shared: &Shared, user: UserId, since: i64) -> Vec<Post> {
    let mut posts: Vec<Post> = shared
        .model
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .backlog(user);
    let on_disk = [shared.dir.timeline(user)];
    for path in on_disk {
        match tsn_datastore::read_records(&path) {
            Ok(records) => posts.extend(records.into_iter().filter_map(|r| match r {
                tsn_datastore::Record::Change(Change::Post(p)) => Some(p),
                tsn_datastore::Record::Deliver { post, .. } => Some(post),
                tsn_datastore::Record::Change(_) => None,
            })),
            Err(e) => tracing::warn!(user, "reading {} to resume a timeline: {e}", path.display()),
        }
    }
    posts.retain(|p| p.ts_us >= since);
    posts.sort_by_key(|p| (p.ts_us, p.id));
    posts.dedup_by_key(|p| p.id);
    let skip = posts.len().saturating_sub(TIMELINE_RESUME_MAX);
    posts.split_off(skip)
}
