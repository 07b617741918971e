//! Open-loop load: requests leave on a schedule fixed in advance (their intended send
//! times), whatever the system does, and every latency is measured from the request's
//! intended send time, so a slow answer delays the measurement of nothing else and a
//! stalled system is charged for every request it held up (no coordinated omission).
//!
//! A pacer thread hands request numbers to per-session sender tasks at their intended
//! times; each session's receiver task reads the answers (acknowledgements, or echoed
//! frames for the floor) and records them in an HDR histogram. Observers (followers'
//! timelines) record when each post reaches them. The first `warm` of the schedule is
//! not recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::mpsc;
use tsn_protocol::client::{TimelineDown, TimelineUp};
use tsn_protocol::FrameReader;

use crate::session::Follower;
use crate::stats::{hist, record, Hist};

/// Bytes of one floor frame: about a post with a short text, as encoded.
pub const FRAME: usize = 64;

/// How a session sends.
#[derive(Debug)]
pub enum Tx {
    /// A TSN timeline stream: posts.
    Tsn(quinn::SendStream),
    /// A raw stream of the floor: 64-byte frames carrying the number.
    Raw(quinn::SendStream),
}

/// How a session (or an observer) receives.
#[derive(Debug)]
pub enum Rx {
    /// A TSN timeline stream.
    Tsn(FrameReader<quinn::RecvStream>),
    /// A raw stream of the floor.
    Raw(FrameReader<quinn::RecvStream>),
    /// A follower's timeline, reopened whenever the server closes it.
    Follower(Box<Follower>),
}

/// What arrived.
enum Got {
    /// The answer to request `nonce` (an acknowledgement, or the echoed frame).
    Answer(u64),
    /// A timeline entry with this nonce.
    Entry(u64),
    /// A post was refused.
    Refused(u64),
    /// Anything else.
    Other,
}

impl Tx {
    async fn send(&mut self, nonce: u64) -> Result<()> {
        match self {
            Tx::Tsn(s) => {
                let up = TimelineUp::Post {
                    nonce,
                    text: format!("benchmark post {nonce}"),
                };
                tsn_protocol::write_msg(s, &up).await?;
            }
            Tx::Raw(s) => {
                let mut f = [7u8; FRAME];
                f[..8].copy_from_slice(&nonce.to_le_bytes());
                tsn_protocol::write_frame(s, &f).await?;
            }
        }
        Ok(())
    }
}

impl Rx {
    /// The next message; `Err` once the stream has ended or failed.
    async fn next(&mut self) -> Result<Got> {
        let down = match self {
            Rx::Tsn(r) => r.next_msg::<TimelineDown>().await?,
            Rx::Follower(f) => f.next().await?,
            Rx::Raw(r) => {
                return match r.next().await? {
                    Some(f) if f.len() >= 8 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&f[..8]);
                        Ok(Got::Answer(u64::from_le_bytes(b)))
                    }
                    Some(_) => Ok(Got::Other),
                    None => bail!("stream ended"),
                }
            }
        };
        match down {
            Some(TimelineDown::Ack { nonce }) => Ok(Got::Answer(nonce)),
            Some(TimelineDown::Entry { post: p, .. }) => Ok(Got::Entry(p.id.nonce)),
            Some(TimelineDown::Refused { nonce, .. }) => Ok(Got::Refused(nonce)),
            Some(TimelineDown::NotActive) => bail!("server no longer active"),
            Some(TimelineDown::Reopen) => {
                bail!("the server closed a timeline that fell behind")
            }
            Some(TimelineDown::Position(_)) => Ok(Got::Other),
            None => bail!("timeline stream ended"),
        }
    }

    /// How often the server closed this follower's timeline and it was reopened.
    fn reopened(&self) -> u64 {
        match self {
            Rx::Follower(f) => f.reopened,
            Rx::Tsn(_) | Rx::Raw(_) => 0,
        }
    }
}

/// When requests are meant to leave.
#[derive(Debug, Clone, Copy)]
pub enum Arrivals {
    /// Evenly spaced.
    Even,
    /// A Poisson process (exponential gaps): every phase of a periodic process is
    /// sampled alike.
    Poisson,
}

/// One point of a load curve.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Offered requests per second, over all sessions.
    pub rate: f64,
    /// Not recorded, at the start.
    pub warm: Duration,
    /// Recorded.
    pub measure: Duration,
    /// How long after the last intended send answers are still waited for.
    pub drain: Duration,
    /// How long after the last intended send deliveries are still waited for.
    pub deliver_drain: Duration,
    /// The schedule's shape.
    pub arrivals: Arrivals,
}

