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
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_host_port)]
    pub coordinator: String,

    #[command(flatten)]
    pub common: CommonOpts,
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
    endpoint.wait_idle().await;
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
