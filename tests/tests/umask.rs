//! Directories the binaries create for certificates, keys and data are 0700 whatever the
//! umask: run here under umask 000 (this test binary holds this one test, as the umask
//! belongs to the whole process and every process it starts).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tsn_tests::*;

#[test]
fn every_directory_created_is_private_under_umask_000() -> anyhow::Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    // A new --key-dir, two levels deep.
    let keys = sys.dir.path().join("keys/user-1");
    let prefix = ["env".to_string(), format!("TSN_KEY_DIR={}", keys.display())];
    let log = sys.dir.path().join("logs/client-1.log");
    let mut c = Client::spawn_in(&prefix, &sys.coord, 1, &sys.certs(), &log)?;
    assert_eq!(c.run("LIST", 3)?[0], "Command completed successfully");
    assert_eq!(c.finish(Duration::from_secs(10))?, 0);
    assert!(keys.join("user-1.key").exists());

    // Everything under the run directory but the harness's own log directory.
    let mut checked = 0;
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(sys.dir.path())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.ends_with("logs"))
        .collect();
    while let Some(d) = dirs.pop() {
        let mode = std::fs::metadata(&d)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
        checked += 1;
        for e in std::fs::read_dir(&d)?.flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    // certs, keys, keys/user-1, and each node's datastore down to local_clients/<id>.
    assert!(checked >= 15, "{checked} directories");
    Ok(())
}
