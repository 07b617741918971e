//! The feeds the sync service reads: both of its servers' journals into the outbox, and
//! every cluster's outbox into the journal.

use crate::Locked;

use anyhow::Context;
use std::sync::Arc;
use tokio::sync::{watch, Notify};
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
    /// Where the feed goes.
    pub sink: Sink,
    /// The endpoint it is dialled from.
    pub endpoint: quinn::Endpoint,
    /// Where its writer is, as the coordinator says.
    pub addr: crate::link::PeerAddr,
    /// Told once the feed has been read to its end (or its writer found down).
    pub settled: feed::Settled,
}

impl Source {
    /// The feed's sink and settled flag, and how it is read: from the writer at `addr`,
    /// opened with `open`.
    fn remote(
        self,
        open: impl Fn(Cursor) -> Vec<u8> + Send + Sync + 'static,
    ) -> (Sink, feed::Settled, Via) {
        let via = Via::Remote {
            endpoint: self.endpoint,
            addr: self.addr,
            open: Box::new(open),
        };
        (self.sink, self.settled, via)
    }
}

/// Where every feed this sync service reads goes.
#[derive(Debug, Clone)]
pub(super) struct Sink {
    /// The state.
    pub core: Core,
    /// Told when a batch was taken but its commit is not due yet (see [`committer`]).
    pub commits: Arc<Notify>,
}

/// Commits what the feeds took but left uncommitted (its commit was not due:
/// [`SyncState::commit_due`]) once its moment has passed, so that a batch waits at most
/// [`crate::FLUSH_PACE`] to be served, however long the next one takes to come.
pub(super) async fn committer(core: Core, commits: Arc<Notify>) {
    loop {
        commits.notified().await;
        // Until nothing is left: each log's commit once its moment has come.
        loop {
            match with_core(&core, SyncState::commit_due).await {
                Ok(Ok(Some(wait))) => tokio::time::sleep(wait).await,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tracing::warn!("committing a log (retried with the next batch): {e}");
                    break;
                }
                Err(e) => {
                    tracing::warn!("{e:#}");
                    break;
                }
            }
        }
    }
}

/// Follows one server's journal into the outbox.
pub(super) async fn follow_server(source: Source, cluster: ClusterId, kind: NodeKind) {
    let key = state::server_key(kind);
    let me = (cluster, NodeKind::Sync);
    let open = feed::opener(cluster, me, FeedLog::ServerJournal, MirrorMsg::Subscribe);
    let what = format!("{} journal", kind.as_str());
    let (sink, settled, via) = source.remote(open);
    follow_into(sink, settled, via, what, key, SyncState::absorb).await;
}

/// Waits until both of this cluster's servers have been read to their end (or found
/// down): a post is delivered to the local users who follow its author, so the follows
/// must be known first (this matters when the sync service rebuilds from empty).
/// Returns false if the service stops meanwhile.
async fn servers_read(servers_settled: Vec<watch::Receiver<bool>>) -> bool {
    for mut s in servers_settled {
        if s.wait_for(|v| *v).await.is_err() {
            return false;
        }
    }
    true
}

