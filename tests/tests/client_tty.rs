//! `tsn_client` on a terminal: a real pseudo-terminal, with the screen reconstructed by
//! a terminal emulator so that the tests see what a person would see.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tsn_tests::*;

const COLS: u16 = 120;
const ROWS: u16 = 30;

/// A `tsn_client` on a pseudo-terminal.
struct Tty {
    session: expectrl::Session<expectrl::session::OsProcess, expectrl::session::OsStream>,
    screen: vt100::Parser,
    /// Every byte the client wrote to the terminal.
    raw: Vec<u8>,
}

impl Tty {
    fn spawn(sys: &System, user: u32) -> Result<Tty> {
        let mut cmd = std::process::Command::new(bin("tsn_client"));
        cmd.args(["-c", &sys.coord, "-p", "0", "-i", &user.to_string()])
            .arg("--cert-dir")
            .arg(sys.certs())
            .env("TERM", "xterm");
        Tty::start(cmd)
    }

    /// The client run by a shell on the terminal, which then runs `after` (`$CLIENT` is
    /// the client's command line).
    fn spawn_then(sys: &System, user: u32, after: &str) -> Result<Tty> {
        let client = format!(
            "'{}' -c {} -p 0 -i {user} --cert-dir '{}'",
            bin("tsn_client").display(),
            sys.coord,
            sys.certs().display()
        );
        let mut cmd = std::process::Command::new("bash");
        cmd.args(["--norc", "-c", &format!("{client}; {after}")])
            .env("TERM", "xterm");
        Tty::start(cmd)
    }

    fn start(cmd: std::process::Command) -> Result<Tty> {
        let mut session = expectrl::Session::spawn(cmd).context("starting tsn_client on a pty")?;
        session.get_process_mut().set_window_size(COLS, ROWS)?;
        let mut tty = Tty {
            session,
            screen: vt100::Parser::new(
                ROWS.try_into().context("rows")?,
                COLS.try_into().context("columns")?,
                0,
            ),
            raw: Vec::new(),
        };
        tty.wait_for("the prompt", |s| s.contains("Cmd>"))?;
        Ok(tty)
    }

    /// Types `keys` (`\r` is Enter).
    fn keys(&mut self, keys: &str) -> Result<()> {
        self.session.write_all(keys.as_bytes())?;
        self.session.flush()?;
        Ok(())
    }

    /// Feeds everything the client printed so far to the emulator.
    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.session.try_read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    self.screen.process(&buf[..n]);
                    self.raw.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    /// The screen, one string per row, trailing blanks removed.
    fn rows(&mut self) -> Vec<String> {
        self.pump();
        self.screen
            .screen()
            .rows(0, COLS)
            .map(|r| r.trim_end().to_string())
            .collect()
    }

    /// The row the cursor is on, and the cursor's column.
    fn cursor(&mut self) -> (String, u16) {
        let rows = self.rows();
        let (row, col) = self.screen.screen().cursor_position();
        (rows[usize::from(row)].clone(), col)
    }

    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> Result<()> {
        self.wait_until(what, |tty| pred(&tty.rows().join("\n")))
    }

