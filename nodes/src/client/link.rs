//! The client's link to its server: ask the coordinator, connect, log in; on failure,
//! ask again and reconnect, telling the user what is tried and for how long.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::time::Instant;
use tsn_protocol::client::{ClientReply, ClientRequest, CommandError};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_protocol::UserId;

use super::console::Output;
use super::identity::{LoginRefused, UserKey};
use crate::common::Coordinators;

/// Idle timeout of the client's connections.
const IDLE: Duration = Duration::from_secs(4);
/// Longest pause between reconnection attempts.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Attempts at one command before giving up on it.
const COMMAND_ATTEMPTS: u32 = 3;

/// What the link is told: where the coordinator group is, who the user is, where the
/// cluster's CA and the user's key are, and how long it may go without a server.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The coordinator group.
    pub coordinator: Coordinators,
    /// The user.
    pub user: UserId,
    /// Local UDP port of the client's endpoint (0: any).
    pub port: u16,
    /// How long reconnecting may take before the client gives up.
    pub reconnect_for: Duration,
    /// Where the cluster CA is.
    pub cert_dir: PathBuf,
    /// Where the user's key is kept.
    pub key_dir: PathBuf,
}

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

/// How the client finds its server and logs in: its endpoint, the coordinator group
/// (and its connection to a member), the user and the user's key.
#[derive(Debug, Clone)]
struct Dialer {
    endpoint: quinn::Endpoint,
    coord: CoordConn,
    coordinator: Coordinators,
    user: UserId,
    key: Arc<UserKey>,
}

/// A logged-in connection to the active server of the user's cluster.
#[derive(Debug)]
pub struct Link {
    dialer: Dialer,
    reconnect_for: Duration,
    server: String,
    conn: quinn::Connection,
    lost: bool,
    out: Output,
}

impl Link {
    /// Connects for the first time; errors are reported as `connection failed: -1`.
    pub async fn open(cfg: &LinkConfig, out: Output) -> anyhow::Result<Link> {
        let root = tsn_certs::TrustRoot::load(&cfg.cert_dir)
            .with_context(|| format!("loading the cluster CA from {}", cfg.cert_dir.display()))?;
        let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, cfg.port));
        let mut endpoint =
            quinn::Endpoint::client(bind).with_context(|| format!("binding UDP {bind}"))?;
        endpoint.set_default_client_config(root.client_config(crate::net::transport(IDLE))?);
        let dialer = Dialer {
            endpoint,
            coord: CoordConn::default(),
            coordinator: cfg.coordinator.clone(),
            user: cfg.user,
            key: Arc::new(UserKey::load_or_create(&cfg.key_dir, cfg.user)?),
        };
        let (server, conn) = match dialer.connect_and_login().await {
            Ok(found) => found,
            // Reached a server that does not serve the user now (a hand-over, a stale
            // assignment): the same path as a running client's reconnect. Anything
            // else at start (nothing answers, not a coordinator, a foreign CA) fails
            // at once, as the original did.
            Err(e) => match e.downcast::<NotServing>() {
                Ok(not) => {
                    let deadline = Instant::now() + cfg.reconnect_for;
                    notice_reconnecting(&out, &cfg.coordinator, &not.server, &not.why, deadline);
                    dialer.retry(&out, deadline).await?
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Link {
            dialer,
            reconnect_for: cfg.reconnect_for,
            server,
            conn,
            lost: false,
            out,
        })
    }

    /// The connection to the server.
    pub fn conn(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The user.
    pub fn user(&self) -> UserId {
        self.dialer.user
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
        notice_reconnecting(
            &self.out,
            &self.dialer.coordinator,
            &self.server,
            why,
            deadline,
        );
        self.conn.close(0u32.into(), b"reconnecting");
        match self.dialer.retry(&self.out, deadline).await {
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
        let dialer = self.dialer.clone();
        let server = self.server.clone();
        async move {
            match dialer.assigned_server().await {
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
        if let Some((_, c)) = self.dialer.coord.0.lock().await.take() {
            c.close(0u32.into(), b"bye");
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), self.dialer.endpoint.wait_idle())
            .await;
    }
}

fn notice_reconnecting(
    out: &Output,
    coordinator: &Coordinators,
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

impl Dialer {
    /// Asks the coordinator again, connects and logs in, until it works or `deadline`
    /// passes (an attempt in progress is cut off then too). A refused key ends it at
    /// once.
    async fn retry(
        &self,
        out: &Output,
        deadline: Instant,
    ) -> anyhow::Result<(String, quinn::Connection)> {
        let started = Instant::now();
        let mut last_error = None;
        // Jittered, so that the clients of a failed server do not all ask in lockstep.
        let mut pauses = crate::net::backoff();
        while Instant::now() < deadline {
            let attempt = self.connect_and_login();
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
                    tokio::time::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    )
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
        Err(e).with_context(|| format!("no server for user {}", self.user))
    }

    /// Asks the coordinator group which server serves the user: the member connected
    /// last first, then the others in turn. Errors say in words what is at an address
    /// when it is not a coordinator (the last member's, when none answers).
    async fn assigned_server(&self) -> anyhow::Result<String> {
        let coords = &self.coordinator;
        let mut order: Vec<&String> = coords.addrs().iter().collect();
        if let Some(last) = self.coord.member().await {
            order.sort_by_key(|a| **a != last);
        }
        let mut error = None;
        for addr in order {
            match self.assigned_by(addr, coords.member_timeout()).await {
                Ok(server) => return Ok(server),
                Err(e) => {
                    self.coord.forget().await;
                    error = Some(e);
                }
            }
        }
        Err(error.unwrap_or_else(|| anyhow!("no coordinator address given")))
    }

    /// Asks the member at `coordinator` which server serves the user.
    async fn assigned_by(&self, coordinator: &str, limit: Duration) -> anyhow::Result<String> {
        use crate::net::CoordinatorError;
        let (coord, user) = (&self.coord, self.user);
        let conn = coord
            .get(&self.endpoint, coordinator, limit)
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

    /// Asks the coordinator which server serves the user, connects and logs in.
    async fn connect_and_login(&self) -> anyhow::Result<(String, quinn::Connection)> {
        let (user, key) = (self.user, &self.key);
        let server = self.assigned_server().await?;
        let not_serving = |why: String| NotServing {
            server: server.clone(),
            why,
        };
        let conn = match crate::net::connect(&self.endpoint, &server).await {
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
        let challenge = match crate::net::call::<_, ClientReply>(&conn, &ClientRequest::Challenge)
            .await
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
        match crate::net::call::<_, ClientReply>(&conn, &ClientRequest::Login { user, proof }).await
        {
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
}
