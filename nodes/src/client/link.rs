//! The client's link to its server: ask the coordinator, connect, log in; on failure,
//! ask again and reconnect, telling the user what is tried and for how long.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::time::Instant;
use tsn_protocol::client::{ClientReply, ClientRequest, CommandError};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_protocol::UserId;

use super::console::Output;
use super::identity::{LoginRefused, UserKey};
use super::ClientOpts;

/// Idle timeout of the client's connections.
const IDLE: Duration = Duration::from_secs(4);
/// Longest pause between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Attempts at one command before giving up on it.
const COMMAND_ATTEMPTS: u32 = 3;

/// The client's one connection to a member of the coordinator group, dialled again only
/// once it is gone.
#[derive(Debug, Clone, Default)]
struct CoordConn(std::sync::Arc<tokio::sync::Mutex<Option<(String, quinn::Connection)>>>);

impl CoordConn {
    async fn get(
        &self,
        endpoint: &quinn::Endpoint,
        coordinator: &str,
        limit: Duration,
    ) -> Result<quinn::Connection, crate::net::NetError> {
        let mut slot = self.0.lock().await;
        if let Some((_, c)) = slot
            .as_ref()
            .filter(|(a, c)| a == coordinator && c.close_reason().is_none())
        {
            return Ok(c.clone());
        }
        let c = crate::net::connect_within(endpoint, coordinator, limit).await?;
        *slot = Some((coordinator.to_string(), c.clone()));
        Ok(c)
    }

    /// The member connected last, if any.
    async fn member(&self) -> Option<String> {
        self.0.lock().await.as_ref().map(|(a, _)| a.clone())
    }

    async fn forget(&self) {
        if let Some((_, c)) = self.0.lock().await.take() {
            c.close(0u32.into(), b"failed");
        }
    }
}

/// A logged-in connection to the active server of the user's cluster.
#[derive(Debug)]
pub struct Link {
    endpoint: quinn::Endpoint,
    coord: CoordConn,
    coordinator: crate::common::Coordinators,
    user: UserId,
    reconnect_for: Duration,
    server: String,
    conn: quinn::Connection,
    lost: bool,
    out: Output,
    key: UserKey,
}

