//! What a person meets when something is not as it should be: a client started while
//! its server is down (not yet failed over) gets in, usage mistakes end with an error
//! that says what to do, and a piped session ends its output with a newline.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tsn_tests::*;

/// Runs `cmd` with `input` on stdin; (exit code, stdout, stderr), or an error after
/// `timeout` (the process is killed then).
fn run(mut cmd: Command, input: &str, timeout: Duration) -> anyhow::Result<(i32, String, String)> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let code = status.code().unwrap_or(-1);
    Ok((code, out_reader.join().unwrap(), err_reader.join().unwrap()))
}

fn client(sys: &System, user: u32) -> Command {
    let mut cmd = Command::new(bin("tsn_client"));
    cmd.args(["-c", &sys.coord, "-p", "0", "-i", &user.to_string()])
        .arg("--cert-dir")
        .arg(sys.certs());
    cmd
}

fn status(sys: &System, coord: &str) -> Command {
    let mut cmd = Command::new(bin("tsn_status"));
    cmd.args(["-c", coord]).arg("--cert-dir").arg(sys.certs());
    cmd
}

#[test]
fn a_client_started_while_its_server_is_down_gets_in_and_posts() -> anyhow::Result<()> {
    // 2 s beats: the coordinator keeps naming the killed server for 4-6 s.
    let mut sys = System::start(Config {
        clusters: 1,
        heartbeat_ms: 2_000,
        ..Config::default()
    })?;
    let secondary = sys.addr(1, Role::Secondary)?;
    let author = sys.client(1)?;
    let mut reader = sys.client(2)?;
    wait_users(&mut reader, &[1, 2])?;
    assert_eq!(author.finish(Duration::from_secs(10))?, 0);
    assert_eq!(
        reader.run("FOLLOW 1", 1)?,
        ["Command completed successfully"]
    );
    enter_timeline(&mut reader)?;
    sys.kill(1, Role::Primary);
    // Started at once: the coordinator still names the killed primary.
    let (code, out, err) = run(
        client(&sys, 1),
        "TIMELINE\nposted after the kill\n",
        Duration::from_secs(60),
    )?;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        !out.contains("connection failed"),
        "it gave up at start:\n{out}"
    );
    assert!(err.contains("Reconnecting"), "it said what it did:\n{err}");
    assert!(
        out.contains("Now you are in the timeline"),
        "stdout:\n{out}"
    );
    reader.expect_contains(">> posted after the kill", Duration::from_secs(15))?;
    assert_eq!(sys.serving(1)?, secondary);
    Ok(())
}

#[test]
fn tsn_status_says_what_is_wrong_in_the_clients_words() -> anyhow::Result<()> {
    let sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    // Nothing listening there.
    let (code, _, err) = run(status(&sys, "127.0.0.1:1"), "", Duration::from_secs(30))?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no TSN coordinator answers at 127.0.0.1:1"),
        "{err}"
    );
    let (_, _, client_err) = run(
        {
            let mut c = Command::new(bin("tsn_client"));
            c.args(["-c", "127.0.0.1:1", "-p", "0", "-i", "1"])
                .arg("--cert-dir")
                .arg(sys.certs());
            c
        },
        "",
        Duration::from_secs(30),
    )?;
    assert!(
        client_err.contains("no TSN coordinator answers at 127.0.0.1:1"),
        "the client says the same: {client_err}"
    );
    // A server's port where the coordinator's is wanted.
    let server = sys.addr(1, Role::Primary)?;
    let (code, _, err) = run(status(&sys, &server), "", Duration::from_secs(30))?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{server} is not a TSN coordinator")),
        "{err}"
    );
    assert!(
        !err.contains("stream reset by peer: error 1: stream reset"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_cluster_id_beyond_the_coordinators_exits_2_with_one_line() -> anyhow::Result<()> {
    let sys = System::start(Config {
        clusters: 2,
        ..Config::default()
    })?;
    let store = tempfile::tempdir()?;
    let mut cmd = Command::new(bin("tsn_server"));
    cmd.args(["-c", &sys.coord, "-p", "0", "-i", "5", "-t", "primary"])
        .arg("--cert-dir")
        .arg(sys.certs())
        .arg("--datastore")
        .arg(store.path())
        .env("RUST_LOG", "warn");
    let (code, _, err) = run(cmd, "", Duration::from_secs(30))?;
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("cluster 5 does not exist") && lines[0].contains("1..=2"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_node_with_another_ca_says_what_to_copy() -> anyhow::Result<()> {
    let sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    let certs = tempfile::tempdir()?;
    let store = tempfile::tempdir()?;
    let log = sys.dir.path().join("logs/foreign.log");
    let args = server_args(
        &sys.coord,
        1,
        "secondary",
        &certs.path().join("certs"),
        store.path(),
    );
    let mut node = Proc::spawn_in(&[], "tsn_server", &args, &log)?;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("the remedy in the log", Duration::from_secs(20), || {
        Ok(read().contains("copy the system's ca.pem"))
    })?;
    let text = read();
    let created = text
        .lines()
        .find(|l| l.contains("created a NEW cluster CA"))
        .unwrap_or_else(|| panic!("no word of the new CA:\n{text}"));
    assert!(created.contains("fingerprint="), "{created}");
    node.kill9();
    Ok(())
}

#[test]
fn a_piped_session_ends_with_a_newline() -> anyhow::Result<()> {
    let sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    for input in ["", "\n", "LIST\n", "TIMELINE\n", "TIMELINE\nx\n"] {
        let (code, out, err) = run(client(&sys, 1), input, Duration::from_secs(30))?;
        assert_eq!(code, 0, "{input:?}: {err}");
        assert!(out.ends_with('\n'), "{input:?}: {out:?}");
    }
    Ok(())
}

#[test]
fn sigterm_while_a_starting_client_reconnects_leaves_at_once_and_says_nothing_was_sent(
) -> anyhow::Result<()> {
    // The default heartbeat: the coordinator names the killed primary for 20 s or more.
    let mut sys = System::start(Config {
        clusters: 1,
        heartbeat_ms: 10_000,
        ..Config::default()
    })?;
    sys.kill(1, Role::Primary);
    let err_path = sys.dir.path().join("logs/starting-client.log");
    let mut child = client(&sys, 1)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "TIMELINE\nnever sent")?;
    eventually("the client reconnecting", Duration::from_secs(30), || {
        Ok(std::fs::read_to_string(&err_path)?.contains("Reconnecting"))
    })?;
    signal_pid(child.id(), "TERM")?;
    let sent = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait()? {
            break s.code();
        }
        if sent.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("still running 15 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let err = std::fs::read_to_string(&err_path)?;
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:?}: {err}"
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nothing was sent"), "{err}");
    Ok(())
}