    fn wait_until(&mut self, what: &str, pred: impl Fn(&mut Tty) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if pred(self) {
                return Ok(());
            }
            let text = self.rows().join("\n");
            if Instant::now() > deadline {
                bail!("no {what} on the screen:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count(&mut self, needle: &str) -> usize {
        self.rows().iter().filter(|r| r.contains(needle)).count()
    }

    fn pid(&self) -> i32 {
        self.session.get_process().pid().as_raw()
    }

    fn running(&self) -> bool {
        self.session.get_process().is_alive().unwrap_or(false)
    }

    fn exit_code(&self, timeout: Duration) -> Result<i32> {
        use expectrl::process::unix::WaitStatus;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.session.get_process().status()? {
                WaitStatus::Exited(_, code) => return Ok(code),
                WaitStatus::StillAlive => std::thread::sleep(Duration::from_millis(50)),
                other => bail!("client ended with {other:?}"),
            }
        }
        bail!("client {} still running after {timeout:?}", self.pid())
    }
}

/// On the terminal of user 2, follows `author`, waits until the author's LIST shows it,
/// and enters the timeline.
fn follow_then_timeline(tty: &mut Tty, author: &mut Client) -> Result<()> {
    tty.keys(&format!("FOLLOW {}\r", author.user))?;
    tty.wait_for("the follow", |s| {
        s.contains("Command completed successfully")
    })?;
    eventually(
        "the author knows its follower",
        Duration::from_secs(10),
        || Ok(list(author)?.1 == "Followers: 2, "),
    )?;
    tty.keys("TIMELINE\r")?;
    tty.wait_for("the timeline", |s| {
        s.contains("Now you are in the timeline") && s.contains("Ctrl-D")
    })
}

/// The lines the timeline of `user` shows on entry (its last 20 entries).
fn backlog(sys: &System, user: u32) -> Result<Vec<String>> {
    let mut c = sys.client(user)?;
    c.run("TIMELINE", 2)?;
    std::thread::sleep(Duration::from_millis(800));
    let lines = c.drain();
    assert_eq!(c.finish(Duration::from_secs(10))?, 0);
    Ok(lines)
}

#[test]
fn a_post_arriving_while_a_line_is_half_typed_leaves_the_line_intact() -> Result<()> {
    let sys = System::start(Config::default())?;
    let mut author = sys.client(5)?;
    let mut tty = Tty::spawn(&sys, 2)?;
    wait_users(&mut author, &[2, 5])?;
    follow_then_timeline(&mut tty, &mut author)?;
    tty.keys("half typ")?;
    tty.wait_for("the typed text", |s| s.contains("Post> half typ"))?;

    author.run("TIMELINE", 2)?;
    author.send("news from five")?;
    tty.wait_for("the post of 5", |s| s.contains(") >> news from five"))?;
    // The entry is printed above the prompt, which is redrawn with the text typed so far
    // and the cursor after it.
    let rows = tty.rows();
    let entry = rows
        .iter()
        .position(|r| r.starts_with("5 (") && r.ends_with(") >> news from five"))
        .context("entry row")?;
    assert_eq!(
        rows[entry + 1],
        "Post> half typ",
        "screen:\n{}",
        rows.join("\n")
    );
    assert_eq!(tty.cursor(), ("Post> half typ".to_string(), 14));
    assert_eq!(tty.count("half typ"), 1, "the typed text is shown once");

    // Finishing the line posts all of it, shown once acknowledged.
    tty.keys("ed line\r")?;
    tty.wait_for("the own post", |s| {
        s.contains("2 (") && s.contains(") >> half typed line")
    })?;
    let shown = backlog(&sys, 2)?;
    assert_eq!(
        shown
            .iter()
            .filter(|l| l.starts_with("2 (") && l.ends_with(") >> half typed line"))
            .count(),
        1,
        "{shown:?}"
    );
    Ok(())
}

#[test]
fn up_arrow_recalls_the_previous_command() -> Result<()> {
    let sys = System::start(Config::default())?;
    let mut tty = Tty::spawn(&sys, 3)?;
    assert!(tty.rows().join("\n").contains("TINY SNS CLIENT"), "banner");
    tty.keys("LIST\r")?;
    tty.wait_for("a LIST reply", |s| s.contains("All users: "))?;
    tty.keys("\x1b[A")?;
    tty.wait_until("the recalled command", |tty| {
        tty.cursor() == ("Cmd> LIST".to_string(), 9)
    })?;
    tty.keys("\r")?;
    tty.wait_for("a second LIST reply", |s| {
        s.matches("All users: ").count() == 2
    })?;
    // Ctrl-D at the prompt leaves.
    tty.keys("\x04")?;
    assert_eq!(tty.exit_code(Duration::from_secs(5))?, 0);
    Ok(())
}

#[test]
fn ctrl_c_in_the_timeline_waits_for_an_unacknowledged_post_stored_once() -> Result<()> {
    // Heartbeats every 2 s: a stopped primary is not failed over for about 4 s, so its
    // acknowledgement is held for as long as it is stopped.
    let sys = System::start(Config {
        heartbeat_ms: 2000,
        ..Config::default()
    })?;
    let user = 4; // cluster 2
    let mut tty = Tty::spawn(&sys, user)?;
    tty.keys("TIMELINE\r")?;
    tty.wait_for("the timeline", |s| {
        s.contains("Now you are in the timeline")
    })?;
    sys.signal(2, Role::Primary, "STOP")?;
    struct Resume<'a>(&'a System);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            let _ = self.0.signal(2, Role::Primary, "CONT");
        }
    }
    let resume = Resume(&sys);
    tty.keys("held post\r")?;
    std::thread::sleep(Duration::from_millis(300));
    tty.keys("\x03")?;
    tty.wait_for("the wait", |s| {
        s.contains("Leaving: waiting up to 5 s for 1 unacknowledged post")
    })?;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        tty.running(),
        "the client waits while the post is unacknowledged"
    );
    drop(resume);
    tty.wait_for("the count", |s| s.contains("1 of 1 post stored"))?;
    assert_eq!(tty.exit_code(Duration::from_secs(10))?, 0);
    let shown = backlog(&sys, user)?;
    assert_eq!(
        shown
            .iter()
            .filter(|l| l.ends_with(") >> held post"))
            .count(),
        1,
        "{shown:?}"
    );
    Ok(())
}

