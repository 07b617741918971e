//! The coordinator's QUIC service: every request a member answers, and the watch
//! streams.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tsn_protocol::coord::{BeatReply, CoordError, CoordReply, CoordRequest, Member};

use super::group::{Group, Refusal};
use crate::common::{CommonOpts, NodeOpts};

/// The TSN coordinator: keeps every cluster's routing table from its nodes' heartbeats,
/// assigns clients to clusters, and fails a cluster over when its active server stops
/// beating. Runs alone, or as one member of a group of 3 or 5 (--id, --members) that
/// decide together through Raft, so that losing one coordinator host changes nothing.
#[derive(Debug, Parser)]
#[command(name = "tsn_coordinator", version, long_about = None)]
#[command(mut_arg("cert_dir", |a| a.help(crate::common::CERT_DIR_NODE)))]
#[command(mut_arg("heartbeat_ms", |a| a.help(crate::common::HEARTBEAT_COORDINATOR)))]
pub struct CoordinatorOpts {
    /// UDP port to listen on (0 picks a free one; see --ready-file).
    #[arg(short = 'p', long = "port", env = "TSN_PORT")]
    pub port: u16,

    /// Clear the datastore (every cluster's files) before starting; a coordinator that
    /// runs alone also forgets what it decided (its coordinator/ directory).
    #[arg(short = 'c', long = "clear")]
    pub clear: bool,

    /// This member's id in the group: member n is the n-th address of --members.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9), env = "TSN_ID")]
    pub id: u64,

    /// The addresses (host:port, the ones the other members and the nodes dial) of every
    /// member of the coordinator group, in id order, comma-separated. Without it the
    /// coordinator is a group of one.
    #[arg(long, value_delimiter = ',', value_parser = crate::common::parse_host_port, value_name = "ADDR,ADDR,...", env = "TSN_MEMBERS")]
    pub members: Vec<String>,

    /// Raft entries between snapshots of what the group decided; older entries are then
    /// dropped from the log (so its size does not grow with history), and a member that
    /// is further behind is sent the snapshot.
    #[arg(long, default_value_t = super::raft::SNAPSHOT_EVERY, value_parser = clap::value_parser!(u64).range(1..), value_name = "ENTRIES", env = "TSN_SNAPSHOT_EVERY")]
    pub snapshot_every: u64,

    /// Number of clusters; client N is served by cluster (N % clusters) + 1.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000), env = "TSN_CLUSTERS")]
    pub clusters: u32,

