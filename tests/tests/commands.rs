//! Login, FOLLOW, UNFOLLOW, LIST and the original wording, through real `tsn_client`
//! processes on a 3-cluster loopback system. Users 1 and 4 are in cluster 2, user 2 in
//! cluster 3, user 3 in cluster 1.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tsn_tests::*;

#[test]
fn commands_within_and_across_clusters_with_original_wording() -> anyhow::Result<()> {
    let sys = System::start(Config::default())?;
    let mut c1 = sys.client(1)?;
    let mut c2 = sys.client(2)?;
    let mut c3 = sys.client(3)?;
    let mut c4 = sys.client(4)?;
    // Logins on all three clusters become known everywhere through the sync services.
    wait_users(&mut c1, &[1, 2, 3, 4])?;
    wait_users(&mut c3, &[1, 2, 3, 4])?;

    assert_eq!(
        c1.run("FOLLOW 2", 1)?,
        ["Command completed successfully"],
        "other cluster"
    );
    assert_eq!(
        c1.run("follow 4", 1)?,
        ["Command completed successfully"],
        "own cluster, lower case"
    );
    assert_eq!(c3.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
    assert_eq!(
        c1.run("FOLLOW 2", 1)?,
        ["Input username already exists, command failed"]
    );
    assert_eq!(
        c1.run("FOLLOW 1", 1)?,
        ["Input username already exists, command failed"]
    );
    assert_eq!(
        c1.run("FOLLOW 99", 1)?,
        ["Input username does not exists, command failed"]
    );
    assert_eq!(
        c1.run("FOLLOW abc", 1)?,
        ["Command failed with invalid username"]
    );
    assert_eq!(
        c1.run("FOLLOW", 1)?,
        ["Invalid Input -- No Arguments Given"]
    );
    assert_eq!(
        c1.run("UNFOLLOW", 1)?,
        ["Invalid Input -- No Arguments Given"]
    );
    assert_eq!(c1.run("DANCE 3", 1)?, ["Invalid Command"]);

    // Followers arrive through the sync services.
    eventually("followers of 2", Duration::from_secs(10), || {
        Ok(list(&mut c2)?.1 == "Followers: 1, 3, ")
    })?;
    eventually("followers of 4", Duration::from_secs(10), || {
        Ok(list(&mut c4)?.1 == "Followers: 1, ")
    })?;

    assert_eq!(c1.run("UNFOLLOW 4", 1)?, ["Command completed successfully"]);
    assert_eq!(
        c1.run("UNFOLLOW 4", 1)?,
        ["Command failed with invalid username"]
    );
    assert_eq!(
        c1.run("UNFOLLOW 99", 1)?,
        ["Input username does not exists, command failed"]
    );
    eventually("4 lost its follower", Duration::from_secs(10), || {
        Ok(list(&mut c4)?.1 == "Followers: ")
    })?;
    let (all, followers) = list(&mut c2)?;
    assert_eq!(all, "All users: 1, 2, 3, 4, ");
    assert_eq!(followers, "Followers: 1, 3, ");

    // What the servers persisted, in the original layout.
    let following = sys.read(2, Role::Primary, "local_clients/1/following.data");
    assert!(following.contains("follow 1 2 "), "{following}");
    assert!(following.contains("unfollow 1 4 "), "{following}");
    let mirrored = sys.read(2, Role::Secondary, "local_clients/1/following.data");
    assert_eq!(following, mirrored, "the secondary mirrors the primary");
    let followers = sys.read(3, Role::Sync, "local_clients/2/followers.data");
    assert!(
        followers.contains("follow 1 2 ") && followers.contains("follow 3 2 "),
        "{followers}"
    );

    for c in [c1, c2, c3, c4] {
        assert_eq!(c.finish(Duration::from_secs(10))?, 0);
    }
    Ok(())
}

#[test]
fn unreachable_coordinator_fails_fast_with_the_original_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A port nothing listens on: bind a UDP socket, note its port, close it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // The client needs a CA to trust; make one the way nodes do.
    tsn_certs::node_identity(dir.path(), &[])?;
    let start = std::time::Instant::now();
    let out = std::process::Command::new(bin("tsn_client"))
        .args([
            "-c",
            &format!("127.0.0.1:{port}"),
            "-p",
            "0",
            "-i",
            "1",
            "--cert-dir",
            &dir.path().display().to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "connection failed: -1"
    );
    assert!(!out.stderr.is_empty(), "a one-line reason on stderr");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "fails within seconds, took {:?}",
        start.elapsed()
    );
    Ok(())
}
