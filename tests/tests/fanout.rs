//! One post to 300 followers with their timelines open: more deliveries than a server
//! writes and pushes at once (a share of 256), so its entries go out in two shares. Each
//! follower is sent the post exactly once, and each follower's timeline file on both
//! servers holds it exactly once.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tsn_protocol::client::{ClientReply, ClientRequest, TimelineDown, TimelineUp};
use tsn_tests::*;

const FOLLOWERS: u32 = 300;
const TEXT: &str = "to three hundred followers";

/// Opens `user`'s timeline on `conn`; returns its stream once the server said yes.
async fn open_timeline(
    conn: &quinn::Connection,
    user: u32,
) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    tsn_protocol::write_msg(&mut send, &ClientRequest::Timeline { user, since: None }).await?;
    let r = tsn_protocol::read_msg::<ClientReply, _>(&mut recv).await?;
    anyhow::ensure!(r == Some(ClientReply::Ok), "user {user}'s timeline: {r:?}");
    Ok((send, recv))
}

#[test]
fn a_post_to_more_followers_than_one_share_reaches_each_of_them_once() -> anyhow::Result<()> {
    let sys = System::start(Config {
        clusters: 1,
        ..Config::default()
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ep = {
        let _g = rt.enter();
        sys.endpoint()
    };
    // Entries seen by each follower (index: user - 2).
    let seen: Arc<Vec<AtomicUsize>> =
        Arc::new((0..FOLLOWERS).map(|_| AtomicUsize::new(0)).collect());
    rt.block_on(async {
        let author = sys.connect(&ep, 1).await?;
        let mut conns = Vec::new();
        for user in 2..=FOLLOWERS + 1 {
            let conn = sys.connect(&ep, user).await?;
            let r: ClientReply = call(&conn, &ClientRequest::Follow { user, target: 1 }).await?;
            anyhow::ensure!(r == ClientReply::Ok, "user {user} following user 1: {r:?}");
            let (send, mut recv) = open_timeline(&conn, user).await?;
            let seen = seen.clone();
            tokio::spawn(async move {
                let _send = send;
                while let Ok(Some(m)) = tsn_protocol::read_msg::<TimelineDown, _>(&mut recv).await {
                    if matches!(&m, TimelineDown::Entry { post, .. } if post.text == TEXT) {
                        seen[(user - 2) as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            conns.push(conn);
        }
        let (mut send, mut recv) = open_timeline(&author, 1).await?;
        let post = TimelineUp::Post {
            nonce: 1,
            text: TEXT.to_string(),
        };
        tsn_protocol::write_msg(&mut send, &post).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, tsn_protocol::read_msg::<TimelineDown, _>(&mut recv))
                .await
            {
                Ok(Ok(Some(TimelineDown::Ack { .. }))) => break,
                Ok(Ok(Some(_))) => {}
                other => anyhow::bail!("the post was not acknowledged: {other:?}"),
            }
        }
        let all_seen = || seen.iter().all(|n| n.load(Ordering::Relaxed) >= 1);
        let until = Instant::now() + Duration::from_secs(30);
        while !all_seen() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A second copy would come right behind the first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let counts: Vec<usize> = seen.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        let wrong: Vec<(u32, usize)> = (2..)
            .zip(counts.iter().copied())
            .filter(|(_, n)| *n != 1)
            .collect();
        assert!(
            wrong.is_empty(),
            "followers (user, entries) not sent the post exactly once: {wrong:?}"
        );
        for conn in conns {
            conn.close(0u32.into(), b"");
        }
        author.close(0u32.into(), b"");
        anyhow::Ok(())
    })?;
    // Both servers write the followers' view files (the standby for a hand-over).
    for role in [Role::Primary, Role::Secondary] {
        eventually(
            "every follower's timeline file holds the post once",
            Duration::from_secs(30),
            || Ok((2..=FOLLOWERS + 1).all(|user| timeline_numbers(&sys, 1, role, user) == vec![1])),
        )?;
    }
    Ok(())
}
