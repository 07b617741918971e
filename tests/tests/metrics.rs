//! What an operator sees: `/metrics` in the Prometheus text format (counts that follow
//! the traffic), `/health`, and `/ready`, which says no until the node has registered.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

/// The metrics address a node logged.
fn metrics_addr(sys: &System, cluster: u32, role: Role) -> anyhow::Result<String> {
    let mut found = None;
    eventually(
        "the metrics address in the log",
        Duration::from_secs(10),
        || {
            found = sys
                .read_log(cluster, role)
                .lines()
                .filter(|l| l.contains("metrics listening"))
                .filter_map(|l| l.split("addr=").nth(1))
                .map(|a| a.trim().to_string())
                .next_back();
            Ok(found.is_some())
        },
    )?;
    Ok(found.unwrap())
}

/// The value of a sample line `name{labels} value` (`name value` without labels).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with([' ', '{'])
                || l.starts_with(&format!("{name} "))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn ready_follows_registration_and_metrics_follow_the_posts() -> anyhow::Result<()> {
    let mut sys = System::coordinator_only(Config {
        clusters: 1,
        ..Config::default()
    })?;
    let port = sys.coord_port();
    sys.kill_coordinator();
    let flag = ["--metrics-addr".to_string(), "127.0.0.1:0".to_string()];
    sys.start_node_with(1, Role::Primary, &flag)?;
    let addr = metrics_addr(&sys, 1, Role::Primary)?;
    assert_eq!(http_get(&addr, "/health")?.0, 200);
    let (code, body) = http_get(&addr, "/ready")?;
    assert_eq!(code, 503, "not ready before registering: {body}");
    assert!(body.contains("not registered"), "{body}");

    sys.start_coordinator(Some(port))?;
    eventually("ready once registered", Duration::from_secs(10), || {
        Ok(http_get(&addr, "/ready")?.0 == 200)
    })?;
    sys.start_node_with(1, Role::Secondary, &flag)?;
    sys.start_node(1, Role::Sync)?;
    sys.wait_ready(Duration::from_secs(30))?;
    // Count on the server that serves.
    let addr = if sys.serving(1)? == sys.addr(1, Role::Primary)? {
        addr
    } else {
        metrics_addr(&sys, 1, Role::Secondary)?
    };

    let (_, before) = http_get(&addr, "/metrics")?;
    let posts_before = sample(&before, "tsn_changes_acknowledged_total{kind=\"post\"}");
    let mut c = sys.client(1)?;
    assert_eq!(
        c.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    const N: usize = 25;
    for k in 0..N {
        c.send(&format!("counted {k}"))?;
    }
    assert_eq!(c.finish(Duration::from_secs(20))?, 0);
    let (code, text) = http_get(&addr, "/metrics")?;
    assert_eq!(code, 200);
    let posts = sample(&text, "tsn_changes_acknowledged_total{kind=\"post\"}");
    assert_eq!(posts - posts_before, N as f64, "{text}");
    assert!(
        sample(&text, "tsn_ack_latency_seconds_count") >= N as f64,
        "{text}"
    );
    assert!(sample(&text, "tsn_journal_bytes") > 0.0, "{text}");
    assert_eq!(sample(&text, "tsn_active"), 1.0, "{text}");
    for name in [
        "tsn_mirror_lag_batches",
        "tsn_delivery_latency_seconds",
        "tsn_timeline_streams",
        "tsn_connections",
        "tsn_heartbeats_missed_total",
        "tsn_failovers_total",
        "tsn_epoch",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert_eq!(http_get(&addr, "/nope")?.0, 404);
    Ok(())
}

/// Admission under overload, forced: the sync services pass changes on every 100 ms
/// (`--delivery period`), so posts come back to their server up to 100 ms late, over a
/// limit of 1 ms (`--admit-lag-ms 1`). Posts sent every 20 ms are held back by the
/// author's server while earlier ones are out (its log and `/metrics` say so), and every
/// post is still acknowledged and delivered once, in order, within the author's cluster
/// and in another.
#[test]
fn posts_wait_while_delivery_is_behind_and_none_is_lost() -> anyhow::Result<()> {
    const POSTS: usize = 40;
    let sys = System::start(Config {
        period_ms: 100,
        server_args: vec![
            "--admit-lag-ms".into(),
            "1".into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ],
        sync_args: vec!["--delivery".into(), "period".into()],
        ..Config::default()
    })?;
    let mut other = sys.client(1)?; // cluster 2
    let mut author = sys.client(2)?; // cluster 3
    let mut same = sys.client(5)?; // cluster 3
    for c in [&mut other, &mut same] {
        eventually("the author known", Duration::from_secs(20), || {
            Ok(c.run("FOLLOW 2", 1)? == ["Command completed successfully"])
        })?;
    }
    for c in [&mut other, &mut same, &mut author] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
    }
    let want: Vec<String> = (0..POSTS).map(|k| format!("held {k:02}")).collect();
    for line in &want {
        author.send(line)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in [&mut other, &mut same] {
        c.expect_all(&want, Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_millis(300));
        c.drain();
        let texts: Vec<String> = c
            .seen
            .iter()
            .filter(|l| l.contains(">> held "))
            .map(|l| l.rsplit(">> ").next().unwrap().to_string())
            .collect();
        assert_eq!(texts, want, "every post once, in the order it was made");
    }
    // Every post acknowledged: the client leaves with nothing unsent.
    assert_eq!(author.finish(Duration::from_secs(30))?, 0);

    let role = sys.active_server(3)?;
    let (_, text) = http_get(&metrics_addr(&sys, 3, role)?, "/metrics")?;
    assert!(
        sample(&text, "tsn_admission_pauses_total") > 0.0,
        "no post was held back:\n{text}"
    );
    assert!(sample(&text, "tsn_delivery_lag_seconds") > 0.0, "{text}");
    assert!(
        sys.read_log(3, role).contains("delivery is behind"),
        "the server's log says why posts wait"
    );
    for c in [other, same] {
        assert_eq!(c.finish(Duration::from_secs(10))?, 0);
    }
    Ok(())
}
