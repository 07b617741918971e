//! The heartbeat loop of a node's link: beats every interval (at once when the routing
//! watch pushes a change), adopts the coordinator's interval, says in the log when the
//! coordinator or the node's own runtime or clock goes wrong and when it comes right.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tsn_protocol::coord::{CoordError, CoordReply, CoordRequest, Heartbeat};

use super::{stalled_after, LinkConfig, Membership, CLOCK_LOG_EVERY, NO_SUCH_CLUSTER_EXIT};

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
    let mut beats = Beats::new(cfg);
    loop {
        let again = async {
            match beats.retry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = beats.tick.tick() => {}
            _ = beat_now.notified() => {}
            _ = again => {}
        }
        if !beats.runtime_alive(alive()) {
            continue;
        }
        match beat(&endpoint, &group, &beats.cfg, &out).await {
            Ok(m) => {
                beats.answered(&m);
                out.send_if_modified(|cur| {
                    let changed = *cur != m;
                    *cur = m;
                    changed
                });
            }
            Err(e) => {
                missed.inc();
                if beats.failed(&e) {
                    group.forget().await;
                }
            }
        }
    }
}

/// What the beating loop keeps between beats: the interval in force, how the last beats
/// went, and what the log was last told.
struct Beats {
    cfg: LinkConfig,
    /// The interval beaten at: the coordinator's.
    interval: Duration,
    tick: tokio::time::Interval,
    /// A beat that failed is tried again soon (backing off up to the interval), not at
    /// the next tick: a node that starts while the group elects its first leader would
    /// otherwise stay unregistered for a whole heartbeat interval.
    retries: Box<dyn Iterator<Item = Duration> + Send>,
    retry: Option<Duration>,
    unreachable: bool,
    registered: bool,
    stalled: bool,
    /// When the log last said that the clock is off (none: it is not, as far as known).
    clock_logged: Option<Instant>,
}

impl Beats {
    fn new(cfg: LinkConfig) -> Beats {
        let interval = cfg.interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Beats {
            cfg,
            interval,
            tick,
            retries: Box::new(crate::net::backoff()),
            retry: None,
            unreachable: false,
            registered: false,
            stalled: false,
            clock_logged: None,
        }
    }

    /// Whether to beat, given whether the node's runtime makes progress (said in the log
    /// when that changes).
    fn runtime_alive(&mut self, alive: bool) -> bool {
        if !alive {
            if !self.stalled {
                tracing::error!(
                    "this node's runtime has made no progress for {:?}: no more heartbeats, so that the coordinator fails it over",
                    stalled_after(self.interval)
                );
                self.stalled = true;
            }
            return false;
        }
        if self.stalled {
            tracing::info!("this node's runtime makes progress again: heartbeats resume");
            self.stalled = false;
        }
        true
    }

    /// A beat was answered with `m`.
    fn answered(&mut self, m: &Membership) {
        // The heartbeat interval belongs to the coordinator.
        let theirs = m
            .beat
            .as_ref()
            .map(|b| Duration::from_millis(b.heartbeat_ms.max(1)));
        if let Some(theirs) = theirs.filter(|t| *t != self.interval) {
            if theirs != self.cfg.interval || self.interval == self.cfg.interval {
                tracing::error!(
                    ours_ms = self.cfg.interval.as_millis() as u64,
                    coordinator_ms = theirs.as_millis() as u64,
                    "--heartbeat-ms differs from the coordinator's: beating at the coordinator's interval"
                );
            }
            self.interval = theirs;
            self.tick = tokio::time::interval_at(tokio::time::Instant::now() + theirs, theirs);
            self.tick
                .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        if self.unreachable {
            tracing::info!(coordinator = %self.cfg.coordinator, "coordinator reachable again");
            self.unreachable = false;
        }
        self.retries = Box::new(crate::net::backoff());
        self.retry = None;
        self.registered = true;
        self.say_clock(m);
    }

    /// Says when the node's clock is off (every [`CLOCK_LOG_EVERY`] while it is) and when
    /// it agrees again.
    fn say_clock(&mut self, m: &Membership) {
        match m.clock_off(self.cfg.max_clock_offset) {
            Some(why) => {
                if self
                    .clock_logged
                    .is_none_or(|t| t.elapsed() >= CLOCK_LOG_EVERY)
                {
                    tracing::error!(
                        clock_offset_ms = m.clock_offset_ms,
                        "{why}: not ready until the clock is corrected (its timestamps would be wrong by as much)"
                    );
                    self.clock_logged = Some(Instant::now());
                }
            }
            None => {
                if self.clock_logged.take().is_some() {
                    tracing::info!(
                        clock_offset_ms = m.clock_offset_ms,
                        "this node's clock agrees with the coordinator's again"
                    );
                }
            }
        }
    }

    /// A beat failed with `e`; returns whether the member asked is to be forgotten (the
    /// next beat asks another). A cluster that does not exist ends the process.
    fn failed(&mut self, e: &anyhow::Error) -> bool {
        self.retry = Some(
            self.retries
                .next()
                .unwrap_or(self.interval)
                .min(self.interval),
        );
        let coord = e.downcast_ref::<CoordError>();
        if let Some(CoordError::NoSuchCluster { cluster, clusters }) = coord {
            // A mistyped -i/-s: waiting cannot make the cluster exist (the number
            // of clusters is the coordinator's --clusters).
            tracing::error!(
                coordinator = %self.cfg.coordinator,
                "cluster {cluster} does not exist: the coordinator group has clusters 1..={clusters}; stopping (exit status {NO_SUCH_CLUSTER_EXIT})"
            );
            std::process::exit(NO_SUCH_CLUSTER_EXIT);
        }
        if matches!(coord, Some(CoordError::RoleTaken { .. })) {
            // Loud every time: two processes claim one role, and this one waits.
            tracing::error!(coordinator = %self.cfg.coordinator, "registration refused, not serving: {e}");
            return false;
        }
        let electing = !self.registered && matches!(coord, Some(CoordError::NoLeader));
        if !self.unreachable && electing {
            // A group started together elects its first leader within a
            // second or so: nodes started beside it wait for that.
            tracing::info!(coordinator = %self.cfg.coordinator, "waiting for the coordinator group to elect its leader");
            self.unreachable = true;
        } else if !self.unreachable && crate::net::part_of_a_stop(e) {
            tracing::info!(coordinator = %self.cfg.coordinator, "the coordinator stopped, keeping what was learned last: {e:#}");
            self.unreachable = true;
        } else if !self.unreachable {
            tracing::warn!(coordinator = %self.cfg.coordinator, "heartbeat failed, keeping what was learned last: {e:#}");
            self.unreachable = true;
        }
        true
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
        web_hashes: cfg
            .web
            .as_ref()
            .map(tsn_certs::WebCerts::hashes)
            .unwrap_or_default(),
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
}
