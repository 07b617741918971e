//! Section 1, the floor: what raw quinn does on loopback with the same TLS set-up
//! (a leaf from the cluster CA, TLS 1.3, ALPN tsn/1) and the same frame size as a post.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::stats::{median, summarize, Row, Summary};

/// Bytes in one frame: about a post with a short text, as encoded.
pub const FRAME: usize = 64;
const PINGS: usize = 2000;

/// The floor's figures.
#[derive(Debug)]
pub struct Floor {
    /// Request/response round trip on one long-lived stream.
    pub rtt: Summary,
    /// One-way frames per second on one stream.
    pub frames_per_s: f64,
}

impl Floor {
    /// As report rows.
    pub fn rows(&self) -> Vec<Row> {
        vec![
            Row {
                section: "1".into(),
                metric: format!("quinn floor: {FRAME} B request/response RTT p50"),
                value: self.rtt.p50_us,
                unit: "us".into(),
                vs_floor: Some(1.0),
                target: None,
            },
            Row {
                section: "1".into(),
                metric: format!("quinn floor: {FRAME} B request/response RTT p99"),
                value: self.rtt.p99_us,
                unit: "us".into(),
                vs_floor: None,
                target: None,
            },
            Row {
                section: "1".into(),
                metric: format!("quinn floor: one-way {FRAME} B frames"),
                value: self.frames_per_s,
                unit: "frames/s".into(),
                vs_floor: None,
                target: None,
            },
        ]
    }
}

/// The echo server of the floor: on a thread of its own with a one-thread runtime, as
/// the TSN servers run (`--threads 1`), so that the floor is what quinn itself costs
/// between two parties that do not share a scheduler.
struct Echo {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(dir: &std::path::Path) -> Result<Echo> {
        let ca = tsn_certs::ClusterCa::load_or_create(dir)?;
        let id = ca.issue_leaf(&[])?;
        let config =
            id.server_config(tsn_certs::ClientAuth::Optional, crate::session::transport())?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let server =
                    match quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = addr_tx.send(Err(e.into()));
                            return;
                        }
                    };
                let _ = addr_tx.send(server.local_addr().map_err(Into::into));
                let srv = server.clone();
                let serve = async move {
                    while let Some(inc) = srv.accept().await {
                        tokio::spawn(async move {
                            let Ok(conn) = inc.await else { return };
                            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                                tokio::spawn(async move {
                                    // Echo frames back until the stream ends.
                                    while let Ok(Some(f)) =
                                        tsn_protocol::read_frame(&mut recv).await
                                    {
                                        if tsn_protocol::write_frame(&mut send, &f).await.is_err() {
                                            break;
                                        }
                                    }
                                });
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
                server.close(0u32.into(), b"");
            });
        });
        let addr = addr_rx.recv()??;
        Ok(Echo {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Measures the floor `runs` times and keeps the median run.
pub async fn measure(runs: usize) -> Result<Floor> {
    let dir = tempfile_dir()?;
    let echo = Echo::start(&dir)?;
    let addr = echo.addr;
    let client = crate::session::endpoint(&dir)?;
    let conn = crate::session::connect(&client, &addr.to_string()).await?;
    let mut best: Vec<(Summary, f64)> = Vec::new();
    for _ in 0..runs.max(1) {
        let (mut send, mut recv) = conn.open_bi().await?;
        let payload = vec![7u8; FRAME];
        let mut samples = Vec::with_capacity(PINGS);
        for _ in 0..PINGS {
            let t = Instant::now();
            tsn_protocol::write_frame(&mut send, &payload).await?;
            tsn_protocol::read_frame(&mut recv).await?;
            samples.push(t.elapsed());
        }
        send.finish()?;
        let rtt = summarize(&mut samples);
        // Throughput: write for one second while the echo drains; count frames back.
        let (mut send, mut recv) = conn.open_bi().await?;
        let reader = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok(Some(_)) = tsn_protocol::read_frame(&mut recv).await {
                n += 1;
            }
            n
        });
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            for _ in 0..256 {
                tsn_protocol::write_frame(&mut send, &payload).await?;
            }
        }
        send.finish()?;
        let n = reader.await?;
        best.push((rtt, n as f64 / t.elapsed().as_secs_f64()));
    }
    conn.close(0u32.into(), b"");
    drop(echo);
    let mut p50s: Vec<f64> = best.iter().map(|b| b.0.p50_us).collect();
    let mid = median(&mut p50s);
    let chosen = best
        .iter()
        .find(|b| b.0.p50_us == mid)
        .map(|b| b.0.clone())
        .unwrap_or_else(|| best[0].0.clone());
    let mut tput: Vec<f64> = best.iter().map(|b| b.1).collect();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Floor {
        rtt: chosen,
        frames_per_s: median(&mut tput),
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tsn-bench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
