//! `tsn_admin`: what an operator does to a running system. It needs the cluster CA's key
//! (`ca.pem` in `--cert-dir`), as a node does: holding it is what makes one an operator.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_protocol::mirror::{AdminReply, AdminRequest, MirrorMsg};

use crate::common::CommonOpts;

/// Operator commands for a running TSN system (needs the cluster CA's key in --cert-dir).
#[derive(Debug, Parser)]
#[command(name = "tsn_admin", version, long_about = None)]
pub struct AdminOpts {
    /// Coordinator address, <coordIP>:<coordPort>.
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_host_port, env = "TSN_COORDINATOR")]
    pub coordinator: String,

    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Forget the key a user is bound to (the user lost it): the next login, with any
    /// key, binds anew. Sent to the active server of the user's cluster, mirrored like any
    /// change.
    ResetKey {
        /// The user.
        user: u32,
    },
}

/// Runs one command; returns what to print.
pub async fn run(opts: &AdminOpts) -> anyhow::Result<String> {
    let ca = opts.common.cert_dir.join("ca.pem");
    if !ca.exists() {
        bail!(
            "{} not found: tsn_admin needs the cluster CA's key (copy ca.pem from a node host)",
            ca.display()
        );
    }
    let identity = tsn_certs::node_identity(&opts.common.cert_dir, &[]).with_context(|| {
        format!(
            "loading the cluster CA (ca.pem) from {}",
            opts.common.cert_dir.display()
        )
    })?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    endpoint.set_default_client_config(
        identity.client_config(crate::net::transport(Duration::from_secs(5)))?,
    );
    let AdminCommand::ResetKey { user } = opts.command;
    let coord = crate::net::connect(&endpoint, &opts.coordinator).await?;
    let server = match crate::net::call::<_, CoordReply>(
        &coord,
        &CoordRequest::AssignClient { client: user },
    )
    .await?
    {
        CoordReply::Assigned { addr, .. } => addr,
        CoordReply::Failed(e) => bail!("the coordinator cannot name user {user}'s server: {e}"),
        other => bail!("unexpected reply {other:?}"),
    };
    let conn = crate::net::connect(&endpoint, &server).await?;
    let reply = crate::net::call::<_, AdminReply>(
        &conn,
        &MirrorMsg::Admin(AdminRequest::ResetKey { user }),
    )
    .await?;
    conn.close(0u32.into(), b"done");
    coord.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    match reply {
        AdminReply::Done => Ok(format!(
            "user {user}'s key binding was reset on {server}: the next login binds anew"
        )),
        AdminReply::Refused(why) => bail!("{server} refused: {why}"),
    }
}