    /// Serve the web client (a page to log in, follow and post from a browser, and
    /// `/assign/<user>`, where it finds the user's server) over HTTP on this address.
    /// Every member of a group may serve it. Browsers treat http://127.0.0.1 and
    /// http://localhost as secure; for other hosts put an HTTPS proxy in front (README).
    #[arg(long, value_name = "HOST:PORT", env = "TSN_WEB_ADDR")]
    pub web_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub node: NodeOpts,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// Binds the coordinator's endpoint on `--bind` and `-p`, with a leaf of the cluster CA
/// in `--cert-dir`; nodes, clients and operator tools connect to it.
pub fn bind(opts: &CoordinatorOpts) -> anyhow::Result<crate::net::NodeListener> {
    opts.node.listen(
        &opts.common,
        opts.port,
        tsn_certs::ClientAuth::Optional,
        None,
    )
}

/// Runs the coordinator on `listener` (see [`bind`]) until `shutdown` resolves (the
/// binary passes Ctrl-C / SIGTERM), then returns once its tasks are joined.
pub async fn run(
    opts: CoordinatorOpts,
    listener: crate::net::NodeListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let alone = opts.members.is_empty();
    if !alone && (opts.id == 0 || opts.id as usize > opts.members.len()) {
        bail!(
            "--id {} names no member: --members lists {} (ids 1..={})",
            opts.id,
            opts.members.len(),
            opts.members.len()
        );
    }
    let ds = tsn_datastore::Datastore::new(&opts.node.datastore);
    if opts.clear {
        clear(&opts, &ds, alone)?;
    }
    let (endpoint, local) = (listener.endpoint, listener.local);
    let members = members(&opts, &local.to_string());
    tracing::info!(%local, clusters = opts.clusters, heartbeat_ms = opts.node.heartbeat_ms, id = opts.id, members = members.len(), "coordinator listening");

    let metrics = crate::metrics::Metrics::new(crate::metrics::Role::Coordinator);
    let mut tasks = tokio::task::JoinSet::new();
    opts.node.serve_metrics(&metrics, &mut tasks).await?;
    metrics.set_ready(Some("the coordinator group has no leader yet".into()));
    // Requests are answered from the start: the other members' first questions (is there
    // a group?) come while this one forms it.
    let (consensus_tx, consensus_rx) = tokio::sync::watch::channel(None::<Arc<Group>>);
    if let Some(addr) = opts.web_addr {
        let (_, serving) = super::web::serve(addr, consensus_rx.clone()).await?;
        tasks.spawn(serving);
    }
    tasks.spawn(crate::net::accept_loop(
        endpoint.clone(),
        metrics.connections.clone(),
        move |conn| serve_connection(conn, consensus_rx.clone()),
    ));
    let consensus = super::raft::start(
        opts.id,
        &members,
        ds.coordinator(),
        endpoint.clone(),
        opts.snapshot_every,
    )
    .await
    .context("starting the coordinator group's consensus")?;
    let hb = opts.node.heartbeat();
    let group = Arc::new(Group::new(
        consensus,
        hb,
        opts.clusters,
        endpoint.clone(),
        metrics.clone(),
    ));
    let _ = consensus_tx.send(Some(group.clone()));
    opts.node.announce(local)?;
    tasks.spawn(group.clone().watch_state());
    tasks.spawn(tick(group.clone(), hb / 2));
    shutdown.await;
    tracing::info!("shutting down");
    endpoint.close(0u32.into(), b"coordinator shutting down");
    if let Err(e) = group.consensus().raft.shutdown().await {
        tracing::info!("the Raft node stopped with: {e}");
    }
    tasks.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// `--clear`: the datastore (and a lone coordinator's own directory) begun anew.
fn clear(opts: &CoordinatorOpts, ds: &tsn_datastore::Datastore, alone: bool) -> anyhow::Result<()> {
    ds.clear()
        .with_context(|| format!("clearing datastore {}", opts.node.datastore.display()))?;
    if alone {
        ds.coordinator()
            .clear()
            .context("clearing the coordinator's directory")?;
    }
    tracing::info!(path = %opts.node.datastore.display(), "datastore cleared");
    Ok(())
}

/// The group's members: `--members` in order (ids from 1), or this one alone at `local`.
fn members(opts: &CoordinatorOpts, local: &str) -> Vec<Member> {
    if opts.members.is_empty() {
        return vec![Member {
            id: opts.id,
            addr: local.to_string(),
        }];
    }
    opts.members
        .iter()
        .enumerate()
        .map(|(i, addr)| Member {
            id: i as u64 + 1,
            addr: addr.clone(),
        })
        .collect()
}

/// Every `period`, the tables catch up with the time that passed and fail over whoever
/// missed its beats.
async fn tick(group: Arc<Group>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let stalled = group
            .decide(|t, now, events| {
                let stalled = t.catch_up(now);
                t.refresh_all(now, events);
                stalled
            })
            .await;
        if let Ok(Some(gap)) = stalled {
            log_stall(gap);
        }
    }
}

fn log_stall(gap: std::time::Duration) {
    tracing::warn!(
        stalled_ms = gap.as_millis() as u64,
        "the coordinator itself did not run for a while: every node gets that time back before it can be failed over"
    );
}

async fn serve_connection(
    conn: quinn::Connection,
    group: tokio::sync::watch::Receiver<Option<Arc<Group>>>,
) {
    let is_node = tsn_certs::peer_is_node(&conn);
    crate::net::serve_streams(conn, move |mut send, mut recv| {
        let group = group.clone();
        async move {
            let Some(req) =
                crate::net::first_msg::<CoordRequest>(&mut send, &mut recv, "request").await
            else {
                return;
            };
            let current = group.borrow().clone();
            let Some(group) = current else {
                // Still opening its log: it is part of no group yet, and decides nothing.
                let reply = CoordReply::Failed(CoordError::NoLeader);
                if tsn_protocol::write_msg(&mut send, &reply).await.is_ok() {
                    let _ = send.finish();
                }
                return;
            };
            if matches!(req, CoordRequest::Watch) {
                watch(&group, send).await;
                return;
            }
            let reply = answer(&group, req, is_node).await;
            if tsn_protocol::write_msg(&mut send, &reply).await.is_ok() {
                let _ = send.finish();
            }
        }
    })
    .await;
}

/// Sends the committed tables now and after every change, until the watcher goes away.
async fn watch(group: &Group, mut send: quinn::SendStream) {
    let mut changes = group.consensus().machine.subscribe();
    loop {
        changes.borrow_and_update();
        let tables = group.committed_status();
        if tsn_protocol::write_msg(&mut send, &CoordReply::Status(tables))
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = send.stopped() => return,
        }
    }
}

