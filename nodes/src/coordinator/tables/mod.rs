//! Routing tables and the failover rule, free of I/O and clocks.
//!
//! The tables have two parts. What is *decided* ([`Decided`]: each cluster's registered
//! addresses, its active server and epoch, the number of clusters) must outlive the
//! coordinator that decided it: a coordinator group replicates it through Raft, as
//! [`Decision`]s. Heartbeat times are *liveness*: they stay in the memory of the member
//! that receives the heartbeats (the leader) and are never replicated. A new leader
//! starts from the decided part with every node's last beat set to the moment it took
//! over ([`Tables::from_decided`]), so no node is failed over before it has missed two
//! beats sent to that leader.
//!
//! # Layout
//! - here: [`Tables`], the routing and failover rule over the decided part and liveness.
//! - `decided`: [`Decided`] and the [`Decision`]s that change it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tsn_protocol::coord::{
    BeatReply, CoordError, Heartbeat, NodeKind, RouteEntry, RoutingTables, SyncPeer, WebAssignment,
};
use tsn_protocol::types::cluster_of;
use tsn_protocol::{ClusterId, UserId};

mod decided;

pub use decided::{ClusterDecided, Decided, Decision};

/// A node is down after this many missed heartbeats.
pub const MISSED_BEATS: u32 = 2;

#[derive(Debug, Clone)]
struct Slot {
    addr: String,
    last_beat: Instant,
    /// When this address registered.
    since: Instant,
    /// The clock offset its last heartbeat reported (liveness, like `last_beat`).
    clock_offset_ms: i64,
    /// Its web certificate hashes (decided, like `addr`).
    web: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, Default)]
struct Cluster {
    slots: BTreeMap<NodeKind, Slot>,
    /// Which server is active, if any.
    active: Option<NodeKind>,
    epoch: u64,
}

/// What changed in a cluster, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node registered or re-registered with a new address.
    Registered {
        /// Cluster.
        cluster: ClusterId,
        /// Kind.
        kind: NodeKind,
        /// Address.
        addr: String,
    },
    /// The active server handed over to the standby before stopping.
    HandOver {
        /// Cluster.
        cluster: ClusterId,
        /// The server that stops.
        from: NodeKind,
        /// The server now active.
        to: NodeKind,
        /// The new epoch.
        epoch: u64,
    },
    /// The active server changed.
    Failover {
        /// Cluster.
        cluster: ClusterId,
        /// The server now active, or none.
        active: Option<NodeKind>,
        /// The new epoch.
        epoch: u64,
        /// Why, in words, for the log.
        reason: String,
    },
}

/// The coordinator's routing tables.
#[derive(Debug, Clone)]
pub struct Tables {
    clusters: u32,
    heartbeat: Duration,
    by_id: BTreeMap<ClusterId, Cluster>,
    /// When the tables last ran (a request or a tick); see [`Tables::catch_up`].
    last_run: Option<Instant>,
}

impl Tables {
    /// Empty tables for `clusters` clusters and the given heartbeat interval.
    pub fn new(clusters: u32, heartbeat: Duration) -> Self {
        Tables {
            clusters: clusters.max(1),
            heartbeat,
            by_id: BTreeMap::new(),
            last_run: None,
        }
    }

    /// Called first whenever the tables run. The coordinator ticks them every half beat;
    /// a longer gap means the coordinator itself was not running (a starved process, a
    /// stopped VM), and heartbeats that arrived meanwhile may still wait unread. Nodes
    /// must not be failed over for the coordinator's own stall: every node's last beat
    /// moves forward by the gap. Returns the gap when there was one.
    pub fn catch_up(&mut self, now: Instant) -> Option<Duration> {
        let prev = self.last_run.replace(now)?;
        let gap = now.saturating_duration_since(prev);
        if gap <= self.heartbeat {
            return None;
        }
        let excuse = gap - self.heartbeat / 2;
        for cluster in self.by_id.values_mut() {
            for slot in cluster.slots.values_mut() {
                slot.last_beat = (slot.last_beat + excuse).min(now);
            }
        }
        Some(gap)
    }

