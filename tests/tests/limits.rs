//! Resources strangers reach are bounded, and a client's exit status says whether its
//! posts were stored.
//!
//! - A stranger holding (or trying to hold) 2,000 idle TCP connections on a server's
//!   `--metrics-addr` (no login needed) while a client posts and checkpoints run, the
//!   server's open-file limit at 1,024:
//!   nothing fails for lack of descriptors, every checkpoint succeeds, the clean stop
//!   writes its marker.
//! - 100,000 piped posts against `--user-rate 200`, and a client stopped by SIGTERM while
//!   posts are refused: the client exits 1 and says how many were not stored.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tsn_tests::*;

const LIVE: Duration = Duration::from_secs(30);

/// Idle connections the stranger keeps open.
const IDLE: usize = 2000;

/// Holds up to [`IDLE`] idle connections to `addr`, opening new ones as the server closes
/// them, until `stop`; `most` records the most held at once (connections the server does
/// not accept wait in its accept queue, and once that is full, no more are made).
fn hold_idle(addr: SocketAddr, stop: &AtomicBool, most: &AtomicUsize) {
    let mut held: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Closed by the server: peek sees the end.
        held.retain(|s| {
            matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        let mut failures = 0;
        while held.len() < IDLE && failures < 50 && !stop.load(Ordering::Relaxed) {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(20)) {
                Ok(s) => {
                    s.set_nonblocking(true).unwrap();
                    held.push(s);
                }
                Err(_) => failures += 1,
            }
        }
        most.fetch_max(held.len(), Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn idle_connections_on_the_metrics_port_take_no_descriptor_the_journal_needs() -> anyhow::Result<()>
{
    // This process holds the connections: it needs more than the usual 1,024.
    tsn_nodes::common::raise_fd_limit();
    let limit = vec![
        "sh".to_string(),
        "-c".into(),
        "ulimit -n 1024 && exec \"$0\" \"$@\"".into(),
    ];
    let metrics = ["--metrics-addr".to_string(), "127.0.0.1:0".into()];
    let (mut sys, mut author) = author_on_a_primary_run_with(&limit, &metrics)?;
    let addr: SocketAddr = sys
        .metrics_addr(1, Role::Primary)
        .0
        .expect("the metrics address in the log")
        .parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let holder = {
        let (stop, most) = (stop.clone(), most.clone());
        std::thread::spawn(move || hold_idle(addr, &stop, &most))
    };
    // As many as the server lets it: those it serves and its accept queue full.
    eventually("the stranger holds its connections", LIVE, || {
        Ok(most.load(Ordering::Relaxed) > tsn_nodes::metrics::MAX_HTTP_CONNECTIONS + 100)
    })?;

    // Posts enough for many checkpoints (one every 8 KiB), for several seconds.
    let started = Instant::now();
    for k in 0..600 {
        author.send(&format!("post {k:05} {}", "x".repeat(100)))?;
        if k % 100 == 99 {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let err = author.stderr();
    assert_eq!(author.finish(LIVE)?, 0, "{err}");
    wait_timeline_complete(&sys, 600, LIVE)?;
    assert!(started.elapsed() > Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    holder.join().unwrap();
    eventually("the listener answers once the stranger left", LIVE, || {
        Ok(http_status(&addr.to_string(), "/health")? == 200)
    })?;

    assert!(
        sys.journal_was_compacted(1, Role::Primary),
        "checkpoints ran"
    );
    assert!(sys.stop(1, Role::Primary), "the primary stops by itself");
    assert!(
        sys.role_dir(1, Role::Primary)
            .join("clean-shutdown")
            .exists(),
        "the clean stop writes its marker"
    );
    let log = sys.read_log(1, Role::Primary);
    for bad in [
        "Too many open files",
        "checkpoint failed",
        "view file append failed",
    ] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
    assert!(log.contains("open-file limit"), "the limit is logged");
    let most = most.load(Ordering::Relaxed);
    assert!(most <= IDLE, "{most}");
    Ok(())
}

/// The count the client gives on stderr: `<n> of <total> posts were not stored`.
fn not_stored(stderr: &str, total: usize) -> Option<usize> {
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!(" of {total} posts were not stored")))?;
    line.trim_start_matches("tsn_client: ")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_client_whose_posts_were_refused_exits_1_and_says_how_many() -> anyhow::Result<()> {
    const POSTS: usize = 100_000;
    let sys = System::start(Config {
        clusters: 1,
        server_args: vec!["--user-rate".into(), "200".into()],
        ..Config::default()
    })?;
    let mut c = sys.client(1)?;
    enter_timeline(&mut c)?;
    for k in 0..POSTS {
        c.send(&format!("piped {k}"))?;
    }
    let code = c.finish(Duration::from_secs(60))?;
    let err = std::fs::read_to_string(sys.dir.path().join("logs/client-1.log"))?;
    assert_eq!(code, 1, "{err}");
    let n = not_stored(&err, POSTS).unwrap_or_else(|| panic!("no count: {err}"));
    assert!(n > POSTS / 2, "most are refused at 200 a second: {n}");
    let stored = POSTS - n;
    eventually(
        "the stored posts in the author's timeline file",
        LIVE,
        || Ok(timeline_numbers(&sys, 1, Role::Primary, 1).len() == stored),
    )?;

    // Stopped by SIGTERM while its posts are refused: the same.
    let mut c = sys.client(2)?;
    enter_timeline(&mut c)?;
    for k in 0..3000 {
        c.send(&format!("signalled {k}"))?;
    }
    c.expect_contains("Post not stored: too many requests", LIVE)?;
    signal_pid(c.pid(), "TERM")?;
    let pid = c.pid();
    let code = c.finish(Duration::from_secs(20))?;
    let err = std::fs::read_to_string(sys.dir.path().join("logs/client-2.log"))?;
    assert_eq!(code, 1, "client {pid}: {err}");
    assert!(err.contains(" posts were not stored ("), "{err}");
    Ok(())
}
