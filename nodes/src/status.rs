//! `tsn_status`: prints the coordinator's routing tables.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tsn_protocol::coord::{CoordReply, CoordRequest, NodeKind, RoutingTables};

use crate::common::CommonOpts;

/// Prints a TSN coordinator's routing tables: every cluster's master (primary), slave
/// (secondary) and synchronizer, whether each is alive and which server is active.
#[derive(Debug, Parser)]
#[command(name = "tsn_status", version, long_about = None)]
pub struct StatusOpts {
    /// Coordinator address, <coordIP>:<coordPort>.
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_host_port, env = "TSN_COORDINATOR")]
    pub coordinator: String,

    /// Print the tables as JSON (with each cluster's health) instead of text.
    #[arg(long, env = "TSN_JSON")]
    pub json: bool,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// What is wrong with each cluster that cannot serve fully: no live active server, or no
/// live sync service. Empty when every cluster is healthy.
pub fn problems(t: &RoutingTables) -> Vec<String> {
    let mut out = Vec::new();
    for cluster in 1..=t.clusters {
        let live = |pred: &dyn Fn(&tsn_protocol::coord::RouteEntry) -> bool| {
            t.entries
                .iter()
                .any(|e| e.cluster == cluster && e.alive && pred(e))
        };
        if !live(&|e| e.kind != NodeKind::Sync && e.active) {
            out.push(format!("cluster {cluster} has no live active server"));
        }
        if !live(&|e| e.kind == NodeKind::Sync) {
            out.push(format!("cluster {cluster} has no live sync service"));
        }
    }
    out
}

/// The tables and their health as JSON.
pub fn render_json(t: &RoutingTables) -> String {
    let problems = problems(t);
    let v = serde_json::json!({
        "healthy": problems.is_empty(),
        "problems": problems,
        "clusters": t.clusters,
        "heartbeat_ms": t.heartbeat_ms,
        "nodes": t.entries.iter().map(|e| serde_json::json!({
            "cluster": e.cluster,
            "kind": e.kind.as_str(),
            "addr": e.addr,
            "alive": e.alive,
            "active": e.active,
            "epoch": e.epoch,
            "ms_since_beat": e.ms_since_beat,
        })).collect::<Vec<_>>(),
    });
    format!("{v:#}\n")
}

/// Fetches the tables.
pub async fn fetch(opts: &StatusOpts) -> anyhow::Result<RoutingTables> {
    let root = tsn_certs::TrustRoot::load(&opts.common.cert_dir).with_context(|| {
        format!(
            "loading the cluster CA from {}",
            opts.common.cert_dir.display()
        )
    })?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    endpoint.set_default_client_config(
        root.client_config(crate::net::transport(Duration::from_secs(5)))?,
    );
    let conn = crate::net::connect(&endpoint, &opts.coordinator).await?;
    let reply = crate::net::call::<_, CoordReply>(&conn, &CoordRequest::Status).await?;
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    match reply {
        CoordReply::Status(t) => Ok(t),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// Renders the three tables (master, slave, synchronizer).
pub fn render(t: &RoutingTables) -> String {
    let mut out = format!(
        "{} clusters, heartbeat every {} ms\n",
        t.clusters, t.heartbeat_ms
    );
    for (title, kind) in [
        ("Master", NodeKind::Primary),
        ("Slave", NodeKind::Secondary),
        ("Synchronizer", NodeKind::Sync),
    ] {
        out.push_str(&format!(
            "\n{title} table\n{:<8} {:<24} {:<9} {:<8} {:>6} {:>10}\n",
            "ID", "Address", "Status", "Serving", "Epoch", "Last beat"
        ));
        for e in t.entries.iter().filter(|e| e.kind == kind) {
            let status = if e.alive { "Active" } else { "Inactive" };
            let serving = match (kind, e.active) {
                (NodeKind::Sync, _) => "-",
                (_, true) => "yes",
                (_, false) => "no",
            };
            out.push_str(&format!(
                "{:<8} {:<24} {:<9} {:<8} {:>6} {:>8}ms\n",
                e.cluster, e.addr, status, serving, e.epoch, e.ms_since_beat
            ));
        }
    }
    out
}
