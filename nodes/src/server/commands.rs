//! Client commands: one request and one reply per stream (TIMELINE keeps the stream).

use std::sync::Arc;

use tsn_protocol::client::{ClientReply, ClientRequest, CommandError};
use tsn_protocol::types::cluster_of;
use tsn_protocol::{Change, UserId};

use super::store::Store;
use super::Shared;

/// Serves one stream opened by a client.
pub async fn serve_stream(
    shared: Arc<Shared>,
    store: Store,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let req = match tsn_protocol::read_msg::<ClientRequest, _>(&mut recv).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("bad client request: {e}");
            let _ = send.reset(1u32.into());
            return;
        }
    };
    if let ClientRequest::Timeline { user, since } = req {
        super::timeline::run(shared, store, user, since, send, recv).await;
        return;
    }
    let reply = handle(&shared, &store, req).await;
    if tsn_protocol::write_msg(&mut send, &reply).await.is_ok() {
        let _ = send.finish();
    }
}

fn failed(e: CommandError) -> ClientReply {
    ClientReply::Failed(e)
}

/// Checks that this server may serve `user` now.
pub fn check_user(shared: &Shared, user: UserId) -> Result<(), CommandError> {
    let role = shared.role();
    if !role.active {
        return Err(CommandError::NotActive);
    }
    if role.clusters > 0 && cluster_of(user, role.clusters) != shared.cluster {
        return Err(CommandError::InvalidUser);
    }
    Ok(())
}

async fn handle(shared: &Shared, store: &Store, req: ClientRequest) -> ClientReply {
    let since = std::time::Instant::now();
    let user = match &req {
        ClientRequest::Login { user }
        | ClientRequest::Follow { user, .. }
        | ClientRequest::Unfollow { user, .. }
        | ClientRequest::List { user }
        | ClientRequest::Timeline { user, .. } => *user,
    };
    if let Err(e) = check_user(shared, user) {
        return failed(e);
    }
    if !matches!(req, ClientRequest::Login { .. }) && !lock(shared).is_local(user) {
        return failed(CommandError::InvalidUser);
    }
    let change = match req {
        ClientRequest::Login { user } => {
            if lock(shared).is_local(user) {
                return ClientReply::Ok;
            }
            Change::User { user }
        }
        ClientRequest::Follow { user, target } => {
            let m = lock(shared);
            if target == user || m.follows(user, target) {
                return failed(CommandError::AlreadyExists);
            }
            if !m.is_known(target) {
                return failed(CommandError::NoSuchUser);
            }
            Change::Follow {
                follower: user,
                followee: target,
                ts_us: shared.clock.now(),
                active: true,
            }
        }
        ClientRequest::Unfollow { user, target } => {
            let m = lock(shared);
            if !m.is_known(target) {
                return failed(CommandError::NoSuchUser);
            }
            if target == user || !m.follows(user, target) {
                return failed(CommandError::InvalidUser);
            }
            Change::Follow {
                follower: user,
                followee: target,
                ts_us: shared.clock.now(),
                active: false,
            }
        }
        ClientRequest::List { user } => {
            let m = lock(shared);
            return ClientReply::List {
                all_users: m.all_users(),
                followers: m.followers_of(user),
            };
        }
        ClientRequest::Timeline { .. } => return failed(CommandError::InvalidCommand),
    };
    let kind = match &change {
        Change::User { .. } => "user",
        Change::Follow { active: true, .. } => "follow",
        Change::Follow { active: false, .. } => "unfollow",
        Change::Post(_) => "post",
    };
    match store.write(vec![change], true).await {
        Ok(()) => {
            shared.metrics.acked(kind, since);
            ClientReply::Ok
        }
        Err(e) => failed(CommandError::Storage(e.to_string())),
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, super::model::Model> {
    shared.model.lock().unwrap_or_else(|e| e.into_inner())
}
