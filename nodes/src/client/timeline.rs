//! Timeline mode: every typed line is a post; followees' posts are printed as they come.
//!
//! Each post gets a random nonce (its id with the user's id) when it is typed, and stays
//! in the unacknowledged list until the server acknowledges it. When the link fails, or
//! the server stops being active, or a post stays unacknowledged while the coordinator
//! already names another server, the client reconnects, reopens the timeline and resends
//! the unacknowledged posts in order; the server stores a resent id once.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tsn_protocol::client::{ClientReply, ClientRequest, TimelineDown, TimelinePos, TimelineUp};
use tsn_protocol::{PostId, MAX_POST_BYTES};

use super::link::Link;
use super::{say, words, Lines};

/// How often the client checks on unacknowledged posts.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// A post unacknowledged for this long makes the client ask the coordinator whether its
/// server has changed (an acknowledgement normally takes well under a millisecond).
pub const ACK_SUSPECT: Duration = Duration::from_millis(300);
/// After end of input, how long to wait for outstanding acknowledgements.
const DRAIN: Duration = Duration::from_secs(30);

struct Pending {
    nonce: u64,
    text: String,
    sent: Instant,
}

enum Outcome {
    /// End of input and every post acknowledged.
    Done,
    /// The link needs reconnecting.
    Reconnect,
}

/// Runs timeline mode until end of input; returns the exit code.
pub async fn run(link: &mut Link, lines: &mut Lines) -> i32 {
    let mut unacked: VecDeque<Pending> = VecDeque::new();
    let mut seen: HashSet<PostId> = HashSet::new();
    // The position reached in the timeline: a reopened timeline resumes from it.
    let mut newest: Option<TimelinePos> = None;
    let mut entered = false;
    let mut eof_at: Option<Instant> = None;
    loop {
        match session(
            link,
            lines,
            &mut unacked,
            &mut seen,
            &mut newest,
            &mut entered,
            &mut eof_at,
        )
        .await
        {
            Ok(Outcome::Done) => return 0,
            Ok(Outcome::Reconnect) => {}
            Err(Fatal(msg)) => {
                say(msg);
                return 1;
            }
        }
        if eof_at.is_some_and(|t| t.elapsed() > DRAIN) {
            eprintln!("tsn_client: {} posts were not acknowledged", unacked.len());
            return 1;
        }
        if let Err(e) = link.reconnect().await {
            eprintln!("tsn_client: {e:#}");
            if !unacked.is_empty() {
                eprintln!("tsn_client: {} posts were not acknowledged", unacked.len());
            }
            return 1;
        }
    }
}

struct Fatal(&'static str);

async fn session(
    link: &mut Link,
    lines: &mut Lines,
    unacked: &mut VecDeque<Pending>,
    seen: &mut HashSet<PostId>,
    newest: &mut Option<TimelinePos>,
    entered: &mut bool,
    eof_at: &mut Option<Instant>,
) -> Result<Outcome, Fatal> {
    let user = link.user();
    let Ok((mut send, mut recv)) = link.conn().open_bi().await else {
        return Ok(Outcome::Reconnect);
    };
    let opened = async {
        tsn_protocol::write_msg(
            &mut send,
            &ClientRequest::Timeline {
                user,
                since: *newest,
            },
        )
        .await
        .ok()?;
        tsn_protocol::read_msg::<ClientReply, _>(&mut recv)
            .await
            .ok()?
    };
    match tokio::time::timeout(crate::net::REQUEST_TIMEOUT, opened).await {
        Ok(Some(ClientReply::Ok)) => {}
        Ok(Some(ClientReply::Failed(tsn_protocol::client::CommandError::NotActive)))
        | Ok(None)
        | Err(_) => return Ok(Outcome::Reconnect),
        Ok(Some(ClientReply::Failed(e))) => return Err(Fatal(words::failure(&e))),
        Ok(Some(ClientReply::List { .. })) => return Err(Fatal(words::UNKNOWN_FAILURE)),
    }
    if !*entered {
        say(words::SUCCESS);
        say("Now you are in the timeline");
        *entered = true;
    }
    for p in unacked.iter_mut() {
        if tsn_protocol::write_msg(
            &mut send,
            &TimelineUp::Post {
                nonce: p.nonce,
                text: p.text.clone(),
            },
        )
        .await
        .is_err()
        {
            return Ok(Outcome::Reconnect);
        }
        p.sent = Instant::now();
    }

    let (down_tx, mut down_rx) = mpsc::channel::<TimelineDown>(1024);
    let reader = tokio::spawn(async move {
        while let Ok(Some(msg)) = tsn_protocol::read_msg::<TimelineDown, _>(&mut recv).await {
            if down_tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        if eof_at.is_some() && unacked.is_empty() {
            let _ = send.finish();
            return Ok(Outcome::Done);
        }
        tokio::select! {
            line = lines.recv(), if eof_at.is_none() => match line {
                None => *eof_at = Some(Instant::now()),
                Some(text) => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    if text.len() > MAX_POST_BYTES {
                        say(&format!("Post is too long ({} bytes, at most {MAX_POST_BYTES}): not sent", text.len()));
                        continue;
                    }
                    let nonce: u64 = rand::random();
                    seen.insert(PostId { author: user, nonce });
                    let write = tsn_protocol::write_msg(&mut send, &TimelineUp::Post { nonce, text: text.clone() }).await;
                    unacked.push_back(Pending { nonce, text, sent: Instant::now() });
                    if write.is_err() {
                        return Ok(Outcome::Reconnect);
                    }
                }
            },
            msg = down_rx.recv() => match msg {
                Some(TimelineDown::Entry { post: p, seq }) => {
                    if let Some(at) = newest.as_mut() {
                        if seq <= at.seq {
                            continue;
                        }
                        at.seq = seq;
                        at.ts_us = p.ts_us;
                    }
                    if seen.insert(p.id) {
                        say(&words::entry_line(&p));
                    }
                }
                Some(TimelineDown::Position(at)) => *newest = Some(at),
                Some(TimelineDown::Ack { nonce }) => unacked.retain(|p| p.nonce != nonce),
                Some(TimelineDown::Refused { nonce, reason }) => {
                    unacked.retain(|p| p.nonce != nonce);
                    say(&format!("Post not stored: {reason}"));
                }
                Some(TimelineDown::NotActive | TimelineDown::Reopen) | None => return Ok(Outcome::Reconnect),
            },
            _ = check.tick() => {
                let suspect = unacked.front().is_some_and(|p| p.sent.elapsed() > ACK_SUSPECT);
                if suspect && link.server_moved().await {
                    return Ok(Outcome::Reconnect);
                }
                if eof_at.is_some_and(|t| t.elapsed() > DRAIN) {
                    return Ok(Outcome::Reconnect);
                }
            }
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
