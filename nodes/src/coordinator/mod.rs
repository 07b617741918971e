//! The coordinator: routing tables, heartbeats, failover, client assignment, as one
//! member of a group that decides through Raft.
//!
//! # Layout
//! - [`tables`]: the pure state machine of routing and failover (time is passed in),
//!   and the decided part of it that the group replicates.
//! - [`raft`]: the consensus (openraft): the log and snapshots in the coordinator's
//!   directory, Raft messages over QUIC.
//! - [`group`]: one member: decisions on the leader, committed before they take effect;
//!   reads from committed state; requests passed to the leader.
//! - [`service`]: the QUIC service (every request, and the watch streams).
//! - [`web`]: the web client's page and `/assign/<user>` (`--web-addr`).
//!
//! A group of one (no `--members`) is the same code with a majority of one. What is
//! decided survives a restart (the log); heartbeat times do not, and a new leader gives
//! every node two heartbeats before failing it over. Each heartbeat also says what the
//! node believes (active or not, and the epoch), so a coordinator that lost its
//! directory rebuilds the tables without a failover.

pub mod group;
pub mod raft;
pub mod service;
pub mod tables;
pub mod web;

pub use service::{bind, run, CoordinatorOpts};