#[test]
fn ctrl_c_while_reconnecting_leaves_within_five_seconds_and_leaks_no_keys() -> Result<()> {
    let mut sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    let mut tty = Tty::spawn_then(
        &sys,
        1,
        r#"read -t 1 -r rest; echo "the shell read <$rest>""#,
    )?;
    tty.keys("TIMELINE\r")?;
    tty.wait_for("the timeline", |s| {
        s.contains("Now you are in the timeline")
    })?;
    // No server left in the cluster: the client reconnects for --reconnect-secs (60 s).
    sys.kill(1, Role::Primary);
    sys.kill(1, Role::Secondary);
    tty.keys("typed while the server is gone\r")?;
    tty.wait_for("the reconnect notice", |s| s.contains("Reconnecting"))?;
    std::thread::sleep(Duration::from_millis(300));
    let pressed = Instant::now();
    tty.keys("\x03")?;
    tty.wait_for("the wait", |s| s.contains("Leaving: waiting up to 5 s"))?;
    // Typed while it waits for its post: none of it may reach the shell.
    tty.keys("ls\r")?;
    tty.wait_for("the shell after the client", |s| {
        s.contains("the shell read <")
    })?;
    let took = pressed.elapsed();
    let screen = tty.rows().join("\n");
    // Five seconds for the post, one for the shell's `read -t 1`.
    assert!(
        took < Duration::from_secs(7),
        "Ctrl-C took {took:?} to end the client:\n{screen}"
    );
    assert!(
        screen.contains("the shell read <>"),
        "keys typed reached the shell:\n{screen}"
    );
    assert!(
        screen.contains("1 of 1 post were not stored"),
        "it says the post was not stored:\n{screen}"
    );
    Ok(())
}

/// What user 1 tries to make user 2's terminal do.
const HOSTILE: [&str; 8] = [
    "\x1b[2J\x1b[H",
    "\x1b]0;pwned\x07",
    "\x1b[?1049h",
    "\x1b[31m",
    "AAAA\rBBB",
    "\u{9b}31m",
    "\u{202e}",
    "\r\x1b[2K\x1b[1A\x1b[2K3 (Wed Dec  2 10:00:00 2026) >> the meeting is CANCELLED",
];

/// The screen shows only text: the title was never set, the alternate screen never
/// entered, nothing coloured, and every timeline row begins with its real author.
fn only_text(tty: &mut Tty, authors: &[&str]) -> Result<()> {
    let rows = tty.rows();
    let screen = rows.join("\n");
    assert!(
        !tty.raw.windows(2).any(|w| w == b"\x1b]"),
        "no title or other OSC sequence:\n{screen}"
    );
    assert!(!tty.screen.screen().alternate_screen(), "{screen}");
    for r in 0..ROWS {
        for c in 0..COLS {
            let cell = tty.screen.screen().cell(r, c).context("a cell")?;
            assert!(
                cell.fgcolor() == vt100::Color::Default
                    && cell.bgcolor() == vt100::Color::Default
                    && !cell.inverse(),
                "coloured cell at {r},{c}:\n{screen}"
            );
        }
    }
    for row in rows.iter().filter(|r| r.contains(" >> ")) {
        assert!(
            authors.iter().any(|a| row.starts_with(&format!("{a} ("))),
            "a row that does not begin with its author: {row:?}\n{screen}"
        );
    }
    Ok(())
}

