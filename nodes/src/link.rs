//! A node's link to the coordinator group, the same for servers and sync services: it
//! registers, beats every interval over one connection to a member (re-dialled, to the
//! next member, when it drops), and keeps a watch stream open on a member, which pushes
//! the routing tables at every committed change. So a node learns a new peer, a moved
//! address or a failover within milliseconds of its being decided, whatever the
//! heartbeat interval: each push also makes the node beat at once, and the answer tells
//! it its role and its peer. Heartbeats are for liveness. What the node learned is
//! published on a watch channel ([`Membership`]).
//!
//! Each heartbeat also measures how far the node's wall clock is from the coordinator's:
//! the coordinator's clock as it answered, against the node's at the middle of the round
//! trip. A node off by more than `--max-clock-offset-ms` says so in its log (an error,
//! every 10 s while it lasts) and is not ready; the next heartbeat reports the offset, so
//! the routing tables (`tsn_status`) show every node's.
//!
//! While the coordinator cannot be reached the node keeps what it learned last: clusters
//! keep serving through a coordinator restart.
//!
//! The link runs on a thread of its own, with its own runtime and UDP endpoint, so that a
//! node busy with clients (hundreds of timeline streams on its one-thread runtime) still
//! beats on time and is not failed over for being busy. So that a node whose runtime has
//! stopped making progress (a hang) is still failed over, the node's runtime ticks a
//! watchdog, and the link stops beating when the ticks stop for [`stalled_after`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tsn_protocol::coord::{
    BeatReply, CoordError, CoordReply, CoordRequest, Heartbeat, NodeKind, RoutingTables,
};
use tsn_protocol::ClusterId;

/// What the node last learned from the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The last heartbeat reply (none before the first).
    pub beat: Option<BeatReply>,
    /// The routing tables read after that beat.
    pub tables: Option<RoutingTables>,
    /// How far this node's wall clock was ahead of the coordinator's (negative: behind)
    /// at the last beat, in milliseconds.
    pub clock_offset_ms: Option<i64>,
}

impl Membership {
    /// Number of clusters (0 before the first beat).
    pub fn clusters(&self) -> u32 {
        self.beat.as_ref().map_or(0, |b| b.clusters)
    }

    /// Why this node's clock is not to be trusted, if it differs from the
    /// coordinator's by more than `max`.
    pub fn clock_off(&self, max: Duration) -> Option<String> {
        let offset = self.clock_offset_ms?;
        let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
        (offset.unsigned_abs() > max_ms.unsigned_abs()).then(|| {
            let side = if offset > 0 { "ahead of" } else { "behind" };
            format!(
                "this node's clock is {} ms {side} the coordinator's (more than --max-clock-offset-ms {max_ms})",
                offset.unsigned_abs()
            )
        })
    }

    /// The registered address of a node, if the coordinator knows one (alive or not:
    /// a dead node's address is where it comes back, or is replaced when another
    /// registers).
    pub fn addr_of(&self, cluster: ClusterId, kind: NodeKind) -> Option<String> {
        self.tables.as_ref().and_then(|t| {
            t.entries
                .iter()
                .find(|e| e.cluster == cluster && e.kind == kind)
                .map(|e| e.addr.clone())
        })
    }
}

/// Who the node is, for its heartbeats.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The coordinator group.
    pub coordinator: crate::common::Coordinators,
    /// The node's cluster.
    pub cluster: ClusterId,
    /// The node's kind.
    pub kind: NodeKind,
    /// The address others dial.
    pub advertise: String,
    /// Heartbeat interval.
    pub interval: Duration,
    /// `--max-clock-offset-ms`.
    pub max_clock_offset: Duration,
}

/// Exit status of a node whose cluster id is outside the coordinator's range (a usage
/// error, as clap's own).
pub const NO_SUCH_CLUSTER_EXIT: i32 = 2;

/// How often, at most, the log says that the node's clock is off.
const CLOCK_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often the node's runtime ticks the watchdog.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// How long the node's runtime may go without ticking before the link stops beating:
/// ten heartbeats, and at least two seconds (a busy runtime is late by milliseconds; one
/// that misses this many ticks is stuck).
pub fn stalled_after(interval: Duration) -> Duration {
    (interval * 10).max(Duration::from_secs(2))
}