    /// Tables holding what `decided` says, every node taken as having just beaten (and
    /// registered) at `now`. `clusters` is used while `decided` sets no number.
    pub fn from_decided(
        decided: &Decided,
        clusters: u32,
        heartbeat: Duration,
        now: Instant,
    ) -> Self {
        let mut t = Tables::new(
            if decided.clusters == 0 {
                clusters
            } else {
                decided.clusters
            },
            heartbeat,
        );
        for (id, c) in &decided.by_id {
            let slots = c
                .addrs
                .iter()
                .map(|(kind, addr)| {
                    let slot = Slot {
                        addr: addr.clone(),
                        last_beat: now,
                        since: now,
                        clock_offset_ms: 0,
                        web: c.web.get(kind).cloned().unwrap_or_default(),
                    };
                    (*kind, slot)
                })
                .collect();
            t.by_id.insert(
                *id,
                Cluster {
                    slots,
                    active: c.active,
                    epoch: c.epoch,
                },
            );
        }
        t
    }

    /// Gives every node at least `grace` from `now` before it can be failed over (a new
    /// leader's nodes must find it first), however short the heartbeat.
    pub fn with_grace(mut self, now: Instant, grace: Duration) -> Self {
        let extra = grace.saturating_sub(self.down_after());
        for cluster in self.by_id.values_mut() {
            for slot in cluster.slots.values_mut() {
                slot.last_beat = slot.last_beat.max(now + extra);
            }
        }
        self
    }

    /// What these tables have decided.
    pub fn decided(&self) -> Decided {
        Decided {
            clusters: self.clusters,
            by_id: self
                .by_id
                .iter()
                .map(|(id, c)| {
                    let addrs = c.slots.iter().map(|(k, s)| (*k, s.addr.clone())).collect();
                    let web = c
                        .slots
                        .iter()
                        .filter(|(_, s)| !s.web.is_empty())
                        .map(|(k, s)| (*k, s.web.clone()))
                        .collect();
                    let d = ClusterDecided {
                        addrs,
                        active: c.active,
                        epoch: c.epoch,
                        web,
                    };
                    (*id, d)
                })
                .collect(),
        }
    }

    /// Number of clusters.
    pub fn clusters(&self) -> u32 {
        self.clusters
    }

    /// A node that has not beaten for longer than this is down: two missed beats, plus
    /// half a beat of slack for scheduling jitter.
    fn down_after(&self) -> Duration {
        self.heartbeat * MISSED_BEATS + self.heartbeat / 2
    }

    fn alive(&self, slot: &Slot, now: Instant) -> bool {
        now.saturating_duration_since(slot.last_beat) <= self.down_after()
    }

    /// Records a heartbeat and answers it.
    pub fn beat(
        &mut self,
        hb: &Heartbeat,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> Result<BeatReply, CoordError> {
        if hb.cluster == 0 || hb.cluster > self.clusters {
            return Err(CoordError::NoSuchCluster {
                cluster: hb.cluster,
                clusters: self.clusters,
            });
        }
        if !crate::net::dialable(&hb.addr) {
            return Err(CoordError::BadAddress(hb.addr.clone()));
        }
        let down_after = self.down_after();
        let cluster = self.by_id.entry(hb.cluster).or_default();
        if let Some(holder) = cluster.slots.get(&hb.kind) {
            let quiet = now.saturating_duration_since(holder.last_beat);
            if holder.addr != hb.addr && quiet <= down_after {
                return Err(CoordError::RoleTaken {
                    cluster: hb.cluster,
                    kind: hb.kind,
                    holder: holder.addr.clone(),
                    ms_since_beat: u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX),
                });
            }
        }
        let changed = cluster
            .slots
            .get(&hb.kind)
            .is_none_or(|s| s.addr != hb.addr);
        let since = match cluster.slots.get(&hb.kind) {
            Some(s) if !changed => s.since,
            _ => now,
        };
        cluster.slots.insert(
            hb.kind,
            Slot {
                addr: hb.addr.clone(),
                last_beat: now,
                since,
                clock_offset_ms: hb.clock_offset_ms,
                web: hb.web_hashes.clone(),
            },
        );
        if changed {
            events.push(Event::Registered {
                cluster: hb.cluster,
                kind: hb.kind,
                addr: hb.addr.clone(),
            });
        }
        // A node that was active under an epoch we never saw (we restarted) keeps its role.
        if hb.kind != NodeKind::Sync
            && hb.active
            && hb.epoch >= cluster.epoch
            && cluster.active.is_none()
        {
            cluster.active = Some(hb.kind);
            cluster.epoch = hb.epoch;
            events.push(Event::Failover {
                cluster: hb.cluster,
                active: cluster.active,
                epoch: cluster.epoch,
                reason: "it says it was active at this epoch (the coordinator restarted)".into(),
            });
        }
        self.refresh(hb.cluster, now, events);
        let cluster = &self.by_id[&hb.cluster];
        let other = match hb.kind {
            NodeKind::Primary => Some(NodeKind::Secondary),
            NodeKind::Secondary => Some(NodeKind::Primary),
            NodeKind::Sync => None,
        };
        let active = cluster.active == Some(hb.kind);
        let peer = other
            .and_then(|k| cluster.slots.get(&k))
            .filter(|s| self.alive(s, now))
            .map(|s| s.addr.clone())
            // A standby catches up only from the active server.
            .filter(|_| active || cluster.active.is_some());
        Ok(BeatReply {
            epoch: cluster.epoch,
            active,
            peer,
            clusters: self.clusters,
            heartbeat_ms: u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
            // The service sets its wall clock as it answers: the tables take no clock.
            received_us: 0,
            now_us: 0,
        })
    }

