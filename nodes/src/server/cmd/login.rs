//! LOGIN: the proof is checked against the connection's challenge; a user's first login
//! binds its key (trust on first use), later ones must be made with that key.

use tsn_protocol::client::{ClientReply, CommandError, LoginProof};
use tsn_protocol::{Change, UserId};

use super::{failed, Service};
use crate::server::auth::{self, Conn};

/// Logs the connection in as `user`.
pub(super) async fn login(
    svc: &Service,
    conn: &Conn,
    user: UserId,
    proof: Option<LoginProof>,
) -> ClientReply {
    let key = match auth::verify_login(conn, user, proof) {
        Ok(key) => key,
        Err(e) => return failed(e),
    };
    let binding = svc.state.key_of(user);
    let bound = binding
        .as_ref()
        .map(|b| b.2.clone())
        .filter(|k| !k.is_empty());
    let generation = binding.as_ref().map_or(0, |b| b.0);
    let new_user = !svc.state.is_local(user);
    match bound {
        Some(k) if k == key => {}
        Some(_) => {
            tracing::info!(user, "login refused: another key");
            return failed(CommandError::KeyMismatch { user });
        }
        None => {
            if let Err(e) = bind(svc, user, generation, new_user, key).await {
                return failed(e);
            }
        }
    }
    if new_user && svc.state.is_local(user) {
        svc.metrics.acked("user", std::time::Instant::now());
    }
    auth::logged_in(conn, user);
    ClientReply::Ok
}

/// Binds `user` (made a user first when `new_user`) to `key`.
async fn bind(
    svc: &Service,
    user: UserId,
    generation: u64,
    new_user: bool,
    key: Vec<u8>,
) -> Result<(), CommandError> {
    let mut changes = Vec::new();
    if new_user {
        changes.push(Change::User { user });
    }
    changes.push(Change::Key {
        user,
        generation,
        ts_us: svc.clock.now(),
        key: key.clone(),
    });
    svc.store
        .write(changes, true)
        .await
        .map_err(|e| CommandError::Storage(e.to_string()))?;
    // Two first logins with different keys at once: the binding that won is the one to
    // check against.
    let won = svc.state.key_of(user).map(|b| b.2);
    if won.as_deref() != Some(key.as_slice()) {
        return Err(CommandError::KeyMismatch { user });
    }
    tracing::info!(user, generation, "user bound to its key");
    Ok(())
}
