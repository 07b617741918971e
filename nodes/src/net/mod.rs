//! QUIC plumbing shared by every role.
//!
//! # Layout
//! - here: endpoints, dialling with timeouts, one-request-per-stream calls, and the
//!   transport limits.
//! - `accept`: the accept loop and the streams of one connection, each a task.
//! - `advertise`: the advertised-address rule.
//! - `stream`: a client stream's two halves, over `tsn/1` or WebTransport.
//!
//! Limits, and what they cost: a connection may have at most [`MAX_BIDI_STREAMS`] open
//! bidirectional streams; each stream's receive window is [`STREAM_WINDOW`] and the whole
//! connection's [`CONNECTION_WINDOW`], so a peer can make us buffer at most
//! `CONNECTION_WINDOW` bytes per connection (1 MiB + one frame being decoded per stream).
//! Endpoints accept at most [`MAX_CONNECTIONS`] connections at once.

mod accept;
mod advertise;
mod stream;

pub use accept::{accept_loop, serve_each, serve_streams};
pub use advertise::{advertise_addr, dialable};
pub use stream::{RecvHalf, SendHalf};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tsn_protocol::CodecError;

/// Open bidirectional streams a peer may have on one connection.
pub const MAX_BIDI_STREAMS: u32 = 256;
/// Receive window of one stream: more than one maximum frame, so a frame never stalls.
pub const STREAM_WINDOW: u32 = 2 * tsn_protocol::MAX_FRAME_LEN as u32;
/// Receive window of one connection.
pub const CONNECTION_WINDOW: u32 = 4 * tsn_protocol::MAX_FRAME_LEN as u32;
/// Connections an endpoint serves at once; more are refused.
pub const MAX_CONNECTIONS: usize = 20_000;
/// How long dialling a peer may take before we give up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request/response exchange may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The pauses between attempts of a reconnect loop: exponential from 100 ms to 2 s, with
/// jitter so that peers that lost the same node do not retry in lockstep, for ever.
pub fn backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Errors of the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The address could not be resolved.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// What was resolved.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// Dialling failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{what} timed out")]
    Timeout {
        /// What timed out.
        what: &'static str,
    },
    /// The connection or stream failed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("stream closed: {0}")]
    Write(#[from] quinn::ClosedStream),
    /// Encoding, decoding or framing failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The peer closed the stream without answering.
    #[error("peer closed the stream without answering")]
    NoReply,
}

/// Why asking a coordinator failed, in the words every binary uses for the usual
/// mistakes: nothing listening at the address, a server's address where a coordinator's
/// is wanted. Anything else (a foreign CA among them) keeps the transport's own reason.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Nothing answered QUIC at the address.
    #[error(
        "no TSN coordinator answers at {addr} (nothing answered QUIC within {secs} s: \
         is the address right and tsn_coordinator running there?)"
    )]
    NothingAnswers {
        /// The address tried.
        addr: String,
        /// How long the client waited.
        secs: f64,
    },
    /// Something that is not a coordinator answered (a server, most likely).
    #[error(
        "{addr} is not a TSN coordinator ({what}); -c takes the coordinator's address, \
         not a server's"
    )]
    NotACoordinator {
        /// The address tried.
        addr: String,
        /// What it did instead of answering.
        what: String,
    },
    /// The coordinator took the question and did not answer it in time.
    #[error("coordinator {addr} did not answer within {secs} s")]
    NoAnswer {
        /// The address tried.
        addr: String,
        /// The time limit of one request.
        secs: u64,
    },
    /// Any other failure, with the transport's reason.
    #[error("coordinator {addr}")]
    Other {
        /// The address tried.
        addr: String,
        /// The transport's reason.
        #[source]
        source: NetError,
    },
}

impl CoordinatorError {
    /// Dialling the coordinator at `addr` within `limit` failed.
    pub fn dialling(addr: &str, limit: Duration, e: NetError) -> CoordinatorError {
        match e {
            NetError::Timeout { .. } => CoordinatorError::NothingAnswers {
                addr: addr.to_string(),
                secs: limit.as_secs_f64(),
            },
            source => CoordinatorError::Other {
                addr: addr.to_string(),
                source,
            },
        }
    }

    /// A request to the (connected) coordinator at `addr` failed.
    pub fn asking(addr: &str, e: NetError) -> CoordinatorError {
        match e {
            NetError::Timeout { .. } => CoordinatorError::NoAnswer {
                addr: addr.to_string(),
                secs: REQUEST_TIMEOUT.as_secs(),
            },
            e if refused_question(&e) => CoordinatorError::NotACoordinator {
                addr: addr.to_string(),
                what: format!("it refused the coordinator's question: {e}"),
            },
            source => CoordinatorError::Other {
                addr: addr.to_string(),
                source,
            },
        }
    }

