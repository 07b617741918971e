//! `tsn_status`: prints the coordinator's routing tables and the coordinator group.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tsn_protocol::coord::{CoordReply, CoordRequest, GroupView, NodeKind, RoutingTables};

use crate::common::CommonOpts;

/// Prints a TSN coordinator's routing tables: every cluster's master (primary), slave
/// (secondary) and synchronizer, whether each is alive and which server is active.
#[derive(Debug, Parser)]
#[command(name = "tsn_status", version, long_about = None)]
#[command(mut_arg("cert_dir", |a| a.help(crate::common::CERT_DIR_TOOL)))]
pub struct StatusOpts {
    /// Coordinator address, <coordIP>:<coordPort>; for a coordinator group, every
    /// member's, comma-separated (any member answers; one that does not is skipped).
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_coordinators, value_name = "HOST:PORT[,...]", env = "TSN_COORDINATOR")]
    pub coordinator: crate::common::Coordinators,

    /// Print the tables as JSON (with each cluster's health) instead of text.
    #[arg(long, env = "TSN_JSON")]
    pub json: bool,

    /// Keep a watch stream open and print the tables again at every committed change
    /// (until Ctrl-C).
    #[arg(long)]
    pub watch: bool,

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

/// One coordinator as `tsn_status` sees it: its address and what it said of itself
/// (`None`: it did not answer).
#[derive(Debug, Clone)]
pub struct CoordinatorSeen {
    /// Its address.
    pub addr: String,
    /// Its answer.
    pub view: Option<GroupView>,
}

impl CoordinatorSeen {
    fn state(&self) -> &'static str {
        self.view
            .as_ref()
            .map_or("unreachable", |v| v.state.as_str())
    }
}

/// What is wrong with the coordinator group: no member leads.
pub fn group_problems(group: &[CoordinatorSeen]) -> Vec<String> {
    let leads = group.iter().any(|c| {
        c.view
            .as_ref()
            .is_some_and(|v| v.state == tsn_protocol::coord::MemberState::Leader)
    });
    if leads {
        Vec::new()
    } else {
        vec![
            "the coordinator group has no leader (no majority of its members reach each other)"
                .into(),
        ]
    }
}

/// The tables, the group and their health as JSON.
pub fn render_json(t: &RoutingTables, group: &[CoordinatorSeen]) -> String {
    let mut problems = problems(t);
    problems.extend(group_problems(group));
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
            "clock_offset_ms": e.clock_offset_ms,
        })).collect::<Vec<_>>(),
        "coordinators": group.iter().map(|c| serde_json::json!({
            "id": c.view.as_ref().map(|v| v.id),
            "addr": c.addr,
            "state": c.state(),
            "term": c.view.as_ref().map(|v| v.term),
            "last_log_index": c.view.as_ref().and_then(|v| v.last_log_index),
            "applied_index": c.view.as_ref().and_then(|v| v.applied_index),
        })).collect::<Vec<_>>(),
    });
    format!("{v:#}\n")
}

fn endpoint(opts: &StatusOpts) -> anyhow::Result<quinn::Endpoint> {
    let root = tsn_certs::TrustRoot::load(&opts.common.cert_dir).with_context(|| {
        format!(
            "loading the cluster CA from {}",
            opts.common.cert_dir.display()
        )
    })?;
    crate::net::client_endpoint(root.client_config(crate::net::transport(Duration::from_secs(5)))?)
}

