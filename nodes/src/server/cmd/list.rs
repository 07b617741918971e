//! LIST: every user, and the user's followers.

use tsn_protocol::client::ClientReply;
use tsn_protocol::UserId;

use super::Service;

/// What LIST answers `user`.
pub(super) fn list(svc: &Service, user: UserId) -> ClientReply {
    let (all_users, followers) = svc.state.list(user);
    ClientReply::List {
        all_users,
        followers,
    }
}
