//! A timeline session's posts on their way to the journal: each is held while delivery
//! is behind (see [`crate::server::admission`]), then stored, then acknowledged in the
//! order it came.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::oneshot;
use tsn_protocol::client::{CommandError, TimelineDown};
use tsn_protocol::{Change, Post, PostId, UserId};

use super::Service;
use crate::server::admission;
use crate::server::store::StoreError;

/// Posts of one session whose acknowledgement is outstanding; more make the session wait.
const IN_FLIGHT: usize = 256;

/// A post waiting for its acknowledgement.
#[derive(Debug)]
struct Waiting {
    nonce: u64,
    /// When it came in.
    since: Instant,
    done: oneshot::Receiver<Result<(), StoreError>>,
}

/// How a post's storing ended, as the store said.
pub(super) type Outcome = Result<Result<(), StoreError>, oneshot::error::RecvError>;

/// The posts of one session not acknowledged yet.
#[derive(Debug)]
pub(super) struct Posts {
    user: UserId,
    /// Waiting for their acknowledgement, oldest first. The store completes requests in
    /// the order they were queued, so only the oldest needs watching.
    pending: VecDeque<Waiting>,
    /// A post read while delivery was behind, waiting to be stored: meanwhile no more
    /// are read, and their stream's flow control holds the client.
    held: Option<(u64, String)>,
    /// When to look at the held post again (kept across the session's loop: entries
    /// coming in must not put it off).
    pub(super) recheck: tokio::time::Instant,
}

impl Posts {
    pub(super) fn new(user: UserId) -> Posts {
        Posts {
            user,
            pending: VecDeque::new(),
            held: None,
            recheck: tokio::time::Instant::now(),
        }
    }

    /// Whether another post may be read from the client.
    pub(super) fn may_read(&self) -> bool {
        self.held.is_none() && self.pending.len() < IN_FLIGHT
    }

    pub(super) fn is_held(&self) -> bool {
        self.held.is_some()
    }

    pub(super) fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether every post read is acknowledged.
    pub(super) fn is_done(&self) -> bool {
        self.pending.is_empty() && self.held.is_none()
    }

    /// Takes a post the client sent: stored now, or held while delivery is behind.
    pub(super) async fn offer(&mut self, svc: &Service, nonce: u64, text: String) {
        if self.behind(svc) {
            self.held = Some((nonce, text));
        } else {
            self.submit(svc, nonce, text).await;
        }
    }

    /// Looks at the held post again: stored once delivery has caught up.
    pub(super) async fn retry_held(&mut self, svc: &Service) {
        if !self.behind(svc) {
            if let Some((nonce, text)) = self.held.take() {
                self.submit(svc, nonce, text).await;
            }
        }
    }

    fn behind(&mut self, svc: &Service) -> bool {
        let behind = svc.sessions.admission().behind(crate::now_us());
        if behind {
            svc.metrics.admission_pauses.inc();
            self.recheck = tokio::time::Instant::now() + admission::PAUSE;
        }
        behind
    }

    /// Completes when the oldest pending post's storing ends (pending forever when none
    /// is pending).
    pub(super) async fn oldest_done(&mut self) -> Outcome {
        match self.pending.front_mut() {
            Some(w) => (&mut w.done).await,
            None => std::future::pending().await,
        }
    }

    /// Adds to `out` the acknowledgement of the oldest post, which ended as `done`, and
    /// of those after it that have ended meanwhile (they go out in the same write).
    pub(super) fn acks(
        &mut self,
        svc: &Service,
        done: Outcome,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        let mut done = Some(done);
        while let Some(outcome) = done.take() {
            let Some(w) = self.pending.pop_front() else {
                break;
            };
            ack(svc, out, &w, outcome)?;
            done = self
                .pending
                .front_mut()
                .and_then(|p| p.done.try_recv().ok())
                .map(Ok);
        }
        Ok(())
    }

    /// Queues the post for storing. A resend of a stored post goes through the store
    /// too: it is then acknowledged only once the batch that stored it is.
    async fn submit(&mut self, svc: &Service, nonce: u64, text: String) {
        let post = Post {
            id: PostId {
                author: self.user,
                nonce,
            },
            ts_us: svc.clock.now(),
            text,
        };
        svc.sessions.admission().stored(post.ts_us);
        let since = Instant::now();
        let done = svc.store.submit(vec![Change::Post(post)], true).await;
        self.pending.push_back(Waiting { nonce, since, done });
    }
}

/// Adds to `out` how the client's post ended: stored, or refused with the store's reason.
/// A store that stopped says nothing (the server is going away; the client resends).
fn ack(svc: &Service, out: &mut Vec<u8>, w: &Waiting, done: Outcome) -> anyhow::Result<()> {
    let nonce = w.nonce;
    let msg = match done {
        Ok(Ok(())) => {
            svc.metrics.acked("post", w.since);
            TimelineDown::Ack { nonce }
        }
        Ok(Err(e)) => TimelineDown::Refused {
            nonce,
            reason: CommandError::Storage(e.to_string()),
        },
        Err(_) => return Ok(()),
    };
    tsn_protocol::push_msg(out, &msg)?;
    Ok(())
}
