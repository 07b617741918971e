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
}

impl Tty {
    fn spawn(sys: &System, user: u32) -> Result<Tty> {
        let mut cmd = std::process::Command::new(bin("tsn_client"));
        cmd.args(["-c", &sys.coord, "-p", "0", "-i", &user.to_string()])
            .arg("--cert-dir")
            .arg(sys.certs())
            .env("TERM", "xterm");
        let mut session = expectrl::Session::spawn(cmd).context("starting tsn_client on a pty")?;
        session.get_process_mut().set_window_size(COLS, ROWS)?;
        let mut tty = Tty {
            session,
            screen: vt100::Parser::new(
                ROWS.try_into().context("rows")?,
                COLS.try_into().context("columns")?,
                0,
            ),
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
                Ok(n) => self.screen.process(&buf[..n]),
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
    tty.keys("FOLLOW 5\r")?;
    tty.wait_for("the follow", |s| {
        s.contains("Command completed successfully")
    })?;
    eventually("5 knows its follower", Duration::from_secs(10), || {
        Ok(list(&mut author)?.1 == "Followers: 2, ")
    })?;
    tty.keys("TIMELINE\r")?;
    tty.wait_for("the timeline", |s| {
        s.contains("Now you are in the timeline") && s.contains("Ctrl-D")
    })?;
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
