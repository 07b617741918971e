//! Bad input on the wire, against every listening role of a running system: garbage,
//! a huge length prefix, truncated frames, valid frames of the wrong kind or version,
//! thousands of streams, connections that never send anything, and peers without a
//! certificate from the cluster CA. Each must get an error or a closed stream; the
//! process stays up, keeps serving others, and its memory stays bounded.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use tsn_protocol::client::{ClientReply, ClientRequest};
use tsn_protocol::coord::{CoordError, CoordReply, CoordRequest, Heartbeat, NodeKind};
use tsn_tests::*;

const T: Duration = Duration::from_secs(5);

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10)).unwrap(),
    ));
    t.max_concurrent_bidi_streams(4096u32.into());
    Arc::new(t)
}

fn anonymous(sys: &System) -> quinn::Endpoint {
    let root = tsn_certs::TrustRoot::load(&sys.certs()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(root.client_config(transport()).unwrap());
    ep
}

fn node(sys: &System) -> quinn::Endpoint {
    let id = tsn_certs::node_identity(&sys.certs(), &[]).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(id.client_config(transport()).unwrap());
    ep
}

fn foreign_node() -> quinn::Endpoint {
    let dir = tempfile::tempdir().unwrap();
    let id = tsn_certs::node_identity(dir.path(), &[]).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(id.client_config(transport()).unwrap());
    ep
}

async fn dial(ep: &quinn::Endpoint, addr: &str) -> anyhow::Result<quinn::Connection> {
    let sock: SocketAddr = addr.parse()?;
    Ok(timeout(T, ep.connect(sock, tsn_certs::SERVER_NAME)?).await??)
}

/// Sends `bytes` on a fresh stream (finishing it when `finish`), and returns what came
/// back: `Ok(bytes)` if the peer answered and closed, `Err` if it reset the stream or
/// the connection. Never waits longer than `T`.
async fn poke(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    if finish {
        let _ = send.finish();
    }
    match timeout(T, recv.read_to_end(1 << 20)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => panic!("the peer neither answered nor closed the stream within {T:?}"),
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// The attacks every role gets, on one connection.
async fn attack(conn: &quinn::Connection) {
    // Garbage.
    assert!(poke(conn, b"\x17\x03\x03garbage garbage garbage", true)
        .await
        .map_or(true, |b| b.is_empty()));
    // A length prefix of 4 GiB, then silence: refused before anything is allocated.
    let huge = poke(conn, &[0xff, 0xff, 0xff, 0xff], false).await;
    assert!(
        huge.as_ref().map_or(true, |b| b.is_empty()),
        "a 4 GiB length prefix was answered: {huge:?}"
    );
    // A frame cut short.
    let mut cut = 100u32.to_be_bytes().to_vec();
    cut.extend_from_slice(b"short");
    assert!(poke(conn, &cut, true).await.map_or(true, |b| b.is_empty()));
    // A valid frame from another protocol version.
    let other_version = postcard::to_stdvec(&(99u16, CoordRequest::Status)).unwrap();
    assert!(poke(conn, &frame(&other_version), true)
        .await
        .map_or(true, |b| b.is_empty()));
    // A valid frame of the wrong conversation (a sync reply sent as a request).
    let wrong =
        tsn_protocol::encode(&tsn_protocol::sync::SyncReply::Refused("x".repeat(100))).unwrap();
    let _ = poke(conn, &frame(&wrong), true).await;
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn still_serves_clients(ep: &quinn::Endpoint, sys: &System) {
    let conn = dial(ep, &sys.coord).await.unwrap();
    let reply: CoordReply = call(&conn, &CoordRequest::AssignClient { client: 3 })
        .await
        .unwrap();
    let CoordReply::Assigned { addr, .. } = reply else {
        panic!("coordinator: {reply:?}")
    };
    let server = dial(ep, &addr).await.unwrap();
    login(&server, 3, &sys.certs()).await.unwrap();
    let reply: ClientReply = call(&server, &ClientRequest::List { user: 3 })
        .await
        .unwrap();
    assert!(matches!(reply, ClientReply::List { .. }), "{reply:?}");
}

#[test]
fn every_role_survives_bad_input_and_keeps_serving() {
    let sys = System::start(Config {
        clusters: 1,
        heartbeat_ms: 200,
        period_ms: 50,
        ..Config::default()
    })
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let targets = [
        (
            "coordinator",
            sys.coord.clone(),
            sys.coordinator_pid().unwrap(),
        ),
        (
            "primary",
            sys.addr(1, Role::Primary).unwrap(),
            sys.pid(1, Role::Primary).unwrap(),
        ),
        (
            "secondary",
            sys.addr(1, Role::Secondary).unwrap(),
            sys.pid(1, Role::Secondary).unwrap(),
        ),
        (
            "sync",
            sys.addr(1, Role::Sync).unwrap(),
            sys.pid(1, Role::Sync).unwrap(),
        ),
    ];
    let rss_before: Vec<f64> = targets.iter().map(|t| rss_mib(t.2)).collect();
    rt.block_on(async {
        let anon = anonymous(&sys);
        let nodes = node(&sys);
        let foreign = foreign_node();
        for (name, addr, _) in &targets {
            // A node certificate from another CA is refused by everyone.
            assert!(
                dial(&foreign, addr).await.is_err() || {
                    let c = dial(&foreign, addr).await.unwrap();
                    poke(&c, &frame(b"x"), true).await.is_err()
                },
                "{name} accepted a foreign certificate"
            );
            // The sync service takes nodes only; the others also take clients.
            if *name == "sync" {
                let refused = match dial(&anon, addr).await {
                    Err(_) => true,
                    Ok(c) => poke(&c, &frame(b"x"), true).await.is_err(),
                };
                assert!(refused, "sync accepted a peer without a certificate");
            } else {
                let c = dial(&anon, addr).await.unwrap();
                attack(&c).await;
            }
            // A node-certified peer gets the same garbage.
            let c = dial(&nodes, addr).await.unwrap();
            attack(&c).await;
        }

        // Node-only requests from a client are refused with a clear error.
        let c = dial(&anon, &sys.coord).await.unwrap();
        let hb = CoordRequest::Heartbeat(Heartbeat {
            cluster: 1,
            kind: NodeKind::Primary,
            addr: "127.0.0.1:9".into(),
            active: true,
            epoch: 99,
            clock_offset_ms: 0,
            web_hashes: Vec::new(),
        });
        let reply: CoordReply = call(&c, &hb).await.unwrap();
        assert_eq!(
            reply,
            CoordReply::Failed(CoordError::NotANode),
            "a client cannot register as a server"
        );

        // Thousands of streams at once, each stuck in the middle of a frame, and
        // hundreds of connections that never send anything.
        for (name, addr, _) in &targets {
            let ep = if *name == "sync" { &nodes } else { &anon };
            let c = dial(ep, addr).await.unwrap();
            let mut held = Vec::new();
            for _ in 0..2000 {
                match timeout(Duration::from_millis(200), c.open_bi()).await {
                    Ok(Ok((mut s, r))) => {
                        let _ = s.write_all(&[0, 0, 1]).await;
                        held.push((s, r));
                    }
                    // The stream limit makes further opens wait: that is the bound working.
                    _ => break,
                }
            }
            assert!(!held.is_empty());
            let mut idle = Vec::new();
            for _ in 0..200 {
                if let Ok(conn) = dial(ep, addr).await {
                    idle.push(conn);
                }
            }
            still_serves_clients(&anon, &sys).await;
            drop(held);
            drop(idle);
            c.close(0u32.into(), b"");
        }
        still_serves_clients(&anon, &sys).await;
    });
    for ((name, _, pid), before) in targets.iter().zip(rss_before) {
        let after = rss_mib(*pid);
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{name} died"
        );
        assert!(
            after < before + 200.0,
            "{name}: memory grew from {before:.0} to {after:.0} MiB"
        );
    }
    // The datastore still loads: every journal parses.
    for role in [Role::Primary, Role::Secondary, Role::Sync] {
        let path = sys.role_dir(1, role).join("journal.data");
        tsn_datastore::read_records(&path).unwrap();
    }
}
