//! An operator's key reset (`tsn_admin reset-key`, over a node connection): the user's
//! next login binds a key anew.

use tsn_protocol::mirror::AdminReply;
use tsn_protocol::UserId;

use super::Service;
use crate::server::auth;

/// Resets `user`'s key binding.
pub async fn reset_key(svc: &Service, user: UserId) -> AdminReply {
    if let Err(e) = auth::check_user(&svc.role, svc.node.cluster, user) {
        return AdminReply::Refused(format!("user {user} cannot be served here: {e}"));
    }
    if !svc.state.is_local(user) {
        return AdminReply::Refused(format!("user {user} has never logged in"));
    }
    let generation = svc.state.key_of(user).map_or(0, |b| b.0) + 1;
    let change = tsn_protocol::Change::Key {
        user,
        generation,
        ts_us: svc.clock.now(),
        key: Vec::new(),
    };
    match svc.store.write(vec![change], true).await {
        Ok(()) => {
            tracing::info!(
                user,
                generation,
                "an operator reset the user's key: the next login binds anew"
            );
            AdminReply::Done
        }
        Err(e) => AdminReply::Refused(format!("not stored: {e}")),
    }
}
