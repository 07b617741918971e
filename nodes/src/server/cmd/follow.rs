//! FOLLOW and UNFOLLOW: a follow edge's change, stamped after the edge's last known one
//! so that it supersedes it.

use tsn_protocol::client::CommandError;
use tsn_protocol::{Change, UserId};

use super::Service;

/// `user` follows `target` from now on.
pub(super) fn follow(svc: &Service, user: UserId, target: UserId) -> Result<Change, CommandError> {
    svc.limit.check(user)?;
    if target == user || svc.state.follows(user, target) {
        return Err(CommandError::AlreadyExists);
    }
    if !svc.state.is_known(target) {
        return Err(CommandError::NoSuchUser);
    }
    Ok(edge(svc, user, target, true))
}

/// `user` stops following `target`.
pub(super) fn unfollow(
    svc: &Service,
    user: UserId,
    target: UserId,
) -> Result<Change, CommandError> {
    svc.limit.check(user)?;
    if !svc.state.is_known(target) {
        return Err(CommandError::NoSuchUser);
    }
    if target == user || !svc.state.follows(user, target) {
        return Err(CommandError::InvalidUser);
    }
    Ok(edge(svc, user, target, false))
}

fn edge(svc: &Service, follower: UserId, followee: UserId, active: bool) -> Change {
    Change::Follow {
        follower,
        followee,
        ts_us: svc.state.follow_ts(follower, followee, svc.clock.now()),
        active,
    }
}
