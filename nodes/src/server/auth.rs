//! Who may do what: a connection acts for the one user it logged in as, by a signature
//! over the challenge it was given; a user is served only by its home cluster's active
//! server; posts, follows and unfollows are limited per user and second.

use crate::Locked;
use std::sync::{Arc, Mutex};

use tsn_protocol::client::{CommandError, LoginProof};
use tsn_protocol::types::cluster_of;
use tsn_protocol::{ClusterId, UserId};

use super::role::Role;

/// What one client connection has established: the challenge it was given, and the one
/// user it acts for once logged in.
#[derive(Debug, Default)]
pub struct ConnUser {
    challenge: Option<Vec<u8>>,
    user: Option<UserId>,
}

/// Shared by the streams of one connection.
pub type Conn = Arc<Mutex<ConnUser>>;

/// Gives the connection a new challenge to sign.
pub fn new_challenge(conn: &Conn) -> Vec<u8> {
    let challenge: [u8; 32] = rand::random();
    conn.locked().challenge = Some(challenge.to_vec());
    challenge.to_vec()
}

/// Checks `proof` of `user` against the connection's challenge (each challenge serves
/// one attempt), and that the connection acts for no other user. Returns the key the
/// proof was made with.
pub fn verify_login(
    conn: &Conn,
    user: UserId,
    proof: Option<LoginProof>,
) -> Result<Vec<u8>, CommandError> {
    let (challenge, already) = {
        let mut c = conn.locked();
        (c.challenge.take(), c.user)
    };
    if already.is_some_and(|u| u != user) {
        return Err(CommandError::InvalidUser);
    }
    let (Some(proof), Some(challenge)) = (proof, challenge) else {
        return Err(CommandError::BadProof);
    };
    let message = tsn_protocol::types::login_message(user, &challenge);
    let verified = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &proof.key)
        .verify(&message, &proof.signature);
    if proof.key.len() != 32 || verified.is_err() {
        return Err(CommandError::BadProof);
    }
    Ok(proof.key)
}

/// The connection acts for `user` from now on.
pub fn logged_in(conn: &Conn, user: UserId) {
    conn.locked().user = Some(user);
}

/// Checks that the connection is logged in as `user`: a connection acts for one user.
pub fn check_login(conn: &Conn, user: UserId) -> Result<(), CommandError> {
    match conn.locked().user {
        Some(u) if u == user => Ok(()),
        _ => Err(CommandError::InvalidUser),
    }
}

/// Checks that this server, of `cluster` and in `role`, may serve `user` now.
pub fn check_user(role: &Role, cluster: ClusterId, user: UserId) -> Result<(), CommandError> {
    let role = role.current();
    if !role.active {
        return Err(CommandError::NotActive);
    }
    if role.clusters > 0 && cluster_of(user, role.clusters) != cluster {
        return Err(CommandError::InvalidUser);
    }
    Ok(())
}

/// Posts, follows and unfollows per user and second (`--user-rate`), with bursts of as
/// many.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    limiter: governor::DefaultKeyedRateLimiter<UserId>,
}

impl RateLimit {
    /// `per_second` for each user.
    pub fn new(per_second: u32) -> RateLimit {
        let n = std::num::NonZeroU32::new(per_second).unwrap_or(std::num::NonZeroU32::MIN);
        RateLimit {
            per_second,
            limiter: governor::RateLimiter::keyed(governor::Quota::per_second(n)),
        }
    }

    /// Counts one post, follow or unfollow of `user`.
    pub fn check(&self, user: UserId) -> Result<(), CommandError> {
        self.limiter.check_key(&user).map_err(|_| {
            tracing::debug!(user, "over the per-user rate limit");
            CommandError::RateLimited {
                per_second: self.per_second,
            }
        })
    }
}
