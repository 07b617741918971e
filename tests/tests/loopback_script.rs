//! Runs `tests/loopback.sh test` against the binaries this `cargo test` built, so the
//! script a newcomer runs is itself under test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn loopback_script_test_mode_passes() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("loopback.sh");
    let run = tempfile::Builder::new()
        .prefix("tsn-loopback-")
        .tempdir()
        .expect("temp dir");
    let out = Command::new("bash")
        .arg(&script)
        .arg("test")
        .env("BIN_DIR", tsn_tests::bin_dir())
        .env("RUN_DIR", run.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loopback.sh test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}
