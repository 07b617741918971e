//! The coordinator group's consensus: openraft, with the log and snapshots in the
//! coordinator's directory ([`log`], [`machine`]) and its messages over QUIC
//! ([`network`]).
//!
//! Entries carry [`Decision`]s; applying one answers whether it met the state it was
//! made from (`true`) or changed nothing (`false`).

pub mod log;
pub mod machine;
pub mod network;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::{BasicNode, Raft, SnapshotPolicy};
use tsn_protocol::coord::{CoordReply, CoordRequest, Member};

use crate::coordinator::tables::Decision;

openraft::declare_raft_types!(
    /// The coordinator group's Raft types.
    pub TypeConfig:
        D = Vec<Decision>,
        R = bool,
);

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;

/// Raft's own heartbeat between members (not the nodes' heartbeat).
pub const RAFT_HEARTBEAT: Duration = Duration::from_millis(100);
/// A follower that hears nothing from its leader for a random time in this range starts
/// an election: a lost leader is replaced within about a second.
pub const ELECTION_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(400), Duration::from_millis(800));
/// Entries between snapshots by default; older entries are then dropped from the log.
pub const SNAPSHOT_EVERY: u64 = 200;

/// A running member: its Raft node and its state machine.
#[derive(Clone)]
pub struct Consensus {
    /// The Raft node.
    pub raft: Raft<TypeConfig>,
    /// What is committed.
    pub machine: machine::Machine,
    /// The log (for its committed index).
    pub log: log::LogStore,
    /// This member's id.
    pub id: u64,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus").field("id", &self.id).finish()
    }
}

fn config(snapshot_every: u64) -> anyhow::Result<Arc<openraft::Config>> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let c = openraft::Config {
        cluster_name: "tsn-coordinators".into(),
        heartbeat_interval: ms(RAFT_HEARTBEAT),
        election_timeout_min: ms(ELECTION_TIMEOUT.0),
        election_timeout_max: ms(ELECTION_TIMEOUT.1),
        install_snapshot_timeout: 2_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every.min(20),
        purge_batch_size: 1,
        // Snapshot chunks must fit a frame, with room for the envelope.
        snapshot_max_chunk_size: (tsn_protocol::MAX_FRAME_LEN / 2) as u64,
        max_payload_entries: 64,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().context("Raft configuration")?))
}

/// Starts this member: opens its log and state machine in `dir` and, if it has never
/// been part of a group and no other member answers as part of one, forms the group of
/// `members` (every member of a new group does so with the same members, which Raft
/// allows). A member that finds a group already running waits for its leader to bring
/// it up to date (a snapshot when it is far behind).
pub async fn start(
    id: u64,
    members: &[Member],
    dir: tsn_datastore::CoordinatorDir,
    endpoint: quinn::Endpoint,
    snapshot_every: u64,
) -> anyhow::Result<Consensus> {
    let log = log::LogStore::open(dir.path())?;
    let pristine = log.pristine();
    let machine = machine::Machine::open(dir)?;
    let raft = Raft::new(
        id,
        config(snapshot_every)?,
        network::Network::new(endpoint.clone()),
        log.clone(),
        machine.clone(),
    )
    .await
    .context("starting Raft")?;
    if pristine {
        let running = group_running(&endpoint, id, members).await;
        if let Some(other) = running {
            tracing::info!(
                member = other,
                "this member has an empty log and the group is running: joining it as it is"
            );
        } else {
            let nodes: BTreeMap<u64, BasicNode> = members
                .iter()
                .map(|m| (m.id, BasicNode::new(&m.addr)))
                .collect();
            match raft.initialize(nodes).await {
                Ok(()) => tracing::info!(members = members.len(), "formed the coordinator group"),
                Err(e) => tracing::info!("did not form the group: {e}"),
            }
        }
    }
    Ok(Consensus {
        raft,
        machine,
        log,
        id,
    })
}

/// Which other member, if any, answers that it is part of a running group (each asked
/// for at most a second).
async fn group_running(endpoint: &quinn::Endpoint, me: u64, members: &[Member]) -> Option<u64> {
    for m in members.iter().filter(|m| m.id != me) {
        let Ok(conn) = crate::net::connect_within(endpoint, &m.addr, Duration::from_secs(1)).await
        else {
            continue;
        };
        let reply = crate::net::call::<_, CoordReply>(&conn, &CoordRequest::Group).await;
        conn.close(0u32.into(), b"done");
        if let Ok(CoordReply::Group(g)) = reply {
            if g.last_log_index.is_some() {
                return Some(m.id);
            }
        }
    }
    None
}
