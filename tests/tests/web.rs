//! The web client: the page served by the coordinator (`--web-addr`), in a real headless
//! Chromium, over WebTransport to the servers' own QUIC port; and the page's codec
//! against the Rust protocol crate's bytes.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use tsn_protocol::client::{
    ClientReply, ClientRequest, CommandError, LoginProof, TimelineDown, TimelinePos, TimelineUp,
};
use tsn_protocol::types::{Post, PostId};
use tsn_tests::browser::{self, Browser};
use tsn_tests::*;

/// Every client message, each variant at least once (numbers below 2^53, so JSON carries
/// them exactly).
fn messages() -> Vec<(&'static str, Vec<u8>, serde_json::Value)> {
    fn v<T: serde::Serialize>(
        kind: &'static str,
        m: &T,
    ) -> (&'static str, Vec<u8>, serde_json::Value) {
        (
            kind,
            tsn_protocol::encode(m).unwrap(),
            serde_json::to_value(m).unwrap(),
        )
    }
    let pos = TimelinePos {
        log: 0x1234_5678_9abc,
        seq: 300,
        ts_us: -5,
    };
    let post = Post {
        id: PostId {
            author: 70_000,
            nonce: (1 << 52) + 3,
        },
        ts_us: 1_700_000_000_123_456,
        text: "héllo ✓ <b>".into(),
    };
    let errors = [
        CommandError::AlreadyExists,
        CommandError::NoSuchUser,
        CommandError::InvalidUser,
        CommandError::InvalidCommand,
        CommandError::NotActive,
        CommandError::PostTooLong { len: 300, max: 256 },
        CommandError::Storage("disk full".into()),
        CommandError::BadProof,
        CommandError::KeyMismatch { user: 9 },
        CommandError::RateLimited { per_second: 20_000 },
        CommandError::ControlChar { code: 0x1b },
    ];
    let mut out = vec![
        v("ClientRequest", &ClientRequest::Challenge),
        v(
            "ClientRequest",
            &ClientRequest::Login {
                user: 1,
                proof: Some(LoginProof {
                    key: (0..32).collect(),
                    signature: (0..64).map(|i| 255 - i).collect(),
                }),
            },
        ),
        v(
            "ClientRequest",
            &ClientRequest::Login {
                user: u32::MAX,
                proof: None,
            },
        ),
        v(
            "ClientRequest",
            &ClientRequest::Follow {
                user: 1,
                target: 128,
            },
        ),
        v(
            "ClientRequest",
            &ClientRequest::Unfollow {
                user: 300,
                target: 2,
            },
        ),
        v("ClientRequest", &ClientRequest::List { user: 3 }),
        v(
            "ClientRequest",
            &ClientRequest::Timeline {
                user: 4,
                since: None,
            },
        ),
        v(
            "ClientRequest",
            &ClientRequest::Timeline {
                user: 4,
                since: Some(pos),
            },
        ),
        v("ClientReply", &ClientReply::Ok),
        v("ClientReply", &ClientReply::Challenge((0..32).collect())),
        v(
            "ClientReply",
            &ClientReply::List {
                all_users: vec![1, 2, 200, 70_000],
                followers: vec![],
            },
        ),
        v(
            "TimelineUp",
            &TimelineUp::Post {
                nonce: 1,
                text: "hi".into(),
            },
        ),
        v(
            "TimelineUp",
            &TimelineUp::Post {
                nonce: (1 << 53) - 1,
                text: "<img src=x onerror=alert(1)>".into(),
            },
        ),
        v("TimelineDown", &TimelineDown::Entry { post, seq: 1 << 40 }),
        v("TimelineDown", &TimelineDown::Position(pos)),
        v(
            "TimelineDown",
            &TimelineDown::Position(TimelinePos::default()),
        ),
        v("TimelineDown", &TimelineDown::Ack { nonce: 77 }),
        v("TimelineDown", &TimelineDown::NotActive),
        v("TimelineDown", &TimelineDown::Reopen),
    ];
    for e in errors {
        out.push(v("ClientReply", &ClientReply::Failed(e.clone())));
        out.push(v(
            "TimelineDown",
            &TimelineDown::Refused {
                nonce: 5,
                reason: e,
            },
        ));
    }
    out
}

