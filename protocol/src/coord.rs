//! Nodes and clients <-> coordinator, and coordinator <-> coordinator.
//!
//! One request and one reply per bidirectional stream, except [`CoordRequest::Watch`],
//! whose reply stream stays open and carries the routing tables each time they change.
//! Heartbeats, hand-overs and sync-peer lookups are for nodes only and need a
//! certificate from the cluster CA (mutual TLS); so are the Raft messages between the
//! members of a coordinator group and membership changes. Client assignment, the
//! routing-table view, the watch and the group view are open to clients.
//!
//! Any member of a coordinator group answers every request: reads from its committed
//! state, writes (heartbeats, hand-overs) by passing them to the group's leader.

use serde::{Deserialize, Serialize};

use crate::types::{ClusterId, UserId};

/// Which process of a cluster a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeKind {
    /// The server started with `-t primary` (or `master`).
    Primary,
    /// The server started with `-t secondary` (or `slave`).
    Secondary,
    /// The cluster's sync service.
    Sync,
}

impl NodeKind {
    /// Lower-case name, as used for datastore directories.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Primary => "primary",
            NodeKind::Secondary => "secondary",
            NodeKind::Sync => "sync",
        }
    }
}

/// A request to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordRequest {
    /// A node registers (its first beat) or is still alive. Nodes only.
    Heartbeat(Heartbeat),
    /// Which server should `client` use? Open to clients.
    AssignClient {
        /// The client (user) id.
        client: UserId,
    },
    /// Every registered sync service. Nodes only.
    SyncPeers,
    /// The routing tables, for people. Open to clients.
    Status,
    /// The active server of `cluster` is about to stop (a planned restart): make the
    /// standby active now, without waiting for missed heartbeats. Nodes only.
    HandOver {
        /// The cluster.
        cluster: ClusterId,
        /// The server that stops.
        kind: NodeKind,
    },
    /// Keep this stream open and send the routing tables now and after every committed
    /// change ([`CoordReply::Status`] frames, each with a higher
    /// [`RoutingTables::revision`]). Open to clients.
    Watch,
    /// The answering member's view of the coordinator group. Open to clients.
    Group,
    /// A Raft message from another member of the group. Nodes only.
    Raft(RaftRpc),
    /// Add or remove a member of the coordinator group (an operator's `tsn_admin
    /// members`). Nodes only.
    ChangeMembers(MemberChange),
}

/// A Raft message between coordinators. The payload is the Raft implementation's own
/// request (openraft, at the version the workspace pins), postcard-encoded; the reply is
/// [`CoordReply::Raft`] with its postcard-encoded result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    /// A vote request.
    Vote(Vec<u8>),
    /// Log entries (or a heartbeat) from the leader.
    Append(Vec<u8>),
    /// A chunk of a snapshot from the leader.
    Snapshot(Vec<u8>),
}

/// A member of the coordinator group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id (`--id`), from 1.
    pub id: u64,
    /// Its address, `host:port`.
    pub addr: String,
}

/// A change of the coordinator group's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add a member (it first catches up as a learner, then votes).
    Add(Member),
    /// Remove the member with this id.
    Remove {
        /// Its id.
        id: u64,
    },
}

/// What a member is doing in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// It leads: decisions are made here.
    Leader,
    /// It follows a leader.
    Follower,
    /// It is asking for votes.
    Candidate,
    /// It receives the log but does not vote (being added, or not yet part of a group).
    Learner,
    /// It is stopping.
    Shutdown,
}

impl MemberState {
    /// Lower-case name, as `tsn_status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Leader => "leader",
            MemberState::Follower => "follower",
            MemberState::Candidate => "candidate",
            MemberState::Learner => "learner",
            MemberState::Shutdown => "shutdown",
        }
    }
}

/// One member's view of itself and of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The answering member's id.
    pub id: u64,
    /// Its state.
    pub state: MemberState,
    /// Its current Raft term.
    pub term: u64,
    /// The index of the last entry in its log, if any.
    pub last_log_index: Option<u64>,
    /// The index of the last entry it applied, if any.
    pub applied_index: Option<u64>,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
    /// The group's members as this member knows them (voters and learners).
    pub members: Vec<Member>,
}

/// What a node says in each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Its cluster.
    pub cluster: ClusterId,
    /// Its kind.
    pub kind: NodeKind,
    /// The address others should dial, `host:port` (never an unspecified address).
    pub addr: String,
    /// Whether the node believes it is its cluster's active server. A restarted
    /// coordinator rebuilds its tables from these beliefs instead of failing over.
    pub active: bool,
    /// The failover epoch the node last learned.
    pub epoch: u64,
    /// How far the node's wall clock was ahead of the coordinator's (negative: behind)
    /// at its last heartbeat, in milliseconds (0 before it has measured).
    pub clock_offset_ms: i64,
    /// For a server that accepts browsers: the SHA-256 hashes of the certificate it shows
    /// to WebTransport sessions, the current one first (see [`WebAssignment`]). Empty
    /// otherwise, and for a certificate from a public CA.
    pub web_hashes: Vec<[u8; 32]>,
}

/// Where a browser finds a user's active server: the web counterpart of
/// [`CoordReply::Assigned`], answered by the coordinators' web address as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebAssignment {
    /// The user's cluster.
    pub cluster: ClusterId,
    /// Address of its active server (`host:port`, the server's QUIC port).
    pub addr: String,
    /// The hashes a browser may accept the server's certificate by.
    pub hashes: Vec<[u8; 32]>,
}

