//! The feeds the sync service reads: both of its servers' journals into the outbox, and
//! every cluster's outbox into the journal.

use crate::Locked;

use anyhow::Context;
use tokio::sync::watch;
use tsn_datastore::{DatastoreError, Record};
use tsn_protocol::coord::NodeKind;
use tsn_protocol::mirror::MirrorMsg;
use tsn_protocol::sync::{Cursor, FeedLog, SyncRequest};
use tsn_protocol::ClusterId;

use super::state::{self, SyncState};
use super::Core;
use crate::feed::{self, Batch, FeedConfig};

/// Runs `f` on the core off the runtime.
async fn with_core<T: Send + 'static>(
    core: &Core,
    f: impl FnOnce(&mut SyncState) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let core = core.clone();
    tokio::task::spawn_blocking(move || f(&mut core.locked()))
        .await
        .context("sync state task panicked")
}

/// Where a feed this sync service reads comes from, and what says it was read to its
/// end.
#[derive(Debug)]
pub(super) struct Source {
    /// The state the feed goes into.
    pub core: Core,
    /// The endpoint it is dialled from.
    pub endpoint: quinn::Endpoint,
    /// Where its writer is, as the coordinator says.
    pub addr: watch::Receiver<Option<String>>,
    /// Told once the feed has been read to its end (or its writer found down).
    pub settled: feed::Settled,
}

/// Follows one server's journal into the outbox.
pub(super) async fn follow_server(source: Source, cluster: ClusterId, kind: NodeKind) {
    let key = state::server_key(kind);
    let me = (cluster, NodeKind::Sync);
    let open = feed::opener(cluster, me, FeedLog::ServerJournal, MirrorMsg::Subscribe);
    let what = format!("{} journal", kind.as_str());
    follow_into(source, what, key, open, SyncState::absorb).await;
}

/// Follows one cluster's outbox into the journal.
pub(super) async fn follow_outbox(
    source: Source,
    cluster: ClusterId,
    from_cluster: ClusterId,
    servers_settled: Vec<watch::Receiver<bool>>,
) {
    for mut s in servers_settled {
        if s.wait_for(|v| *v).await.is_err() {
            return;
        }
    }
    let key = state::outbox_key(from_cluster);
    let me = (cluster, NodeKind::Sync);
    let open = feed::opener(
        from_cluster,
        me,
        FeedLog::SyncOutbox,
        SyncRequest::Subscribe,
    );
    let what = format!("cluster {from_cluster} outbox");
    follow_into(source, what, key, open, SyncState::deliver).await;
}

/// Batches of at most this many records may be taken, their flush included, on the
/// runtime's thread (see [`follow_into`]); at low load a batch holds a change or two.
const FLUSH_INLINE_RECORDS: usize = 4;

/// What a sync service does with a batch of one of the feeds it reads.
type Step = fn(&mut SyncState, Vec<Record>) -> Result<usize, DatastoreError>;

/// Follows one feed for ever, handing each batch to `step` on the core, then saving the
/// feed's cursor (`key`).
async fn follow_into(
    source: Source,
    what: String,
    key: String,
    open: impl Fn(Cursor) -> Vec<u8>,
    step: Step,
) {
    let Source {
        core,
        endpoint,
        addr,
        settled,
    } = source;
    let from = core.locked().cursor(&key);
    let apply = |batch: Batch| {
        let core = core.clone();
        let key = key.clone();
        let what = what.clone();
        async move {
            // A small batch, with the core free, is taken on this thread, its flush
            // included: at low load a hand-off to a blocking thread and the wake back
            // cost about as much as the flush, and nothing else is waiting. The cursor
            // and any checkpoint follow on a blocking thread, once the feeds of what was
            // just published have had their turn. Larger batches (a busy cluster, a
            // reader catching up) go to a blocking thread whole, so that the feeds keep
            // being read meanwhile.
            let (entries, next, inline) = (batch.records, batch.next, batch.inline);
            let mut waiting = Some(entries);
            let mut n = 0;
            if inline {
                if let Ok(mut c) = core.try_lock() {
                    let entries = waiting.take().expect("checked above");
                    n = step(&mut c, entries)?;
                }
                tokio::task::yield_now().await;
            }
            n += with_core(&core, move |c| {
                let mut n = 0;
                if let Some(entries) = waiting {
                    n = step(c, entries)?;
                }
                c.save_cursor(&key, next)?;
                c.maybe_checkpoint();
                Ok::<_, DatastoreError>(n)
            })
            .await??;
            if n > 0 {
                tracing::debug!(feed = %what, new = n, "records taken");
            }
            Ok(())
        }
    };
    let config = FeedConfig {
        inline: FLUSH_INLINE_RECORDS,
        ..FeedConfig::default()
    };
    feed::follow(config, &what, endpoint, addr, from, settled, open, apply).await;
}
