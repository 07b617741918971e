//! `tsn_server`'s command line.

use clap::{Parser, ValueEnum};

use crate::common::{CommonOpts, NodeOpts};

/// `-t`: which server of the pair this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerType {
    /// The primary (also `master`).
    #[value(alias = "master")]
    Primary,
    /// The secondary (also `slave`).
    #[value(alias = "slave")]
    Secondary,
}

/// `--ack`: when a client's change is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    /// Once the change is written to the journals of both servers (two hosts' page
    /// caches): it survives kill -9 of any process and the loss of either host. Each
    /// server flushes (fdatasync) right behind, off the acknowledgement's path. With no
    /// standby, once it is flushed here.
    Replicated,
    /// Once the change is flushed (fdatasync) on both servers: it also survives both
    /// hosts losing power at once. Slower: a flush is on every acknowledgement's path.
    Durable,
}

/// A TSN server: serves one cluster's clients (login, FOLLOW, UNFOLLOW, LIST, TIMELINE) as
/// its primary or secondary, mirroring every change to the other server.
#[derive(Debug, Parser)]
#[command(name = "tsn_server", version, long_about = None)]
#[command(mut_arg("cert_dir", |a| a.help(crate::common::CERT_DIR_NODE)))]
#[command(mut_arg("heartbeat_ms", |a| a.help(crate::common::HEARTBEAT_NODE)))]
pub struct ServerOpts {
    /// Coordinator address, <coordIP>:<coordPort>; for a coordinator group, every
    /// member's, comma-separated (any member answers; one that does not is skipped).
    #[arg(short = 'c', long = "coordinator", value_parser = crate::common::parse_coordinators, value_name = "HOST:PORT[,...]", env = "TSN_COORDINATOR")]
    pub coordinator: crate::common::Coordinators,

    /// UDP port to listen on (0 picks a free one; see --ready-file).
    #[arg(short = 'p', long = "port", env = "TSN_PORT")]
    pub port: u16,

    /// Cluster id (1..=clusters).
    #[arg(short = 'i', long = "id", value_parser = clap::value_parser!(u32).range(1..), env = "TSN_CLUSTER")]
    pub cluster: u32,

    /// primary or secondary (master and slave are accepted too).
    #[arg(short = 't', long = "type", value_enum, env = "TSN_TYPE")]
    pub server_type: ServerType,

    /// Address other processes should dial to reach this server (host:port). Default:
    /// the bind address if specific, else the local address that routes to the
    /// coordinator, with the bound port.
    #[arg(long, value_name = "HOST:PORT", env = "TSN_ADVERTISE")]
    pub advertise: Option<String>,

    /// When a post or command is acknowledged: `replicated` (written on both servers,
    /// flushed right after) or `durable` (flushed on both servers first).
    #[arg(long, value_enum, default_value = "replicated", env = "TSN_ACK")]
    pub ack: AckMode,

    /// Most posts, follows and unfollows one user may make a second (a burst of as many
    /// is allowed); more are refused, and nothing of them is stored.
    #[arg(long, default_value_t = 20_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), env = "TSN_USER_RATE")]
    pub user_rate: u32,

    /// Take a checkpoint each time the journal and `received.data` together grew by this
    /// many bytes (and by at least the size of the last checkpoint): start-up then
    /// replays at most about this much, and older journal segments are deleted once the
    /// sync service has read them.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..), env = "TSN_CHECKPOINT_BYTES")]
    pub checkpoint_bytes: u64,

    /// Admission under overload: while the oldest of this server's posts not yet back
    /// from its sync service (every post comes back into its author's timeline) was
    /// stamped more than this many milliseconds ago, new posts wait (their
    /// acknowledgements come later) so that posts already acknowledged are still
    /// delivered within the sync period. 0: never wait; keep it above -q when the sync
    /// services run with --delivery period.
    #[arg(
        long,
        default_value_t = 200,
        value_name = "MS",
        env = "TSN_ADMIT_LAG_MS"
    )]
    pub admit_lag_ms: u64,

    /// Browsers: a certificate chain (PEM) to show WebTransport sessions instead of the
    /// self-signed one the server makes and rotates, e.g. one from a public CA for a page
    /// served over HTTPS from another host. Needs --web-key.
    #[arg(long, value_name = "FILE", requires = "web_key", env = "TSN_WEB_CERT")]
    pub web_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --web-cert.
    #[arg(long, value_name = "FILE", requires = "web_cert", env = "TSN_WEB_KEY")]
    pub web_key: Option<std::path::PathBuf>,

    /// Origins (scheme://host[:port]) whose pages may open browser sessions,
    /// comma-separated. Default: pages served from a coordinator's host (the
    /// coordinators serve the page, see tsn_coordinator --web-addr).
    #[arg(
        long,
        value_name = "ORIGIN[,...]",
        value_delimiter = ',',
        env = "TSN_WEB_ORIGIN"
    )]
    pub web_origin: Vec<String>,

    #[command(flatten)]
    pub node: NodeOpts,

    #[command(flatten)]
    pub clock: crate::common::ClockOpts,

    #[command(flatten)]
    pub common: CommonOpts,
}