/// Follows another cluster's outbox into the journal.
pub(super) async fn follow_outbox(
    source: Source,
    cluster: ClusterId,
    from_cluster: ClusterId,
    servers_settled: Vec<watch::Receiver<bool>>,
) {
    if !servers_read(servers_settled).await {
        return;
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
    let (sink, settled, via) = source.remote(open);
    follow_into(sink, settled, via, what, key, SyncState::deliver).await;
}

/// How this cluster's own outbox is read (by this process, as another cluster's sync
/// service reads it over QUIC: the same records, pace and cursor).
#[derive(Debug)]
pub(super) struct OwnOutbox {
    /// This cluster.
    pub cluster: ClusterId,
    /// How many clusters there are.
    pub clusters: u32,
    /// `--delivery period`: the period.
    pub pace: Option<std::time::Duration>,
    /// Bytes of the outbox this cluster has not read yet (`tsn_sync_backlog_bytes`).
    pub backlog: prometheus_client::metrics::gauge::Gauge,
}

/// Follows this cluster's own outbox into the journal, in this process: no connection,
/// no frame encoded or decoded.
pub(super) async fn follow_own_outbox(
    sink: Sink,
    settled: feed::Settled,
    own: OwnOutbox,
    servers_settled: Vec<watch::Receiver<bool>>,
) {
    if !servers_read(servers_settled).await {
        return;
    }
    let OwnOutbox {
        cluster,
        clusters,
        pace,
        backlog,
    } = own;
    let local = feed::Local {
        source: sink.core.locked().outbox_source(),
        reader: (cluster, NodeKind::Sync),
        keep: Box::new(move |r: &Record| {
            r.change()
                .is_some_and(|c| SyncState::wanted(c, cluster, clusters))
        }) as Keep,
        pace: feed::Pace::fixed(pace),
        on_sent: Box::new(move |left: u64| {
            backlog.set(i64::try_from(left).unwrap_or(i64::MAX));
        }) as OnSent,
    };
    let what = format!("cluster {cluster} outbox");
    let key = state::outbox_key(cluster);
    follow_into(
        sink,
        settled,
        Via::Local(local),
        what,
        key,
        SyncState::deliver,
    )
    .await;
}

/// Which records of the own outbox this cluster takes.
type Keep = Box<dyn Fn(&Record) -> bool + Send + Sync>;
/// What learns how much of the own outbox is left to read.
type OnSent = Box<dyn Fn(u64) + Send + Sync>;

/// Where a feed is read from: another node, over QUIC, or this process's own log.
enum Via {
    Remote {
        endpoint: quinn::Endpoint,
        addr: crate::link::PeerAddr,
        open: Box<dyn Fn(Cursor) -> Vec<u8> + Send + Sync>,
    },
    Local(feed::Local<Keep, Option<std::time::Duration>, OnSent>),
}

/// Batches of at most this many records may be taken, their flush included, on the
/// runtime's thread (see [`follow_into`]); at low load a batch holds a change or two.
const FLUSH_INLINE_RECORDS: usize = 4;

/// What a sync service does with a batch of one of the feeds it reads.
type Step = fn(&mut SyncState, Vec<Record>) -> Result<usize, DatastoreError>;

/// Follows one feed for ever, handing each batch to `step` on the core, and saving the
/// feed's cursor (`key`) whenever the feed settles ([`Batch::settle`]).
async fn follow_into(
    sink: Sink,
    settled: feed::Settled,
    via: Via,
    what: String,
    key: String,
    step: Step,
) {
    let Sink { core, commits } = sink;
    let from = core.locked().cursor(&key);
    let apply = |batch: Batch| {
        let core = core.clone();
        let key = key.clone();
        let what = what.clone();
        let commits = commits.clone();
        async move {
            // A small batch, with the core free, is taken on this thread, its flush
            // included when one is due: at low load a hand-off to a blocking thread and
            // the wake back cost about as much as the flush, and nothing else is waiting.
            // A flush not due yet is left to the committer. The cursor and any
            // checkpoint, when the feed settles, follow on a blocking thread, once the
            // feeds of what was just published have had their turn. Larger batches (a
            // busy cluster, a reader catching up) go to a blocking thread whole, so that
            // the feeds keep being read meanwhile.
            let (entries, next, inline, settle) =
                (batch.records, batch.next, batch.inline, batch.settle);
            let mut waiting = Some(entries);
            let mut n = 0;
            let mut owed = false;
            if inline {
                if let Ok(mut c) = core.try_lock() {
                    let entries = waiting.take().expect("checked above");
                    n = step(&mut c, entries)?;
                    owed = c.commit_due()?.is_some();
                }
                tokio::task::yield_now().await;
            }
            if waiting.is_some() || settle {
                let (m, still_owed) = with_core(&core, move |c| {
                    let mut n = 0;
                    if let Some(entries) = waiting {
                        n = step(c, entries)?;
                    }
                    if settle {
                        c.save_cursor(&key, next)?;
                        c.maybe_checkpoint();
                    }
                    Ok::<_, DatastoreError>((n, c.commit_due()?.is_some()))
                })
                .await??;
                n += m;
                owed = still_owed;
            }
            if owed {
                commits.notify_one();
            }
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
    match via {
        Via::Remote {
            endpoint,
            addr,
            open,
        } => feed::follow(config, &what, endpoint, addr, from, settled, open, apply).await,
        Via::Local(local) => feed::follow_local(config, &what, local, from, settled, apply).await,
    }
}
