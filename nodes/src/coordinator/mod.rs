//! The coordinator: routing tables, heartbeats, failover, client assignment.
//!
//! [`tables`] is the pure state machine (time is passed in); [`service`] serves it over
//! QUIC. The coordinator keeps nothing on disk: after a restart it rebuilds its tables
//! from the heartbeats, each of which says what the node believes (active or not, and
//! the epoch), so a restart does not cause a failover.

pub mod service;
pub mod tables;

pub use service::{run, CoordinatorOpts};
