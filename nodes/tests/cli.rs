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
    let cases: [(&str, &[&str]); 5] = [
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
        (env!("CARGO_BIN_EXE_tsn_status"), &["-c", "--cert-dir"]),
    ];
    for (bin, flags) in cases {
        let (code, out, _) = run(bin, &["--help"]);
        assert_eq!(code, 0, "{bin} --help");
        for f in flags {
            assert!(out.contains(f), "{bin} --help lacks {f}:\n{out}");
        }
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
