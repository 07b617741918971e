//! The timeline stream of one client session: the opening entries, then posts up and
//! new entries and acknowledgements down.

use tokio::io::AsyncWriteExt;
use tsn_protocol::client::{ClientReply, TimelineDown, TimelinePos, TimelineUp};
use tsn_protocol::{FrameReader, UserId};

use super::opening::{opening, Opening};
use super::post::Posts;
use super::Service;
use crate::net::{RecvHalf, SendHalf};
use crate::server::auth::Conn;
use crate::server::sessions::Inbox;

/// Entries of one session written to its stream at once, at most.
const ENTRY_BURST: usize = 256;

/// Runs a timeline session on the stream until the client leaves, the connection drops
/// or this server stops being active.
pub(super) async fn run(
    svc: &Service,
    conn: &Conn,
    user: UserId,
    since: Option<TimelinePos>,
    mut send: impl SendHalf,
    recv: impl RecvHalf,
) {
    if let Err(e) = svc.check_session(conn, user) {
        if tsn_protocol::write_msg(&mut send, &ClientReply::Failed(e))
            .await
            .is_ok()
        {
            send.finish_stream();
        }
        return;
    }
    // Subscribe before reading the backlog so that nothing falls between the two.
    let (sub_id, mut inbox) = svc.sessions.subscribe(user);
    let start = opening(svc, user, since);
    let result = session(svc, user, &mut send, recv, start, &mut inbox).await;
    svc.sessions.unsubscribe(user, sub_id);
    match result {
        Ok(()) => send.finish_stream(),
        Err(e) => tracing::debug!(user, "timeline session ended: {e}"),
    }
}

/// Whether a session goes on after a step.
enum Next {
    Go,
    End,
}

async fn session(
    svc: &Service,
    user: UserId,
    send: &mut impl SendHalf,
    recv: impl RecvHalf,
    start: Opening,
    inbox: &mut Inbox,
) -> anyhow::Result<()> {
    tsn_protocol::write_msg(send, &ClientReply::Ok).await?;
    tsn_protocol::write_msg(send, &TimelineDown::Position(start.pos)).await?;
    // However many there are: the stream's flow control paces them.
    let mut last = start.pos.seq;
    for (seq, post) in start.entries {
        last = last.max(seq);
        tsn_protocol::write_msg(send, &TimelineDown::Entry { post, seq }).await?;
    }
    let mut recv = FrameReader::new(recv);
    let mut posts = Posts::new(user);
    let mut role = svc.role.subscribe();
    let mut client_done = false;
    loop {
        let recheck = posts.recheck;
        let next = tokio::select! {
            () = tokio::time::sleep_until(recheck), if posts.is_held() => {
                posts.retry_held(svc).await;
                Next::Go
            }
            up = recv.next_msg::<TimelineUp>(), if !client_done && posts.may_read() => match up? {
                Some(TimelineUp::Post { nonce, text }) => post(svc, send, &mut posts, user, (nonce, text)).await?,
                None => {
                    client_done = true;
                    Next::Go
                }
            },
            done = posts.oldest_done(), if posts.is_pending() => {
                let mut out = Vec::new();
                posts.acks(svc, done, &mut out)?;
                send.write_all(&out).await?;
                Next::Go
            }
            entry = inbox.recv() => match entry {
                Some(first) => {
                    entries(send, inbox, first, &mut last).await?;
                    Next::Go
                }
                None => {
                    // Fell behind (or the numbering was begun anew): the client reopens
                    // the timeline from the last entry it has.
                    tsn_protocol::write_msg(send, &TimelineDown::Reopen).await?;
                    Next::End
                }
            },
            changed = role.changed() => {
                if changed.is_err() || !role.borrow().active {
                    tsn_protocol::write_msg(send, &TimelineDown::NotActive).await?;
                    Next::End
                } else {
                    Next::Go
                }
            }
        };
        if matches!(next, Next::End) || (client_done && posts.is_done()) {
            return Ok(());
        }
    }
}

/// A post from the client: refused, or taken.
async fn post(
    svc: &Service,
    send: &mut impl SendHalf,
    posts: &mut Posts,
    user: UserId,
    (nonce, text): (u64, String),
) -> anyhow::Result<Next> {
    if let Err(reason) = tsn_protocol::client::check_post(&text) {
        tsn_protocol::write_msg(send, &TimelineDown::Refused { nonce, reason }).await?;
        return Ok(Next::Go);
    }
    if !svc.role.is_active() {
        tsn_protocol::write_msg(send, &TimelineDown::NotActive).await?;
        return Ok(Next::End);
    }
    if let Err(reason) = svc.limit.check(user) {
        tsn_protocol::write_msg(send, &TimelineDown::Refused { nonce, reason }).await?;
        return Ok(Next::Go);
    }
    posts.offer(svc, nonce, text).await;
    Ok(Next::Go)
}

/// Writes `first` and the entries queued behind it (up to a burst) in one write: a
/// timeline that grows by tens of thousands of entries a second costs one stream write
/// per burst, not one per entry.
async fn entries(
    send: &mut impl SendHalf,
    inbox: &mut Inbox,
    first: (u64, tsn_protocol::Post),
    last: &mut u64,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some((seq, post)) = next {
        // Entries published while the opening was read come twice.
        if seq > *last {
            *last = seq;
            tsn_protocol::push_msg(&mut out, &TimelineDown::Entry { post, seq })?;
        }
        taken += 1;
        next = if taken < ENTRY_BURST {
            inbox.try_recv().ok()
        } else {
            None
        };
    }
    send.write_all(&out).await?;
    Ok(())
}