impl Link {
    /// Connects for the first time; errors are reported as `connection failed: -1`.
    pub async fn open(opts: &ClientOpts, out: Output) -> anyhow::Result<Link> {
        let root = tsn_certs::TrustRoot::load(&opts.common.cert_dir).with_context(|| {
            format!(
                "loading the cluster CA from {}",
                opts.common.cert_dir.display()
            )
        })?;
        let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, opts.port));
        let mut endpoint =
            quinn::Endpoint::client(bind).with_context(|| format!("binding UDP {bind}"))?;
        endpoint.set_default_client_config(root.client_config(crate::net::transport(IDLE))?);
        let key_dir = opts.key_dir.as_ref().unwrap_or(&opts.common.cert_dir);
        let key = UserKey::load_or_create(key_dir, opts.user)?;
        let coord = CoordConn::default();
        let (server, conn) =
            connect_and_login(&endpoint, &coord, &opts.coordinator, opts.user, &key).await?;
        Ok(Link {
            endpoint,
            coord,
            coordinator: opts.coordinator.clone(),
            user: opts.user,
            reconnect_for: Duration::from_secs(opts.reconnect_secs),
            server,
            conn,
            lost: false,
            out,
            key,
        })
    }

    /// The connection to the server.
    pub fn conn(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The user.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// Whether reconnecting failed for good.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Asks the coordinator again, reconnects and logs in, until it works, the reconnect
    /// time (`--reconnect-secs`) runs out, or `until` passes. `why` says what went wrong
    /// with the server in use.
    pub async fn reconnect(&mut self, why: &str, until: Option<Instant>) -> anyhow::Result<()> {
        let mut deadline = Instant::now() + self.reconnect_for;
        if let Some(until) = until {
            deadline = deadline.min(until);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.out.notice(&format!(
            "Reconnecting to {}... (server {}: {why}; asking the coordinator again for up to {} s)",
            self.coordinator,
            self.server,
            left.as_secs_f64().ceil()
        ));
        self.conn.close(0u32.into(), b"reconnecting");
        let started = Instant::now();
        let mut last_error = None;
        // Jittered, so that the clients of a failed server do not all ask in lockstep.
        let mut pauses = crate::net::backoff();
        while Instant::now() < deadline {
            match connect_and_login(
                &self.endpoint,
                &self.coord,
                &self.coordinator,
                self.user,
                &self.key,
            )
            .await
            {
                Ok((server, conn)) => {
                    tracing::info!(%server, "reconnected");
                    self.out.notice(&format!("Reconnected to server {server}"));
                    self.server = server;
                    self.conn = conn;
                    return Ok(());
                }
                Err(e) if e.downcast_ref::<LoginRefused>().is_some() => {
                    self.lost = true;
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!("reconnect attempt failed: {e:#}");
                    last_error = Some(e);
                    let pause = pauses.next().unwrap_or(RETRY_MAX);
                    tokio::time::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
            }
        }
        self.lost = true;
        let e = last_error.unwrap_or_else(|| anyhow!("no attempt made"));
        self.out.notice(&format!(
            "Gave up reconnecting after {:.0} s: {e:#}",
            started.elapsed().as_secs_f64()
        ));
        Err(e).with_context(|| format!("no server for user {}", self.user))
    }

    /// A check, runnable on its own task, of whether the coordinator now assigns
    /// another server than the one in use (false when the coordinator cannot say).
    pub fn probe(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let endpoint = self.endpoint.clone();
        let coord = self.coord.clone();
        let coordinator = self.coordinator.clone();
        let (user, server) = (self.user, self.server.clone());
        async move {
            match assigned_server(&endpoint, &coord, &coordinator, user).await {
                Ok(addr) => addr != server,
                Err(_) => false,
            }
        }
    }

    /// Runs one command, reconnecting (and repeating it) when the link fails or the
    /// server is no longer the active one.
    pub async fn command(&mut self, req: &ClientRequest) -> anyhow::Result<ClientReply> {
        let mut why;
        for _ in 0..COMMAND_ATTEMPTS {
            match crate::net::call::<_, ClientReply>(&self.conn, req).await {
                Ok(ClientReply::Failed(CommandError::NotActive)) => {
                    why = "no longer the active server".to_string();
                }
                Ok(reply) => return Ok(reply),
                Err(e) => why = e.to_string(),
            }
            self.reconnect(&why, None).await?;
        }
        bail!("the command failed {COMMAND_ATTEMPTS} times")
    }

    /// Closes the connection and waits briefly for the close to reach the server.
    pub async fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
        if let Some((_, c)) = self.coord.0.lock().await.take() {
            c.close(0u32.into(), b"bye");
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

/// Asks the coordinator group which server serves `user`: the member connected last
/// first, then the others in turn. Errors say in words what is at an address when it is
/// not a coordinator (the last member's, when none answers).
async fn assigned_server(
    endpoint: &quinn::Endpoint,
    coord: &CoordConn,
    coords: &crate::common::Coordinators,
    user: UserId,
) -> anyhow::Result<String> {
    let mut order: Vec<&String> = coords.addrs().iter().collect();
    if let Some(last) = coord.member().await {
        order.sort_by_key(|a| **a != last);
    }
    let mut error = None;
    for addr in order {
        match assigned_by(endpoint, coord, addr, coords.member_timeout(), user).await {
            Ok(server) => return Ok(server),
            Err(e) => {
                coord.forget().await;
                error = Some(e);
            }
        }
    }
    Err(error.unwrap_or_else(|| anyhow!("no coordinator address given")))
}

/// Asks the member at `coordinator` which server serves `user`.
async fn assigned_by(
    endpoint: &quinn::Endpoint,
    coord: &CoordConn,
    coordinator: &str,
    limit: Duration,
    user: UserId,
) -> anyhow::Result<String> {
    use crate::net::NetError;
    let conn = match coord.get(endpoint, coordinator, limit).await {
        Ok(conn) => conn,
        Err(NetError::Timeout { .. }) => bail!(
            "no TSN coordinator answers at {coordinator} (nothing answered QUIC within {} s: \
             is the address right and tsn_coordinator running there?)",
            limit.as_secs_f64()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("coordinator {coordinator}"));
        }
    };
    let reply =
        crate::net::call::<_, CoordReply>(&conn, &CoordRequest::AssignClient { client: user })
            .await;
    if reply.is_err() {
        coord.forget().await;
    }
    let not_coordinator = |what: String| {
        anyhow!(
            "{coordinator} is not a TSN coordinator ({what}); -c takes the coordinator's \
             address, not a server's"
        )
    };
    match reply {
        Ok(CoordReply::Assigned { addr, .. }) => Ok(addr),
        Ok(CoordReply::Failed(e)) => Err(anyhow!("coordinator {coordinator}: {e}")),
        Ok(other) => Err(not_coordinator(format!(
            "it answered the coordinator's question with {other:?}"
        ))),
        Err(NetError::Timeout { .. }) => Err(anyhow!(
            "coordinator {coordinator} did not answer within {} s",
            crate::net::REQUEST_TIMEOUT.as_secs()
        )),
        Err(e) if refused_question(&e) => Err(not_coordinator(format!(
            "it refused the coordinator's question: {e}"
        ))),
        Err(e) => Err(e).with_context(|| format!("coordinator {coordinator}")),
    }
}

/// Whether a request failed because the peer would not take it (it reset the stream,
/// answered with something that is not a reply, or closed without answering), rather
/// than because the connection failed.
fn refused_question(e: &crate::net::NetError) -> bool {
    use crate::net::NetError;
    use tsn_protocol::{CodecError, FrameError};
    match e {
        NetError::NoReply => true,
        NetError::Codec(CodecError::Frame(FrameError::Io(io))) => {
            io.kind() == std::io::ErrorKind::ConnectionReset
        }
        NetError::Codec(_) => true,
        _ => false,
    }
}

async fn connect_and_login(
    endpoint: &quinn::Endpoint,
    coord: &CoordConn,
    coordinator: &crate::common::Coordinators,
    user: UserId,
    key: &UserKey,
) -> anyhow::Result<(String, quinn::Connection)> {
    let server = assigned_server(endpoint, coord, coordinator, user).await?;
    let conn = crate::net::connect(endpoint, &server)
        .await
        .with_context(|| format!("server {server}"))?;
    let challenge = match crate::net::call::<_, ClientReply>(&conn, &ClientRequest::Challenge).await
    {
        Ok(ClientReply::Challenge(c)) => c,
        Ok(ClientReply::Failed(e)) => bail!("server {server} refused the login: {e}"),
        Ok(other) => bail!("server {server}: unexpected reply {other:?}"),
        Err(e) => bail!("server {server}: {e}"),
    };
    let proof = Some(key.prove(user, &challenge));
    match crate::net::call::<_, ClientReply>(&conn, &ClientRequest::Login { user, proof }).await {
        Ok(ClientReply::Ok) => Ok((server, conn)),
        Ok(ClientReply::Failed(CommandError::KeyMismatch { user })) => {
            Err(LoginRefused { user }.into())
        }
        Ok(ClientReply::Failed(e)) => Err(anyhow!("server {server} refused the login: {e}")),
        Ok(other) => Err(anyhow!("server {server}: unexpected reply {other:?}")),
        Err(e) => Err(anyhow!("server {server}: {e}")),
    }
}