    /// The peer at `addr` answered the coordinator's question with `reply`, which only
    /// something else sends.
    pub fn unexpected(addr: &str, reply: &dyn std::fmt::Debug) -> CoordinatorError {
        CoordinatorError::NotACoordinator {
            addr: addr.to_string(),
            what: format!("it answered the coordinator's question with {reply:?}"),
        }
    }
}

/// Whether a request failed because the peer would not take it (it reset the stream,
/// answered with something that is not a reply, or closed without answering), rather
/// than because the connection failed.
pub fn refused_question(e: &NetError) -> bool {
    use tsn_protocol::FrameError;
    match e {
        NetError::NoReply => true,
        NetError::Codec(CodecError::Frame(FrameError::Io(io))) => {
            io.kind() == std::io::ErrorKind::ConnectionReset
        }
        NetError::Codec(_) => true,
        _ => false,
    }
}

/// Whether a request failed because the peer closed the connection on purpose (it is
/// stopping, or refused the connection), rather than because it could not be reached.
pub fn peer_closed(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Connection(
            quinn::ConnectionError::ApplicationClosed(_)
                | quinn::ConnectionError::ConnectionClosed(_)
                | quinn::ConnectionError::Reset
        )
    )
}

/// Transport settings: keep-alive at a third of the idle timeout, so a live but quiet
/// peer is never timed out, and a dead one is noticed within `idle`.
pub fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config(idle))
}

fn transport_config(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    t.keep_alive_interval(Some(idle / 3));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Unidirectional streams a browser may open: HTTP/3's control stream and QPACK's two,
/// and a few to spare (TSN itself uses none).
pub const WEB_UNI_STREAMS: u32 = 8;

/// [`transport`] for an endpoint that also serves browsers: HTTP/3 needs a few
/// unidirectional streams.
pub fn web_transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = transport_config(idle);
    t.max_concurrent_uni_streams(WEB_UNI_STREAMS.into());
    Arc::new(t)
}

/// Resolves `host:port` to one socket address, preferring IPv4.
pub async fn resolve(addr: &str) -> Result<SocketAddr, NetError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| NetError::Resolve {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| NetError::Resolve {
            addr: addr.to_string(),
            reason: "no addresses".into(),
        })
}

/// Dials `addr` with the endpoint's default client config, within [`CONNECT_TIMEOUT`].
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: &str,
) -> Result<quinn::Connection, NetError> {
    connect_within(endpoint, addr, CONNECT_TIMEOUT).await
}

/// [`connect`] with another time limit.
pub async fn connect_within(
    endpoint: &quinn::Endpoint,
    addr: &str,
    limit: Duration,
) -> Result<quinn::Connection, NetError> {
    let sock = resolve(addr).await?;
    let connecting = endpoint
        .connect(sock, tsn_certs::SERVER_NAME)
        .map_err(|e| NetError::Connect {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(NetError::Connect {
            addr: addr.to_string(),
            reason: explain_handshake(&e.to_string()),
        }),
        Err(_) => Err(NetError::Timeout { what: "connecting" }),
    }
}

/// Whether a failed handshake's reason says that the two sides do not trust each
/// other's certificate: this side refused the peer's, or the peer refused this side's.
pub fn ca_mismatch(reason: &str) -> bool {
    reason.contains("invalid peer certificate")
        || reason.contains("alert") && reason.to_ascii_lowercase().contains("certificate")
        || reason.contains("UnknownCA")
}

/// A failed handshake's reason, with the remedy when the two sides do not share a
/// cluster CA (a mistyped or fresh --cert-dir makes a process create a CA of its own).
pub fn explain_handshake(reason: &str) -> String {
    if ca_mismatch(reason) {
        let ours = reason.contains("invalid peer certificate");
        let who = if ours {
            "its certificate is not signed by this process's cluster CA"
        } else {
            "it refused this process's certificate"
        };
        format!(
            "{reason} ({who}: the two do not share a cluster CA; every process of one system \
             must use the same CA: copy the system's ca.pem into each node's --cert-dir, and \
             ca.crt into each client's, then restart)"
        )
    } else {
        reason.to_string()
    }
}

/// The first message of a stream a peer opened, `what` naming it for the log: `None`
/// when the stream ended before one, or held something that is not one (the stream is
/// then reset, so the peer's request fails at once instead of waiting).
pub async fn first_msg<T: DeserializeOwned>(
    send: &mut impl SendHalf,
    recv: &mut impl RecvHalf,
    what: &str,
) -> Option<T> {
    match tsn_protocol::read_msg::<T, _>(recv).await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!("bad {what}: {e}");
            send.reset_stream(1);
            None
        }
    }
}

/// One request and one reply on a fresh bidirectional stream, within [`REQUEST_TIMEOUT`].
pub async fn call<Req: Serialize, Rep: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Req,
) -> Result<Rep, NetError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        tsn_protocol::write_msg(&mut send, req).await?;
        send.finish()?;
        match tsn_protocol::read_msg::<Rep, _>(&mut recv).await? {
            Some(rep) => Ok(rep),
            None => Err(NetError::NoReply),
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| NetError::Timeout { what: "request" })?
}

