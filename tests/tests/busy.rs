//! A busy server is not a dead one: 300 timeline sessions of one user while posts pour
//! in, with 200 ms heartbeats, and the coordinator never fails the cluster over.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tsn_protocol::client::{ClientReply, ClientRequest, TimelineDown, TimelineUp};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_tests::*;

const SESSIONS: usize = 300;
const POSTS: u64 = 3000;

fn endpoint(sys: &System) -> quinn::Endpoint {
    let root = tsn_certs::TrustRoot::load(&sys.certs()).unwrap();
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10)).unwrap(),
    ));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(root.client_config(Arc::new(t)).unwrap());
    ep
}

async fn dial(ep: &quinn::Endpoint, addr: &str) -> anyhow::Result<quinn::Connection> {
    let sock: SocketAddr = addr.parse()?;
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect(sock, tsn_certs::SERVER_NAME)?,
    )
    .await
    .map_err(|_| anyhow::anyhow!("dialling {addr}: no connection within 5 s"))??)
}

/// Opens a timeline session of `user` on its own connection.
async fn session(
    ep: &quinn::Endpoint,
    addr: &str,
    user: u32,
    certs: &std::path::Path,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
    let conn = dial(ep, addr).await?;
    login(&conn, user, certs).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    tsn_protocol::write_msg(&mut send, &ClientRequest::Timeline { user, since: None }).await?;
    let r = tsn_protocol::read_msg::<ClientReply, _>(&mut recv).await?;
    anyhow::ensure!(r == Some(ClientReply::Ok), "timeline: {r:?}");
    Ok((conn, send, recv))
}

async fn epoch(ep: &quinn::Endpoint, coord: &str) -> anyhow::Result<u64> {
    let conn = dial(ep, coord).await?;
    let CoordReply::Status(t) = call(&conn, &CoordRequest::Status).await? else {
        anyhow::bail!("no routing tables")
    };
    conn.close(0u32.into(), b"");
    Ok(t.entries.iter().map(|e| e.epoch).max().unwrap_or(0))
}

#[test]
fn three_hundred_sessions_of_one_user_do_not_cause_a_failover() -> anyhow::Result<()> {
    let sys = System::start(Config {
        clusters: 1,
        heartbeat_ms: 200,
        ..Config::default()
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Three sockets, as three kinds of client would have: the 300 sessions' flood of
    // entries must not crowd out the poster's acknowledgements or the coordinator's
    // answers in one socket's receive buffer.
    let (ep, poster_ep, coord_ep) = {
        let _g = rt.enter();
        (endpoint(&sys), endpoint(&sys), endpoint(&sys))
    };
    let addr = sys.serving(1)?;
    let coord = sys.coord.clone();
    let certs = sys.certs();
    rt.block_on(async {
        assert_eq!(epoch(&coord_ep, &coord).await?, 1);
        let received = Arc::new(AtomicUsize::new(0));
        let mut conns = Vec::new();
        for _ in 0..SESSIONS {
            let (conn, send, mut recv) = session(&ep, &addr, 1, &certs).await?;
            let received = received.clone();
            tokio::spawn(async move {
                let _send = send;
                while let Ok(Some(m)) = tsn_protocol::read_msg::<TimelineDown, _>(&mut recv).await {
                    if matches!(m, TimelineDown::Entry { .. }) {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            conns.push(conn);
        }
        // One more session posts as fast as it is acknowledged; every post goes to the
        // 300 others.
        let (_poster, mut send, mut recv) = session(&poster_ep, &addr, 1, &certs).await?;
        let writer = tokio::spawn(async move {
            for nonce in 0..POSTS {
                let up = TimelineUp::Post {
                    nonce,
                    text: format!("busy {nonce}"),
                };
                tsn_protocol::write_msg(&mut send, &up).await?;
            }
            anyhow::Ok(send)
        });
        let started = Instant::now();
        let mut acked = 0;
        let mut epochs = Vec::new();
        let mut last_check = Instant::now();
        while acked < POSTS && started.elapsed() < Duration::from_secs(120) {
            let m = tokio::time::timeout(
                Duration::from_secs(10),
                tsn_protocol::read_msg::<TimelineDown, _>(&mut recv),
            )
            .await
            .map_err(|_| anyhow::anyhow!("no message on the posting session within 10 s ({acked} of {POSTS} acknowledged)"))??;
            match m {
                Some(TimelineDown::Ack { .. }) => acked += 1,
                Some(TimelineDown::NotActive) => anyhow::bail!("the server was demoted"),
                Some(_) => {}
                None => anyhow::bail!("the posting session closed"),
            }
            if last_check.elapsed() > Duration::from_millis(300) {
                epochs.push(epoch(&coord_ep, &coord).await?);
                last_check = Instant::now();
            }
        }
        let _ = writer.await;
        assert_eq!(acked, POSTS, "every post acknowledged");
        // The posts reach the sessions through the sync service: keep watching while the
        // server pushes them out.
        let until = Instant::now() + Duration::from_secs(30);
        while received.load(Ordering::Relaxed) < POSTS as usize * SESSIONS / 2
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(300)).await;
            epochs.push(epoch(&coord_ep, &coord).await?);
        }
        epochs.push(epoch(&coord_ep, &coord).await?);
        assert!(
            epochs.iter().all(|e| *e == 1),
            "the busy cluster was failed over: epochs {epochs:?}"
        );
        assert!(
            received.load(Ordering::Relaxed) > POSTS as usize,
            "the sessions were busy"
        );
        eprintln!(
            "{POSTS} posts to {SESSIONS} sessions in {:?}; {} entries received",
            started.elapsed(),
            received.load(Ordering::Relaxed)
        );
        anyhow::Ok(())
    })?;
    let log = std::fs::read_to_string(sys.dir.path().join("logs/coordinator.log"))?;
    assert_eq!(
        log.matches("active server is now").count(),
        1,
        "only the first election: {log}"
    );
    Ok(())
}
