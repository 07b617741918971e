//! A cluster's server (`tsn_server`): primary or secondary.
//!
//! # Layout
//! - [`options`]: the command line.
//! - [`recovery`]: the start: the last [`crate::checkpoint`] and the records of this
//!   server's own logs after it, into the in-memory [`model`].
//! - [`role`]: who this server is, and whether it is active, as the coordinator says
//!   (through [`crate::link`]).
//! - [`store`]: the journal writer (group commit, views, hand-off to the mirror,
//!   checkpoints).
//! - [`mirror`]: the active server streams its changes to the standby; the standby
//!   applies them. Both sides first exchange what the other lacks.
//! - [`inbound`]: reads the sync service's journal as a feed into this server's own role
//!   directory, and pushes deliveries to open timelines ([`sessions`]).
//! - [`auth`]: logins and who may be served here; [`admission`]: new posts wait while
//!   delivery is behind.
//! - [`cmd`]: one file per client command; TIMELINE keeps its stream for the session.
//! - `dispatch`: what each connection and stream is for (client commands, mirror,
//!   the journal's feed, an operator's request).
//! - [`web`]: browsers' WebTransport sessions on the same endpoint (ALPN `h3`), served
//!   by the same commands.
//! - `handover`: a planned stop of the active server hands the cluster over first.
//! - `readiness`: what `/ready` says.
//!
//! The server reads and writes only its own role directory; its sync service reads its
//! journal as a feed (a node stream opened with [`MirrorMsg::Subscribe`]).
//!
//! [`MirrorMsg::Subscribe`]: tsn_protocol::mirror::MirrorMsg::Subscribe

pub mod admission;
pub mod auth;
pub mod cmd;
mod dispatch;
mod handover;
pub mod inbound;
pub mod mirror;
pub mod model;
pub mod options;
mod readiness;
pub mod recovery;
pub mod role;
pub mod sessions;
pub mod store;
pub mod web;
mod wiring;

pub use options::{AckMode, ServerOpts, ServerType};
pub use role::RoleState;

/// Binds the server's endpoint on `--bind` and `-p`, with a leaf of the cluster CA in
/// `--cert-dir` for terminals and nodes, and the web certificate (`--web-cert`, or one
/// of its own) for browsers.
pub fn bind(opts: &ServerOpts) -> anyhow::Result<crate::net::NodeListener> {
    let web = wiring::web_certs(opts)?;
    opts.node.listen(
        &opts.common,
        opts.port,
        tsn_certs::ClientAuth::Optional,
        Some(&web),
    )
}

/// Runs a server on `listener` (see [`bind`]) until `shutdown` resolves (the binary
/// passes Ctrl-C / SIGTERM), then stops as on SIGTERM: a hand-over if it is active, its
/// tasks joined, the clean marker.
pub async fn run(
    opts: ServerOpts,
    listener: crate::net::NodeListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = wiring::start(opts, listener).await?;
    shutdown.await;
    tracing::info!("shutting down");
    server.stop().await
}