    /// Re-evaluates which server of `cluster` is active. The active server stays active
    /// while it is alive (a returning primary does not take over again: it becomes the
    /// standby); when it is down, the other one takes over if alive. Each change of the
    /// active server increments the epoch.
    pub fn refresh(&mut self, cluster_id: ClusterId, now: Instant, events: &mut Vec<Event>) {
        let down_after = self.down_after();
        let Some(cluster) = self.by_id.get_mut(&cluster_id) else {
            return;
        };
        let alive = |k: NodeKind| {
            cluster
                .slots
                .get(&k)
                .is_some_and(|s| now.saturating_duration_since(s.last_beat) <= down_after)
        };
        if cluster.active.is_some_and(alive) {
            return;
        }
        // A cluster that never had an active server gives its primary the failover
        // delay to show up before the secondary takes over, so that start-up order does
        // not decide the roles.
        let first_election = cluster.epoch == 0;
        let waited = |k: NodeKind| {
            cluster
                .slots
                .get(&k)
                .is_some_and(|s| now.saturating_duration_since(s.since) >= down_after)
        };
        let next = [NodeKind::Primary, NodeKind::Secondary]
            .into_iter()
            .find(|k| alive(*k) && (*k == NodeKind::Primary || !first_election || waited(*k)));
        if next != cluster.active {
            let reason = match cluster
                .active
                .and_then(|k| cluster.slots.get(&k).map(|s| (k, s)))
            {
                Some((k, s)) => format!(
                    "the {} missed {MISSED_BEATS} heartbeats (last one {} ms ago)",
                    k.as_str(),
                    now.saturating_duration_since(s.last_beat).as_millis()
                ),
                None if first_election => "first election".to_string(),
                None => "no server was active".to_string(),
            };
            if next.is_some() {
                cluster.epoch += 1;
            }
            cluster.active = next;
            events.push(Event::Failover {
                cluster: cluster_id,
                active: next,
                epoch: cluster.epoch,
                reason,
            });
        }
    }

    /// Re-evaluates every cluster.
    pub fn refresh_all(&mut self, now: Instant, events: &mut Vec<Event>) {
        let ids: Vec<ClusterId> = self.by_id.keys().copied().collect();
        for id in ids {
            self.refresh(id, now, events);
        }
    }

