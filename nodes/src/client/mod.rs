//! The interactive client (`tsn_client`), with the original system's prompts and replies.
//!
//! # Layout
//! - [`words`]: parsing a typed line and the exact wording of every reply.
//! - [`link`]: finding the server through the coordinator, logging in, reconnecting.
//! - [`timeline`]: timeline mode: posts up, live entries down, resends after failover.
//! - [`inflight`]: what timeline mode keeps about posts: unacknowledged ones, ids shown,
//!   when to ask whether the server moved.
//! - [`console`]: typed lines in (line editing on a terminal, checked bytes on a pipe),
//!   replies, entries and notices out, and the signals that ask the client to stop.
//!
//! On pipes the client prints exactly one line per reply or entry, never clears the
//! screen, and exits cleanly (after its posts are acknowledged) at end of input. On a
//! terminal it adds line editing, a start banner, a hint on entering the timeline and
//! the user's own posts once acknowledged; whatever arrives while a line is being typed
//! is printed above it.

pub mod console;
pub mod identity;
pub mod inflight;
pub mod link;
pub mod timeline;
pub mod words;

use clap::Parser;
use tsn_protocol::client::ClientRequest;

use crate::common::CommonOpts;
use console::{Ask, Event, Input, Output, Stop};
use link::Link;
use words::Command;

/// The TSN client: log in as a user (with the user's key, created on first use), then
/// FOLLOW, UNFOLLOW, LIST, and post and read in TIMELINE.
#[derive(Debug, Parser)]
#[command(name = "tsn_client", version, long_about = None)]
#[command(mut_arg("cert_dir", |a| a.help(crate::common::CERT_DIR_CLIENT)))]
pub struct ClientOpts {
    /// Coordinator address, <coordIP>:<coordPort>; for a coordinator group, every
    /// member's, comma-separated (any member answers; one that does not is skipped).
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_coordinators, value_name = "HOST:PORT[,...]", env = "TSN_COORDINATOR")]
    pub coordinator: crate::common::Coordinators,

    /// Local UDP port of the client's QUIC endpoint (0 picks a free one).
    #[arg(
        short = 'p',
        long = "port",
        default_value_t = 0,
        env = "TSN_CLIENT_PORT"
    )]
    pub port: u16,

    /// Client (user) id.
    #[arg(short = 'i', long = "id", env = "TSN_USER")]
    pub user: u32,

    /// Give up reconnecting after this many seconds without a server.
    #[arg(
        long,
        default_value_t = 60,
        value_name = "SECS",
        env = "TSN_RECONNECT_SECS"
    )]
    pub reconnect_secs: u64,

    /// Where the user's key is kept (`user-<id>.key`, created on first use); default:
    /// the --cert-dir. Copy the file to use the account from another device.
    #[arg(long, value_name = "DIR", env = "TSN_KEY_DIR")]
    pub key_dir: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub common: CommonOpts,
}

impl ClientOpts {
    /// What the link to the server is told.
    pub fn link_config(&self) -> link::LinkConfig {
        link::LinkConfig {
            coordinator: self.coordinator.clone(),
            user: self.user,
            port: self.port,
            reconnect_for: std::time::Duration::from_secs(self.reconnect_secs),
            cert_dir: self.common.cert_dir.clone(),
            key_dir: self
                .key_dir
                .as_ref()
                .unwrap_or(&self.common.cert_dir)
                .clone(),
        }
    }
}

/// Runs the client; returns the process exit code.
pub async fn run(opts: ClientOpts) -> i32 {
    let (mut input, out) = console::open();
    let code = session(&opts, &mut input, &out).await;
    out.leave_terminal().await;
    code
}

async fn session(opts: &ClientOpts, input: &mut Input, out: &Output) -> i32 {
    let mut stop = Stop::listen().unwrap_or_else(|e| {
        tracing::warn!("cannot catch SIGINT and SIGTERM: {e}");
        Stop::never()
    });
    // Ctrl-C or SIGTERM while finding the server (which may mean reconnecting for up to
    // --reconnect-secs) leaves at once; nothing was sent, which the status says.
    let link_config = opts.link_config();
    let opened = tokio::select! {
        l = Link::open(&link_config, out.clone()) => l,
        _ = stop.wait() => {
            out.notice("tsn_client: stopped before logging in: nothing was sent");
            return 1;
        }
    };
    let mut link = match opened {
        Ok(l) => l,
        Err(e) if e.downcast_ref::<identity::LoginRefused>().is_some() => {
            out.line(&e.to_string());
            return 1;
        }
        Err(e) => {
            out.line("connection failed: -1");
            eprintln!("tsn_client: {e:#}");
            return 1;
        }
    };
    if out.is_terminal() {
        out.line(words::BANNER);
    }
    loop {
        let event = tokio::select! {
            event = input.next(Ask::Command) => event,
            _ = stop.wait() => Event::Interrupt,
        };
        let line = match event {
            Event::Line(line) => line,
            Event::End => {
                out.line("");
                link.close().await;
                return 0;
            }
            Event::Interrupt => {
                link.close().await;
                return 0;
            }
        };
        let cmd = match words::parse(&line) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(msg) => {
                out.line(msg);
                continue;
            }
        };
        let user = opts.user;
        let req = match cmd {
            Command::Follow(target) => ClientRequest::Follow { user, target },
            Command::Unfollow(target) => ClientRequest::Unfollow { user, target },
            Command::List => ClientRequest::List { user },
            Command::Timeline => {
                let code = timeline::run(&mut link, input, out, &stop).await;
                link.close().await;
                return code;
            }
        };
        let reply = tokio::select! {
            reply = link.command(&req) => reply,
            _ = stop.wait() => {
                link.close().await;
                return 0;
            }
        };
        match reply {
            Ok(reply) => {
                for l in words::reply_lines(&reply) {
                    out.line(&l);
                }
            }
            Err(e) => {
                out.notice(&format!("tsn_client: {e:#}"));
                out.line(words::UNKNOWN_FAILURE);
                if link.is_lost() {
                    return 1;
                }
            }
        }
    }
}