/// The coordinator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordReply {
    /// Answer to a heartbeat.
    Beat(BeatReply),
    /// Answer to [`CoordRequest::AssignClient`].
    Assigned {
        /// The client's cluster.
        cluster: ClusterId,
        /// Address of its active server.
        addr: String,
    },
    /// Answer to [`CoordRequest::SyncPeers`].
    SyncPeers {
        /// Number of clusters the system is configured for.
        clusters: u32,
        /// Every sync service that is registered and alive.
        peers: Vec<SyncPeer>,
    },
    /// Answer to [`CoordRequest::Status`].
    Status(RoutingTables),
    /// Answer to [`CoordRequest::HandOver`]: the other server is active from `epoch` on.
    HandedOver {
        /// The new epoch.
        epoch: u64,
        /// The server now active.
        to: String,
    },
    /// Answer to [`CoordRequest::Group`].
    Group(GroupView),
    /// Answer to [`CoordRequest::Raft`]: the postcard-encoded result.
    Raft(Vec<u8>),
    /// Answer to [`CoordRequest::ChangeMembers`]: the group's members now.
    MembersChanged(Vec<Member>),
    /// The request failed.
    Failed(CoordError),
}

/// What a node learns from each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeatReply {
    /// Failover epoch of the node's cluster: it grows each time the active server changes.
    pub epoch: u64,
    /// Whether this node is the cluster's active server (always `false` for sync services).
    pub active: bool,
    /// For the active server: the standby to mirror to, if one is alive. For a standby:
    /// the active server to catch up from, if one is alive.
    pub peer: Option<String>,
    /// Number of clusters the system is configured for.
    pub clusters: u32,
    /// The heartbeat interval, in milliseconds: the coordinator's, which every node uses.
    pub heartbeat_ms: u64,
    /// The answering coordinator's wall clock when the heartbeat arrived, in
    /// microseconds since the Unix epoch.
    pub received_us: i64,
    /// Its wall clock when it answered (after the decision was committed). With
    /// `received_us`, nodes measure their clock's offset as NTP does: the time the
    /// coordinator spent deciding is not taken for network delay.
    pub now_us: i64,
}

/// A sync service as known to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPeer {
    /// The cluster it serves.
    pub cluster: ClusterId,
    /// Its address.
    pub addr: String,
}

/// The coordinator's routing tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTables {
    /// Which committed state of the group these tables show (grows with every change;
    /// 0 before the first).
    pub revision: u64,
    /// Whether `alive` and `ms_since_beat` come from the member that receives the
    /// heartbeats (the leader); a member that cannot reach it shows every registered
    /// node as alive.
    pub liveness: bool,
    /// Number of clusters.
    pub clusters: u32,
    /// Heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// One entry per registered node.
    pub entries: Vec<RouteEntry>,
}

/// One row of the routing tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// Its cluster.
    pub cluster: ClusterId,
    /// Its kind.
    pub kind: NodeKind,
    /// Its advertised address.
    pub addr: String,
    /// Heartbeats are arriving.
    pub alive: bool,
    /// It is the cluster's active server.
    pub active: bool,
    /// Milliseconds since its last heartbeat.
    pub ms_since_beat: u64,
    /// The cluster's failover epoch.
    pub epoch: u64,
    /// How far its wall clock is ahead of the coordinator's (negative: behind), in
    /// milliseconds, as it measured at its last heartbeat.
    pub clock_offset_ms: i64,
}

/// Why the coordinator refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CoordError {
    /// The cluster has no live server to assign.
    #[error("cluster {cluster} has no live server")]
    NoLiveServer {
        /// The cluster.
        cluster: ClusterId,
    },
    /// The cluster id is outside 1..=clusters.
    #[error("cluster {cluster} does not exist (clusters are 1..={clusters})")]
    NoSuchCluster {
        /// The cluster asked for.
        cluster: ClusterId,
        /// Number of clusters.
        clusters: u32,
    },
    /// The request is for nodes and the peer presented no certificate from the CA.
    #[error("this request needs a node certificate from the cluster CA")]
    NotANode,
    /// The advertised address is not one others can dial.
    #[error("address {0:?} cannot be dialled by others")]
    BadAddress(String),
    /// A hand-over was asked for, but no other live server can take over (or the asker is
    /// not the active server).
    #[error("cluster {cluster} has no live standby to hand over to")]
    NoStandby {
        /// The cluster.
        cluster: ClusterId,
    },
    /// The coordinator group has no leader (no majority of its members reach each
    /// other), so nothing can be decided now.
    #[error("the coordinator group has no leader now (a majority of its members must reach each other); try again")]
    NoLeader,
    /// The coordinator group could not decide (a Raft error, in words).
    #[error("the coordinator group could not decide: {0}")]
    Group(String),
    /// Another live process holds this role of this cluster.
    #[error("the {} of cluster {cluster} is held by a live process at {holder} (last heartbeat {ms_since_beat} ms ago); this one is accepted only once that one stops beating", kind.as_str())]
    RoleTaken {
        /// The cluster.
        cluster: ClusterId,
        /// The role.
        kind: NodeKind,
        /// The address of the process that holds it.
        holder: String,
        /// Milliseconds since the holder's last heartbeat.
        ms_since_beat: u64,
    },
}