/// Fetches the tables, and what every member of the group (those given with -c, and
/// those the group names) says of itself.
pub async fn fetch(opts: &StatusOpts) -> anyhow::Result<(RoutingTables, Vec<CoordinatorSeen>)> {
    let endpoint = endpoint(opts)?;
    let group = crate::group_client::GroupClient::new(opts.coordinator.clone());
    let tables = match group.call(&endpoint, &CoordRequest::Status).await? {
        (_, CoordReply::Status(t)) => t,
        (_, CoordReply::Failed(e)) => bail!("coordinator {}: {e}", opts.coordinator),
        (addr, other) => return Err(crate::net::CoordinatorError::unexpected(&addr, &other).into()),
    };
    let mut seen: Vec<CoordinatorSeen> = Vec::new();
    let mut queue: Vec<String> = opts.coordinator.addrs().to_vec();
    while let Some(addr) = queue.pop() {
        if seen.iter().any(|c| c.addr == addr) {
            continue;
        }
        let view = ask_group(&endpoint, &addr).await;
        if let Some(v) = &view {
            for m in &v.members {
                if !seen.iter().any(|c| c.addr == m.addr) && !queue.contains(&m.addr) {
                    queue.push(m.addr.clone());
                }
            }
        }
        seen.push(CoordinatorSeen { addr, view });
    }
    seen.sort_by_key(|c| (c.view.as_ref().map_or(u64::MAX, |v| v.id), c.addr.clone()));
    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok((tables, seen))
}

async fn ask_group(endpoint: &quinn::Endpoint, addr: &str) -> Option<GroupView> {
    let conn = crate::net::connect_within(endpoint, addr, Duration::from_secs(1))
        .await
        .ok()?;
    let reply = crate::net::call::<_, CoordReply>(&conn, &CoordRequest::Group).await;
    conn.close(0u32.into(), b"done");
    match reply {
        Ok(CoordReply::Group(v)) => Some(v),
        _ => None,
    }
}

/// Prints the tables at every change pushed by a member's watch stream, until the
/// stream ends for good (every member gone) or the process is stopped.
pub async fn watch(opts: &StatusOpts) -> anyhow::Result<()> {
    let endpoint = endpoint(opts)?;
    let group = crate::group_client::GroupClient::new(opts.coordinator.clone());
    loop {
        let (addr, conn) = group.connection(&endpoint).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        tsn_protocol::write_msg(&mut send, &CoordRequest::Watch).await?;
        send.finish()?;
        eprintln!("tsn_status: watching {addr}");
        while let Ok(Some(CoordReply::Status(t))) =
            tsn_protocol::read_msg::<CoordReply, _>(&mut recv).await
        {
            if opts.json {
                println!("{}", serde_json::to_string(&render_json_value(&t))?);
            } else {
                print!("\nrevision {}\n{}", t.revision, render(&t));
            }
        }
        group.forget().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn render_json_value(t: &RoutingTables) -> serde_json::Value {
    serde_json::json!({
        "revision": t.revision,
        "clusters": t.clusters,
        "nodes": t.entries.iter().map(|e| serde_json::json!({
            "cluster": e.cluster,
            "kind": e.kind.as_str(),
            "addr": e.addr,
            "active": e.active,
            "epoch": e.epoch,
        })).collect::<Vec<_>>(),
    })
}

/// Renders the coordinator group.
pub fn render_group(group: &[CoordinatorSeen]) -> String {
    let mut out = format!(
        "\nCoordinator group\n{:<4} {:<24} {:<12} {:>6} {:>9} {:>9}\n",
        "ID", "Address", "State", "Term", "Last log", "Applied"
    );
    let num = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    for c in group {
        let v = c.view.as_ref();
        out.push_str(&format!(
            "{:<4} {:<24} {:<12} {:>6} {:>9} {:>9}\n",
            num(v.map(|v| v.id)),
            c.addr,
            c.state(),
            num(v.map(|v| v.term)),
            num(v.and_then(|v| v.last_log_index)),
            num(v.and_then(|v| v.applied_index)),
        ));
    }
    out
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
            "\n{title} table\n{:<8} {:<24} {:<9} {:<8} {:>6} {:>10} {:>12}\n",
            "ID", "Address", "Status", "Serving", "Epoch", "Last beat", "Clock offset"
        ));
        for e in t.entries.iter().filter(|e| e.kind == kind) {
            let status = if e.alive { "Active" } else { "Inactive" };
            let serving = match (kind, e.active) {
                (NodeKind::Sync, _) => "-",
                (_, true) => "yes",
                (_, false) => "no",
            };
            out.push_str(&format!(
                "{:<8} {:<24} {:<9} {:<8} {:>6} {:>8}ms {:>10}ms\n",
                e.cluster, e.addr, status, serving, e.epoch, e.ms_since_beat, e.clock_offset_ms
            ));
        }
    }
    out
}
