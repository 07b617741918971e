//! A second process started for a role that a live process holds (same CA, same cluster,
//! same role) is refused by the coordinator, and both say so loudly; it serves nothing
//! and mirrors nothing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

#[test]
fn a_second_primary_is_refused_and_logged_on_both_sides() -> anyhow::Result<()> {
    let sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    let primary = sys.addr(1, Role::Primary)?;
    let dir = sys.dir.path().join("host-impostor");
    let log = sys.dir.path().join("logs/impostor.log");
    let mut args = server_args(&sys.coord, 1, "primary", &sys.certs(), &dir);
    args.extend(["--heartbeat-ms", "200", "--bind", "127.0.0.1"].map(String::from));
    let mut impostor = Proc::spawn_in(&[], "tsn_server", &args, &log)?;
    eventually("the impostor is told", Duration::from_secs(10), || {
        Ok(std::fs::read_to_string(&log)?.contains("registration refused, not serving"))
    })?;
    let coord_log =
        || std::fs::read_to_string(sys.dir.path().join("logs/coordinator.log")).unwrap_or_default();
    eventually("the coordinator says so", Duration::from_secs(5), || {
        Ok(coord_log().contains("refused a second process for a live role"))
    })?;
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.contains(&format!("held by a live process at {primary}")),
        "{text}"
    );
    // Still the real primary, at the first epoch; the impostor never became active and
    // never mirrored to the secondary.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sys.serving(1)?, primary);
    assert!(!text.contains("active server of its cluster"), "{text}");
    assert!(!text.contains("mirroring to the standby"), "{text}");
    assert_eq!(coord_log().matches("active server is now").count(), 1);
    assert!(impostor.running());
    impostor.stop();
    Ok(())
}
