//! TIMELINE: the backlog on entry, live delivery within and across clusters, UNFOLLOW
//! stopping delivery, several devices of one user.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

const LIVE: Duration = Duration::from_secs(10);

#[test]
fn live_delivery_within_and_across_clusters_once_and_in_order() -> anyhow::Result<()> {
    let sys = System::start(Config::default())?;
    let mut c1 = sys.client(1)?; // cluster 2
    let mut c2 = sys.client(2)?; // cluster 3
    let mut c4 = sys.client(4)?; // cluster 2
    wait_users(&mut c1, &[1, 2, 4])?;
    assert_eq!(c1.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
    assert_eq!(c1.run("FOLLOW 4", 1)?, ["Command completed successfully"]);
    let mut c1b = sys.client(1)?; // a second device of user 1
    for c in [&mut c1, &mut c1b, &mut c2, &mut c4] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
    }
    // Give the follows one sync period to reach the followees' clusters.
    std::thread::sleep(Duration::from_millis(300));
    for k in 0..5 {
        c2.send(&format!("two says {k}"))?;
        c4.send(&format!("four says {k}"))?;
    }
    let want: Vec<String> = ["two", "four"]
        .iter()
        .flat_map(|a| (0..5).map(move |k| format!("{a} says {k}")))
        .collect();
    for c in [&mut c1, &mut c1b] {
        c.expect_all(&want, LIVE)?;
        for line in c.seen.iter().filter(|l| l.contains(" says ")) {
            let sender = if line.contains(">> two") {
                "2 ("
            } else {
                "4 ("
            };
            assert!(line.starts_with(sender) && line.contains(") >> "), "{line}");
        }
    }
    // Order per author: the k-th post of an author comes before the (k+1)-th.
    for author in ["two", "four"] {
        let idx: Vec<usize> = (0..5)
            .map(|k| {
                c1.seen
                    .iter()
                    .position(|l| l.ends_with(&format!("{author} says {k}")))
                    .unwrap()
            })
            .collect();
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "{author}: {idx:?}");
    }
    // Exactly once, also after a while.
    std::thread::sleep(Duration::from_millis(500));
    c1.drain();
    for k in 0..5 {
        assert_eq!(
            c1.seen
                .iter()
                .filter(|l| l.ends_with(&format!("two says {k}")))
                .count(),
            1
        );
    }
    // The author does not see its own post echoed back.
    c2.drain();
    assert!(
        !c2.seen.iter().any(|l| l.contains(">> two says")),
        "{:?}",
        c2.seen
    );

    // UNFOLLOW from another device stops delivery.
    let mut c1c = sys.client(1)?;
    assert_eq!(
        c1c.run("UNFOLLOW 2", 1)?,
        ["Command completed successfully"]
    );
    std::thread::sleep(Duration::from_millis(300));
    c2.send("two after unfollow")?;
    std::thread::sleep(Duration::from_millis(300));
    c4.send("four sentinel")?;
    c1.expect_contains("four sentinel", LIVE)?;
    std::thread::sleep(Duration::from_millis(800));
    c1.drain();
    assert!(
        !c1.seen.iter().any(|l| l.contains("two after unfollow")),
        "{:?}",
        c1.seen
    );

    for c in [c1, c1b, c1c, c2, c4] {
        assert_eq!(c.finish(Duration::from_secs(10))?, 0);
    }
    Ok(())
}

#[test]
fn timeline_entry_shows_the_last_twenty_posts() -> anyhow::Result<()> {
    let sys = System::start(Config::default())?;
    let mut a = sys.client(5)?; // cluster 3
    assert_eq!(
        a.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    for k in 0..25 {
        a.send(&format!("post number {k}"))?;
    }
    // End of input: the client exits 0 only once every post is acknowledged.
    assert_eq!(a.finish(Duration::from_secs(20))?, 0);

    let mut b = sys.client(5)?;
    assert_eq!(
        b.run("TIMELINE", 2)?,
        [
            "Command completed successfully",
            "Now you are in the timeline"
        ]
    );
    for k in 5..25 {
        let line = b.expect_contains(&format!("post number {k}"), LIVE)?;
        assert!(line.starts_with("5 ("), "{line}");
    }
    std::thread::sleep(Duration::from_millis(300));
    b.drain();
    assert!(
        !b.seen.iter().any(|l| l.ends_with("post number 4")),
        "only the last 20: {:?}",
        b.seen
    );
    assert_eq!(
        b.seen
            .iter()
            .filter(|l| l.contains(">> post number"))
            .count(),
        20
    );

    // Overlong posts are refused by the client with a clear message.
    b.send(&"x".repeat(300))?;
    b.expect_contains("Post is too long (300 bytes, at most 256)", LIVE)?;
    assert_eq!(
        b.finish(Duration::from_secs(10))?,
        1,
        "a post that was not stored shows in the exit status"
    );

    eventually("25 posts in the timeline file", LIVE, || {
        let stored = sys.read(3, Role::Primary, "local_clients/5/timeline.data");
        Ok(stored
            .lines()
            .filter(|l| l.starts_with("deliver 5 "))
            .count()
            == 25)
    })?;
    Ok(())
}

/// Posts that reach a server's open timelines faster than one at a time (the server then
/// writes the entries queued for a session in one go) arrive whole, in order, each once,
/// within the author's cluster and in another.
#[test]
fn a_burst_reaches_open_timelines_whole_in_order_once() -> anyhow::Result<()> {
    const POSTS: usize = 600;
    let sys = System::start(Config::default())?;
    let mut other = sys.client(1)?; // cluster 2
    let mut author = sys.client(2)?; // cluster 3
    let mut same = sys.client(5)?; // cluster 3
    wait_users(&mut other, &[1, 2, 5])?;
    wait_users(&mut same, &[1, 2, 5])?;
    for c in [&mut other, &mut same] {
        assert_eq!(c.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
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
    std::thread::sleep(Duration::from_millis(300));
    let want: Vec<String> = (0..POSTS).map(|k| format!("burst {k:04}")).collect();
    for line in &want {
        author.send(line)?;
    }
    for c in [&mut other, &mut same] {
        c.expect_all(&want, Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_millis(300));
        c.drain();
        let shown: Vec<&String> = c.seen.iter().filter(|l| l.contains(">> burst ")).collect();
        let texts: Vec<String> = shown
            .iter()
            .map(|l| l.rsplit(">> ").next().unwrap().to_string())
            .collect();
        assert_eq!(texts, want, "every post once, in the order it was made");
    }
    for c in [other, same, author] {
        assert_eq!(c.finish(Duration::from_secs(10))?, 0);
    }
    Ok(())
}
