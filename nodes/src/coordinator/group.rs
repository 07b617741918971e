//! One member of the coordinator group: decisions on the leader, committed before they
//! take effect; reads from committed state on any member; writes passed to the leader.
//!
//! The leader keeps the routing tables with their heartbeat times ([`Tables`]). A request
//! that may decide something (a heartbeat, a hand-over, the periodic failover check)
//! runs on a copy of them; what the copy decided is committed through Raft, and only then
//! does the copy replace the tables and the answer go out. A leader cut off from the
//! majority therefore promotes no one: its commits do not complete. One decision is made
//! at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tsn_protocol::coord::{
    CoordError, CoordReply, CoordRequest, GroupView, Member, MemberChange, MemberState,
    RoutingTables,
};

use super::raft::Consensus;
use super::tables::{Event, Tables};

/// How long a member waits for the leader when it passes a request on.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(1);
/// The least time a new leader gives every node to reach it before failing it over (two
/// missed beats, when that is longer): nodes find the new leader only once their
/// requests to the old one time out.
pub const LEADER_GRACE: Duration = Duration::from_secs(3);
/// How long the leader waits for a majority to store a decision: a leader cut off from
/// the others gives up (and decides nothing) instead of holding every request.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request was not decided here.
#[derive(Debug)]
pub enum Refusal {
    /// This member does not lead; the leader is at this address, if one is known.
    NotLeader(Option<String>),
    /// The group refused.
    Failed(CoordError),
}

struct Lead {
    term: u64,
    tables: Tables,
}

/// A member of the group.
pub struct Group {
    consensus: Consensus,
    heartbeat: Duration,
    clusters: u32,
    lead: tokio::sync::Mutex<Option<Lead>>,
    /// The connection to the leader, for requests passed on.
    to_leader: tokio::sync::Mutex<Option<(String, quinn::Connection)>>,
    endpoint: quinn::Endpoint,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.consensus.id)
            .finish()
    }
}

impl Group {
    /// A member running `consensus`, deciding for `clusters` clusters (unless the group
    /// decided otherwise before) with nodes beating every `heartbeat`.
    pub fn new(
        consensus: Consensus,
        heartbeat: Duration,
        clusters: u32,
        endpoint: quinn::Endpoint,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Group {
            consensus,
            heartbeat,
            clusters,
            lead: tokio::sync::Mutex::new(None),
            to_leader: tokio::sync::Mutex::new(None),
            endpoint,
            metrics,
        }
    }