/// The address others should dial to reach a node bound to `bound` that talks to the
/// coordinator at `coord`: an explicit `--advertise` wins; a specific bind address is used
/// as is; for a wildcard bind, the local address the system would use to reach the
/// A client endpoint on any local port that dials with `config` (an operator's tools).
pub fn client_endpoint(config: quinn::ClientConfig) -> anyhow::Result<quinn::Endpoint> {
    let any = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
    let mut endpoint = quinn::Endpoint::client(any)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A server endpoint bound to `bind` that also dials with the node's identity.
pub fn node_endpoint(
    identity: &tsn_certs::Identity,
    auth: tsn_certs::ClientAuth,
    bind: SocketAddr,
    idle: Duration,
    web: Option<&tsn_certs::WebCerts>,
) -> anyhow::Result<quinn::Endpoint> {
    use anyhow::Context;
    let t = transport(idle);
    let server = match web {
        None => identity.server_config(auth, t.clone())?,
        Some(web) => identity.server_config_with_web(auth, web_transport(idle), Some(web))?,
    };
    let mut endpoint =
        quinn::Endpoint::server(server, bind).with_context(|| format!("binding UDP {bind}"))?;
    endpoint.set_default_client_config(identity.client_config(t)?);
    Ok(endpoint)
}

/// An endpoint that only dials, bound to an ephemeral port of `bind`, with the node's
/// identity `config`: a node's connections to its peers go out from a UDP socket other
/// than the one its clients send to (each socket has a receive buffer of its own, which
/// the kernel drops from when it is full).
pub fn dialling_endpoint(
    bind: IpAddr,
    config: quinn::ClientConfig,
) -> anyhow::Result<quinn::Endpoint> {
    use anyhow::Context;
    let bind = SocketAddr::new(bind, 0);
    let mut endpoint =
        quinn::Endpoint::client(bind).with_context(|| format!("binding UDP {bind}"))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Whether `e` is part of a stop rather than a fault: this process is stopping, or the
/// peer went away on purpose (it closed the connection as it stopped, "closed by peer"
/// with the reason it gave, or refused a new one because it is stopping), or this
/// process closed the connection as it stops. Worth an info line, not a warning: a clean
/// stop of a whole system is every process seeing the others go. Errors reach here with
/// their sources as text (a dial's reason is kept as words), so the words are matched.
pub fn part_of_a_stop(e: &anyhow::Error) -> bool {
    if crate::common::stopping() {
        return true;
    }
    let text = format!("{e:#}");
    text.contains("closed by peer")
        || text.contains("refused to accept a new connection")
        || text.ends_with("connection lost: closed")
}

/// Idle timeout of a node's connections for a given heartbeat interval: long enough to
/// ride out a slow beat or a busy moment of the machine (at least 2 s: a client's
/// connection to a busy server must not be dropped for it), short enough that a dead
/// peer is noticed within a few beats. Failover does not wait for it: the coordinator
/// decides from heartbeats.
pub fn node_idle_timeout(heartbeat: Duration) -> Duration {
    (heartbeat * 3).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// What a node has once it can serve: its endpoint, the address it is bound to, and the
/// client configuration (its identity) for a second endpoint.
#[derive(Debug)]
pub struct NodeListener {
    /// The endpoint: listens, and dials peers.
    pub endpoint: quinn::Endpoint,
    /// Where it is bound.
    pub local: SocketAddr,
    /// The node's identity as a dialling configuration (for the coordinator link, which
    /// has an endpoint and a thread of its own: see [`crate::link`]).
    pub client_config: quinn::ClientConfig,
    /// The certificate shown to browsers, when the endpoint accepts them.
    pub web: Option<tsn_certs::WebCerts>,
}

/// Everything a node does before it serves: issue itself a leaf from the cluster CA in
/// `--cert-dir`, and bind its endpoint on `--bind` and `port`.
pub fn node_listener(
    common: &crate::common::CommonOpts,
    node: &crate::common::NodeOpts,
    port: u16,
    auth: tsn_certs::ClientAuth,
    web: Option<&tsn_certs::WebCerts>,
) -> anyhow::Result<NodeListener> {
    use anyhow::Context;
    let identity = tsn_certs::node_identity(&common.cert_dir, &[])
        .with_context(|| format!("loading certificates from {}", common.cert_dir.display()))?;
    let idle = node_idle_timeout(node.heartbeat());
    let endpoint = node_endpoint(&identity, auth, SocketAddr::new(node.bind, port), idle, web)?;
    let local = endpoint.local_addr()?;
    let client_config = identity.client_config(transport(idle))?;
    Ok(NodeListener {
        endpoint,
        local,
        client_config,
        web: web.cloned(),
    })
}
