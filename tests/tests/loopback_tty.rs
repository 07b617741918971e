//! `tests/loopback.sh up` in a real terminal: one Ctrl-C (the byte a terminal sends,
//! turned into SIGINT for the foreground process group by the pseudo-terminal) stops
//! every process it started and returns the shell, and a clean stop of the whole system
//! logs no warning in any process's log.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tsn_tests::*;

#[test]
fn one_ctrl_c_stops_everything() -> anyhow::Result<()> {
    let sleepers = || {
        std::process::Command::new("pgrep")
            .args(["-f", "^sleep 3600$"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
            .unwrap_or(0)
    };
    let sleepers_before = sleepers();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("loopback.sh");
    let run = tempfile::Builder::new().prefix("tsn-lbtty-").tempdir()?;
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script)
        .arg("up")
        .env("BIN_DIR", bin_dir())
        .env("RUN_DIR", run.path())
        .env("HEARTBEAT_MS", "200");
    let mut session = expectrl::Session::spawn(cmd)?;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !seen.contains("Press Ctrl-C") && Instant::now() < deadline {
        match session.try_read(&mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert!(
        seen.contains("Press Ctrl-C"),
        "the system did not come up:\n{seen}"
    );
    let pids = std::fs::read_to_string(run.path().join("pids"))?;
    // Three coordinators (the default group) and three clusters of three.
    assert_eq!(pids.lines().count(), 12, "{pids}");
    assert!(seen.contains("pids"), "it says where the PIDs are");

    session.write_all(&[3])?; // Ctrl-C
    session.flush()?;
    let stopped = Instant::now();
    while session.get_process().is_alive().unwrap_or(false)
        && stopped.elapsed() < Duration::from_secs(20)
    {
        let _ = session
            .try_read(&mut buf)
            .map(|n| seen.push_str(&String::from_utf8_lossy(&buf[..n])));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !session.get_process().is_alive().unwrap_or(false),
        "the script still runs after one Ctrl-C:\n{seen}"
    );
    let _ = session.read_to_string(&mut seen);
    // Nothing it started is left: not a node, not its sleeper.
    for line in pids.lines() {
        let pid = line.split_whitespace().nth(1).unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {line} is left"
        );
    }
    assert!(sleepers() <= sleepers_before, "its `sleep 3600` is left");
    let left = std::process::Command::new("pgrep")
        .args(["-f", &run.path().display().to_string()])
        .output()?;
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    // Every process saw the others go: that is a clean stop, not a warning.
    for entry in std::fs::read_dir(run.path().join("logs"))? {
        let path = entry?.path();
        let log = std::fs::read_to_string(&path)?;
        let warned: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        assert!(
            warned.is_empty(),
            "{} logged warnings during a clean start and stop:\n{}",
            path.display(),
            warned.join("\n")
        );
    }
    Ok(())
}
