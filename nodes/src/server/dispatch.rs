//! What a connection to the server is for: client connections (no certificate) speak
//! the client protocol, one command per stream; node connections (a certificate from
//! the CA) mirror, read the journal's feed, or carry an operator's request.

use std::sync::Arc;

use tsn_protocol::mirror::{AdminRequest, MirrorMsg};
use tsn_protocol::sync::{FeedLog, Subscribe, SyncReply};

use super::cmd::{self, Service};
use super::mirror::{self, Mirror};
use crate::feed::FeedSource;

/// A standby's journal holds what the active server's holds (it is there for a split
/// brain, and for what the active server wrote but did not pass on before it was lost):
/// its feed sends at most this often, so that the standby's copy of a post costs it and
/// the sync service a share of a large frame rather than a frame of its own. The moment the standby becomes active its feed flows at
/// once again, with what was waiting.
pub const STANDBY_FEED_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// What the server's connections are served with.
#[derive(Debug, Clone)]
pub(super) struct Dispatch {
    /// Client commands.
    pub service: Arc<Service>,
    /// The mirror, for a stream from the active server.
    pub mirror: Mirror,
    /// The journal, for the sync service's feed.
    pub journal_feed: FeedSource,
    /// Which pages' browser sessions are served.
    pub origins: super::web::Origins,
}

impl Dispatch {
    /// Serves one connection until it closes, and until its streams have ended (each
    /// sees the connection's end and finishes as it does when its peer goes away).
    pub(super) async fn serve_connection(self, conn: quinn::Connection) {
        if super::web::is_browser(&conn) {
            return super::web::serve(self.service, self.origins, conn).await;
        }
        let is_node = tsn_certs::peer_is_node(&conn);
        let user = super::auth::Conn::default();
        crate::net::serve_streams(conn, |send, recv| {
            let (this, user) = (self.clone(), user.clone());
            async move {
                if is_node {
                    this.serve_node_stream(send, recv).await;
                } else {
                    cmd::serve_stream(this.service, user, send, recv).await;
                }
            }
        })
        .await;
    }

    /// A stream from another node: a mirror stream from the active server, the sync
    /// service reading the journal, or an operator's request.
    async fn serve_node_stream(self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let Some(first) =
            crate::net::first_msg::<MirrorMsg>(&mut send, &mut recv, "node stream").await
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
                mirror::serve_standby(self.mirror, hello, send, recv).await
            }
            MirrorMsg::Subscribe(sub) => self.serve_feed(sub, send, recv).await,
            MirrorMsg::Admin(AdminRequest::ResetKey { user }) => {
                let reply = cmd::reset_key::reset_key(&self.service, user).await;
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

    /// This cluster's sync service reads the journal.
    async fn serve_feed(
        self,
        sub: Subscribe,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let cluster = self.service.cluster();
        let refusal = if sub.cluster != cluster || sub.reader != cluster {
            Some(format!(
                "this server's journal is for cluster {cluster}'s sync service"
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
                self.journal_feed,
                &sub,
                |_| true,
                crate::feed::Pace {
                    rx: self.service.role.subscribe(),
                    period: |r| (!r.active).then_some(STANDBY_FEED_EVERY),
                },
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
}
