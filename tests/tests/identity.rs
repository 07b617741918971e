//! Users are who they say they are: a key per user (created by the client on first use),
//! bound by the user's home cluster at the first login, enforced after failover and the
//! loss of a server's host, resettable by an operator; one user per connection; a
//! per-user rate limit.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tsn_protocol::client::{ClientReply, ClientRequest, CommandError, TimelineDown, TimelineUp};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_tests::*;

const REFUSED: &str = "Login refused: user 5 is registered with another key";

#[test]
fn the_first_key_binds_and_another_is_refused_until_an_operator_resets() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default())?;
    // User 5 (cluster 3) logs in from the usual cert dir: a key is created and bound.
    let mut first = sys.client(5)?;
    assert_eq!(first.run("LIST", 3)?[0], "Command completed successfully");
    let key = sys.certs().join("user-5.key");
    assert!(key.exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    // The same key from a second client at once works.
    let mut second = sys.client(5)?;
    assert_eq!(second.run("LIST", 3)?[0], "Command completed successfully");

    // Another device without the key: refused with one clear line, exit 1.
    let elsewhere = sys.client_cert_dir("b")?;
    let stranger = sys.client_with_certs(5, &elsewhere)?;
    let mut stranger_out = stranger;
    stranger_out.expect_contains(REFUSED, Duration::from_secs(10))?;
    assert_eq!(stranger_out.finish(Duration::from_secs(10))?, 1);

    // The standby enforces the binding after kill -9 of the active server...
    let secondary = sys.addr(3, Role::Secondary)?;
    sys.kill(3, Role::Primary);
    eventually("the secondary serves", Duration::from_secs(15), || {
        Ok(sys.serving(3)? == secondary)
    })?;
    let mut again = sys.client_with_certs(5, &elsewhere)?;
    again.expect_contains(REFUSED, Duration::from_secs(15))?;
    assert_eq!(again.finish(Duration::from_secs(10))?, 1);
    // ... and so does the primary's host, lost and back empty, once it serves again.
    sys.lose_host(3, Role::Primary)?;
    sys.start_node(3, Role::Primary)?;
    sys.wait_log(
        3,
        Role::Secondary,
        "mirroring to the standby",
        Duration::from_secs(20),
    )?;
    sys.stop(3, Role::Secondary); // hands over to the returned primary
    let primary = sys.addr(3, Role::Primary)?;
    eventually(
        "the returned primary serves",
        Duration::from_secs(15),
        || Ok(sys.serving(3)? == primary),
    )?;
    let mut third = sys.client_with_certs(5, &elsewhere)?;
    third.expect_contains(REFUSED, Duration::from_secs(15))?;
    assert_eq!(third.finish(Duration::from_secs(10))?, 1);
    let mut owner = sys.client(5)?;
    assert_eq!(owner.run("LIST", 3)?[0], "Command completed successfully");

    // A lost key: an operator resets the binding, and the new key binds.
    let out = Command::new(bin("tsn_admin"))
        .args(["-c", &sys.coord, "--cert-dir"])
        .arg(sys.certs())
        .args(["reset-key", "5"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reset"));
    let mut new_device = sys.client_with_certs(5, &elsewhere)?;
    assert_eq!(
        new_device.run("LIST", 3)?[0],
        "Command completed successfully"
    );
    // Now the old key is the other one.
    let old = sys.client(5)?;
    let mut old = old;
    old.expect_contains(REFUSED, Duration::from_secs(10))?;
    Ok(())
}

async fn dial(ep: &quinn::Endpoint, addr: &str) -> quinn::Connection {
    let sock: SocketAddr = addr.parse().unwrap();
    ep.connect(sock, tsn_certs::SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

fn endpoint(sys: &System) -> quinn::Endpoint {
    let root = tsn_certs::TrustRoot::load(&sys.certs()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        root.client_config(std::sync::Arc::new(quinn::TransportConfig::default()))
            .unwrap(),
    );
    ep
}

#[test]
fn a_connection_acts_for_the_one_user_it_logged_in_as() -> anyhow::Result<()> {
    let sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let ep = endpoint(&sys);
        let coord = dial(&ep, &sys.coord).await;
        let CoordReply::Assigned { addr, .. } =
            call(&coord, &CoordRequest::AssignClient { client: 1 })
                .await
                .unwrap()
        else {
            panic!()
        };
        // Users 1 and 2 exist, each logged in on a connection of its own.
        let c2 = dial(&ep, &addr).await;
        login(&c2, 2, &sys.certs()).await.unwrap();
        let c1 = dial(&ep, &addr).await;
        // Without a proof: refused.
        let r: ClientReply = call(
            &c1,
            &ClientRequest::Login {
                user: 1,
                proof: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(r, ClientReply::Failed(CommandError::BadProof));
        login(&c1, 1, &sys.certs()).await.unwrap();
        // On user 1's connection, acting for user 2 is refused.
        let r: ClientReply = call(&c1, &ClientRequest::Follow { user: 2, target: 1 })
            .await
            .unwrap();
        assert_eq!(r, ClientReply::Failed(CommandError::InvalidUser));
        let r: ClientReply = call(
            &c1,
            &ClientRequest::Login {
                user: 2,
                proof: None,
            },
        )
        .await
        .unwrap();
        assert!(matches!(r, ClientReply::Failed(_)), "{r:?}");
        let (mut send, mut recv) = c1.open_bi().await.unwrap();
        tsn_protocol::write_msg(
            &mut send,
            &ClientRequest::Timeline {
                user: 2,
                since: None,
            },
        )
        .await
        .unwrap();
        let r: Option<ClientReply> = tsn_protocol::read_msg(&mut recv).await.unwrap();
        assert_eq!(r, Some(ClientReply::Failed(CommandError::InvalidUser)));
    });
    std::thread::sleep(Duration::from_millis(500));
    let journal = sys.read(1, Role::Primary, "journal.data");
    assert!(!journal.contains("follow 2 1"), "{journal}");
    Ok(())
}

#[test]
fn over_the_rate_limit_posts_are_refused_and_others_are_not_slowed() -> anyhow::Result<()> {
    const LIMIT: u64 = 20;
    let sys = System::start(Config {
        clusters: 1,
        server_args: vec!["--user-rate".into(), LIMIT.to_string()],
        ..Config::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let (stored, refused, other_worst) = rt.block_on(async {
        let ep = endpoint(&sys);
        let addr = sys.serving(1).unwrap();
        let certs = sys.certs();
        let open = |user: u32| {
            let ep = ep.clone();
            let addr = addr.clone();
            let certs = certs.clone();
            async move {
                let c = dial(&ep, &addr).await;
                login(&c, user, &certs).await.unwrap();
                let (mut send, mut recv) = c.open_bi().await.unwrap();
                tsn_protocol::write_msg(&mut send, &ClientRequest::Timeline { user, since: None })
                    .await
                    .unwrap();
                let r: Option<ClientReply> = tsn_protocol::read_msg(&mut recv).await.unwrap();
                assert_eq!(r, Some(ClientReply::Ok));
                (c, send, recv)
            }
        };
        let (_c1, mut send1, mut recv1) = open(1).await;
        let (_c2, mut send2, mut recv2) = open(2).await;
        // User 1 floods: 200 posts at once.
        for nonce in 0..200u64 {
            let up = TimelineUp::Post {
                nonce,
                text: format!("flood {nonce}"),
            };
            tsn_protocol::write_msg(&mut send1, &up).await.unwrap();
        }
        // Meanwhile user 2 posts now and then, and is acknowledged as usual.
        let other = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            for nonce in 0..10u64 {
                let t = Instant::now();
                let up = TimelineUp::Post {
                    nonce,
                    text: format!("calm {nonce}"),
                };
                tsn_protocol::write_msg(&mut send2, &up).await.unwrap();
                loop {
                    match tsn_protocol::read_msg::<TimelineDown, _>(&mut recv2)
                        .await
                        .unwrap()
                    {
                        Some(TimelineDown::Ack { nonce: n }) if n == nonce => break,
                        Some(TimelineDown::Refused { reason, .. }) => {
                            panic!("user 2 refused: {reason}")
                        }
                        Some(_) => {}
                        None => panic!("closed"),
                    }
                }
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            worst
        });
        let (mut stored, mut refused) = (0u64, 0u64);
        while stored + refused < 200 {
            match tsn_protocol::read_msg::<TimelineDown, _>(&mut recv1)
                .await
                .unwrap()
            {
                Some(TimelineDown::Ack { .. }) => stored += 1,
                Some(TimelineDown::Refused { reason, .. }) => {
                    assert_eq!(
                        reason,
                        CommandError::RateLimited {
                            per_second: LIMIT as u32
                        }
                    );
                    refused += 1;
                }
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        (stored, refused, other.await.unwrap())
    });
    assert!(refused > 0, "the flood was limited");
    assert!(stored <= LIMIT * 2 + 5, "{stored} stored");
    assert!(
        other_worst < Duration::from_millis(500),
        "the other user waited {other_worst:?}"
    );
    // What was refused is not in the journal.
    std::thread::sleep(Duration::from_millis(300));
    let journal = sys.read(1, Role::Primary, "journal.data");
    let in_journal = journal.lines().filter(|l| l.contains(" flood ")).count() as u64;
    assert_eq!(
        in_journal, stored,
        "exactly the acknowledged posts are stored"
    );
    eprintln!("stored {stored}, refused {refused}, other user's worst ack {other_worst:?}");
    Ok(())
}