/// The page's codec (`nodes/web/codec.js`, run by node) decodes the Rust crate's bytes
/// of every client message to the same value and encodes it back to the same bytes.
#[test]
fn the_pages_codec_matches_the_protocol_crate() -> anyhow::Result<()> {
    if !browser::have_node() {
        browser::skipped(
            "the_pages_codec_matches_the_protocol_crate",
            "node is not installed",
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let vectors: Vec<_> = messages()
        .into_iter()
        .map(|(kind, bytes, value)| {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            json!({"type": kind, "hex": hex, "json": value})
        })
        .collect();
    let n = vectors.len();
    let file = dir.path().join("vectors.json");
    std::fs::write(&file, serde_json::to_string_pretty(&vectors)?)?;
    let out = std::process::Command::new("node")
        .arg(browser::web_dir().join("codec-check.mjs"))
        .arg(&file)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "codec-check failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        n,
        "every vector checked:\n{text}"
    );
    Ok(())
}

/// A loopback port free for TCP now (for `--web-addr`).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A system of two clusters whose coordinator serves the page; its URL.
fn start_with_page(heartbeat_ms: u64) -> anyhow::Result<(System, String)> {
    let port = free_tcp_port();
    let sys = System::start(Config {
        clusters: 2,
        heartbeat_ms,
        coordinator_args: vec!["--web-addr".into(), format!("127.0.0.1:{port}")],
        ..Config::default()
    })?;
    Ok((sys, format!("http://127.0.0.1:{port}/")))
}

/// Logs the page in as `user` and waits until its timeline is live.
fn log_in(b: &mut Browser, url: &str, user: u32) -> anyhow::Result<()> {
    b.goto(url)?;
    b.wait_text("status", "not connected", Duration::from_secs(10))?;
    b.type_in("user-id", &user.to_string())?;
    b.click("login")?;
    b.wait_text("status", "connected", Duration::from_secs(20))?;
    eventually(
        "the page's timeline is live",
        Duration::from_secs(20),
        || {
            let s = b.text("status")?;
            Ok(s.contains("connected")
                && !s.contains("not connected")
                && !s.contains("reconnecting"))
        },
    )
}

/// The page follows `followee` by id, once its cluster knows them (LIST shows them).
fn page_follows(b: &mut Browser, followee: u32) -> anyhow::Result<()> {
    let id = followee.to_string();
    eventually(
        &format!("the page's cluster knows user {id}"),
        Duration::from_secs(60),
        || {
            b.click("list")?;
            Ok(b.children("users")?.iter().any(|u| u.trim() == id))
        },
    )?;
    b.type_in("follow-id", &id)?;
    b.click("follow")?;
    b.wait_text(
        "message",
        "Command completed successfully",
        Duration::from_secs(10),
    )
}

/// The page's timeline entries whose text ends with `text`.
fn shown(b: &mut Browser, text: &str) -> anyhow::Result<usize> {
    Ok(b.children("timeline")?
        .iter()
        .filter(|l| l.ends_with(&format!(" >> {text}")))
        .count())
}

/// In the page: log in (cluster 2), follow a terminal user of cluster 1, see their post;
/// post, and the terminal follower sees it; LIST shows both; a post that is HTML stays
/// text and runs nothing.
#[test]
fn a_browser_follows_posts_and_lists_across_clusters() -> anyhow::Result<()> {
    let (sys, url) = start_with_page(200)?;
    let Some(mut b) = Browser::start(
        "a_browser_follows_posts_and_lists_across_clusters",
        &sys.dir.path().join("browser.log"),
    )?
    else {
        return Ok(());
    };
    let mut term = sys.client(2)?; // cluster 1
    log_in(&mut b, &url, 1)?; // cluster 2
    wait_users(&mut term, &[1, 2])?;
    assert_eq!(term.run("FOLLOW 1", 1)?, ["Command completed successfully"]);
    page_follows(&mut b, 2)?;
    assert_eq!(
        term.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    std::thread::sleep(Duration::from_millis(300));

    // A terminal post reaches the page.
    let sent = Instant::now();
    term.send("hello from the terminal")?;
    b.wait_text(
        "timeline",
        "hello from the terminal",
        Duration::from_secs(10),
    )?;
    eprintln!(
        "the terminal's post was on the page {} ms after it was typed",
        sent.elapsed().as_millis()
    );
    let first = b.children("timeline")?;
    let line = first
        .iter()
        .find(|l| l.ends_with(" >> hello from the terminal"))
        .unwrap();
    assert!(
        line.starts_with("2 ("),
        "`<author> (<time>) >> <text>`: {line}"
    );

    // A page post reaches the terminal follower.
    b.type_in("post-text", "hello from the page")?;
    b.press("post-text", "Enter")?;
    term.expect_contains("hello from the page", Duration::from_secs(10))?;

    // LIST: both users, and the terminal user among the page user's followers.
    b.click("list")?;
    eventually("LIST shows both", Duration::from_secs(10), || {
        let users = b.children("users")?;
        let followers = b.children("followers")?;
        Ok(["1", "2"]
            .iter()
            .all(|u| users.iter().any(|x| x.trim() == *u))
            && followers.iter().any(|x| x.trim() == "2"))
    })?;

    // HTML in a post, from another user and from the page itself, is text.
    let evil = "<img src=x onerror=alert(document.domain)>";
    term.send(evil)?;
    b.type_in("post-text", "<script>alert(2)</script><b>bold</b>")?;
    b.press("post-text", "Enter")?;
    b.wait_text("timeline", evil, Duration::from_secs(10))?;
    b.wait_text("timeline", "<b>bold</b>", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.dialogs()?, 0, "a post ran script");
    let tags = b.eval(
        "document.querySelectorAll('[data-testid=timeline] img, [data-testid=timeline] script, [data-testid=timeline] b').length",
    )?;
    assert_eq!(tags, json!(0), "a post became HTML");
    assert_eq!(shown(&mut b, evil)?, 1);

    // Every command the page ran succeeded (none failed on the way).
    assert!(
        !b.log().contains("command:"),
        "a command failed in the page:\n{}",
        b.log()
    );
    // Readable on a phone-sized screen: nothing wider than 375 px.
    b.screenshot(&sys.dir.path().join("phone.png"), 375, 800)?;
    let fits = b.eval("document.documentElement.scrollWidth <= window.innerWidth")?;
    assert_eq!(fits, json!(true), "the page scrolls sideways at 375 px");
    if let Some(path) = std::env::var_os("TSN_WEB_SCREENSHOT") {
        b.screenshot(std::path::Path::new(&path), 1000, 760)?;
    }
    drop(term);
    Ok(())
}

/// kill -9 of the page's active server while the page posts every 100 ms: the page
/// carries on through the other server by itself; every post it saw acknowledged is in
/// the terminal follower's timeline once, and the page shows each of its posts once.
#[test]
fn a_browser_rides_out_a_kill9_of_its_server() -> anyhow::Result<()> {
    let (mut sys, url) = start_with_page(200)?;
    let Some(mut b) = Browser::start(
        "a_browser_rides_out_a_kill9_of_its_server",
        &sys.dir.path().join("browser.log"),
    )?
    else {
        return Ok(());
    };
    posts_ride_out(&mut sys, &mut b, &url, &mut |k, sys| {
        if k == 10 {
            sys.kill(2, Role::Primary);
        }
    })
}

/// A coordinator group, every member serving the page: the page of a member that does
/// not lead rides out the kill -9 of the group's leader and then of its own active
/// server, asking its member where to go.
#[test]
fn a_browser_rides_out_the_loss_of_the_group_leader_and_its_server() -> anyhow::Result<()> {
    let ports: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let mut sys = System::start(Config {
        clusters: 2,
        coordinators: 3,
        member_args: ports
            .iter()
            .map(|p| vec!["--web-addr".into(), format!("127.0.0.1:{p}")])
            .collect(),
        ..Config::default()
    })?;
    let leader = sys.leader().expect("the group has a leader");
    let page_member = (leader + 1) % 3;
    let url = format!("http://127.0.0.1:{}/", ports[page_member]);
    let Some(mut b) = Browser::start(
        "a_browser_rides_out_the_loss_of_the_group_leader_and_its_server",
        &sys.dir.path().join("browser.log"),
    )?
    else {
        return Ok(());
    };
    posts_ride_out(&mut sys, &mut b, &url, &mut |k, sys| {
        if k == 5 {
            sys.kill_member(leader);
        }
        if k == 10 {
            sys.kill(2, Role::Primary);
        }
    })?;
    assert_ne!(sys.leader(), Some(leader), "another member leads");
    Ok(())
}

/// The page (user 1, cluster 2) posts 40 times, one every 100 ms, while `kill(k, sys)`
/// runs before each post k; then every post must be acknowledged in the page, once in
/// the terminal follower's (user 2, cluster 1) timeline file and once on the page, and
/// cluster 2 must have failed over to its secondary.
fn posts_ride_out(
    sys: &mut System,
    b: &mut Browser,
    url: &str,
    kill: &mut dyn FnMut(usize, &mut System),
) -> anyhow::Result<()> {
    let mut term = sys.client(2)?; // cluster 1
    log_in(b, url, 1)?; // cluster 2
    wait_users(&mut term, &[1, 2])?;
    assert_eq!(term.run("FOLLOW 1", 1)?, ["Command completed successfully"]);
    assert_eq!(
        term.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    std::thread::sleep(Duration::from_millis(300));

    const N: usize = 40;
    for k in 0..N {
        kill(k, sys);
        b.type_in("post-text", &format!("web post {k}"))?;
        b.press("post-text", "Enter")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    eventually(
        "every page post acknowledged",
        Duration::from_secs(60),
        || Ok(b.eval("window.tsn.pending()")? == json!(0)),
    )?;
    let acked = b.eval("window.tsn.acked()")?;
    let acked: Vec<String> = serde_json::from_value(acked)?;
    assert_eq!(
        acked.len(),
        N,
        "the page acknowledged every post: {acked:?}"
    );
    let wanted: Vec<String> = (0..N).map(|k| format!("web post {k}")).collect();
    term.expect_all(&wanted, Duration::from_secs(30))?;
    // Once each in the follower's timeline file, on the server that serves cluster 1.
    let serving = sys.serving(1)?;
    let role = if sys.addr(1, Role::Primary)? == serving {
        Role::Primary
    } else {
        Role::Secondary
    };
    eventually(
        "each post once in the follower's file",
        Duration::from_secs(30),
        || {
            let file = sys.read(1, role, "local_clients/2/timeline.data");
            let counts: Vec<usize> = wanted.iter().map(|t| count_text(&file, t)).collect();
            anyhow::ensure!(
                counts.iter().all(|c| *c <= 1),
                "a post delivered twice: {counts:?}"
            );
            Ok(counts.iter().all(|c| *c == 1))
        },
    )?;
    // The page shows each of its posts once: nothing twice, nothing missed.
    eventually(
        "the page shows each post once",
        Duration::from_secs(30),
        || {
            let shown: Vec<usize> = wanted
                .iter()
                .map(|t| shown(b, t))
                .collect::<anyhow::Result<_>>()?;
            anyhow::ensure!(
                shown.iter().all(|c| *c <= 1),
                "the page shows a post twice: {shown:?}"
            );
            Ok(shown.iter().all(|c| *c == 1))
        },
    )?;
    assert_eq!(
        sys.serving(2)?,
        sys.addr(2, Role::Secondary)?,
        "the page's cluster failed over, and the page carried on through the secondary"
    );
    assert!(b.text("status")?.contains("connected"));
    drop(term);
    Ok(())
}

/// One user in both clients: the page refuses to log in as a terminal user without their
/// key, logs in once it imported the terminal's `user-<id>.key`; and the key the page
/// made for a new user, saved as a key file, logs the terminal client in as that user.
#[test]
fn a_user_moves_between_the_terminal_and_the_browser_with_their_key() -> anyhow::Result<()> {
    let (sys, url) = start_with_page(200)?;
    let Some(mut b) = Browser::start(
        "a_user_moves_between_the_terminal_and_the_browser_with_their_key",
        &sys.dir.path().join("browser.log"),
    )?
    else {
        return Ok(());
    };
    // The page makes user 7's key; saved as a key file, the terminal logs in with it.
    log_in(&mut b, &url, 7)?;
    let file = b.eval("window.tsn.keyFile(7)")?;
    let file = file.as_str().expect("the page offers the key it made");
    let bytes: Vec<u8> = (0..file.len() / 2)
        .map(|i| u8::from_str_radix(&file[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let host = sys.client_cert_dir("seven")?;
    std::fs::write(host.join("user-7.key"), &bytes)?;
    let mut seven = sys.client_with_certs(7, &host)?;
    let listed = seven.run("LIST", 1)?;
    assert_eq!(
        listed,
        ["Command completed successfully"],
        "the terminal logged in as 7 with the page's key"
    );
    drop(seven);

    // User 5 starts in the terminal (its key is made there).
    let mut five = sys.client(5)?;
    assert_eq!(five.run("LIST", 1)?, ["Command completed successfully"]);
    drop(five);
    b.goto(&url)?;
    b.type_in("user-id", "5")?;
    b.click("login")?;
    b.wait_text("message", "Login refused", Duration::from_secs(20))?;
    b.upload("key-file", &sys.certs().join("user-5.key"))?;
    b.wait_text("message", "imported", Duration::from_secs(10))?;
    log_in(&mut b, &url, 5)?;
    b.click("list")?;
    b.wait_text("users", "5", Duration::from_secs(10))?;
    Ok(())
}

/// A server started with `--web-origin` refuses sessions from pages of other origins
/// (here, the coordinator's own page), and says so in its log.
#[test]
fn a_server_refuses_pages_of_other_origins() -> anyhow::Result<()> {
    let port = free_tcp_port();
    let sys = System::start(Config {
        clusters: 2,
        coordinator_args: vec!["--web-addr".into(), format!("127.0.0.1:{port}")],
        server_args: vec!["--web-origin".into(), "https://tsn.example.org".into()],
        ..Config::default()
    })?;
    let Some(mut b) = Browser::start(
        "a_server_refuses_pages_of_other_origins",
        &sys.dir.path().join("browser.log"),
    )?
    else {
        return Ok(());
    };
    b.goto(&format!("http://127.0.0.1:{port}/"))?;
    b.type_in("user-id", "1")?;
    b.click("login")?;
    eventually(
        "the server refuses the page",
        Duration::from_secs(20),
        || {
            Ok(sys.log_count(
                2,
                Role::Primary,
                "refused a browser session from a page of another origin",
            ) > 0)
        },
    )?;
    let state = b.eval("window.tsn.state()")?;
    assert_ne!(state, json!("connected"), "the page must not be connected");
    assert!(
        b.text("status")?.contains("reconnecting") || b.text("status")?.contains("gave up"),
        "the page says it is not connected: {}",
        b.text("status")?
    );
    Ok(())
}

/// The benchmark of the README's BENCHMARKS.md: 200 posts typed into `tsn_client` (user
/// 2, cluster 1) to the page's timeline (user 1, cluster 2), one every 50 ms, at the
/// defaults (`-q 500`, 10 s heartbeats); prints p50 and p99 from the line reaching the
/// client's stdin to the entry appearing in the page's DOM. Every post is shown once.
/// Run: `cargo build --release --workspace && TSN_BIN_DIR=$PWD/target/release cargo test
/// --release -p tsn-tests --test web -- --ignored --nocapture terminal_to_page_latency`.
#[test]
#[ignore = "a benchmark: prints figures"]
fn terminal_to_page_latency() -> anyhow::Result<()> {
    const POSTS: usize = 200;
    let port = free_tcp_port();
    let sys = System::start(Config {
        clusters: 2,
        heartbeat_ms: 10_000,
        period_ms: 500,
        coordinator_args: vec!["--web-addr".into(), format!("127.0.0.1:{port}")],
        ..Config::default()
    })?;
    let url = format!("http://127.0.0.1:{port}/");
    let Some(mut b) = Browser::start(
        "terminal_to_page_latency",
        &sys.dir.path().join("browser.log"),
    )?
    else {
        return Ok(());
    };
    let mut term = sys.client(2)?;
    log_in(&mut b, &url, 1)?;
    wait_users(&mut term, &[1, 2])?;
    page_follows(&mut b, 2)?;
    // A follow takes effect once the sync services passed it on (DESIGN §1).
    eventually(
        "the follow reached user 2's cluster",
        Duration::from_secs(30),
        || Ok(list(&mut term)?.1 == "Followers: 1, "),
    )?;
    assert_eq!(term.run("TIMELINE", 2)?.len(), 2);
    // When each entry first appears in the timeline, by its text, on the wall clock.
    b.eval(
        "window.__seen = {};
         new MutationObserver((ms) => {
           const t = performance.timeOrigin + performance.now();
           for (const m of ms) for (const n of m.addedNodes) {
             const s = n.textContent, i = s.indexOf(' >> ');
             if (i >= 0 && !(s.slice(i + 4) in window.__seen)) window.__seen[s.slice(i + 4)] = t;
           }
         }).observe(document.querySelector('[data-testid=timeline]'), { childList: true });
         true",
    )?;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            * 1e3
    };
    let mut sent = Vec::with_capacity(POSTS);
    for i in 0..POSTS {
        sent.push(now_ms());
        term.send(&format!("latency {i}"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = eventually("every post on the page", Duration::from_secs(30), || {
        Ok(b.eval("Object.keys(window.__seen).length")? == json!(POSTS))
    });
    if let Err(e) = all {
        let seen = b.eval("Object.keys(window.__seen)")?;
        anyhow::bail!("{e}: the page showed {seen}\npage log:\n{}", b.log());
    }
    let seen = b.eval("window.__seen")?;
    let mut lat: Vec<f64> = (0..POSTS)
        .map(|i| seen[format!("latency {i}")].as_f64().unwrap() - sent[i])
        .collect();
    for i in 0..POSTS {
        assert_eq!(
            shown(&mut b, &format!("latency {i}"))?,
            1,
            "post {i} shown once"
        );
    }
    lat.sort_by(f64::total_cmp);
    let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    println!(
        "tsn_client -> page timeline, {POSTS} posts, -q 500, across clusters: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pick(0.5),
        pick(0.99),
        lat[lat.len() - 1]
    );
    Ok(())
}
