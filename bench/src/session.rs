//! Protocol-level clients for the benchmark: the same messages `tsn_client` sends,
//! without a terminal in the way, so that timings are the system's own.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tsn_protocol::client::{ClientReply, ClientRequest, TimelineDown, TimelinePos, TimelineUp};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_protocol::{FrameReader, UserId};

/// Transport settings of benchmark connections: as the client's.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1024u32.into());
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(4)).expect("idle timeout"),
    ));
    Arc::new(t)
}

/// The receive and send buffers asked for each of the benchmark's client sockets (the
/// kernel grants at most `net.core.rmem_max` / `wmem_max`): one socket stands for hundreds
/// of client machines, and a post to thousands of open timelines is a burst of one
/// datagram for each. With the kernel's default (212,992 bytes here, about 150 datagrams)
/// the socket dropped the end of the burst, which a machine of their own would each have
/// received, and the connections that lost one waited for QUIC's loss timer.
const UDP_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `bind` with [`UDP_BUFFER`]-sized buffers, as large as the kernel
/// allows.
fn udp_socket(bind: SocketAddr) -> Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: a smaller buffer works, it only drops sooner in a burst.
    let _ = state.set_recv_buffer_size((&socket).into(), UDP_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), UDP_BUFFER);
    Ok(socket)
}

/// `n` client endpoints, a socket each (each socket stands for many client machines),
/// made within `rt`.
pub fn endpoints(
    rt: &tokio::runtime::Runtime,
    certs: &Path,
    n: usize,
) -> Result<Vec<quinn::Endpoint>> {
    let _in = rt.enter();
    (0..n).map(|_| endpoint(certs)).collect()
}

/// A client endpoint trusting the system's CA.
pub fn endpoint(certs: &Path) -> Result<quinn::Endpoint> {
    let root = tsn_certs::TrustRoot::load(certs)?;
    let socket = udp_socket(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(root.client_config(transport())?);
    Ok(ep)
}

/// Dials `addr`.
pub async fn connect(ep: &quinn::Endpoint, addr: &str) -> Result<quinn::Connection> {
    let sock: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect(sock, tsn_certs::SERVER_NAME)?,
    )
    .await
    .map_err(|_| anyhow!("connect {addr} timed out"))??)
}

/// One request, one reply, on a new stream.
pub async fn call<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Req,
) -> Result<Rep> {
    let (mut send, mut recv) = conn.open_bi().await?;
    tsn_protocol::write_msg(&mut send, req).await?;
    send.finish()?;
    tsn_protocol::read_msg(&mut recv)
        .await?
        .ok_or_else(|| anyhow!("no reply"))
}

/// The server the coordinator assigns to `user`.
pub async fn assigned(ep: &quinn::Endpoint, coord: &str, user: UserId) -> Result<String> {
    let conn = connect(ep, coord).await?;
    let reply = call::<_, CoordReply>(&conn, &CoordRequest::AssignClient { client: user }).await;
    conn.close(0u32.into(), b"");
    match reply? {
        CoordReply::Assigned { addr, .. } => Ok(addr),
        other => bail!("assignment failed: {other:?}"),
    }
}

/// An open timeline stream. Messages are read straight off the stream by whoever waits
/// for them, as the floor's client does, so no task hand-off is timed.
#[derive(Debug)]
pub struct Timeline {
    send: quinn::SendStream,
    recv: FrameReader<quinn::RecvStream>,
}

impl Timeline {
    /// Opens `user`'s timeline on `conn` (the user must have logged in).
    pub async fn open(conn: &quinn::Connection, user: UserId) -> Result<Timeline> {
        Timeline::open_since(conn, user, None).await
    }

    /// Opens `user`'s timeline on `conn` after position `since` (`None`: the last
    /// entries, as on first entry).
    pub async fn open_since(
        conn: &quinn::Connection,
        user: UserId,
        since: Option<TimelinePos>,
    ) -> Result<Timeline> {
        let (mut send, recv) = conn.open_bi().await?;
        tsn_protocol::write_msg(&mut send, &ClientRequest::Timeline { user, since }).await?;
        let mut recv = FrameReader::new(recv);
        match recv.next_msg::<ClientReply>().await? {
            Some(ClientReply::Ok) => {}
            other => bail!("timeline refused: {other:?}"),
        }
        Ok(Timeline { send, recv })
    }

