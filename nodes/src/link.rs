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
//! beats on time and is not failed over for being busy. The role that starts it owns it
//! ([`Link`]) and stops it, with its thread, when the role stops. So that a node whose runtime has
//! stopped making progress (a hang) is still failed over, the node's runtime ticks a
//! watchdog, and the link stops beating when the ticks stop for [`stalled_after`].
//!
//! # Layout
//! - this file: what the node learned ([`Membership`]), starting and stopping the link
//!   ([`start`], [`Link`]), the routing watch, and peers' addresses ([`PeerAddr`]).
//! - [`beats`]: the heartbeat loop and the clock-offset measure.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tsn_protocol::coord::{BeatReply, CoordReply, CoordRequest, NodeKind, RoutingTables};
use tsn_protocol::ClusterId;

pub mod beats;

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
    /// A server's web certificate, whose hashes each heartbeat carries.
    pub web: Option<tsn_certs::WebCerts>,
}

/// Exit status of a node whose cluster id is outside the coordinator's range (a usage
/// error, as clap's own).
pub const NO_SUCH_CLUSTER_EXIT: i32 = 2;

/// How often, at most, the log says that the node's clock is off.
const CLOCK_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a stopping link waits for its connections to the coordinator to close.
const LINK_CLOSE: Duration = Duration::from_millis(500);

/// How often the node's runtime ticks the watchdog.
const WATCHDOG_TICK: Duration = Duration::from_millis(100);

/// How long the node's runtime may go without ticking before the link stops beating:
/// ten heartbeats, and at least two seconds (a busy runtime is late by milliseconds; one
/// that misses this many ticks is stuck).
pub fn stalled_after(interval: Duration) -> Duration {
    (interval * 10).max(Duration::from_secs(2))
}

/// A running link, owned by the role that started it: [`Link::stop`] stops it and joins
/// its thread; dropping it stops it too, without waiting.
#[derive(Debug)]
#[must_use = "the link stops when dropped"]
pub struct Link {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The watchdog ticker, a task of the node's runtime.
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Link {
    /// Stops the link and waits for its thread and its ticker to end.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Resolves once the link is told to stop (or its owner is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Starts the link on its own thread, dialling from `bind` with the node's identity, and
/// a watchdog ticker on the calling (the node's) runtime. What it learns goes to `out`.
/// Both run until the returned [`Link`] is stopped or dropped.
pub fn start(
    cfg: LinkConfig,
    bind: IpAddr,
    client_config: quinn::ClientConfig,
    out: watch::Sender<Membership>,
    beat_now: Arc<tokio::sync::Notify>,
    missed: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<Link> {
    let (stop, stopping) = watch::channel(false);
    let started = Instant::now();
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = ticks.clone();
    let ticker_stop = stopping.clone();
    let ticker = tokio::spawn(async move {
        let tick = async {
            loop {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                ticker.store(ms, Ordering::Relaxed);
                tokio::time::sleep(WATCHDOG_TICK).await;
            }
        };
        tokio::select! {
            () = tick => {}
            () = stopped(ticker_stop) => {}
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
    let thread = std::thread::Builder::new()
        .name("coordinator-link".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut pushed = tokio::task::JoinSet::new();
                pushed.spawn(watch(
                    endpoint.clone(),
                    cfg2.coordinator.clone(),
                    out.clone(),
                    beat_now.clone(),
                ));
                let beats = beats::run(endpoint.clone(), cfg2, alive, out, beat_now, missed);
                tokio::select! {
                    () = beats => {}
                    () = stopped(stopping) => {}
                }
                pushed.shutdown().await;
                endpoint.close(0u32.into(), b"node stopping");
                let _ = tokio::time::timeout(LINK_CLOSE, endpoint.wait_idle()).await;
            })
        })
        .context("starting the coordinator link's thread")?;
    Ok(Link {
        stop,
        thread: Some(thread),
        ticker: Some(ticker),
    })
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

/// One peer's address as the membership names it: [`PeerAddr::changed`] resolves when
/// that address changes, not on every routing change. It is read from the membership
/// itself, so no task keeps it.
pub struct PeerAddr {
    members: watch::Receiver<Membership>,
    pick: Box<Pick>,
    /// The address last returned by [`PeerAddr::current`] or seen by
    /// [`PeerAddr::changed`].
    seen: Option<String>,
}

/// Which peer's address a [`PeerAddr`] follows.
type Pick = dyn Fn(&Membership) -> Option<String> + Send + Sync;

impl PeerAddr {
    /// The address `pick` finds in `members`, now and as it changes.
    pub fn new(
        members: &watch::Receiver<Membership>,
        pick: impl Fn(&Membership) -> Option<String> + Send + Sync + 'static,
    ) -> PeerAddr {
        let mut members = members.clone();
        let seen = pick(&members.borrow_and_update());
        PeerAddr {
            members,
            pick: Box::new(pick),
            seen,
        }
    }

    /// The address now.
    pub fn current(&mut self) -> Option<String> {
        self.seen = (self.pick)(&self.members.borrow_and_update());
        self.seen.clone()
    }

    /// Waits until the address differs from the one last seen; an error once the
    /// membership is gone (the node stops). Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        loop {
            self.members.changed().await?;
            let next = (self.pick)(&self.members.borrow_and_update());
            if next != self.seen {
                self.seen = next;
                return Ok(());
            }
        }
    }
}

impl std::fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAddr")
            .field("seen", &self.seen)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
