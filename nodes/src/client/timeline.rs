//! Timeline mode: every typed line is a post; followees' posts are printed as they come.
//!
//! Each post gets a random nonce (its id with the user's id) when it is typed, and stays
//! in [`Unacked`] until the server acknowledges it. When the link fails, or the server
//! stops being active, or posts stay unacknowledged while the coordinator already names
//! another server, the client reconnects, reopens the timeline from the position it had
//! reached (every entry after it is sent again, numbered, so nothing is skipped) and
//! resends the unacknowledged posts in order; the server stores a resent id once. The
//! client's own posts come back as entries too (that is how its other devices see
//! them): those it sent itself are not printed again.
//!
//! The stream is read and written at the same time: a task of its own writes posts (so
//! that a slow write never keeps acknowledgements and entries from being read), while
//! this module reads the replies. At most [`MAX_UNACKED`] posts are in flight: at that
//! many, input is not read until acknowledgements come back, so any amount of piped
//! input goes through in bounded memory.
//!
//! Leaving: at end of input (or Ctrl-D) the client waits up to [`DRAIN`] for its posts to
//! be acknowledged, then finishes its side of the stream; the server sends whatever is
//! left of the timeline (on a short visit, the backlog) and ends the stream, and only
//! then does the client exit. On Ctrl-C or SIGTERM it waits up to [`STOP_GRACE`] for its
//! posts and says how many were stored.
//!
//! The exit status tells a script whether every post was stored: 0 when each was
//! acknowledged, 1 when any was refused (by the server: rate limit, control characters;
//! or here: too long) or never acknowledged, at end of input and after a signal alike,
//! with the count on stderr (`45 of 100000 posts were not stored`).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tsn_protocol::client::{
    ClientReply, ClientRequest, CommandError, TimelineDown, TimelinePos, TimelineUp,
};
use tsn_protocol::{FrameReader, PostId, UserId, MAX_POST_BYTES};

use super::console::{Ask, Event, Input, Output, Stop};
use super::inflight::{AckWatch, RecentIds, Unacked};
use super::link::Link;
use super::words;

/// How often the client checks on unacknowledged posts.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// Posts sent and not yet acknowledged, at most: about 300 bytes each.
pub const MAX_UNACKED: usize = 1024;
/// After end of input, how long to wait for outstanding acknowledgements.
pub const DRAIN: Duration = Duration::from_secs(30);
/// After Ctrl-C or SIGTERM, how long to wait for outstanding acknowledgements.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Once every post is acknowledged at end of input, how long to wait for the server to
/// send the rest of the timeline and end the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Post ids remembered so that a post is printed once: this client's own posts (they come
/// back as entries), and the entries of a timeline reopened by time after the sync
/// service's journal was begun anew (numbered entries are told apart by their numbers).
const RECENT_IDS: usize = 4 * (1000 + MAX_UNACKED);
/// How long the server may take to open the timeline. Reopening after a reconnect makes
/// it read back everything the client missed, which a busy server may take seconds to
/// do; giving up sooner would only make it start again. A server that is gone is still
/// noticed within the connection's idle timeout.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of posts the writer gathers into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Runs timeline mode until the user leaves; returns the exit code.
pub async fn run(link: &mut Link, input: &mut Input, out: &Output, stop: &Stop) -> i32 {
    let mut t = Timeline {
        user: link.user(),
        input,
        out: out.clone(),
        stop: stop.clone(),
        unacked: Unacked::default(),
        recent: RecentIds::new(RECENT_IDS),
        newest: None,
        entered: false,
        leaving: None,
        typed: 0,
        refused: 0,
    };
    loop {
        let why = match t.session(link).await {
            Outcome::Done => return t.finish(),
            Outcome::Failed(msg) => {
                t.out.line(msg);
                return 1;
            }
            Outcome::Reconnect(why) => why,
        };
        if t.leaving.as_ref().is_some_and(|l| Instant::now() >= l.by) {
            return t.finish();
        }
        // While it reconnects the client keeps reading: lines typed are posts, sent once
        // a server is found, and Ctrl-C on a terminal (a key, not a signal, while the
        // line editor reads) or end of input leaves as it does at any other time.
        loop {
            let until = t.leaving.as_ref().map(|l| l.by);
            let reading = t.leaving.is_none() && t.unacked.len() < MAX_UNACKED;
            tokio::select! {
                done = link.reconnect(&why, until) => match done {
                    Ok(()) => break,
                    Err(_) => return t.finish(),
                },
                event = t.input.next(Ask::Post), if reading => match event {
                    Event::Line(text) => t.post(text, None),
                    Event::End => t.leave(Why::EndOfInput),
                    Event::Interrupt => t.leave(Why::Stopped),
                },
                _ = t.stop.wait(), if !t.stopping() => {
                    t.out.leave_terminal().await;
                    t.leave(Why::Stopped);
                }
            }
            if t.leaving.is_some() && t.unacked.is_empty() {
                return t.finish();
            }
        }
    }
}

