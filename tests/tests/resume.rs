//! A reopened timeline continues from a position that cannot skip anything: entries are
//! numbered in the order the cluster's sync service delivered them, the same on both
//! servers, and a client reopening its timeline gets every entry after the last one it
//! had, however many, whatever their timestamps.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::timeout;
use tsn_protocol::client::{ClientReply, ClientRequest, TimelineDown, TimelinePos};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_tests::*;

/// Opens user 1's timeline; returns the position it starts from and the entries that
/// arrive within a second.
async fn open(
    ep: &quinn::Endpoint,
    coord: &str,
    keys: &std::path::Path,
    since: Option<TimelinePos>,
) -> (TimelinePos, Vec<(u64, String)>) {
    let c: SocketAddr = coord.parse().unwrap();
    let conn = ep
        .connect(c, tsn_certs::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let CoordReply::Assigned { addr, .. } = call(&conn, &CoordRequest::AssignClient { client: 1 })
        .await
        .unwrap()
    else {
        panic!()
    };
    let server = ep
        .connect(addr.parse().unwrap(), tsn_certs::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    login(&server, 1, keys).await.unwrap();
    let (mut send, mut recv) = server.open_bi().await.unwrap();
    tsn_protocol::write_msg(&mut send, &ClientRequest::Timeline { user: 1, since })
        .await
        .unwrap();
    let first: ClientReply = tsn_protocol::read_msg(&mut recv).await.unwrap().unwrap();
    assert_eq!(first, ClientReply::Ok);
    let Some(TimelineDown::Position(pos)) = tsn_protocol::read_msg(&mut recv).await.unwrap() else {
        panic!("a session starts with its position")
    };
    let mut entries = Vec::new();
    while let Ok(Ok(Some(TimelineDown::Entry { post, seq }))) =
        timeout(Duration::from_secs(1), tsn_protocol::read_msg(&mut recv)).await
    {
        entries.push((seq, post.text));
    }
    server.close(0u32.into(), b"");
    (pos, entries)
}

fn enter(c: &mut Client) -> anyhow::Result<()> {
    assert_eq!(
        c.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    Ok(())
}

#[test]
fn reopening_from_a_position_returns_everything_after_it() -> anyhow::Result<()> {
    let sys = System::start(Config::default())?;
    let mut reader = sys.client(1)?; // cluster 2
    let mut author = sys.client(2)?; // cluster 3
    wait_users(&mut reader, &[1, 2])?;
    assert_eq!(
        reader.run("FOLLOW 2", 1)?,
        ["Command completed successfully"]
    );
    reader.finish(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(300));
    enter(&mut author)?;
    for k in 0..30 {
        author.send(&format!("while away {k}"))?;
    }
    assert_eq!(author.finish(Duration::from_secs(20))?, 0);
    eventually("all delivered", Duration::from_secs(10), || {
        Ok(sys
            .read(2, Role::Sync, "local_clients/1/timeline.data")
            .lines()
            .count()
            == 30)
    })?;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let root = tsn_certs::TrustRoot::load(&sys.certs()).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(
            root.client_config(std::sync::Arc::new(quinn::TransportConfig::default()))
                .unwrap(),
        );
        let (pos, fresh) = open(&ep, &sys.coord, &sys.certs(), None).await;
        assert_eq!(fresh.len(), 20, "a first entry shows the last 20");
        assert_eq!(fresh[0], (11, "while away 10".to_string()));
        assert_eq!(pos.seq, 10, "the entries follow entry 10");
        assert_ne!(pos.log, 0);
        let (_, all) = open(
            &ep,
            &sys.coord,
            &sys.certs(),
            Some(TimelinePos { seq: 0, ..pos }),
        )
        .await;
        let want: Vec<(u64, String)> = (0..30)
            .map(|k| (k + 1, format!("while away {k}")))
            .collect();
        assert_eq!(all, want, "from the start: everything, in order, each once");
        let (_, rest) = open(
            &ep,
            &sys.coord,
            &sys.certs(),
            Some(TimelinePos { seq: 25, ..pos }),
        )
        .await;
        assert_eq!(rest, want[25..].to_vec());
    });
    Ok(())
}

/// A post that reaches a follower late, with an older timestamp than one already shown,
/// is still shown after the follower reconnects.
#[test]
fn a_late_post_with_an_older_timestamp_is_shown_after_a_reconnect() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default())?;
    let mut reader = sys.client(2)?; // cluster 3
    let mut one = sys.client(1)?; // cluster 2
    let mut three = sys.client(3)?; // cluster 1
    wait_users(&mut reader, &[1, 2, 3])?;
    assert_eq!(
        reader.run("FOLLOW 1", 1)?,
        ["Command completed successfully"]
    );
    assert_eq!(
        reader.run("FOLLOW 3", 1)?,
        ["Command completed successfully"]
    );
    std::thread::sleep(Duration::from_millis(500));
    enter(&mut reader)?;
    enter(&mut one)?;
    enter(&mut three)?;

    // Cluster 1's sync service pauses: user 3's post waits there.
    sys.signal(1, Role::Sync, "STOP")?;
    three.send("A: written first, delivered late")?;
    std::thread::sleep(Duration::from_millis(300));
    one.send("B: written second, shown first")?;
    reader.expect_contains(">> B: written second, shown first", Duration::from_secs(10))?;

    // The reader cannot read; its server goes; the late post reaches the other server.
    let reader_pid = reader.pid();
    signal_pid(reader_pid, "STOP")?;
    sys.kill(3, Role::Primary);
    sys.signal(1, Role::Sync, "CONT")?;
    eventually(
        "A delivered to the other server",
        Duration::from_secs(20),
        || {
            Ok(sys
                .read(3, Role::Secondary, "local_clients/2/timeline.data")
                .contains("A: written first"))
        },
    )?;
    signal_pid(reader_pid, "CONT")?;
    reader.expect_contains(
        ">> A: written first, delivered late",
        Duration::from_secs(30),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    reader.drain();
    for text in ["A: written first", "B: written second"] {
        assert_eq!(
            reader.seen.iter().filter(|l| l.contains(text)).count(),
            1,
            "{text}: {:?}",
            reader.seen
        );
    }
    Ok(())
}

