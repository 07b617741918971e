//! The interactive client (`tsn_client`), with the original system's prompts and replies.
//!
//! # Layout
//! - [`words`]: parsing a typed line and the exact wording of every reply.
//! - [`link`]: finding the server through the coordinator, logging in, reconnecting.
//! - [`timeline`]: timeline mode: posts up, live entries down, resends after failover.
//!
//! The client works the same whether stdin/stdout are a terminal or pipes: it never
//! clears the screen, prints one line per reply or entry, and exits cleanly (after its
//! posts are acknowledged) at end of input.

pub mod link;
pub mod timeline;
pub mod words;

use clap::Parser;
use std::io::Write;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tsn_protocol::client::ClientRequest;

use crate::common::CommonOpts;
use link::Link;
use words::Command;

/// `tsn_client`: log in as a user and follow, unfollow, list and post.
#[derive(Debug, Parser)]
#[command(name = "tsn_client", version, about, long_about = None)]
pub struct ClientOpts {
    /// Coordinator address, <coordIP>:<coordPort>.
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_host_port)]
    pub coordinator: String,

    /// Local UDP port of the client's QUIC endpoint (0 picks a free one).
    #[arg(short = 'p', long = "port", default_value_t = 0)]
    pub port: u16,

    /// Client (user) id.
    #[arg(short = 'i', long = "id")]
    pub user: u32,

    /// Give up reconnecting after this many seconds without a server.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub reconnect_secs: u64,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// Lines typed by the user, read by a task so that no line is lost while reconnecting.
pub type Lines = mpsc::Receiver<String>;

fn stdin_lines() -> Lines {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// Prints a line to stdout and flushes it (scripts read stdout line by line).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn prompt() {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "Cmd> ");
    let _ = out.flush();
}

/// Runs the client; returns the process exit code.
pub async fn run(opts: ClientOpts) -> i32 {
    let mut link = match Link::open(&opts).await {
        Ok(l) => l,
        Err(e) => {
            say("connection failed: -1");
            eprintln!("tsn_client: {e:#}");
            return 1;
        }
    };
    let mut lines = stdin_lines();
    loop {
        prompt();
        let Some(line) = lines.recv().await else {
            say("");
            link.close().await;
            return 0;
        };
        let cmd = match words::parse(&line) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(msg) => {
                say(msg);
                continue;
            }
        };
        let user = opts.user;
        let req = match cmd {
            Command::Follow(target) => ClientRequest::Follow { user, target },
            Command::Unfollow(target) => ClientRequest::Unfollow { user, target },
            Command::List => ClientRequest::List { user },
            Command::Timeline => {
                let code = timeline::run(&mut link, &mut lines).await;
                link.close().await;
                return code;
            }
        };
        match link.command(&req).await {
            Ok(reply) => {
                for l in words::reply_lines(&reply) {
                    say(&l);
                }
            }
            Err(e) => {
                eprintln!("tsn_client: {e:#}");
                say(words::UNKNOWN_FAILURE);
                if link.is_lost() {
                    return 1;
                }
            }
        }
    }
}