    /// The next message the server sends down; `None` once the stream has ended or
    /// failed. Cancel-safe.
    pub async fn next(&mut self) -> Option<TimelineDown> {
        self.recv.next_msg::<TimelineDown>().await.ok().flatten()
    }

    /// Its two halves, for a sender and a receiver that run apart.
    pub fn into_parts(self) -> (quinn::SendStream, FrameReader<quinn::RecvStream>) {
        (self.send, self.recv)
    }

    /// Sends a post.
    pub async fn post(&mut self, nonce: u64, text: String) -> Result<()> {
        tsn_protocol::write_msg(&mut self.send, &TimelineUp::Post { nonce, text }).await?;
        Ok(())
    }

    /// Waits for the acknowledgement of `nonce`, skipping other messages.
    pub async fn ack(&mut self, nonce: u64, within: Duration) -> Result<()> {
        let wait = async {
            while let Some(m) = self.next().await {
                match m {
                    TimelineDown::Ack { nonce: n } if n == nonce => return Ok(()),
                    TimelineDown::Refused { nonce: n, reason } if n == nonce => {
                        bail!("refused: {reason}")
                    }
                    TimelineDown::NotActive => bail!("server no longer active"),
                    _ => {}
                }
            }
            bail!("timeline closed")
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| anyhow!("no ack within {within:?}"))?
    }
}

/// A follower's open timeline that, like `tsn_client`, reopens itself from the last entry
/// it has when the server closes it for falling behind, so that a follower who cannot
/// keep up gets every entry late rather than some never.
#[derive(Debug)]
pub struct Follower {
    conn: quinn::Connection,
    user: UserId,
    timeline: Timeline,
    /// The last entry seen.
    at: Option<TimelinePos>,
    /// The server closed the timeline; it is yet to be reopened.
    closed: bool,
    /// How often the server closed the timeline and it was reopened.
    pub reopened: u64,
}

impl Follower {
    /// Opens `user`'s timeline on `conn` (the user must have logged in).
    pub async fn open(conn: &quinn::Connection, user: UserId) -> Result<Follower> {
        Ok(Follower {
            conn: conn.clone(),
            user,
            timeline: Timeline::open(conn, user).await?,
            at: None,
            closed: false,
            reopened: 0,
        })
    }

    /// The next message, reopening the timeline on [`TimelineDown::Reopen`] (which is
    /// never returned); `None` once the stream has ended. Cancel-safe: a reopening
    /// cut short is begun again by the next call.
    pub async fn next(&mut self) -> Result<Option<TimelineDown>> {
        loop {
            if self.closed {
                self.timeline = Timeline::open_since(&self.conn, self.user, self.at).await?;
                self.closed = false;
                self.reopened += 1;
            }
            let m = self.timeline.recv.next_msg::<TimelineDown>().await?;
            match &m {
                Some(TimelineDown::Position(p)) => self.at = Some(*p),
                Some(TimelineDown::Entry { post, seq }) => {
                    if let Some(at) = self.at.as_mut() {
                        at.seq = *seq;
                        at.ts_us = post.ts_us;
                    }
                }
                Some(TimelineDown::Reopen) => {
                    self.closed = true;
                    continue;
                }
                _ => {}
            }
            return Ok(m);
        }
    }
}

/// Where the bench keeps its users' keys (each system it starts is new, so any key binds
/// at a user's first login).
pub fn keys() -> std::path::PathBuf {
    std::env::temp_dir().join("tsn-bench-keys")
}

/// Logs `user` in through the coordinator's assignment; returns the connection.
pub async fn login(ep: &quinn::Endpoint, coord: &str, user: UserId) -> Result<quinn::Connection> {
    let addr = assigned(ep, coord, user).await?;
    let conn = connect(ep, &addr).await?;
    tsn_tests::login(&conn, user, &keys()).await?;
    Ok(conn)
}
