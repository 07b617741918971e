//! Browsers: WebTransport sessions on the server's own QUIC endpoint.
//!
//! A browser's connection negotiates ALPN `h3` instead of `tsn/1` and is shown the
//! server's web certificate ([`tsn_certs::WebCerts`]). After the HTTP/3 handshake it
//! asks, by an extended CONNECT, for a WebTransport session at [`SESSION_PATH`]; the
//! server checks the page's origin, accepts, and then serves the session's streams
//! exactly as a terminal client's: one command per bidirectional stream, the timeline on
//! one of them, the same messages and frames ([`super::cmd::serve_stream`]).

use std::sync::Arc;

use tsn_certs::WebCerts;

use super::auth::Conn;
use super::cmd::{self, Service};

/// The path of the WebTransport session (`https://<server>/tsn`).
pub const SESSION_PATH: &str = "/tsn";

/// How often the rotation task looks whether the web certificate is due.
const ROTATION_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// Which pages may open sessions, by their `Origin`.
#[derive(Debug, Clone)]
pub struct Origins {
    /// `--web-origin`: these origins exactly (`scheme://host[:port]`).
    exact: Vec<String>,
    /// Without `--web-origin`: any page served from one of these hosts (the
    /// coordinators' hosts, which serve the page).
    hosts: Vec<String>,
}

impl Origins {
    /// `--web-origin` if given, else the hosts of the coordinators' addresses.
    pub fn new(exact: &[String], coordinators: &crate::common::Coordinators) -> Origins {
        let hosts = coordinators
            .addrs()
            .iter()
            .map(|a| host_of(a).to_ascii_lowercase())
            .collect();
        Origins {
            exact: exact
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            hosts,
        }
    }

    /// Whether a page of `origin` may open a session.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if !self.exact.is_empty() {
            return self.exact.contains(&origin);
        }
        let Some(rest) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        let host = host_of(rest);
        self.hosts.contains(&host)
    }
}

/// The host of an address `host:port`, for a certificate's names.
pub fn host_name(addr: &str) -> String {
    host_of(addr)
}

/// The host of `host:port` or `[v6]:port` (brackets kept off).
fn host_of(addr: &str) -> String {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => addr.to_string(),
    }
}

/// Whether a connection came from a browser (it negotiated `h3`).
pub fn is_browser(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == tsn_certs::H3_ALPN)
}

/// Serves one browser connection: the WebTransport handshake, then its streams, until
/// the session or the connection ends.
pub async fn serve(service: Arc<Service>, origins: Origins, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let request = match web_transport_quinn::Request::accept(conn).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%remote, "browser handshake failed: {e}");
            return;
        }
    };
    let origin = request
        .headers
        .get("origin")
        .and_then(|o| o.to_str().ok())
        .unwrap_or("")
        .to_string();
    if request.url.path() != SESSION_PATH {
        tracing::debug!(%remote, url = %request.url, "browser asked for another path");
        let _ = request.reject(http::StatusCode::NOT_FOUND).await;
        return;
    }
    if !origins.allows(&origin) {
        tracing::warn!(%remote, %origin, "refused a browser session from a page of another origin (see --web-origin)");
        let _ = request.reject(http::StatusCode::FORBIDDEN).await;
        return;
    }
    let session = match request.ok().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%remote, "browser session failed: {e}");
            return;
        }
    };
    let user = Conn::default();
    crate::net::serve_each(
        || {
            let session = session.clone();
            async move { session.accept_bi().await.ok() }
        },
        |(send, recv)| cmd::serve_stream(service.clone(), user.clone(), send, recv),
    )
    .await;
}

/// Makes a new self-signed web certificate every [`tsn_certs::ROTATE_EVERY`], for as long
/// as the server runs (the heartbeats carry the new hashes).
pub async fn rotate(web: WebCerts) {
    if !web.rotates() {
        return;
    }
    let mut made = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ROTATION_CHECK).await;
        if made.elapsed() < tsn_certs::ROTATE_EVERY {
            continue;
        }
        match web.rotate() {
            Ok(()) => {
                made = tokio::time::Instant::now();
                tracing::info!(
                    hashes = web.hashes().len(),
                    "made a new web certificate; the previous one stays on offer until the next"
                );
            }
            Err(e) => tracing::error!("could not make a new web certificate: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn coordinators(list: &str) -> crate::common::Coordinators {
        crate::common::parse_coordinators(list).unwrap()
    }

    #[test]
    fn by_default_pages_from_a_coordinators_host_may_connect() {
        let o = Origins::new(&[], &coordinators("127.0.0.1:9000,[::1]:9001"));
        assert!(o.allows("http://127.0.0.1:8080"));
        assert!(o.allows("https://127.0.0.1"));
        assert!(o.allows("http://[::1]:80"));
        assert!(!o.allows("http://127.0.0.2:8080"));
        assert!(!o.allows("http://evil.example"));
        assert!(!o.allows(""));
        assert!(!o.allows("null"));
    }

    #[test]
    fn web_origin_names_the_pages_exactly() {
        let o = Origins::new(
            &["https://tsn.example.org/".into()],
            &coordinators("127.0.0.1:9000"),
        );
        assert!(o.allows("https://tsn.example.org"));
        assert!(!o.allows("http://tsn.example.org"));
        assert!(!o.allows("http://127.0.0.1:8080"));
    }
}
