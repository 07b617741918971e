//! Every binary explains itself with --help and refuses bad flags with a clear error.
//! (Running these tests also makes cargo build the binaries for the end-to-end suite.)

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_original_flags() {
    let cases: [(&str, &[&str]); 6] = [
        (
            env!("CARGO_BIN_EXE_tsn_coordinator"),
            &[
                "-p",
                "--clear",
                "--clusters",
                "--heartbeat-ms",
                "--cert-dir",
                "--datastore",
            ],
        ),
        (
            env!("CARGO_BIN_EXE_tsn_server"),
            &[
                "-c",
                "-p",
                "-i",
                "-t",
                "--advertise",
                "--cert-dir",
                "--datastore",
            ],
        ),
        (
            env!("CARGO_BIN_EXE_tsn_sync_service"),
            &["-c", "-s", "-p", "-q", "--cert-dir", "--datastore"],
        ),
        (
            env!("CARGO_BIN_EXE_tsn_client"),
            &["-c", "-p", "-i", "--cert-dir"],
        ),
        (
            env!("CARGO_BIN_EXE_tsn_status"),
            &["-c", "--cert-dir", "--json"],
        ),
        (
            env!("CARGO_BIN_EXE_tsn_admin"),
            &["-c", "--cert-dir", "reset-key"],
        ),
    ];
    let mut first_lines = std::collections::HashSet::new();
    for (bin, flags) in cases {
        let (code, out, _) = run(bin, &["--help"]);
        assert_eq!(code, 0, "{bin} --help");
        for f in flags {
            assert!(out.contains(f), "{bin} --help lacks {f}:\n{out}");
        }
        let first = out.lines().next().unwrap_or_default().to_string();
        assert!(
            first_lines.insert(first.clone()),
            "{bin} --help starts like another binary's: {first}"
        );
    }
}

#[test]
fn bad_flags_are_refused_clearly() {
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_tsn_server"),
        &["-c", "127.0.0.1:1", "-p", "0", "-i", "1", "-t", "tertiary"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("tertiary"), "{err}");
    let (code, _, _) = run(
        env!("CARGO_BIN_EXE_tsn_server"),
        &[
            "-c",
            "127.0.0.1:1",
            "-p",
            "0",
            "-i",
            "1",
            "-t",
            "master",
            "--help",
        ],
    );
    assert_eq!(code, 0, "master is accepted for -t");
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_tsn_client"),
        &["-c", "nohostport", "-i", "1"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("host>:<port"), "{err}");
}

#[test]
fn flags_come_from_the_environment_and_logs_can_be_json() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tsn_coordinator"))
        .env("TSN_PORT", "0")
        .env("TSN_BIND", "127.0.0.1")
        .env("TSN_CERT_DIR", dir.path().join("certs"))
        .env("TSN_DATASTORE", dir.path().join("ds"))
        .env("TSN_READY_FILE", &ready)
        .env("TSN_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ready.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready.exists(),
        "the coordinator started from environment variables alone"
    );
    let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    let (_, help, _) = run(env!("CARGO_BIN_EXE_tsn_server"), &["--help"]);
    assert!(help.contains("[env: TSN_COORDINATOR="), "{help}");
    assert!(help.contains("--log-format"), "{help}");
}

#[test]
fn client_without_arguments_prints_the_original_calling_convention() {
    let (code, out, _) = run(env!("CARGO_BIN_EXE_tsn_client"), &[]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(
            "Calling convention for client:\n\n\
             ./tsn_client -c <coordIP>:<coordPort> -p <clientPort> -i <clientID>\n"
        ),
        "{out}"
    );
}
