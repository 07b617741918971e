//! Client commands: one request and one reply per stream (TIMELINE keeps the stream).

use crate::Locked;
use std::sync::{Arc, Mutex};

use tsn_protocol::client::{ClientReply, ClientRequest, CommandError, LoginProof};
use tsn_protocol::types::cluster_of;
use tsn_protocol::{Change, UserId};

use super::store::Store;
use super::Shared;

/// What one client connection has established: the challenge it was given, and the one
/// user it acts for once logged in.
#[derive(Debug, Default)]
pub struct ConnUser {
    challenge: Option<Vec<u8>>,
    user: Option<UserId>,
}

/// Shared by the streams of one connection.
pub type Conn = Arc<Mutex<ConnUser>>;

/// Checks that the connection is logged in as `user`: a connection acts for one user.
pub fn check_login(conn: &Conn, user: UserId) -> Result<(), CommandError> {
    match conn.locked().user {
        Some(u) if u == user => Ok(()),
        _ => Err(CommandError::InvalidUser),
    }
}

/// Serves one stream opened by a client.
pub async fn serve_stream(
    shared: Arc<Shared>,
    store: Store,
    conn: Conn,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some(req) =
        crate::net::first_msg::<ClientRequest>(&mut send, &mut recv, "client request").await
    else {
        return;
    };
    if let ClientRequest::Timeline { user, since } = req {
        super::timeline::run(shared, store, conn, user, since, send, recv).await;
        return;
    }
    let reply = handle(&shared, &store, &conn, req).await;
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

async fn handle(shared: &Shared, store: &Store, conn: &Conn, req: ClientRequest) -> ClientReply {
    let since = std::time::Instant::now();
    let user = match &req {
        ClientRequest::Challenge => {
            let challenge: [u8; 32] = rand::random();
            conn.locked().challenge = Some(challenge.to_vec());
            return ClientReply::Challenge(challenge.to_vec());
        }
        ClientRequest::Login { user, .. }
        | ClientRequest::Follow { user, .. }
        | ClientRequest::Unfollow { user, .. }
        | ClientRequest::List { user }
        | ClientRequest::Timeline { user, .. } => *user,
    };
    if let Err(e) = check_user(shared, user) {
        return failed(e);
    }
    if !matches!(req, ClientRequest::Login { .. }) {
        if let Err(e) = check_login(conn, user) {
            return failed(e);
        }
        if !shared.state.is_local(user) {
            return failed(CommandError::InvalidUser);
        }
    }
    if matches!(
        req,
        ClientRequest::Follow { .. } | ClientRequest::Unfollow { .. }
    ) {
        if let Err(e) = shared.limit(user) {
            return failed(e);
        }
    }
    let change = match req {
        ClientRequest::Challenge => return failed(CommandError::InvalidCommand),
        ClientRequest::Login { user, proof } => {
            return login(shared, store, conn, user, proof).await
        }
        ClientRequest::Follow { user, target } => {
            let state = &shared.state;
            if target == user || state.follows(user, target) {
                return failed(CommandError::AlreadyExists);
            }
            if !state.is_known(target) {
                return failed(CommandError::NoSuchUser);
            }
            Change::Follow {
                follower: user,
                followee: target,
                ts_us: state.follow_ts(user, target, shared.clock.now()),
                active: true,
            }
        }
        ClientRequest::Unfollow { user, target } => {
            let state = &shared.state;
            if !state.is_known(target) {
                return failed(CommandError::NoSuchUser);
            }
            if target == user || !state.follows(user, target) {
                return failed(CommandError::InvalidUser);
            }
            Change::Follow {
                follower: user,
                followee: target,
                ts_us: state.follow_ts(user, target, shared.clock.now()),
                active: false,
            }
        }
        ClientRequest::List { user } => {
            let (all_users, followers) = shared.state.list(user);
            return ClientReply::List {
                all_users,
                followers,
            };
        }
        ClientRequest::Timeline { .. } => return failed(CommandError::InvalidCommand),
    };
    let kind = match &change {
        Change::User { .. } => "user",
        Change::Follow { active: true, .. } => "follow",
        Change::Follow { active: false, .. } => "unfollow",
        Change::Post(_) => "post",
        Change::Key { .. } => "key",
    };
    match store.write(vec![change], true).await {
        Ok(()) => {
            shared.metrics.acked(kind, since);
            ClientReply::Ok
        }
        Err(e) => failed(CommandError::Storage(e.to_string())),
    }
}

/// A login: checks the proof against the connection's challenge, binds the user to the
/// key at first login (trust on first use) or checks it against the binding, and makes
/// the connection act for the user.
async fn login(
    shared: &Shared,
    store: &Store,
    conn: &Conn,
    user: UserId,
    proof: Option<LoginProof>,
) -> ClientReply {
    let (challenge, already) = {
        let mut c = conn.locked();
        (c.challenge.take(), c.user)
    };
    if already.is_some_and(|u| u != user) {
        // A connection acts for the one user it logged in as.
        return failed(CommandError::InvalidUser);
    }
    let (Some(proof), Some(challenge)) = (proof, challenge) else {
        return failed(CommandError::BadProof);
    };
    let message = tsn_protocol::types::login_message(user, &challenge);
    let verified = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &proof.key)
        .verify(&message, &proof.signature);
    if proof.key.len() != 32 || verified.is_err() {
        return failed(CommandError::BadProof);
    }
    let (bound, generation, new_user) = {
        let binding = shared.state.key_of(user);
        (
            binding
                .as_ref()
                .map(|b| b.2.clone())
                .filter(|k| !k.is_empty()),
            binding.as_ref().map_or(0, |b| b.0),
            !shared.state.is_local(user),
        )
    };
    match bound {
        Some(k) if k == proof.key => {}
        Some(_) => {
            tracing::info!(user, "login refused: another key");
            return failed(CommandError::KeyMismatch { user });
        }
        None => {
            let mut changes = Vec::new();
            if new_user {
                changes.push(Change::User { user });
            }
            changes.push(Change::Key {
                user,
                generation,
                ts_us: shared.clock.now(),
                key: proof.key.clone(),
            });
            if let Err(e) = store.write(changes, true).await {
                return failed(CommandError::Storage(e.to_string()));
            }
            // Two first logins with different keys at once: the binding that won is
            // the one to check against.
            let won = shared.state.key_of(user).map(|b| b.2);
            if won.as_deref() != Some(proof.key.as_slice()) {
                return failed(CommandError::KeyMismatch { user });
            }
            tracing::info!(user, generation, "user bound to its key");
        }
    }
    if new_user && shared.state.is_local(user) {
        shared.metrics.acked("user", std::time::Instant::now());
    }
    conn.locked().user = Some(user);
    ClientReply::Ok
}
