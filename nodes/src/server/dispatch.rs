//! What a connection to the server is for: client connections (no certificate) speak
//! the client protocol, one command per stream; node connections (a certificate from
//! the CA) mirror, read the journal's feed, or carry an operator's request.

use std::sync::Arc;

use tsn_protocol::mirror::MirrorMsg;
use tsn_protocol::sync::{FeedLog, SyncReply};

use super::{commands, mirror, store, Shared};

/// Client connections (no certificate) speak the client protocol; node connections
/// (certificate from the CA) mirror or read the journal's feed.
pub(super) async fn serve_connection(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    store: store::Store,
) {
    let is_node = tsn_certs::peer_is_node(&conn);
    let user: commands::Conn = Arc::default();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let shared = shared.clone();
        let store = store.clone();
        let user = user.clone();
        tokio::spawn(async move {
            if is_node {
                serve_node_stream(shared, store, send, recv).await;
            } else {
                commands::serve_stream(shared, store, user, send, recv).await;
            }
        });
    }
}

/// A stream from another node: a mirror stream from the active server, or the sync
/// service reading the journal.
async fn serve_node_stream(
    shared: Arc<Shared>,
    store: store::Store,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some(first) = crate::net::first_msg::<MirrorMsg>(&mut send, &mut recv, "node stream").await
    else {
        return;
    };
    match first {
        MirrorMsg::Hello {
            cluster,
            epoch,
            journal,
            have,
        } => {
            let hello = mirror::Hello {
                cluster,
                epoch,
                journal,
                have,
            };
            mirror::serve_standby(shared, store, hello, send, recv).await
        }
        MirrorMsg::Subscribe(sub) => {
            let refusal = if sub.cluster != shared.cluster || sub.reader != shared.cluster {
                Some(format!(
                    "this server's journal is for cluster {}'s sync service",
                    shared.cluster
                ))
            } else if sub.log != FeedLog::ServerJournal {
                Some(format!("a server serves its journal, not {:?}", sub.log))
            } else {
                None
            };
            let result = match refusal {
                Some(why) => Err(why),
                None => crate::feed::serve(
                    &crate::feed::FeedConfig::default(),
                    shared.journal_feed.clone(),
                    &sub,
                    |_| true,
                    None,
                    |_| {},
                    &mut send,
                    recv,
                )
                .await
                .map_err(|e| format!("{e:#}")),
            };
            if let Err(why) = result {
                tracing::debug!("journal feed ended: {why}");
                let _ = tsn_protocol::write_msg(&mut send, &SyncReply::Refused(why)).await;
                let _ = send.finish();
            }
        }
        MirrorMsg::Admin(req) => {
            let reply = admin(&shared, &store, req).await;
            if tsn_protocol::write_msg(&mut send, &reply).await.is_ok() {
                let _ = send.finish();
            }
        }
        MirrorMsg::Changes { .. } | MirrorMsg::HandOver { .. } => {
            let _ = send.reset(1u32.into());
            tracing::debug!("node stream began with something else than a hello");
        }
    }
}

/// An operator's request (the peer holds a node certificate).
async fn admin(
    shared: &Shared,
    store: &store::Store,
    req: tsn_protocol::mirror::AdminRequest,
) -> tsn_protocol::mirror::AdminReply {
    use tsn_protocol::mirror::{AdminReply, AdminRequest};
    match req {
        AdminRequest::ResetKey { user } => {
            if let Err(e) = commands::check_user(shared, user) {
                return AdminReply::Refused(format!("user {user} cannot be served here: {e}"));
            }
            if !shared.state.is_local(user) {
                return AdminReply::Refused(format!("user {user} has never logged in"));
            }
            let generation = shared.state.key_of(user).map_or(0, |b| b.0) + 1;
            let change = tsn_protocol::Change::Key {
                user,
                generation,
                ts_us: shared.clock.now(),
                key: Vec::new(),
            };
            match store.write(vec![change], true).await {
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
    }
}