/// A post that would command a terminal is refused by the server and stored nowhere; a
/// cluster whose files already hold such posts (written by an older version, which kept
/// them raw) shows them escaped, and the follower's screen stays as it was.
#[test]
fn a_post_cannot_command_the_followers_terminal() -> Result<()> {
    let mut sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    let mut author = sys.client(1)?;
    let mut tty = Tty::spawn(&sys, 2)?;
    wait_users(&mut author, &[1, 2])?;
    follow_then_timeline(&mut tty, &mut author)?;
    enter_timeline(&mut author)?;
    author.send("before the attack")?;
    tty.wait_for("the first post", |s| s.contains(") >> before the attack"))?;

    for text in HOSTILE {
        author.send(text)?;
        author.expect_contains(
            "Post not stored: post holds the control character U+",
            Duration::from_secs(10),
        )?;
    }
    // Placeholders, each as long as an older version's line for one of them: the files
    // are given those lines below, offsets unchanged.
    let stored_raw = |t: &str| t.replace('\\', "\\\\").replace('\r', "\\r");
    let placeholder = |i: usize, t: &str| format!("old {i} {}", "z".repeat(stored_raw(t).len()));
    for (i, t) in HOSTILE.iter().enumerate() {
        author.send(&placeholder(i, t))?;
    }
    author.send("after the attack")?;
    tty.wait_for("the last post", |s| s.contains(") >> after the attack"))?;
    assert!(tty
        .rows()
        .iter()
        .any(|r| r.ends_with(") >> before the attack")));
    only_text(&mut tty, &["1", "2"])?;
    assert_eq!(
        author.finish(Duration::from_secs(10))?,
        1,
        "8 posts were refused"
    );
    tty.keys("\x04")?;
    tty.exit_code(Duration::from_secs(10))?;

    sys.shutdown();
    let mut files = 0;
    let mut dirs = vec![sys.dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "data") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            for t in ["pwned", "1049h", "CANCELLED", "BBB", "31m"] {
                assert!(!text.contains(t), "{t} stored in {}", path.display());
            }
            let mut old = text.clone();
            for (i, t) in HOSTILE.iter().enumerate() {
                old = old.replace(&placeholder(i, t), &format!("old {i} {}", stored_raw(t)));
            }
            if old != text {
                std::fs::write(&path, old)?;
                files += 1;
            }
        }
    }
    assert!(files >= 3, "journal, received feed, timeline file: {files}");
    sys.start_all()?;

    let mut tty = Tty::spawn(&sys, 2)?;
    tty.keys("TIMELINE\r")?;
    tty.wait_for("the backlog", |s| s.contains(") >> after the attack"))?;
    let rows = tty.rows();
    let screen = rows.join("\n");
    for want in [
        ") >> before the attack",
        r") >> old 0 \x1b[2J\x1b[H",
        r") >> old 1 \x1b]0;pwned\x07",
        r") >> old 2 \x1b[?1049h",
        r") >> old 3 \x1b[31m",
        r") >> old 4 AAAA\x0dBBB",
        r") >> old 5 \u{9b}31m",
        r") >> old 6 \u{202e}",
        r") >> old 7 \x0d\x1b[2K\x1b[1A\x1b[2K3 (Wed Dec  2 10:00:00 2026) >> the meeting is CANCELLED",
    ] {
        assert!(
            rows.iter()
                .any(|r| r.starts_with("1 (") && r.ends_with(want)),
            "no row ending {want:?}:\n{screen}"
        );
    }
    only_text(&mut tty, &["1"])?;
    Ok(())
}
