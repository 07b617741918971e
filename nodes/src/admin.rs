//! `tsn_admin`: what an operator does to a running system. It needs the cluster CA's key
//! (`ca.pem` in `--cert-dir`), as a node does: holding it is what makes one an operator.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tsn_protocol::coord::{CoordReply, CoordRequest, Member, MemberChange};
use tsn_protocol::mirror::{AdminReply, AdminRequest, MirrorMsg};

use crate::common::CommonOpts;

/// Operator commands for a running TSN system (needs the cluster CA's key in --cert-dir).
#[derive(Debug, Parser)]
#[command(name = "tsn_admin", version, long_about = None)]
#[command(mut_arg("cert_dir", |a| a.help(crate::common::CERT_DIR_ADMIN)))]
pub struct AdminOpts {
    /// Coordinator address, <coordIP>:<coordPort>; for a coordinator group, every
    /// member's, comma-separated (any member answers; one that does not is skipped).
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_coordinators, value_name = "HOST:PORT[,...]", env = "TSN_COORDINATOR")]
    pub coordinator: crate::common::Coordinators,

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
    /// Change the coordinator group's members (one at a time, through Raft): to replace
    /// a lost coordinator host, add the new member, then remove the old one.
    #[command(subcommand)]
    Members(MembersCommand),
}

/// `tsn_admin members ...`.
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add a member: start `tsn_coordinator --id ID` on its host first (with --members
    /// listing it at position ID); it catches up from the leader, then votes.
    Add {
        /// Its id.
        id: u64,
        /// Its address, host:port.
        #[arg(value_parser = crate::common::parse_host_port)]
        addr: String,
    },
    /// Remove a member; the group goes on with the others.
    Remove {
        /// Its id.
        id: u64,
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
    let endpoint = crate::net::client_endpoint(
        identity.client_config(crate::net::transport(Duration::from_secs(5)))?,
    )?;
    let group = crate::group_client::GroupClient::new(opts.coordinator.clone());
    let user = match &opts.command {
        AdminCommand::ResetKey { user } => *user,
        AdminCommand::Members(m) => {
            let change = match m {
                MembersCommand::Add { id, addr } => MemberChange::Add(Member {
                    id: *id,
                    addr: addr.clone(),
                }),
                MembersCommand::Remove { id } => MemberChange::Remove { id: *id },
            };
            let reply = group
                .call(&endpoint, &CoordRequest::ChangeMembers(change))
                .await?
                .1;
            endpoint.close(0u32.into(), b"done");
            return match reply {
                CoordReply::MembersChanged(members) => Ok(format!(
                    "the coordinator group's members are now: {}",
                    members
                        .iter()
                        .map(|m| format!("{} {}", m.id, m.addr))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                CoordReply::Failed(e) => bail!("the coordinator group refused: {e}"),
                other => bail!("unexpected reply {other:?}"),
            };
        }
    };
    let server = match group
        .call(&endpoint, &CoordRequest::AssignClient { client: user })
        .await?
        .1
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
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    match reply {
        AdminReply::Done => Ok(format!(
            "user {user}'s key binding was reset on {server}: the next login binds anew"
        )),
        AdminReply::Refused(why) => bail!("{server} refused: {why}"),
    }
}