/// A follower that cannot read while thousands of posts arrive (its session is closed
/// for falling behind) shows every one of them once.
#[test]
fn a_follower_that_fell_far_behind_shows_every_post_once() -> anyhow::Result<()> {
    const N: usize = 3000;
    let sys = System::start(Config::default())?;
    let mut reader = sys.client(1)?; // cluster 2
    let mut author = sys.client(2)?; // cluster 3
    wait_users(&mut reader, &[1, 2])?;
    assert_eq!(
        reader.run("FOLLOW 2", 1)?,
        ["Command completed successfully"]
    );
    std::thread::sleep(Duration::from_millis(500));
    enter(&mut reader)?;
    enter(&mut author)?;
    signal_pid(reader.pid(), "STOP")?;
    for k in 0..N {
        author.send(&format!("flood {k}"))?;
    }
    assert_eq!(author.finish(Duration::from_secs(120))?, 0);
    eventually("all delivered", Duration::from_secs(60), || {
        Ok(sys
            .read(2, Role::Primary, "local_clients/1/timeline.data")
            .lines()
            .count()
            >= N)
    })?;
    signal_pid(reader.pid(), "CONT")?;
    let want: Vec<String> = (0..N).map(|k| format!(">> flood {k}")).collect();
    reader.expect_all(&want, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    reader.drain();
    let shown = reader
        .seen
        .iter()
        .filter(|l| l.contains(">> flood "))
        .count();
    assert_eq!(shown, N, "each post once");
    Ok(())
}