/// What one point measured.
#[derive(Debug)]
pub struct Outcome {
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Answers received per second during the recorded window.
    pub achieved: f64,
    /// Answer latency from the intended send time (recorded requests).
    pub answer: Hist,
    /// How late requests actually left after their intended time (the generator's own
    /// lag, included in `answer`).
    pub send_lag: Hist,
    /// Recorded requests never answered (counted in `answer` at the drain deadline).
    pub unanswered: u64,
    /// Requests refused.
    pub refused: u64,
    /// Per observer: delivery latency from the intended send time.
    pub delivered: Vec<Hist>,
    /// Per observer: delivery latency from the acknowledgement.
    pub after_ack: Vec<Hist>,
    /// Per observer: recorded posts that never arrived (counted in `delivered` at the
    /// deadline).
    pub undelivered: Vec<u64>,
    /// Per observer: how often the server closed its timeline for falling behind (it
    /// was reopened from its last entry each time).
    pub reopened: Vec<u64>,
    /// Sessions or observers whose stream failed, with why.
    pub failures: Vec<String>,
}

/// Sessions and observers, handed back after each point so that they can be reused.
#[derive(Debug, Default)]
pub struct Rig {
    /// Request/answer sessions.
    pub sessions: Vec<(Tx, Rx)>,
    /// Observers of deliveries (followers' timelines).
    pub observers: Vec<Rx>,
    /// Connections, kept open.
    pub conns: Vec<quinn::Connection>,
    /// Nonces already used (each point draws fresh ones).
    next_base: u64,
}

impl Rig {
    /// A rig whose nonces start at a random base.
    pub fn new() -> Rig {
        Rig {
            next_base: rand::random::<u64>() >> 2,
            ..Rig::default()
        }
    }
}

fn schedule(plan: &Plan) -> (Instant, Arc<Vec<Duration>>) {
    let total = ((plan.warm + plan.measure).as_secs_f64() * plan.rate).round() as usize;
    let mut at = Vec::with_capacity(total);
    let gap = 1.0 / plan.rate;
    let mut t = 0.0f64;
    for _ in 0..total {
        at.push(Duration::from_secs_f64(t));
        t += match plan.arrivals {
            Arrivals::Even => gap,
            Arrivals::Poisson => {
                let u: f64 = rand::random::<f64>();
                -gap * (1.0 - u).ln()
            }
        };
    }
    (Instant::now() + Duration::from_millis(50), Arc::new(at))
}