    /// The consensus this member runs.
    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    fn leader_addr(&self) -> Option<String> {
        let m = self.consensus.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Runs `f` on the leader's tables and commits what it decided; returns what `f`
    /// returned once that is committed.
    pub async fn decide<T>(
        &self,
        f: impl FnOnce(&mut Tables, Instant, &mut Vec<Event>) -> T,
    ) -> Result<T, Refusal> {
        let (state, term) = {
            let m = self.consensus.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            return Err(Refusal::NotLeader(self.leader_addr()));
        }
        let mut lead = self.lead.lock().await;
        if lead.as_ref().map(|l| l.term) != Some(term) {
            // Everything committed under earlier leaders is applied once this leader's
            // first entry is.
            if let Err(e) = self.consensus.raft.ensure_linearizable().await {
                return Err(Refusal::NotLeader(
                    e.forward_to_leader()
                        .and_then(|f| f.leader_node.as_ref().map(|n| n.addr.clone())),
                ));
            }
            let c = self.consensus.machine.committed();
            if c.decided.clusters != 0 && c.decided.clusters != self.clusters {
                tracing::warn!(
                    decided = c.decided.clusters,
                    flag = self.clusters,
                    "--clusters differs from what the group decided: the group's number holds"
                );
            }
            tracing::info!(
                term,
                "leading the coordinator group: nodes get two heartbeats to reach this member before any is failed over"
            );
            *lead = Some(Lead {
                term,
                tables: Tables::from_decided(
                    &c.decided,
                    self.clusters,
                    self.heartbeat,
                    Instant::now(),
                )
                .with_grace(Instant::now(), LEADER_GRACE),
            });
        }
        let Some(l) = lead.as_mut() else {
            return Err(Refusal::NotLeader(None));
        };
        let before = l.tables.decided();
        let mut trial = l.tables.clone();
        let mut events = Vec::new();
        let out = f(&mut trial, Instant::now(), &mut events);
        let step = before.diff(&trial.decided());
        if step.is_empty() {
            l.tables = trial;
            self.record(events);
            return Ok(out);
        }
        let written = tokio::time::timeout(COMMIT_TIMEOUT, self.consensus.raft.client_write(step));
        let Ok(written) = written.await else {
            // It may still be committed later: start again from what is committed then.
            *lead = None;
            return Err(Refusal::Failed(CoordError::NoLeader));
        };
        match written {
            Ok(r) if r.data => {
                l.tables = trial;
                self.record(events);
                Ok(out)
            }
            Ok(_) => {
                *lead = None;
                Err(Refusal::Failed(CoordError::Group(
                    "the decision was made from an older state; try again".into(),
                )))
            }
            Err(e) => {
                *lead = None;
                Err(write_refusal(e))
            }
        }
    }

    /// What is committed, as tables (every node taken as alive: liveness is the
    /// leader's), and its revision.
    fn committed_tables(&self) -> (Tables, u64) {
        let c = self.consensus.machine.committed();
        let t = Tables::from_decided(&c.decided, self.clusters, self.heartbeat, Instant::now());
        (t, c.revision)
    }

    /// The routing tables from committed state (for the watch).
    pub fn committed_status(&self) -> RoutingTables {
        let (t, rev) = self.committed_tables();
        t.status(Instant::now(), rev, false)
    }

    /// The leader's tables with their heartbeat times, if this member leads now.
    async fn live_status(&self) -> Option<RoutingTables> {
        let lead = self.lead.lock().await;
        let l = lead.as_ref()?;
        if self.consensus.raft.metrics().borrow().state != ServerState::Leader {
            return None;
        }
        let rev = self.consensus.machine.committed().revision;
        Some(l.tables.status(Instant::now(), rev, true))
    }

    /// Where a browser finds `client`'s active server, from committed state (what
    /// `/assign/<user>` of the coordinators' web page answers).
    pub fn assign_web(
        &self,
        client: tsn_protocol::UserId,
    ) -> Result<tsn_protocol::coord::WebAssignment, CoordError> {
        self.committed_tables().0.assigned_web(client)
    }

    /// Answers a read: from committed state, the tables from the leader when it can be
    /// reached (they carry its heartbeat times).
    pub async fn read(&self, req: &CoordRequest) -> CoordReply {
        match req {
            CoordRequest::AssignClient { client } => {
                match self.committed_tables().0.assigned(*client) {
                    Ok((cluster, addr)) => CoordReply::Assigned { cluster, addr },
                    Err(e) => CoordReply::Failed(e),
                }
            }
            CoordRequest::SyncPeers => {
                let (t, _) = self.committed_tables();
                CoordReply::SyncPeers {
                    clusters: t.clusters(),
                    peers: t.sync_peers(Instant::now()),
                }
            }
            CoordRequest::Status => {
                if let Some(s) = self.live_status().await {
                    return CoordReply::Status(s);
                }
                match self.forward(req).await {
                    CoordReply::Status(s) => CoordReply::Status(s),
                    _ => CoordReply::Status(self.committed_status()),
                }
            }
            CoordRequest::Group => CoordReply::Group(self.view()),
            _ => CoordReply::Failed(CoordError::Group("not a read".into())),
        }
    }

    /// Passes `req` to the leader and returns its answer.
    pub async fn forward(&self, req: &CoordRequest) -> CoordReply {
        // This member may lead without having decided yet (its term just began): the
        // asker tries again rather than this member asking itself.
        let Some(addr) = self.leader_addr().filter(|_| {
            self.consensus.raft.metrics().borrow().current_leader != Some(self.consensus.id)
        }) else {
            return CoordReply::Failed(CoordError::NoLeader);
        };
        let mut slot = self.to_leader.lock().await;
        let conn = match slot
            .as_ref()
            .filter(|(a, c)| *a == addr && c.close_reason().is_none())
        {
            Some((_, c)) => c.clone(),
            None => {
                match crate::net::connect_within(&self.endpoint, &addr, FORWARD_TIMEOUT).await {
                    Ok(c) => {
                        *slot = Some((addr.clone(), c.clone()));
                        c
                    }
                    Err(_) => return CoordReply::Failed(CoordError::NoLeader),
                }
            }
        };
        drop(slot);
        let answer = tokio::time::timeout(FORWARD_TIMEOUT, crate::net::call(&conn, req)).await;
        match answer {
            Ok(Ok(r)) => r,
            _ => {
                *self.to_leader.lock().await = None;
                CoordReply::Failed(CoordError::NoLeader)
            }
        }
    }

    /// This member's view of the group.
    pub fn view(&self) -> GroupView {
        let m = self.consensus.raft.metrics().borrow().clone();
        let state = match m.state {
            ServerState::Leader => MemberState::Leader,
            ServerState::Follower => MemberState::Follower,
            ServerState::Candidate => MemberState::Candidate,
            ServerState::Learner => MemberState::Learner,
            ServerState::Shutdown => MemberState::Shutdown,
        };
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
            })
            .collect();
        GroupView {
            id: m.id,
            state,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            leader: m.current_leader,
            members,
        }
    }

    /// Adds or removes a member (on the leader).
    pub async fn change_members(&self, change: MemberChange) -> Result<Vec<Member>, Refusal> {
        let raft = &self.consensus.raft;
        if raft.metrics().borrow().state != ServerState::Leader {
            return Err(Refusal::NotLeader(self.leader_addr()));
        }
        let r = match change {
            MemberChange::Add(m) => {
                if let Err(e) = raft.add_learner(m.id, BasicNode::new(&m.addr), true).await {
                    return Err(write_refusal(e));
                }
                raft.change_membership(ChangeMembers::AddVoterIds([m.id].into()), false)
                    .await
            }
            MemberChange::Remove { id } => {
                raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                    .await
            }
        };
        match r {
            Ok(_) => {
                tracing::info!("the group's membership changed");
                Ok(self.view().members)
            }
            Err(e) => Err(write_refusal(e)),
        }
    }

    /// Logs what changed, and counts it.
    fn record(&self, events: Vec<Event>) {
        for e in &events {
            if let Event::Failover { cluster, epoch, .. } | Event::HandOver { cluster, epoch, .. } =
                e
            {
                self.metrics.failovers.inc();
                self.metrics
                    .epoch
                    .get_or_create(&crate::metrics::ClusterLabel { cluster: *cluster })
                    .set(*epoch as i64);
            }
        }
        log_events(events);
    }

    /// Follows the Raft node's state into the metrics, `/ready` and the log, until the
    /// node stops.
    pub async fn watch_state(self: Arc<Self>) {
        let mut rx = self.consensus.raft.metrics();
        let mut last: Option<(ServerState, Option<u64>)> = None;
        loop {
            let m = rx.borrow_and_update().clone();
            let metrics = &self.metrics;
            metrics.raft_term.set(m.current_term as i64);
            metrics
                .raft_leader
                .set(i64::from(m.state == ServerState::Leader));
            metrics
                .raft_applied_index
                .set(m.last_applied.map_or(0, |l| l.index) as i64);
            metrics
                .raft_commit_index
                .set(self.consensus.log.committed_index() as i64);
            let now = (m.state, m.current_leader);
            if last != Some(now) {
                if m.state == ServerState::Candidate {
                    metrics.raft_elections.inc();
                }
                match m.current_leader {
                    Some(l) => {
                        tracing::info!(
                            leader = l,
                            term = m.current_term,
                            state = ?m.state,
                            "coordinator group has a leader"
                        );
                        metrics.set_ready(None);
                    }
                    None => {
                        tracing::info!(term = m.current_term, state = ?m.state, "coordinator group has no leader");
                        metrics.set_ready(Some("the coordinator group has no leader".into()));
                    }
                }
                last = Some(now);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

fn write_refusal<E>(e: RaftError<u64, E>) -> Refusal
where
    E: MaybeForward + std::error::Error,
{
    match e.api_error().and_then(MaybeForward::leader) {
        Some(addr) => Refusal::NotLeader(addr),
        None => Refusal::Failed(CoordError::Group(e.to_string())),
    }
}

/// Errors that may name the leader.
trait MaybeForward {
    /// `Some(leader address, if known)` when the error says "not the leader".
    fn leader(&self) -> Option<Option<String>>;
}

impl MaybeForward for ClientWriteError<u64, BasicNode> {
    fn leader(&self) -> Option<Option<String>> {
        match self {
            ClientWriteError::ForwardToLeader(f) => {
                Some(f.leader_node.as_ref().map(|n| n.addr.clone()))
            }
            ClientWriteError::ChangeMembershipError(_) => None,
        }
    }
}

impl MaybeForward for openraft::error::InitializeError<u64, BasicNode> {
    fn leader(&self) -> Option<Option<String>> {
        None
    }
}

fn log_events(events: Vec<Event>) {
    for e in events {
        match e {
            Event::Registered {
                cluster,
                kind,
                addr,
            } => {
                tracing::info!(cluster, kind = kind.as_str(), %addr, "registered")
            }
            Event::HandOver {
                cluster,
                from,
                to,
                epoch,
            } => tracing::info!(
                cluster,
                from = from.as_str(),
                to = to.as_str(),
                epoch,
                "planned hand-over: the {} stops, the {} is active",
                from.as_str(),
                to.as_str()
            ),
            Event::Failover {
                cluster,
                active: Some(kind),
                epoch,
                reason,
            } => tracing::info!(
                cluster,
                active = kind.as_str(),
                epoch,
                %reason,
                "active server is now the {}",
                kind.as_str()
            ),
            Event::Failover {
                cluster,
                active: None,
                epoch,
                reason,
            } => tracing::error!(cluster, epoch, %reason, "no live server in cluster"),
        }
    }
}
