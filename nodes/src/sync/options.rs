//! `tsn_sync_service`'s command line.

use clap::Parser;

use crate::common::{CommonOpts, NodeOpts};

/// The TSN sync service of one cluster: passes users, follows and posts between this
/// cluster's servers and every cluster's sync service, as soon as they are written.
#[derive(Debug, Parser)]
#[command(name = "tsn_sync_service", version, long_about = None)]
#[command(mut_arg("cert_dir", |a| a.help(crate::common::CERT_DIR_NODE)))]
#[command(mut_arg("heartbeat_ms", |a| a.help(crate::common::HEARTBEAT_NODE)))]
pub struct SyncOpts {
    /// Coordinator address, <coordIP>:<coordPort>; for a coordinator group, every
    /// member's, comma-separated (any member answers; one that does not is skipped).
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_coordinators, value_name = "HOST:PORT[,...]", env = "TSN_COORDINATOR")]
    pub coordinator: crate::common::Coordinators,

    /// Cluster id this sync service serves (1..=clusters).
    #[arg(short = 's', long = "cluster", value_parser = clap::value_parser!(u32).range(1..), env = "TSN_CLUSTER")]
    pub cluster: u32,

    /// UDP port to listen on for servers and other sync services (0 picks a free one).
    #[arg(short = 'p', long = "port", env = "TSN_PORT")]
    pub port: u16,

    /// Longest a change may wait before it is passed on, in milliseconds. With the default
    /// `--delivery event`, changes travel as soon as they are written (batched while a
    /// batch is in flight), well within this; with `--delivery period`, they wait for
    /// the next tick of this period at each hop, as in the original system.
    #[arg(short = 'q', long = "period", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..), env = "TSN_PERIOD_MS")]
    pub period_ms: u64,

    /// `event`: pass each change on as soon as it is written; `period`: pass changes on
    /// every -q milliseconds (the original's behaviour, for comparison).
    #[arg(long, value_enum, default_value = "event", env = "TSN_DELIVERY")]
    pub delivery: Delivery,

    /// Address servers and other sync services should dial (host:port); default as for
    /// tsn_server.
    #[arg(long, value_name = "HOST:PORT", env = "TSN_ADVERTISE")]
    pub advertise: Option<String>,

    /// Take a checkpoint each time the outbox and the journal together grew by this many
    /// bytes (and by at least the size of the last checkpoint): start-up then replays at
    /// most about this much, and older segments are deleted once every reader has read
    /// them.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..), env = "TSN_CHECKPOINT_BYTES")]
    pub checkpoint_bytes: u64,

    #[command(flatten)]
    pub node: NodeOpts,

    #[command(flatten)]
    pub clock: crate::common::ClockOpts,

    #[command(flatten)]
    pub common: CommonOpts,
}

/// When the sync service passes changes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Delivery {
    /// As soon as they are written.
    Event,
    /// Every `-q` milliseconds.
    Period,
}
