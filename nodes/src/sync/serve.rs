//! The feeds the sync service serves: its outbox to every cluster's sync service, its
//! journal to its own cluster's servers.

use crate::Locked;
use std::sync::Arc;
use std::time::Duration;

use tsn_protocol::sync::{FeedLog, Subscribe, SyncReply, SyncRequest};
use tsn_protocol::ClusterId;

use super::state::SyncState;
use super::Core;
use crate::feed::{self, FeedConfig, Pace};
use crate::metrics::Metrics;

/// What the sync service's connections are served with.
#[derive(Debug, Clone)]
pub(super) struct Peers {
    /// The state: its outbox and journal.
    pub core: Core,
    /// This sync service's cluster.
    pub cluster: ClusterId,
    /// How many clusters there are.
    pub clusters: u32,
    /// `--delivery period`: the period.
    pub pace: Option<Duration>,
    /// What an operator sees.
    pub metrics: Arc<Metrics>,
}

impl Peers {
    /// Serves one connection's feed streams until it closes, and until they have ended.
    pub(super) async fn serve_connection(self, conn: quinn::Connection) {
        crate::net::serve_streams(conn, |send, recv| self.clone().serve_stream(send, recv)).await;
    }

    async fn serve_stream(self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let Some(SyncRequest::Subscribe(sub)) =
            crate::net::first_msg::<SyncRequest>(&mut send, &mut recv, "feed request").await
        else {
            return;
        };
        if let Err(why) = self.serve_feed(&sub, &mut send, recv).await {
            tracing::debug!(reader = sub.reader, log = ?sub.log, "feed ended: {why}");
            let _ = tsn_protocol::write_msg(&mut send, &SyncReply::Refused(why)).await;
            let _ = send.finish();
        }
    }

    /// Serves the log `sub` asks for, if this reader may read it.
    async fn serve_feed(
        &self,
        sub: &Subscribe,
        send: &mut quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), String> {
        let (cluster, clusters, pace) = (self.cluster, self.clusters, self.pace);
        let (outbox, journal) = {
            let c = self.core.locked();
            (c.outbox_source(), c.journal_source())
        };
        let cfg = FeedConfig::default();
        match sub.log {
            _ if sub.cluster != cluster => Err(format!(
                "this sync service serves cluster {cluster}, not {}",
                sub.cluster
            )),
            FeedLog::SyncOutbox => {
                let dest = sub.reader;
                let backlog = self
                    .metrics
                    .sync_backlog
                    .get_or_create(&crate::metrics::ClusterLabel { cluster: dest })
                    .clone();
                let wanted = move |r: &tsn_datastore::Record| {
                    r.change()
                        .is_some_and(|c| SyncState::wanted(c, dest, clusters))
                };
                let left = move |left: u64| {
                    backlog.set(left as i64);
                };
                feed::serve(
                    &cfg,
                    outbox,
                    sub,
                    wanted,
                    Pace::fixed(pace),
                    left,
                    send,
                    recv,
                )
                .await
                .map_err(|e| format!("{e:#}"))
            }
            FeedLog::SyncJournal if sub.reader == cluster => feed::serve(
                &cfg,
                journal,
                sub,
                |_| true,
                Pace::fixed(pace),
                |_| {},
                send,
                recv,
            )
            .await
            .map_err(|e| format!("{e:#}")),
            FeedLog::SyncJournal => Err(format!(
                "the journal of cluster {cluster} is for its own servers, not cluster {}",
                sub.reader
            )),
            FeedLog::ServerJournal => Err("a sync service has no server journal".into()),
        }
    }
}