    /// A planned hand-over: the active server `kind` of `cluster` stops, the other one,
    /// if alive, is active from a new epoch on. Returns the epoch and its address.
    pub fn hand_over(
        &mut self,
        cluster_id: ClusterId,
        kind: NodeKind,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> Result<(u64, String), CoordError> {
        let down_after = self.down_after();
        let refused = CoordError::NoStandby {
            cluster: cluster_id,
        };
        let cluster = self.by_id.get_mut(&cluster_id).ok_or(refused.clone())?;
        let other = match kind {
            NodeKind::Primary => NodeKind::Secondary,
            NodeKind::Secondary => NodeKind::Primary,
            NodeKind::Sync => return Err(refused),
        };
        if cluster.active != Some(kind) {
            return Err(refused);
        }
        let slot = cluster
            .slots
            .get(&other)
            .filter(|s| now.saturating_duration_since(s.last_beat) <= down_after)
            .ok_or(refused)?;
        let addr = slot.addr.clone();
        cluster.active = Some(other);
        cluster.epoch += 1;
        events.push(Event::HandOver {
            cluster: cluster_id,
            from: kind,
            to: other,
            epoch: cluster.epoch,
        });
        Ok((cluster.epoch, addr))
    }

    /// The cluster and active server address for `client`, as decided (a read: it
    /// decides nothing).
    pub fn assigned(&self, client: UserId) -> Result<(ClusterId, String), CoordError> {
        let cluster_id = cluster_of(client, self.clusters);
        self.by_id
            .get(&cluster_id)
            .and_then(|c| c.active.and_then(|k| c.slots.get(&k)))
            .map(|s| (cluster_id, s.addr.clone()))
            .ok_or(CoordError::NoLiveServer {
                cluster: cluster_id,
            })
    }

    /// [`Tables::assigned`] for a browser: also the hashes of the server's web
    /// certificate.
    pub fn assigned_web(&self, client: UserId) -> Result<WebAssignment, CoordError> {
        let (cluster, addr) = self.assigned(client)?;
        let hashes = self
            .by_id
            .get(&cluster)
            .and_then(|c| c.active.and_then(|k| c.slots.get(&k)))
            .map(|s| s.web.clone())
            .unwrap_or_default();
        Ok(WebAssignment {
            cluster,
            addr,
            hashes,
        })
    }

    /// Every live sync service.
    pub fn sync_peers(&self, now: Instant) -> Vec<SyncPeer> {
        self.by_id
            .iter()
            .filter_map(|(id, c)| {
                c.slots
                    .get(&NodeKind::Sync)
                    .filter(|s| self.alive(s, now))
                    .map(|s| SyncPeer {
                        cluster: *id,
                        addr: s.addr.clone(),
                    })
            })
            .collect()
    }

    /// The tables, for people and for the watch: `revision` names the committed state
    /// they show, `liveness` whether these tables receive the heartbeats.
    pub fn status(&self, now: Instant, revision: u64, liveness: bool) -> RoutingTables {
        let mut entries = Vec::new();
        for (id, c) in &self.by_id {
            for (kind, slot) in &c.slots {
                entries.push(RouteEntry {
                    cluster: *id,
                    kind: *kind,
                    addr: slot.addr.clone(),
                    alive: self.alive(slot, now),
                    active: c.active == Some(*kind),
                    ms_since_beat: u64::try_from(
                        now.saturating_duration_since(slot.last_beat).as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                    epoch: c.epoch,
                    clock_offset_ms: slot.clock_offset_ms,
                });
            }
        }
        RoutingTables {
            revision,
            liveness,
            clusters: self.clusters,
            heartbeat_ms: u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HB: Duration = Duration::from_millis(100);

    fn hb(cluster: u32, kind: NodeKind, port: u16) -> Heartbeat {
        Heartbeat {
            cluster,
            kind,
            addr: format!("127.0.0.1:{port}"),
            active: false,
            epoch: 0,
            clock_offset_ms: 0,
            web_hashes: Vec::new(),
        }
    }

    /// Tables of `clusters` clusters, no events yet, and the moment they start.
    fn fresh(clusters: u32) -> (Tables, Vec<Event>, Instant) {
        (Tables::new(clusters, HB), Vec::new(), Instant::now())
    }

    #[test]
    fn a_hand_over_makes_the_live_standby_active_at_once() {
        let (mut t, mut ev, t0) = fresh(1);
        t.beat(&hb(1, NodeKind::Primary, 1), t0, &mut ev).unwrap();
        assert!(
            t.hand_over(1, NodeKind::Primary, t0, &mut ev).is_err(),
            "no standby yet"
        );
        t.beat(&hb(1, NodeKind::Secondary, 2), t0, &mut ev).unwrap();
        assert!(
            t.hand_over(1, NodeKind::Secondary, t0, &mut ev).is_err(),
            "not the active one"
        );
        let (epoch, to) = t.hand_over(1, NodeKind::Primary, t0, &mut ev).unwrap();
        assert_eq!((epoch, to.as_str()), (2, "127.0.0.1:2"));
        assert_eq!(t.assigned(3).unwrap().1, "127.0.0.1:2");
        let p = t.beat(&hb(1, NodeKind::Primary, 1), t0, &mut ev).unwrap();
        assert!(!p.active, "the old primary is the standby now");
    }

    #[test]
    fn a_stalled_coordinator_fails_no_one_over_for_its_own_stall() {
        let (mut t, mut ev, t0) = fresh(1);
        t.catch_up(t0);
        t.beat(&hb(1, NodeKind::Primary, 1), t0, &mut ev).unwrap();
        t.beat(&hb(1, NodeKind::Secondary, 2), t0, &mut ev).unwrap();
        // The coordinator does not run for 10 beats; then the secondary's beat is the
        // first thing it reads (the primary's waits in the queue).
        let t1 = t0 + HB * 10;
        assert!(t.catch_up(t1).is_some());
        let s = t.beat(&hb(1, NodeKind::Secondary, 2), t1, &mut ev).unwrap();
        assert!(!s.active, "no failover for the coordinator's own stall");
        // A primary that really stopped is still failed over, within the usual time.
        let mut now = t1;
        for _ in 0..6 {
            now += HB / 2;
            assert!(t.catch_up(now).is_none());
            t.beat(&hb(1, NodeKind::Secondary, 2), now, &mut ev)
                .unwrap();
        }
        assert!(
            t.beat(&hb(1, NodeKind::Secondary, 2), now, &mut ev)
                .unwrap()
                .active
        );
    }

    #[test]
    fn a_second_process_for_a_live_role_is_refused_until_the_first_stops() {
        let (mut t, mut ev, t0) = fresh(1);
        assert!(
            t.beat(&hb(1, NodeKind::Primary, 1), t0, &mut ev)
                .unwrap()
                .active
        );
        let err = t
            .beat(&hb(1, NodeKind::Primary, 9), t0 + HB, &mut ev)
            .unwrap_err();
        assert!(
            matches!(err, CoordError::RoleTaken { ref holder, .. } if holder == "127.0.0.1:1"),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .contains("held by a live process at 127.0.0.1:1"));
        // The same process beats on; the impostor took nothing.
        assert!(
            t.beat(&hb(1, NodeKind::Primary, 1), t0 + HB, &mut ev)
                .unwrap()
                .active
        );
        // Once the holder has stopped beating, a new process takes the role.
        let later = t0 + HB * 4;
        assert!(t.beat(&hb(1, NodeKind::Primary, 9), later, &mut ev).is_ok());
    }

    #[test]
    fn primary_is_active_then_fails_over_after_two_missed_beats() {
        let (mut t, mut ev, t0) = fresh(3);
        let p = t.beat(&hb(1, NodeKind::Primary, 1), t0, &mut ev).unwrap();
        assert!(p.active);
        assert_eq!(p.epoch, 1);
        let s = t.beat(&hb(1, NodeKind::Secondary, 2), t0, &mut ev).unwrap();
        assert!(!s.active);
        assert_eq!(s.peer.as_deref(), Some("127.0.0.1:1"));
        // client 3 -> cluster (3 % 3) + 1 = 1
        assert_eq!(t.assigned(3).unwrap(), (1, "127.0.0.1:1".into()));

        // One missed beat: still the primary.
        let t1 = t0 + HB * 2;
        t.beat(&hb(1, NodeKind::Secondary, 2), t1, &mut ev).unwrap();
        assert_eq!(t.assigned(3).unwrap().1, "127.0.0.1:1");

        // Past two missed beats: the secondary takes over, with a new epoch.
        let t2 = t0 + HB * 3;
        let s = t.beat(&hb(1, NodeKind::Secondary, 2), t2, &mut ev).unwrap();
        assert!(s.active);
        assert_eq!(s.epoch, 2);
        assert_eq!(s.peer, None, "the dead primary is no mirror target");
        assert_eq!(t.assigned(3).unwrap().1, "127.0.0.1:2");

        // The primary returns: it is the standby and catches up from the secondary.
        let p = t.beat(&hb(1, NodeKind::Primary, 1), t2, &mut ev).unwrap();
        assert!(!p.active);
        assert_eq!(p.epoch, 2);
        assert_eq!(p.peer.as_deref(), Some("127.0.0.1:2"));
        let s = t.beat(&hb(1, NodeKind::Secondary, 2), t2, &mut ev).unwrap();
        assert_eq!(
            s.peer.as_deref(),
            Some("127.0.0.1:1"),
            "mirror to the returned primary"
        );
    }

    #[test]
    fn at_first_start_the_secondary_waits_for_its_primary() {
        let (mut t, mut ev, t0) = fresh(3);
        let s = t.beat(&hb(1, NodeKind::Secondary, 2), t0, &mut ev).unwrap();
        assert!(
            !s.active,
            "the secondary beat first but does not take over at once"
        );
        let p = t
            .beat(&hb(1, NodeKind::Primary, 1), t0 + HB, &mut ev)
            .unwrap();
        assert!(p.active);
        // Without a primary, the secondary serves after the failover delay.
        let mut t = Tables::new(3, HB);
        t.beat(&hb(2, NodeKind::Secondary, 2), t0, &mut ev).unwrap();
        let mut later = t0;
        let mut active = false;
        for _ in 0..4 {
            later += HB;
            active = t
                .beat(&hb(2, NodeKind::Secondary, 2), later, &mut ev)
                .unwrap()
                .active;
        }
        assert!(active);
    }

    #[test]
    fn no_live_server_and_bad_cluster_are_errors() {
        let (mut t, mut ev, now) = fresh(3);
        assert_eq!(t.assigned(1), Err(CoordError::NoLiveServer { cluster: 2 }));
        assert!(matches!(
            t.beat(&hb(4, NodeKind::Primary, 1), now, &mut ev),
            Err(CoordError::NoSuchCluster {
                cluster: 4,
                clusters: 3
            })
        ));
        let mut bad = hb(1, NodeKind::Primary, 1);
        bad.addr = "0.0.0.0:5000".into();
        assert!(matches!(
            t.beat(&bad, now, &mut ev),
            Err(CoordError::BadAddress(_))
        ));
    }

    #[test]
    fn restarted_coordinator_keeps_the_claimed_active_server() {
        let (mut t, mut ev, now) = fresh(3);
        // The secondary beats first, but the primary had been failed over to it at epoch 7.
        let mut s = hb(2, NodeKind::Secondary, 2);
        s.active = true;
        s.epoch = 7;
        let r = t.beat(&s, now, &mut ev).unwrap();
        assert!(r.active);
        assert_eq!(r.epoch, 7);
        let r = t.beat(&hb(2, NodeKind::Primary, 1), now, &mut ev).unwrap();
        assert!(!r.active);
        assert_eq!(r.epoch, 7);
    }

    #[test]
    fn sync_peers_lists_live_sync_services() {
        let (mut t, mut ev, now) = fresh(2);
        t.beat(&hb(1, NodeKind::Sync, 10), now, &mut ev).unwrap();
        t.beat(&hb(2, NodeKind::Sync, 20), now, &mut ev).unwrap();
        assert_eq!(t.sync_peers(now).len(), 2);
        assert_eq!(t.sync_peers(now + HB * 3).len(), 0);
    }

    #[test]
    fn decisions_replay_on_a_copy_and_stale_ones_change_nothing() {
        let (mut t, mut ev, t0) = fresh(2);
        let mut follower = Decided::default();
        let before = follower.clone();
        t.beat(&hb(1, NodeKind::Primary, 1), t0, &mut ev).unwrap();
        t.beat(&hb(1, NodeKind::Secondary, 2), t0, &mut ev).unwrap();
        let step = before.diff(&t.decided());
        assert!(follower.apply(&step));
        assert_eq!(follower, t.decided());
        // The same step again was made from a state that is gone: nothing changes.
        assert!(!follower.apply(&step));
        assert_eq!(follower, t.decided());
        // A new leader starts from what is decided, and fails no one over at once.
        let mut lead = Tables::from_decided(&follower, 9, HB, t0 + HB * 10);
        assert_eq!(lead.clusters(), 2);
        let mut ev = Vec::new();
        lead.refresh_all(t0 + HB * 11, &mut ev);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(lead.assigned(2).unwrap().1, "127.0.0.1:1");
        lead.refresh_all(t0 + HB * 13, &mut ev);
        assert!(
            matches!(ev.as_slice(), [Event::Failover { active: None, .. }]),
            "{ev:?}"
        );
    }
}
