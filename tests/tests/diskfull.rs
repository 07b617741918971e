//! A full disk under a server: the client gets a clear error, the log says what failed,
//! nothing acknowledged is lost and no file is left corrupt. The server's directory is a
//! 256 KiB tmpfs, so this needs root; `.ci/run` runs it where it can:
//! `cargo test -p tsn-tests --test diskfull -- --ignored`.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use tsn_tests::*;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: the mount goes as soon as no process uses it, even if one still does now.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[ignore = "needs root to mount a small tmpfs; run with --ignored"]
fn full_disk_gives_a_clear_error_and_corrupts_nothing() -> anyhow::Result<()> {
    let mut sys = System::coordinator_only(Config {
        clusters: 1,
        heartbeat_ms: 200,
        period_ms: 50,
        ..Config::default()
    })?;
    let dir = sys.role_dir(1, Role::Primary);
    std::fs::create_dir_all(&dir)?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&dir)
        .status()?;
    if !ok.success() {
        eprintln!("SKIPPED: cannot mount a tmpfs here; run as root");
        return Ok(());
    }
    let _mount = Mount(dir.clone());
    sys.start_node(1, Role::Primary)?;
    sys.wait_ready(Duration::from_secs(20))?;

    let mut c = sys.client(3)?;
    assert_eq!(
        c.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    // 2,000 posts of 200 bytes cannot fit in 256 KiB (journal plus views).
    let text = "x".repeat(190);
    for k in 0..2000 {
        c.send(&format!("{k:05} {text}"))?;
    }
    c.expect_contains(
        "Post not stored: server could not store the change",
        Duration::from_secs(60),
    )?;
    let log = std::fs::read_to_string(sys.dir.path().join("logs/primary-1.log"))?;
    assert!(
        log.contains("journal write failed"),
        "the server log says what failed"
    );
    let code = c.finish(Duration::from_secs(60))?;
    assert_eq!(
        code, 1,
        "refused posts are reported, not left pending, and the exit status says so"
    );

    // Every record in the journal is whole, and the server restarts on it.
    let journal = dir.join("journal.data");
    let records = tsn_datastore::read_records(&journal)?;
    assert!(!records.is_empty());
    assert!(
        std::fs::read(&journal)?.ends_with(b"\n"),
        "no partial record left behind"
    );
    sys.kill(1, Role::Primary);
    sys.start_node(1, Role::Primary)?;
    sys.wait_ready(Duration::from_secs(20))?;
    Ok(())
}
