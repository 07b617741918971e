//! The client's link to its server: ask the coordinator, connect, log in; on failure,
//! ask again and reconnect, telling the user on stderr.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::time::Instant;
use tsn_protocol::client::{ClientReply, ClientRequest, CommandError};
use tsn_protocol::coord::{CoordReply, CoordRequest};
use tsn_protocol::UserId;

use super::ClientOpts;

/// Idle timeout of the client's connections.
const IDLE: Duration = Duration::from_secs(4);
/// Pause between reconnection attempts.
const RETRY: Duration = Duration::from_millis(250);
/// Attempts at one command before giving up on it.
const COMMAND_ATTEMPTS: u32 = 3;

/// A logged-in connection to the active server of the user's cluster.
#[derive(Debug)]
pub struct Link {
    endpoint: quinn::Endpoint,
    coordinator: String,
    user: UserId,
    reconnect_for: Duration,
    server: String,
    conn: quinn::Connection,
    lost: bool,
}

impl Link {
    /// Connects for the first time; errors are reported as `connection failed: -1`.
    pub async fn open(opts: &ClientOpts) -> anyhow::Result<Link> {
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
        let (server, conn) = connect_and_login(&endpoint, &opts.coordinator, opts.user).await?;
        Ok(Link {
            endpoint,
            coordinator: opts.coordinator.clone(),
            user: opts.user,
            reconnect_for: Duration::from_secs(opts.reconnect_secs),
            server,
            conn,
            lost: false,
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

    /// Asks the coordinator again, reconnects and logs in, until it works or the
    /// reconnect time runs out.
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        eprintln!("Reconnecting to {}...", self.coordinator);
        self.conn.close(0u32.into(), b"reconnecting");
        let deadline = Instant::now() + self.reconnect_for;
        let mut last_error = None;
        while Instant::now() < deadline {
            match connect_and_login(&self.endpoint, &self.coordinator, self.user).await {
                Ok((server, conn)) => {
                    tracing::info!(%server, "reconnected");
                    self.server = server;
                    self.conn = conn;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!("reconnect attempt failed: {e:#}");
                    last_error = Some(e);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        self.lost = true;
        Err(last_error.unwrap_or_else(|| anyhow!("no attempt made"))).with_context(|| {
            format!(
                "no server for user {} within {:?}",
                self.user, self.reconnect_for
            )
        })
    }

    /// Whether the coordinator now assigns another server than the one we use.
    pub async fn server_moved(&self) -> bool {
        match assigned_server(&self.endpoint, &self.coordinator, self.user).await {
            Ok(addr) => addr != self.server,
            Err(_) => false,
        }
    }

    /// Runs one command, reconnecting (and repeating it) when the link fails or the
    /// server is no longer the active one.
    pub async fn command(&mut self, req: &ClientRequest) -> anyhow::Result<ClientReply> {
        for _ in 0..COMMAND_ATTEMPTS {
            match crate::net::call::<_, ClientReply>(&self.conn, req).await {
                Ok(ClientReply::Failed(CommandError::NotActive)) => {}
                Ok(reply) => return Ok(reply),
                Err(e) => tracing::debug!("command failed: {e}"),
            }
            self.reconnect().await?;
        }
        bail!("the command failed {COMMAND_ATTEMPTS} times")
    }

    /// Closes the connection and waits briefly for the close to reach the server.
    pub async fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

async fn assigned_server(
    endpoint: &quinn::Endpoint,
    coordinator: &str,
    user: UserId,
) -> anyhow::Result<String> {
    let conn = crate::net::connect(endpoint, coordinator)
        .await
        .with_context(|| format!("coordinator {coordinator}"))?;
    let reply =
        crate::net::call::<_, CoordReply>(&conn, &CoordRequest::AssignClient { client: user })
            .await;
    conn.close(0u32.into(), b"done");
    match reply.with_context(|| format!("coordinator {coordinator}"))? {
        CoordReply::Assigned { addr, .. } => Ok(addr),
        CoordReply::Failed(e) => Err(anyhow!("coordinator: {e}")),
        other => Err(anyhow!("coordinator: unexpected reply {other:?}")),
    }
}

async fn connect_and_login(
    endpoint: &quinn::Endpoint,
    coordinator: &str,
    user: UserId,
) -> anyhow::Result<(String, quinn::Connection)> {
    let server = assigned_server(endpoint, coordinator, user).await?;
    let conn = crate::net::connect(endpoint, &server)
        .await
        .with_context(|| format!("server {server}"))?;
    match crate::net::call::<_, ClientReply>(&conn, &ClientRequest::Login { user }).await {
        Ok(ClientReply::Ok) => Ok((server, conn)),
        Ok(ClientReply::Failed(e)) => Err(anyhow!("server {server} refused the login: {e}")),
        Ok(other) => Err(anyhow!("server {server}: unexpected reply {other:?}")),
        Err(e) => Err(anyhow!("server {server}: {e}")),
    }
}
