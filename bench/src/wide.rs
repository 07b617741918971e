//! Section 12: a user followed by 100,000 users of three clusters, 1,000 of them with an
//! open timeline: how long until a post of theirs is in every follower's timeline file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::runtime::Runtime;
use tsn_protocol::types::cluster_of;
use tsn_protocol::UserId;
use tsn_tests::System;

use crate::progress;
use crate::scenarios::{connect_clients, system, Joining};
use crate::session::{self, Timeline};
use crate::stats::{row, verdict, Row};

/// Of the followers, these keep a timeline open (the others log in, follow, and leave).
pub const OPEN: u32 = 1_000;
/// Longest wait for a post to be in every follower's file.
const WAIT: Duration = Duration::from_secs(60);
/// Logins and follows in flight at once.
const IN_FLIGHT: usize = 64;

/// Runs section 12 with `followers` followers (users 2..=followers + 1) of user 1.
pub fn run(rt: &Runtime, followers: u32) -> Result<Vec<Row>> {
    progress::stage(format!("12: {followers} followers log in and follow"));
    let sys = system(3, 1000, 500)?;
    let (certs, coord) = (sys.certs(), sys.coord.clone());
    let author: UserId = 1;
    let eps = session::endpoints(rt, &certs, 16)?;
    let cc = rt.block_on(session::connect(&eps[0], &coord))?;
    // The author exists before anyone follows them.
    let ac = rt.block_on(session::login(&eps[0], &coord, author))?;
    let started = Instant::now();
    let users: Vec<UserId> = (2..=followers + 1).collect();
    let how = Joining {
        follow: Some(author),
        open: OPEN as usize,
        in_flight: IN_FLIGHT,
    };
    let (open, failed) = rt.block_on(connect_clients(&eps, &cc, users.clone(), how))?;
    let joined_s = started.elapsed().as_secs_f64();
    if let Some(first) = failed.first() {
        progress::note(format!(
            "12: {} of {followers} followers failed to log in or follow; first: {first}",
            failed.len()
        ));
    }
    progress::note(format!(
        "12: {} followers joined in {joined_s:.1} s, {} with an open timeline",
        users.len() - failed.len(),
        open.len()
    ));
    let files = timeline_files(&sys, &users)?;
    let mut rows = vec![row(
        "12",
        format!("{followers} followers logging in and following (their own connection each, {IN_FLIGHT} at a time)"),
        joined_s,
        "s",
    )];
    let posts = rt.block_on(async {
        let mut atl = Timeline::open(&ac, author).await?;
        let mut out = Vec::new();
        // The first post comes behind the follows still on their way through the sync
        // services: reported apart, as in section 5.
        for what in ["first", "measured"] {
            progress::stage(format!("12: the {what} post"));
            let nonce: u64 = rand::random();
            let text = format!("wide {nonce}");
            let sizes = sizes(&files);
            let t0 = Instant::now();
            atl.post(nonce, text.clone()).await?;
            atl.ack(nonce, Duration::from_secs(10)).await?;
            let files = files.clone();
            let seen =
                tokio::task::spawn_blocking(move || wait_files(&files, sizes, &text, t0)).await??;
            progress::note(format!(
                "12: the {what} post in {} of {} timeline files, the last after {:.0} ms",
                seen.0,
                users.len(),
                seen.1
            ));
            out.push(seen);
        }
        for (c, _) in &open {
            c.close(0u32.into(), b"");
        }
        anyhow::Ok(out)
    })?;
    let (first, measured) = (posts[0], posts[1]);
    rows.push(row(
        "12",
        format!("the first post after the {followers} follows -> in every follower's timeline file (the follows drain first)"),
        first.1,
        "ms",
    ));
    let mut r = row(
        "12",
        format!(
            "post -> in every one of {followers} followers' timeline files (3 clusters, the active servers', {OPEN} timelines open)"
        ),
        measured.1,
        "ms",
    );
    r.target = Some(format!(
        "<= 3000 ms: {}",
        verdict(measured.0 == users.len() && measured.1 <= 3000.0)
    ));
    rows.push(r);
    rows.push(row(
        "12",
        format!(
            "followers' timeline files holding the post within {} s",
            WAIT.as_secs()
        ),
        measured.0 as f64,
        "files",
    ));
    progress::step();
    Ok(rows)
}

/// Each follower's timeline file on its cluster's active server.
fn timeline_files(sys: &System, users: &[UserId]) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for cluster in 1..=3 {
        let role = sys.active_server(cluster)?;
        dirs.push(sys.role_dir(cluster, role));
    }
    Ok(users
        .iter()
        .map(|&u| {
            let c = cluster_of(u, 3) as usize;
            dirs[c - 1]
                .join("local_clients")
                .join(u.to_string())
                .join("timeline.data")
        })
        .collect())
}

/// The length of each file now (0: none yet).
fn sizes(files: &[PathBuf]) -> Vec<u64> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .collect()
}

/// Waits until every file holds `text` (a file is read again only once it has grown
/// past its length in `sizes`), at most [`WAIT`] after `t0`; returns how many did, and
/// the milliseconds from `t0` until the last of them was seen.
fn wait_files(files: &[PathBuf], sizes: Vec<u64>, text: &str, t0: Instant) -> Result<(usize, f64)> {
    let mut pending: Vec<(usize, u64)> = sizes.into_iter().enumerate().collect();
    let mut last = 0.0;
    let total = files.len();
    while !pending.is_empty() && t0.elapsed() < WAIT {
        let before = pending.len();
        pending.retain(|&(i, was)| {
            let grown = std::fs::metadata(&files[i]).is_ok_and(|m| m.len() > was);
            let has = grown && std::fs::read_to_string(&files[i]).is_ok_and(|s| s.contains(text));
            !has
        });
        if pending.len() < before {
            last = t0.elapsed().as_secs_f64() * 1e3;
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((total - pending.len(), last))
}
