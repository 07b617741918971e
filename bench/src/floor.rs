//! Section 1, the floor: the two round trips an acknowledgement costs, through plain
//! quinn with the same TLS set-up (a leaf from the cluster CA, TLS 1.3, ALPN tsn/1):
//! client -> A -> B -> A -> client. A forwards what it reads from a client stream to B,
//! on one connection to B as a primary mirrors on one connection to its standby, and
//! passes B's echo back. A and B each run on a thread of their own with a one-thread
//! runtime, as the servers do (`--threads 1`).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, Result};
use tsn_protocol::FrameReader;

use crate::load::{Rig, Rx, Tx};
use crate::session;

/// A process-like party: its own thread and one-thread runtime, stopped when dropped.
struct Party {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Party {
    /// Starts a party serving with `serve(endpoint)`.
    fn start<F, Fut>(dir: &Path, serve: F) -> Result<Party>
    where
        F: FnOnce(quinn::Endpoint) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let ca = tsn_certs::ClusterCa::load_or_create(dir)?;
        let id = ca.issue_leaf(&[])?;
        let config = id.server_config(tsn_certs::ClientAuth::Optional, session::transport())?;
        let root = tsn_certs::TrustRoot::load(dir)?;
        let client = root.client_config(session::transport())?;
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
                let mut ep =
                    match quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0))) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = addr_tx.send(Err(e.into()));
                            return;
                        }
                    };
                ep.set_default_client_config(client);
                let _ = addr_tx.send(ep.local_addr().map_err(Into::into));
                tokio::select! {
                    _ = serve(ep.clone()) => {}
                    _ = stopped => {}
                }
                ep.close(0u32.into(), b"");
            });
        });
        let addr = addr_rx.recv()??;
        Ok(Party {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// B: echoes the bytes of every stream as they arrive (whatever has arrived goes back
/// in one write, as a server answers a batch at once).
async fn echo(ep: quinn::Endpoint) {
    while let Some(inc) = ep.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = inc.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut recv, &mut send).await;
                });
            }
        });
    }
}

/// A: for each client stream, a stream to B on A's one connection to B; the bytes go
/// client -> B as they arrive and B's answers go back to the client as they arrive,
/// whatever has arrived in one write. No frame is parsed on the way: the least work
/// that two round trips through quinn can cost.
async fn forward(ep: quinn::Endpoint, b: SocketAddr) {
    let Ok(connecting) = ep.connect(b, tsn_certs::SERVER_NAME) else {
        return;
    };
    let Ok(to_b) = connecting.await else { return };
    while let Some(inc) = ep.accept().await {
        let to_b = to_b.clone();
        tokio::spawn(async move {
            let Ok(conn) = inc.await else { return };
            while let Ok((mut c_send, mut c_recv)) = conn.accept_bi().await {
                let Ok((mut b_send, mut b_recv)) = to_b.open_bi().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut c_recv, &mut b_send).await;
                    let _ = b_send.finish();
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut b_recv, &mut c_send).await;
                });
            }
        });
    }
}

/// The floor's two parties, running.
pub struct Floor {
    _a: Party,
    _b: Party,
    a_addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl std::fmt::Debug for Floor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Floor").field("a", &self.a_addr).finish()
    }
}

impl Floor {
    /// Starts B, then A connected to B.
    pub fn start() -> Result<Floor> {
        let dir = std::env::temp_dir().join(format!("tsn-bench-floor-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let b = Party::start(&dir, echo)?;
        let b_addr = b.addr;
        let a = Party::start(&dir, move |ep| forward(ep, b_addr))?;
        Ok(Floor {
            a_addr: a.addr,
            _a: a,
            _b: b,
            dir,
        })
    }

    /// `sessions` clients, each with a connection of its own to A and one stream on it.
    pub async fn rig(&self, sessions: usize) -> Result<Rig> {
        let ep = session::endpoint(&self.dir)?;
        let mut rig = Rig::new();
        for _ in 0..sessions {
            let conn = session::connect(&ep, &self.a_addr.to_string()).await?;
            let (send, recv) = conn.open_bi().await?;
            rig.sessions
                .push((Tx::Raw(send), Rx::Raw(FrameReader::new(recv))));
            rig.conns.push(conn);
        }
        // A stream reaches A with its first frame: one round trip per session first.
        let plan = crate::load::Plan {
            rate: 1000.0,
            warm: std::time::Duration::ZERO,
            measure: std::time::Duration::from_millis(sessions as u64),
            drain: std::time::Duration::from_secs(5),
            deliver_drain: std::time::Duration::ZERO,
            arrivals: crate::load::Arrivals::Even,
        };
        let o = crate::load::run(&mut rig, &plan).await?;
        if o.unanswered > 0 || !o.failures.is_empty() {
            return Err(anyhow!("floor set-up failed: {:?}", o.failures));
        }
        Ok(rig)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