async fn answer(group: &Group, req: CoordRequest, is_node: bool) -> CoordReply {
    let for_nodes = matches!(
        req,
        CoordRequest::Heartbeat(_)
            | CoordRequest::HandOver { .. }
            | CoordRequest::SyncPeers
            | CoordRequest::Raft(_)
            | CoordRequest::ChangeMembers(_)
    );
    if for_nodes && !is_node {
        return CoordReply::Failed(CoordError::NotANode);
    }
    let decided = match &req {
        CoordRequest::Heartbeat(hb) => {
            let received_us = crate::now_us();
            let beat = hb.clone();
            group
                .decide(move |t, now, events| {
                    t.catch_up(now);
                    t.beat(&beat, now, events)
                })
                .await
                .map(|r| match r {
                    Ok(b) => CoordReply::Beat(BeatReply {
                        received_us,
                        now_us: crate::now_us(),
                        ..b
                    }),
                    Err(e) => refused_beat(hb, e),
                })
        }
        CoordRequest::HandOver { cluster, kind } => {
            let (cluster, kind) = (*cluster, *kind);
            group
                .decide(move |t, now, events| t.hand_over(cluster, kind, now, events))
                .await
                .map(|r| match r {
                    Ok((epoch, to)) => CoordReply::HandedOver { epoch, to },
                    Err(e) => CoordReply::Failed(e),
                })
        }
        CoordRequest::ChangeMembers(change) => group
            .change_members(change.clone())
            .await
            .map(CoordReply::MembersChanged),
        CoordRequest::Raft(rpc) => {
            return match super::raft::network::answer(&group.consensus().raft, rpc.clone()).await {
                Ok(bytes) => CoordReply::Raft(bytes),
                Err(e) => CoordReply::Failed(CoordError::Group(format!("bad Raft message: {e}"))),
            }
        }
        CoordRequest::AssignClient { .. }
        | CoordRequest::SyncPeers
        | CoordRequest::Status
        | CoordRequest::Group
        | CoordRequest::Watch => return group.read(&req).await,
    };
    match decided {
        Ok(reply) => reply,
        Err(Refusal::NotLeader(_)) => group.forward(&req).await,
        Err(Refusal::Failed(e)) => CoordReply::Failed(e),
    }
}

fn refused_beat(hb: &tsn_protocol::coord::Heartbeat, e: CoordError) -> CoordReply {
    if let CoordError::RoleTaken { .. } = e {
        tracing::error!(
            cluster = hb.cluster,
            kind = hb.kind.as_str(),
            from = %hb.addr,
            "refused a second process for a live role: {e}"
        );
    }
    CoordReply::Failed(e)
}