/// Starts the link on its own thread, dialling from `bind` with the node's identity, and
/// a watchdog ticker on the calling (the node's) runtime. What it learns goes to `out`.
pub fn start(
    cfg: LinkConfig,
    bind: IpAddr,
    client_config: quinn::ClientConfig,
    out: watch::Sender<Membership>,
    beat_now: Arc<tokio::sync::Notify>,
    missed: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = ticks.clone();
    tokio::spawn(async move {
        loop {
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            ticker.store(ms, Ordering::Relaxed);
            tokio::time::sleep(WATCHDOG_TICK).await;
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the coordinator link's runtime")?;
    let endpoint = {
        let _guard = rt.enter();
        crate::net::dialling_endpoint(bind, client_config)
            .context("binding the coordinator link's UDP socket")?
    };
    let alive = move || {
        let last = Duration::from_millis(ticks.load(Ordering::Relaxed));
        started.elapsed().saturating_sub(last) < stalled_after(cfg.interval)
    };
    let cfg2 = cfg.clone();
    std::thread::Builder::new()
        .name("coordinator-link".into())
        .spawn(move || {
            rt.block_on(async move {
                let pushed = tokio::spawn(watch(
                    endpoint.clone(),
                    cfg2.coordinator.clone(),
                    out.clone(),
                    beat_now.clone(),
                ));
                run(endpoint, cfg2, alive, out, beat_now, missed).await;
                pushed.abort();
            })
        })
        .context("starting the coordinator link's thread")?;
    Ok(())
}

/// Keeps a watch stream open on a member of the group: every routing table it pushes
/// replaces the node's (unless older), and a change makes the node beat at once.
pub async fn watch(
    endpoint: quinn::Endpoint,
    coords: crate::common::Coordinators,
    out: watch::Sender<Membership>,
    beat_now: Arc<tokio::sync::Notify>,
) {
    let group = crate::group_client::GroupClient::new(coords);
    let mut backoff = crate::net::backoff();
    loop {
        if let Ok((addr, conn)) = group.connection(&endpoint).await {
            match follow(&conn, &out, &beat_now).await {
                Ok(()) => {}
                Err(e) => tracing::debug!(coordinator = %addr, "routing watch ended: {e}"),
            }
            group.forget().await;
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(2));
        tokio::time::sleep(pause).await;
    }
}

async fn follow(
    conn: &quinn::Connection,
    out: &watch::Sender<Membership>,
    beat_now: &tokio::sync::Notify,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    tsn_protocol::write_msg(&mut send, &CoordRequest::Watch).await?;
    send.finish()?;
    while let Some(reply) = tsn_protocol::read_msg::<CoordReply, _>(&mut recv).await? {
        let CoordReply::Status(tables) = reply else {
            anyhow::bail!("unexpected watch reply {reply:?}");
        };
        // Tables are replaced only by ones at least as new that route differently (a
        // change of heartbeat times alone is no news).
        let changed = out.send_if_modified(|m| {
            let cur = m.tables.as_ref();
            if cur.is_some_and(|t| t.revision > tables.revision) {
                return false;
            }
            let differs = cur.is_none_or(|t| routes_differ(t, &tables));
            if differs {
                m.tables = Some(tables.clone());
            }
            differs
        });
        if changed {
            beat_now.notify_one();
        }
    }
    Ok(())
}

/// Whether two tables differ in what a node acts on (addresses, roles, epochs), not just
/// in heartbeat times.
fn routes_differ(a: &RoutingTables, b: &RoutingTables) -> bool {
    let key = |t: &RoutingTables| {
        t.entries
            .iter()
            .map(|e| (e.cluster, e.kind, e.addr.clone(), e.active, e.epoch))
            .collect::<Vec<_>>()
    };
    key(a) != key(b)
}

/// Beats for ever while `alive` says the node makes progress, publishing what it learns
/// on `out`; beats at once when `beat_now` is notified.
pub async fn run(
    endpoint: quinn::Endpoint,
    cfg: LinkConfig,
    alive: impl Fn() -> bool,
    out: watch::Sender<Membership>,
    beat_now: Arc<tokio::sync::Notify>,
    missed: prometheus_client::metrics::counter::Counter,
) {
    // A coordinator that is down does not answer at all: give up on a member in time
    // for the next beat, so that it is found soon after it is back.
    let limit = cfg
        .interval
        .clamp(Duration::from_millis(500), crate::net::CONNECT_TIMEOUT);
    let group = crate::group_client::GroupClient::new(cfg.coordinator.clone()).with_timeout(limit);
    let mut unreachable = false;
    let mut registered = false;
    let mut stalled = false;
    // When the log last said that the clock is off (none: it is not, as far as known).
    let mut clock_logged: Option<Instant> = None;
    let mut interval = cfg.interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A beat that failed is tried again soon (backing off up to the interval), not at
    // the next tick: a node that starts while the group elects its first leader would
    // otherwise stay unregistered for a whole heartbeat interval.
    let mut retries = crate::net::backoff();
    let mut retry: Option<Duration> = None;
    loop {
        let again = async {
            match retry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = beat_now.notified() => {}
            _ = again => {}
        }
        if !alive() {
            if !stalled {
                tracing::error!(
                    "this node's runtime has made no progress for {:?}: no more heartbeats, so that the coordinator fails it over",
                    stalled_after(interval)
                );
                stalled = true;
            }
            continue;
        }
        if stalled {
            tracing::info!("this node's runtime makes progress again: heartbeats resume");
            stalled = false;
        }
        match beat(&endpoint, &group, &cfg, &out).await {
            Ok(m) => {
                // The heartbeat interval belongs to the coordinator.
                let theirs = m
                    .beat
                    .as_ref()
                    .map(|b| Duration::from_millis(b.heartbeat_ms.max(1)));
                if let Some(theirs) = theirs.filter(|t| *t != interval) {
                    if theirs != cfg.interval || interval == cfg.interval {
                        tracing::error!(
                            ours_ms = cfg.interval.as_millis() as u64,
                            coordinator_ms = theirs.as_millis() as u64,
                            "--heartbeat-ms differs from the coordinator's: beating at the coordinator's interval"
                        );
                    }
                    interval = theirs;
                    tick =
                        tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                if unreachable {
                    tracing::info!(coordinator = %cfg.coordinator, "coordinator reachable again");
                    unreachable = false;
                }
                retries = crate::net::backoff();
                retry = None;
                registered = true;
                match m.clock_off(cfg.max_clock_offset) {
                    Some(why) => {
                        if clock_logged.is_none_or(|t| t.elapsed() >= CLOCK_LOG_EVERY) {
                            tracing::error!(
                                clock_offset_ms = m.clock_offset_ms,
                                "{why}: not ready until the clock is corrected (its timestamps would be wrong by as much)"
                            );
                            clock_logged = Some(Instant::now());
                        }
                    }
                    None => {
                        if clock_logged.take().is_some() {
                            tracing::info!(
                                clock_offset_ms = m.clock_offset_ms,
                                "this node's clock agrees with the coordinator's again"
                            );
                        }
                    }
                }
                out.send_if_modified(|cur| {
                    let changed = *cur != m;
                    *cur = m;
                    changed
                });
            }
            Err(e) => {
                missed.inc();
                retry = Some(retries.next().unwrap_or(interval).min(interval));
                if let Some(CoordError::NoSuchCluster { cluster, clusters }) =
                    e.downcast_ref::<CoordError>()
                {
                    // A mistyped -i/-s: waiting cannot make the cluster exist (the number
                    // of clusters is the coordinator's --clusters).
                    tracing::error!(
                        coordinator = %cfg.coordinator,
                        "cluster {cluster} does not exist: the coordinator group has clusters 1..={clusters}; stopping (exit status {NO_SUCH_CLUSTER_EXIT})"
                    );
                    std::process::exit(NO_SUCH_CLUSTER_EXIT);
                }
                let taken = e
                    .downcast_ref::<CoordError>()
                    .is_some_and(|c| matches!(c, CoordError::RoleTaken { .. }));
                if taken {
                    // Loud every time: two processes claim one role, and this one waits.
                    tracing::error!(coordinator = %cfg.coordinator, "registration refused, not serving: {e}");
                } else {
                    let electing = !registered
                        && e.downcast_ref::<CoordError>()
                            .is_some_and(|c| matches!(c, CoordError::NoLeader));
                    if !unreachable && electing {
                        // A group started together elects its first leader within a
                        // second or so: nodes started beside it wait for that.
                        tracing::info!(coordinator = %cfg.coordinator, "waiting for the coordinator group to elect its leader");
                        unreachable = true;
                    } else if !unreachable && crate::net::part_of_a_stop(&e) {
                        tracing::info!(coordinator = %cfg.coordinator, "the coordinator stopped, keeping what was learned last: {e:#}");
                        unreachable = true;
                    } else if !unreachable {
                        tracing::warn!(coordinator = %cfg.coordinator, "heartbeat failed, keeping what was learned last: {e:#}");
                        unreachable = true;
                    }
                    group.forget().await;
                }
            }
        }
    }
}

async fn beat(
    endpoint: &quinn::Endpoint,
    group: &crate::group_client::GroupClient,
    cfg: &LinkConfig,
    out: &watch::Sender<Membership>,
) -> anyhow::Result<Membership> {
    // The node's belief is what the coordinator said last (a coordinator that lost its
    // state rebuilds its tables from these beliefs instead of failing over).
    let (active, epoch, clock_offset_ms) = {
        let m = out.borrow();
        let (active, epoch) = m.beat.as_ref().map_or((false, 0), |b| (b.active, b.epoch));
        (active, epoch, m.clock_offset_ms.unwrap_or(0))
    };
    let hb = CoordRequest::Heartbeat(Heartbeat {
        cluster: cfg.cluster,
        kind: cfg.kind,
        addr: cfg.advertise.clone(),
        active,
        epoch,
        clock_offset_ms,
    });
    let sent = crate::now_us();
    let beat = match group.call(endpoint, &hb).await? {
        (_, CoordReply::Beat(r)) => r,
        (_, CoordReply::Failed(e)) => return Err(e.into()),
        (_, other) => anyhow::bail!("unexpected heartbeat reply {other:?}"),
    };
    let clock_offset_ms = Some(offset_ms(
        sent,
        beat.received_us,
        beat.now_us,
        crate::now_us(),
    ));
    let tables = match group.call(endpoint, &CoordRequest::Status).await? {
        (_, CoordReply::Status(t)) => t,
        (_, CoordReply::Failed(e)) => {
            anyhow::bail!("coordinator refused the routing tables: {e}")
        }
        (_, other) => anyhow::bail!("unexpected routing-table reply {other:?}"),
    };
    // Tables pushed by the watch since may be newer than these.
    let tables = match out.borrow().tables.as_ref() {
        Some(t) if t.revision > tables.revision => t.clone(),
        _ => tables,
    };
    Ok(Membership {
        beat: Some(beat),
        tables: Some(tables),
        clock_offset_ms,
    })
}

/// How far this node's clock is ahead of the coordinator's, in milliseconds, as NTP
/// reckons it (RFC 5905, section 8): the request left at `sent` and the answer came back
/// at `back` (this node's clock); the coordinator took it at `took` and answered at
/// `answered` (its clock). The time the coordinator spent deciding does not count, and
/// the error is at most half the network round trip.
fn offset_ms(sent: i64, took: i64, answered: i64, back: i64) -> i64 {
    let there = sent.saturating_sub(took);
    let back_here = back.saturating_sub(answered);
    there.saturating_add(back_here) / 2 / 1000
}

/// A watch of one peer's address, derived from the membership (changes only when the
/// address does).
pub fn peer_addr(
    membership: &watch::Receiver<Membership>,
    pick: impl Fn(&Membership) -> Option<String> + Send + 'static,
) -> watch::Receiver<Option<String>> {
    let mut m = membership.clone();
    let (tx, rx) = watch::channel(pick(&m.borrow_and_update()));
    tokio::spawn(async move {
        while m.changed().await.is_ok() {
            let next = pick(&m.borrow_and_update());
            tx.send_if_modified(|cur| {
                let changed = *cur != next;
                *cur = next;
                changed
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_leaves_out_the_time_spent_deciding() {
        let day_us = 86_400_000_000;
        // 10 ms each way, 2 s deciding (a commit during an election): no offset.
        assert_eq!(offset_ms(1_000_000, 1_010_000, 3_010_000, 3_020_000), 0);
        let ahead = |d: i64| offset_ms(1_000_000, 1_010_000 - d, 3_010_000 - d, 3_020_000);
        assert_eq!(ahead(day_us), 86_400_000);
        assert_eq!(ahead(-5_000_000), -5_000);
    }

    #[test]
    fn a_clock_beyond_the_limit_either_way_is_off() {
        let limit = Duration::from_millis(500);
        let at = |ms| Membership {
            clock_offset_ms: Some(ms),
            ..Membership::default()
        };
        assert_eq!(Membership::default().clock_off(limit), None);
        assert_eq!(at(500).clock_off(limit), None);
        assert_eq!(at(-500).clock_off(limit), None);
        assert!(at(501)
            .clock_off(limit)
            .is_some_and(|w| w.contains("ahead of")));
        assert!(at(-86_400_000)
            .clock_off(limit)
            .is_some_and(|w| w.contains("behind")));
    }
}