/// Runs one point of the plan on `rig`. Must run inside a tokio runtime.
pub async fn run(rig: &mut Rig, plan: &Plan) -> Result<Outcome> {
    let sessions = std::mem::take(&mut rig.sessions);
    let observers = std::mem::take(&mut rig.observers);
    let c = sessions.len();
    anyhow::ensure!(c > 0, "no sessions");
    let (t0, at) = schedule(plan);
    let total = at.len() as u64;
    let base = rig.next_base;
    rig.next_base = rig.next_base.wrapping_add(total + 1);
    let warm_n = at.partition_point(|d| *d < plan.warm) as u64;
    let window = (t0 + plan.warm, t0 + plan.warm + plan.measure);
    let last = t0 + at.last().copied().unwrap_or_default();
    // Acknowledgement times (ns after t0, 0 = not yet) for delivery-after-ack.
    let acked_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let number = move |nonce: u64| -> Option<u64> {
        let n = nonce.wrapping_sub(base);
        (n < total).then_some(n)
    };

    let mut senders = Vec::with_capacity(c);
    let mut receivers = Vec::with_capacity(c);
    let mut queues = Vec::with_capacity(c);
    for (i, (mut tx, mut rx)) in sessions.into_iter().enumerate() {
        let (q_tx, mut q_rx) = mpsc::unbounded_channel::<u64>();
        queues.push(q_tx);
        let at_s = at.clone();
        senders.push(tokio::spawn(async move {
            let mut lag = hist();
            let mut err = None;
            while let Some(n) = q_rx.recv().await {
                if err.is_some() {
                    continue;
                }
                let intended = t0 + at_s[n as usize];
                if n >= warm_n {
                    record(&mut lag, Instant::now().saturating_duration_since(intended));
                }
                if let Err(e) = tx.send(base + n).await {
                    err = Some(format!("{e:#}"));
                }
            }
            (tx, lag, err)
        }));
        let expected: Vec<u64> = (i as u64..total).step_by(c).collect();
        let at_r = at.clone();
        let acked = acked_at.clone();
        let deadline = last + plan.drain;
        receivers.push(tokio::spawn(async move {
            let mut h = hist();
            let mut got = vec![false; expected.len()];
            let (mut left, mut in_window, mut refused) = (expected.len(), 0u64, 0u64);
            let mut err = None;
            while left > 0 {
                let m = match tokio::time::timeout_at(deadline.into(), rx.next()).await {
                    Err(_) => break,
                    Ok(Err(e)) => {
                        err = Some(format!("{e:#}"));
                        break;
                    }
                    Ok(Ok(m)) => m,
                };
                let now = Instant::now();
                let (n, ok) = match m {
                    Got::Answer(nonce) => match number(nonce) {
                        Some(n) => (n, true),
                        None => continue,
                    },
                    Got::Refused(nonce) => match number(nonce) {
                        Some(n) => (n, false),
                        None => continue,
                    },
                    Got::Entry(_) | Got::Other => continue,
                };
                let k = ((n - i as u64) / c as u64) as usize;
                if (n as usize) % c != i || k >= got.len() || got[k] {
                    continue;
                }
                got[k] = true;
                left -= 1;
                if !ok {
                    refused += 1;
                    continue;
                }
                acked[n as usize].store(
                    (now.saturating_duration_since(t0).as_nanos() as u64).max(1),
                    Ordering::Relaxed,
                );
                if now >= window.0 && now <= window.1 {
                    in_window += 1;
                }
                if n >= warm_n {
                    record(&mut h, now.saturating_duration_since(t0 + at_r[n as usize]));
                }
            }
            // Unanswered recorded requests count at the deadline: a lower bound.
            let mut unanswered = 0;
            for (k, g) in got.iter().enumerate() {
                let n = expected[k];
                if !g && n >= warm_n {
                    unanswered += 1;
                    record(
                        &mut h,
                        deadline.saturating_duration_since(t0 + at_r[n as usize]),
                    );
                }
            }
            (rx, h, in_window, unanswered, refused, err)
        }));
    }
    let mut watchers = Vec::new();
    for mut rx in observers {
        let at_o = at.clone();
        let acked = acked_at.clone();
        let deadline = last + plan.deliver_drain;
        let reopened_before = rx.reopened();
        watchers.push(tokio::spawn(async move {
            let mut h = hist();
            let mut h_ack = hist();
            let mut seen = vec![false; total as usize];
            let mut left = total - warm_n;
            let mut err = None;
            while left > 0 {
                let m = match tokio::time::timeout_at(deadline.into(), rx.next()).await {
                    Err(_) => break,
                    Ok(Err(e)) => {
                        err = Some(format!("{e:#}"));
                        break;
                    }
                    Ok(Ok(m)) => m,
                };
                let now = Instant::now();
                let Got::Entry(nonce) = m else { continue };
                let Some(n) = number(nonce) else { continue };
                if seen[n as usize] {
                    continue;
                }
                seen[n as usize] = true;
                if n < warm_n {
                    continue;
                }
                left -= 1;
                record(&mut h, now.saturating_duration_since(t0 + at_o[n as usize]));
                let a = acked[n as usize].load(Ordering::Relaxed);
                let since = now.saturating_duration_since(t0).as_nanos() as u64;
                record(
                    &mut h_ack,
                    Duration::from_nanos(if a == 0 { 0 } else { since.saturating_sub(a) }),
                );
            }
            let mut missing = 0;
            for n in warm_n..total {
                if !seen[n as usize] {
                    missing += 1;
                    record(
                        &mut h,
                        deadline.saturating_duration_since(t0 + at_o[n as usize]),
                    );
                }
            }
            let reopened = rx.reopened() - reopened_before;
            (rx, h, h_ack, missing, reopened, err)
        }));
    }

    // The pacer: a thread of its own, so that the schedule does not wait for the
    // runtime's timer wheel (1 ms) or for busy workers. It sleeps with the timer slack
    // that `main` sets for the process (1 ns where Linux allows it).
    let at_p = at.clone();
    let pacer = std::thread::spawn(move || {
        for n in 0..total {
            let intended = t0 + at_p[n as usize];
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let _ = queues[(n as usize) % c].send(n);
        }
    });

    let mut out = Outcome {
        sent: total,
        achieved: 0.0,
        answer: hist(),
        send_lag: hist(),
        unanswered: 0,
        refused: 0,
        delivered: Vec::new(),
        after_ack: Vec::new(),
        undelivered: Vec::new(),
        reopened: Vec::new(),
        failures: Vec::new(),
    };
    let mut txs = Vec::with_capacity(c);
    for s in senders {
        let (tx, lag, err) = s.await?;
        out.send_lag.add(&lag).ok();
        if let Some(e) = err {
            out.failures.push(format!("send: {e}"));
        }
        txs.push(tx);
    }
    let _ = pacer.join();
    let mut in_window = 0;
    for (r, tx) in receivers.into_iter().zip(txs) {
        let (rx, h, w, unanswered, refused, err) = r.await?;
        out.answer.add(&h).ok();
        in_window += w;
        out.unanswered += unanswered;
        out.refused += refused;
        if let Some(e) = err {
            out.failures.push(format!("session: {e}"));
        }
        rig.sessions.push((tx, rx));
    }
    out.achieved = in_window as f64 / plan.measure.as_secs_f64();
    for w in watchers {
        let (rx, h, h_ack, missing, reopened, err) = w.await?;
        out.delivered.push(h);
        out.after_ack.push(h_ack);
        out.undelivered.push(missing);
        out.reopened.push(reopened);
        if let Some(e) = err {
            out.failures.push(format!("observer: {e}"));
        }
        rig.observers.push(rx);
    }
    Ok(out)
}
