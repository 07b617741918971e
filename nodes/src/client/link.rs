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

/// The server the coordinator named was reached but does not serve the user now: it is
/// not (or no longer) the active server, or it closed the connection while the client
/// logged in (it is stopping). Asking the coordinator again helps, at start as later.
#[derive(Debug, thiserror::Error)]
#[error("server {server}: {why}")]
pub struct NotServing {
    /// The server.
    pub server: String,
    /// What it said or did.
    pub why: String,
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
        let reconnect_for = Duration::from_secs(opts.reconnect_secs);
        let first = connect_and_login(&endpoint, &coord, &opts.coordinator, opts.user, &key).await;
        let (server, conn) = match first {
            Ok(found) => found,
            // Reached a server that does not serve the user now (a hand-over, a stale
            // assignment): the same path as a running client's reconnect. Anything
            // else at start (nothing answers, not a coordinator, a foreign CA) fails
            // at once, as the original did.
            Err(e) => match e.downcast::<NotServing>() {
                Ok(not) => {
                    let deadline = Instant::now() + reconnect_for;
                    notice_reconnecting(&out, &opts.coordinator, &not.server, &not.why, deadline);
                    retry(
                        &endpoint,
                        &coord,
                        &opts.coordinator,
                        opts.user,
                        &key,
                        &out,
                        deadline,
                    )
                    .await?
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Link {
            endpoint,
            coord,
            coordinator: opts.coordinator.clone(),
            user: opts.user,
            reconnect_for,
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
        notice_reconnecting(&self.out, &self.coordinator, &self.server, why, deadline);
        self.conn.close(0u32.into(), b"reconnecting");
        match retry(
            &self.endpoint,
            &self.coord,
            &self.coordinator,
            self.user,
            &self.key,
            &self.out,
            deadline,
        )
        .await
        {
            Ok((server, conn)) => {
                self.server = server;
                self.conn = conn;
                Ok(())
            }
            Err(e) => {
                self.lost = true;
                Err(e)
            }
        }
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

fn notice_reconnecting(
    out: &Output,
    coordinator: &crate::common::Coordinators,
    server: &str,
    why: &str,
    deadline: Instant,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    out.notice(&format!(
        "Reconnecting to {coordinator}... (server {server}: {why}; asking the coordinator again for up to {} s)",
        left.as_secs_f64().ceil()
    ));
}

/// Asks the coordinator again, connects and logs in, until it works or `deadline`
/// passes (an attempt in progress is cut off then too). A refused key ends it at once.
async fn retry(
    endpoint: &quinn::Endpoint,
    coord: &CoordConn,
    coordinator: &crate::common::Coordinators,
    user: UserId,
    key: &UserKey,
    out: &Output,
    deadline: Instant,
) -> anyhow::Result<(String, quinn::Connection)> {
    let started = Instant::now();
    let mut last_error = None;
    // Jittered, so that the clients of a failed server do not all ask in lockstep.
    let mut pauses = crate::net::backoff();
    while Instant::now() < deadline {
        let attempt = connect_and_login(endpoint, coord, coordinator, user, key);
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok((server, conn))) => {
                tracing::info!(%server, "reconnected");
                out.notice(&format!("Reconnected to server {server}"));
                return Ok((server, conn));
            }
            Ok(Err(e)) if e.downcast_ref::<LoginRefused>().is_some() => return Err(e),
            Ok(Err(e)) => {
                tracing::debug!("reconnect attempt failed: {e:#}");
                last_error = Some(e);
                let pause = pauses.next().unwrap_or(RETRY_MAX);
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
            Err(_) => {
                last_error.get_or_insert_with(|| anyhow!("the last attempt ran out of time"));
            }
        }
    }
    let e = last_error.unwrap_or_else(|| anyhow!("no attempt made"));
    out.notice(&format!(
        "Gave up reconnecting after {:.0} s: {e:#}",
        started.elapsed().as_secs_f64()
    ));
    Err(e).with_context(|| format!("no server for user {user}"))
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
    use crate::net::CoordinatorError;
    let conn = coord
        .get(endpoint, coordinator, limit)
        .await
        .map_err(|e| CoordinatorError::dialling(coordinator, limit, e))?;
    let reply =
        crate::net::call::<_, CoordReply>(&conn, &CoordRequest::AssignClient { client: user })
            .await;
    if reply.is_err() {
        coord.forget().await;
    }
    match reply {
        Ok(CoordReply::Assigned { addr, .. }) => Ok(addr),
        Ok(CoordReply::Failed(e)) => Err(anyhow!("coordinator {coordinator}: {e}")),
        Ok(other) => Err(CoordinatorError::unexpected(coordinator, &other).into()),
        Err(e) => Err(CoordinatorError::asking(coordinator, e).into()),
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
    let not_serving = |why: String| NotServing {
        server: server.clone(),
        why,
    };
    let conn = match crate::net::connect(endpoint, &server).await {
        Ok(conn) => conn,
        // Gone or stopping (killed, not yet failed over): the coordinator names another
        // server soon. A refused certificate is a mistake to report at once.
        Err(e @ crate::net::NetError::Timeout { .. }) => {
            return Err(not_serving(format!("it did not answer ({e})")).into())
        }
        Err(e @ crate::net::NetError::Connect { .. })
            if !crate::net::ca_mismatch(&e.to_string()) =>
        {
            return Err(not_serving(e.to_string()).into())
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("server {server}"))),
    };
    let challenge = match crate::net::call::<_, ClientReply>(&conn, &ClientRequest::Challenge).await
    {
        Ok(ClientReply::Challenge(c)) => c,
        Ok(ClientReply::Failed(e @ CommandError::NotActive)) => {
            return Err(not_serving(format!("refused the login: {e}")).into())
        }
        Ok(ClientReply::Failed(e)) => bail!("server {server} refused the login: {e}"),
        Ok(other) => bail!("server {server}: unexpected reply {other:?}"),
        Err(e) if crate::net::peer_closed(&e) => return Err(not_serving(e.to_string()).into()),
        Err(e) => bail!("server {server}: {e}"),
    };
    let proof = Some(key.prove(user, &challenge));
    match crate::net::call::<_, ClientReply>(&conn, &ClientRequest::Login { user, proof }).await {
        Ok(ClientReply::Ok) => Ok((server, conn)),
        Ok(ClientReply::Failed(CommandError::KeyMismatch { user })) => {
            Err(LoginRefused { user }.into())
        }
        Ok(ClientReply::Failed(e @ CommandError::NotActive)) => {
            Err(not_serving(format!("refused the login: {e}")).into())
        }
        Ok(ClientReply::Failed(e)) => Err(anyhow!("server {server} refused the login: {e}")),
        Ok(other) => Err(anyhow!("server {server}: unexpected reply {other:?}")),
        Err(e) if crate::net::peer_closed(&e) => Err(not_serving(e.to_string()).into()),
        Err(e) => Err(anyhow!("server {server}: {e}")),
    }
}
