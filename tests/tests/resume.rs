//! A client reopening its timeline after a reconnect says when its newest entry was; the
//! server then sends everything from then on, not just the last 20, so nothing delivered
//! while the client was away is skipped.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::timeout;
use tsn_protocol::client::{ClientReply, ClientRequest, TimelineDown};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_tests::*;

/// Opens user 1's timeline and counts the entries that arrive within a second.
async fn entries(ep: &quinn::Endpoint, coord: &str, since_us: Option<i64>) -> Vec<String> {
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
    assert_eq!(
        call::<_, ClientReply>(&server, &ClientRequest::Login { user: 1 })
            .await
            .unwrap(),
        ClientReply::Ok
    );
    let (mut send, mut recv) = server.open_bi().await.unwrap();
    tsn_protocol::write_msg(&mut send, &ClientRequest::Timeline { user: 1, since_us })
        .await
        .unwrap();
    let first: ClientReply = tsn_protocol::read_msg(&mut recv).await.unwrap().unwrap();
    assert_eq!(first, ClientReply::Ok);
    let mut texts = Vec::new();
    while let Ok(Ok(Some(TimelineDown::Entry(p)))) =
        timeout(Duration::from_secs(1), tsn_protocol::read_msg(&mut recv)).await
    {
        texts.push(p.text);
    }
    server.close(0u32.into(), b"");
    texts
}

#[test]
fn reopening_with_since_returns_everything_after_it() -> anyhow::Result<()> {
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
    assert_eq!(
        author.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
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
    let (fresh, resumed) = rt.block_on(async {
        let root = tsn_certs::TrustRoot::load(&sys.certs()).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(
            root.client_config(std::sync::Arc::new(quinn::TransportConfig::default()))
                .unwrap(),
        );
        (
            entries(&ep, &sys.coord, None).await,
            entries(&ep, &sys.coord, Some(0)).await,
        )
    });
    assert_eq!(fresh.len(), 20, "a first entry shows the last 20");
    assert_eq!(fresh.first().map(String::as_str), Some("while away 10"));
    assert_eq!(resumed.len(), 30, "a resumed timeline misses nothing");
    let want: Vec<String> = (0..30).map(|k| format!("while away {k}")).collect();
    assert_eq!(resumed, want, "in order, each once");
    Ok(())
}
