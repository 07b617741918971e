//! Client commands: one request and one reply per stream, but TIMELINE, which keeps its
//! stream for the session.
//!
//! # Layout
//! - [`login`]: LOGIN, binding a new user's key at first use.
//! - [`follow`]: FOLLOW and UNFOLLOW.
//! - [`list`]: LIST, every user and the followers of the user.
//! - [`timeline`]: the timeline session: the opening entries, then posts up and new
//!   entries down; [`post`] holds its posts until each is acknowledged.
//! - [`reset_key`]: an operator's key reset.

mod follow;
mod list;
mod login;
mod opening;
mod post;
pub mod reset_key;
mod timeline;

use std::sync::Arc;
use std::time::Instant;

use tsn_protocol::client::{ClientReply, ClientRequest, CommandError};
use tsn_protocol::Change;

use super::auth::{self, Conn, RateLimit};
use super::model::State;
use super::role::{Node, Role};
use super::sessions::Sessions;
use super::store::Store;
use crate::hlc::Hlc;
use crate::metrics::Metrics;
use crate::net::{RecvHalf, SendHalf};

/// What client commands read and change.
#[derive(Debug)]
pub struct Service {
    /// This server.
    pub node: Node,
    /// What it knows.
    pub state: Arc<State>,
    /// Timestamps of new changes.
    pub clock: Arc<Hlc>,
    /// The journal writer.
    pub store: Store,
    /// Active or standby.
    pub role: Role,
    /// Open timeline sessions.
    pub sessions: Arc<Sessions>,
    /// Per-user rate limit of posts, follows and unfollows.
    pub limit: RateLimit,
    /// What an operator sees.
    pub metrics: Arc<Metrics>,
}

impl Service {
    /// This server's cluster.
    pub fn cluster(&self) -> tsn_protocol::ClusterId {
        self.node.cluster
    }

    /// Checks that `user` is served here now, and by this connection.
    fn check_session(&self, conn: &Conn, user: tsn_protocol::UserId) -> Result<(), CommandError> {
        auth::check_user(&self.role, self.node.cluster, user)?;
        auth::check_login(conn, user)?;
        if !self.state.is_local(user) {
            return Err(CommandError::InvalidUser);
        }
        Ok(())
    }

    /// Stores `change` (mirrored) and counts its acknowledgement.
    async fn store(&self, change: Change, since: Instant) -> ClientReply {
        let kind = match &change {
            Change::User { .. } => "user",
            Change::Follow { active: true, .. } => "follow",
            Change::Follow { active: false, .. } => "unfollow",
            Change::Post(_) => "post",
            Change::Key { .. } => "key",
        };
        match self.store.write(vec![change], true).await {
            Ok(()) => {
                self.metrics.acked(kind, since);
                ClientReply::Ok
            }
            Err(e) => failed(CommandError::Storage(e.to_string())),
        }
    }
}

/// Serves one stream opened by a client, over `tsn/1` or a browser's WebTransport.
pub async fn serve_stream(
    svc: Arc<Service>,
    conn: Conn,
    mut send: impl SendHalf,
    mut recv: impl RecvHalf,
) {
    let Some(req) =
        crate::net::first_msg::<ClientRequest>(&mut send, &mut recv, "client request").await
    else {
        return;
    };
    if let ClientRequest::Timeline { user, since } = req {
        timeline::run(&svc, &conn, user, since, send, recv).await;
        return;
    }
    let reply = handle(&svc, &conn, req).await;
    if tsn_protocol::write_msg(&mut send, &reply).await.is_ok() {
        send.finish_stream();
    }
}

fn failed(e: CommandError) -> ClientReply {
    ClientReply::Failed(e)
}

async fn handle(svc: &Service, conn: &Conn, req: ClientRequest) -> ClientReply {
    let since = Instant::now();
    let user = match &req {
        ClientRequest::Challenge => return ClientReply::Challenge(auth::new_challenge(conn)),
        ClientRequest::Login { user, .. }
        | ClientRequest::Follow { user, .. }
        | ClientRequest::Unfollow { user, .. }
        | ClientRequest::List { user }
        | ClientRequest::Timeline { user, .. } => *user,
    };
    let checked = match req {
        ClientRequest::Login { .. } => auth::check_user(&svc.role, svc.node.cluster, user),
        _ => svc.check_session(conn, user),
    };
    if let Err(e) = checked {
        return failed(e);
    }
    let change = match req {
        ClientRequest::Login { user, proof } => return login::login(svc, conn, user, proof).await,
        ClientRequest::Follow { user, target } => follow::follow(svc, user, target),
        ClientRequest::Unfollow { user, target } => follow::unfollow(svc, user, target),
        ClientRequest::List { user } => return list::list(svc, user),
        ClientRequest::Challenge | ClientRequest::Timeline { .. } => {
            return failed(CommandError::InvalidCommand)
        }
    };
    match change {
        Ok(change) => svc.store(change, since).await,
        Err(e) => failed(e),
    }
}
