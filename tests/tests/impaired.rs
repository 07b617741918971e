//! Sync traffic over a slow, lossy network: every packet to and from two clusters'
//! sync services goes through a UDP relay that delays it by 200 ms and drops 5% of
//! packets (each way). QUIC recovers the losses; every post must still reach its
//! followers exactly once. (A relay rather than netem: it needs no kernel support.)
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tsn_tests::*;

const DELAY: Duration = Duration::from_millis(200);
const LOSS: f64 = 0.05;

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

/// Relays datagrams between clients of `front` and `upstream`, impairing both ways.
async fn relay(front: Arc<UdpSocket>, upstream: SocketAddr, counters: Arc<Counters>) {
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        let back = match backs.get(&from) {
            Some(b) => b.clone(),
            None => {
                let Ok(b) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let b = Arc::new(b);
                if b.connect(upstream).await.is_err() {
                    continue;
                }
                backs.insert(from, b.clone());
                // Replies from upstream go back to this client, impaired too.
                let (front, b2, counters) = (front.clone(), b.clone(), counters.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = b2.recv(&mut buf).await {
                        impaired(buf[..n].to_vec(), &counters, {
                            let front = front.clone();
                            move |d| async move {
                                let _ = front.send_to(&d, from).await;
                            }
                        });
                    }
                });
                b
            }
        };
        impaired(buf[..n].to_vec(), &counters, move |d| async move {
            let _ = back.send(&d).await;
        });
    }
}

fn impaired<F, Fut>(data: Vec<u8>, counters: &Counters, send: F)
where
    F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if rand::random::<f64>() < LOSS {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    counters.forwarded.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        tokio::time::sleep(DELAY).await;
        send(data).await;
    });
}

#[test]
fn sync_over_200ms_delay_and_5_percent_loss_delivers_everything_once() -> anyhow::Result<()> {
    let mut sys = System::start(Config::default())?;
    let rt = tokio::runtime::Runtime::new()?;
    let counters = Arc::new(Counters::default());
    // Put a relay in front of the sync services of clusters 2 and 3.
    for cluster in [2u32, 3] {
        let front = Arc::new(rt.block_on(UdpSocket::bind("127.0.0.1:0"))?);
        let front_addr = front.local_addr()?;
        sys.stop(cluster, Role::Sync);
        sys.start_node_with(
            cluster,
            Role::Sync,
            &["--advertise".into(), front_addr.to_string()],
        )?;
        let upstream: SocketAddr = sys.addr(cluster, Role::Sync)?.parse()?;
        rt.spawn(relay(front, upstream, counters.clone()));
    }
    sys.wait_ready(Duration::from_secs(20))?;

    let mut a = sys.client(1)?; // cluster 2
    let mut b = sys.client(2)?; // cluster 3
    wait_users(&mut a, &[1, 2])?;
    wait_users(&mut b, &[1, 2])?;
    assert_eq!(a.run("FOLLOW 2", 1)?, ["Command completed successfully"]);
    assert_eq!(b.run("FOLLOW 1", 1)?, ["Command completed successfully"]);
    std::thread::sleep(Duration::from_secs(1));
    for (c, tag) in [(&mut a, "lossy one"), (&mut b, "lossy two")] {
        assert_eq!(
            c.run("TIMELINE", 2)?,
            [
                "Command completed successfully",
                "Now you are in the timeline"
            ]
        );
        for k in 0..10 {
            c.send(&format!("{tag} {k}"))?;
        }
    }
    let want_a: Vec<String> = (0..10).map(|k| format!(">> lossy two {k}")).collect();
    let want_b: Vec<String> = (0..10).map(|k| format!(">> lossy one {k}")).collect();
    a.expect_all(&want_a, Duration::from_secs(60))?;
    b.expect_all(&want_b, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(1));
    a.drain();
    b.drain();
    for (c, want) in [(&a, &want_a), (&b, &want_b)] {
        for w in want.iter() {
            assert_eq!(
                c.seen.iter().filter(|l| l.ends_with(w.as_str())).count(),
                1,
                "{w}"
            );
        }
    }
    let (fwd, drop) = (
        counters.forwarded.load(Ordering::Relaxed),
        counters.dropped.load(Ordering::Relaxed),
    );
    assert!(fwd > 0, "traffic went through the relays");
    eprintln!("relays forwarded {fwd} datagrams and dropped {drop}");
    assert_eq!(a.finish(Duration::from_secs(20))?, 0);
    assert_eq!(b.finish(Duration::from_secs(20))?, 0);
    Ok(())
}