enum Outcome {
    /// The user left and nothing more is to be done.
    Done,
    /// The link needs reconnecting, for this reason.
    Reconnect(String),
    /// The server refused the timeline.
    Failed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// End of input or Ctrl-D.
    EndOfInput,
    /// Ctrl-C, SIGINT or SIGTERM.
    Stopped,
}

struct Leaving {
    why: Why,
    by: Instant,
    /// Posts unacknowledged when the user asked to stop.
    waiting_for: usize,
    /// Of those, acknowledged since.
    stored: usize,
}

struct Timeline<'a> {
    user: UserId,
    input: &'a mut Input,
    out: Output,
    stop: Stop,
    unacked: Unacked,
    recent: RecentIds,
    /// The position reached in the timeline: a reopened timeline resumes from it.
    newest: Option<TimelinePos>,
    entered: bool,
    leaving: Option<Leaving>,
    /// Posts the user typed (blank lines are not posts).
    typed: usize,
    /// Of those, refused by the server or not sent (too long).
    refused: usize,
}

impl Timeline<'_> {
    fn stopping(&self) -> bool {
        self.leaving.as_ref().is_some_and(|l| l.why == Why::Stopped)
    }

    fn leave(&mut self, why: Why) {
        let grace = match why {
            Why::EndOfInput => DRAIN,
            Why::Stopped => STOP_GRACE,
        };
        let by = Instant::now() + grace;
        let waiting_for = self.unacked.len();
        match &mut self.leaving {
            Some(l) if l.why == Why::Stopped || why == Why::EndOfInput => return,
            Some(l) => {
                l.why = why;
                l.by = l.by.min(by);
                l.waiting_for = waiting_for;
                l.stored = 0;
            }
            None => {
                self.leaving = Some(Leaving {
                    why,
                    by,
                    waiting_for,
                    stored: 0,
                })
            }
        }
        if why == Why::Stopped && waiting_for > 0 {
            self.out.notice(&format!(
                "Leaving: waiting up to {} s for {}",
                grace.as_secs(),
                posts(waiting_for, "unacknowledged post")
            ));
        }
    }

    /// Says how leaving went; returns the exit code: 0 only if every post typed was
    /// stored.
    fn finish(&self) -> i32 {
        let left = self.unacked.len();
        if let Some(l) = self.leaving.as_ref().filter(|l| l.why == Why::Stopped) {
            if l.waiting_for > 0 {
                self.out.notice(&format!(
                    "{} of {} stored",
                    l.stored,
                    posts(l.waiting_for, "post")
                ));
            }
        }
        let not_stored = self.refused + left;
        if not_stored > 0 {
            self.out.notice(&format!(
                "tsn_client: {not_stored} of {} were not stored ({} refused, {left} not acknowledged: they may not be stored)",
                posts(self.typed, "post"),
                self.refused
            ));
        }
        match &self.leaving {
            Some(_) if not_stored == 0 => 0,
            // The server was lost for good, or posts were refused or are left.
            _ => 1,
        }
    }

    /// Opens a timeline stream from the position reached; says once that the user is in
    /// the timeline.
    async fn open(
        &mut self,
        link: &Link,
    ) -> Result<(quinn::SendStream, FrameReader<quinn::RecvStream>), Outcome> {
        let Ok((mut send, recv)) = link.conn().open_bi().await else {
            return Err(Outcome::Reconnect("the connection failed".into()));
        };
        let mut reader = FrameReader::new(recv);
        let request = ClientRequest::Timeline {
            user: self.user,
            since: self.newest,
        };
        let opened = async {
            tsn_protocol::write_msg(&mut send, &request).await?;
            reader.next_msg::<ClientReply>().await
        };
        let refused = match tokio::time::timeout(OPEN_TIMEOUT, opened).await {
            Ok(Ok(Some(ClientReply::Ok))) => None,
            Ok(Ok(Some(ClientReply::Failed(CommandError::NotActive)))) => {
                Some(Outcome::Reconnect("no longer the active server".into()))
            }
            Ok(Ok(Some(ClientReply::Failed(e)))) => Some(Outcome::Failed(words::failure(&e))),
            Ok(Ok(Some(ClientReply::List { .. } | ClientReply::Challenge(_)))) => {
                Some(Outcome::Failed(words::UNKNOWN_FAILURE))
            }
            Ok(Ok(None)) => Some(Outcome::Reconnect("it closed the timeline at once".into())),
            Ok(Err(e)) => Some(Outcome::Reconnect(format!("opening the timeline: {e}"))),
            Err(_) => Some(Outcome::Reconnect(
                "it did not open the timeline in time".into(),
            )),
        };
        if let Some(outcome) = refused {
            return Err(outcome);
        }
        if !self.entered {
            self.out.line(words::SUCCESS);
            self.out.line(words::IN_TIMELINE);
            if self.out.is_terminal() {
                self.out.line(words::TIMELINE_HINT);
            }
            self.entered = true;
        }
        Ok((send, reader))
    }

    /// One timeline stream, until it fails or the user has left.
    async fn session(&mut self, link: &Link) -> Outcome {
        let (send, mut reader) = match self.open(link).await {
            Ok(opened) => opened,
            Err(outcome) => return outcome,
        };

        // Every post in the channel is also in `unacked`, which holds fewer than
        // MAX_UNACKED whenever a post is added: the channel is never full.
        let (up_tx, up_rx) = mpsc::channel(MAX_UNACKED);
        let mut writer = AbortOnDrop(tokio::spawn(write_posts(send, up_rx)));
        let mut writer_done = false;
        let now = Instant::now();
        for p in self.unacked.iter_mut() {
            let _ = up_tx.try_send(TimelineUp::Post {
                nonce: p.nonce,
                text: p.text.clone(),
            });
            p.sent = now;
        }
        let mut up = Some(up_tx);
        // Set once our side of the stream is finished.
        let mut closing_by: Option<Instant> = None;
        let mut watch = AckWatch::new(now);
        let mut probe: Option<AbortOnDrop<bool>> = None;
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            if self.leaving.is_some() && self.unacked.is_empty() {
                if self.stopping() {
                    return Outcome::Done;
                }
                if up.take().is_some() {
                    closing_by = Some(Instant::now() + CLOSE_GRACE);
                }
            }
            let reading =
                up.is_some() && self.leaving.is_none() && self.unacked.len() < MAX_UNACKED;
            tokio::select! {
                down = reader.next_msg::<TimelineDown>() => match down {
                    Ok(Some(msg)) => {
                        if let Some(outcome) = self.on_reply(msg, &mut watch) {
                            return outcome;
                        }
                    }
                    // Our side is finished and every post acknowledged: nothing is lost
                    // if the stream ends, cleanly or not.
                    Ok(None) | Err(_) if up.is_none() => return Outcome::Done,
                    Ok(None) => return Outcome::Reconnect("it ended the timeline".into()),
                    Err(e) => return Outcome::Reconnect(e.to_string()),
                },
                event = self.input.next(Ask::Post), if reading => match event {
                    Event::Line(text) => self.post(text, up.as_ref()),
                    Event::End => self.leave(Why::EndOfInput),
                    Event::Interrupt => self.leave(Why::Stopped),
                },
                _ = self.stop.wait(), if !self.stopping() => {
                    self.out.leave_terminal().await;
                    self.leave(Why::Stopped);
                }
                written = &mut writer.0, if !writer_done => {
                    writer_done = true;
                    match written {
                        Ok(Ok(())) => {}
                        _ if up.is_none() => {}
                        Ok(Err(e)) => return Outcome::Reconnect(format!("sending posts: {e:#}")),
                        Err(_) => return Outcome::Reconnect("sending posts stopped".into()),
                    }
                }
                moved = async { (&mut probe.as_mut().expect("guarded by the branch condition").0).await }, if probe.is_some() => {
                    probe = None;
                    if moved.unwrap_or(false) {
                        return Outcome::Reconnect(
                            "posts unacknowledged, and the coordinator names another server".into(),
                        );
                    }
                    watch.unchanged(Instant::now());
                }
                _ = check.tick() => {
                    let now = Instant::now();
                    if closing_by.is_some_and(|by| now >= by) {
                        return Outcome::Done;
                    }
                    if self.leaving.as_ref().is_some_and(|l| now >= l.by) {
                        return Outcome::Done;
                    }
                    if probe.is_none() && watch.due(now, self.unacked.oldest_sent()) {
                        probe = Some(AbortOnDrop(tokio::spawn(link.probe())));
                    }
                }
            }
        }
    }

    /// Handles one message from the server; `Some` ends the session.
    fn on_reply(&mut self, msg: TimelineDown, watch: &mut AckWatch) -> Option<Outcome> {
        match msg {
            TimelineDown::Position(at) => self.newest = Some(at),
            TimelineDown::Entry { post: p, seq } => {
                if let Some(at) = self.newest.as_mut() {
                    if seq <= at.seq {
                        return None;
                    }
                    at.seq = seq;
                    at.ts_us = p.ts_us;
                }
                if self.recent.insert(p.id) {
                    self.out.line(&words::entry_line(&p));
                }
            }
            TimelineDown::Reopen => {
                return Some(Outcome::Reconnect(
                    "the server closed the timeline (it fell behind)".into(),
                ))
            }
            TimelineDown::Ack { nonce } => {
                if let Some(p) = self.unacked.take(nonce) {
                    watch.acked(Instant::now());
                    if let Some(l) = &mut self.leaving {
                        l.stored += 1;
                    }
                    if self.out.is_terminal() {
                        self.out
                            .line(&words::post_line(self.user, crate::now_us(), &p.text));
                    }
                }
            }
            TimelineDown::Refused { nonce, reason } => {
                if self.unacked.take(nonce).is_some() {
                    self.refused += 1;
                }
                self.out.line(&format!("Post not stored: {reason}"));
            }
            TimelineDown::NotActive => {
                return Some(Outcome::Reconnect("no longer the active server".into()))
            }
        }
        None
    }

    /// A typed line: checked, sent, and kept until acknowledged.
    fn post(&mut self, text: String, up: Option<&mpsc::Sender<TimelineUp>>) {
        if text.trim().is_empty() {
            return;
        }
        self.typed += 1;
        if text.len() > MAX_POST_BYTES {
            self.refused += 1;
            self.out.line(&format!(
                "Post is too long ({} bytes, at most {MAX_POST_BYTES}): not sent",
                text.len()
            ));
            return;
        }
        let nonce: u64 = rand::random();
        self.recent.insert(PostId {
            author: self.user,
            nonce,
        });
        if let Some(up) = up {
            // Only fails if the writer stopped; its error reconnects and resends.
            let _ = up.try_send(TimelineUp::Post {
                nonce,
                text: text.clone(),
            });
        }
        self.unacked.push(nonce, text, Instant::now());
    }
}

/// "1 post", "3 posts".
fn posts(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Writes posts to the stream as they come, several to a write when they queue up;
/// finishes the stream when the channel closes.
async fn write_posts(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<TimelineUp>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    while let Some(msg) = rx.recv().await {
        buf.clear();
        tsn_protocol::write_msg(&mut buf, &msg).await?;
        while buf.len() < WRITE_BATCH {
            let Ok(msg) = rx.try_recv() else { break };
            tsn_protocol::write_msg(&mut buf, &msg).await?;
        }
        send.write_all(&buf).await?;
    }
    send.finish()?;
    Ok(())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
