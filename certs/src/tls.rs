//! rustls and quinn configurations.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::ca::{Identity, TrustRoot};
use crate::web::{AlpnResolver, WebCerts, H3_ALPN};
use crate::CertError;

/// Whether a server requires its peers to present a certificate from the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mutual TLS: only nodes may connect.
    Required,
    /// Anonymous peers (clients) are allowed; a presented certificate must chain to the CA.
    Optional,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, CertError> {
    let mut store = RootCertStore::empty();
    store.add(ca.clone())?;
    Ok(Arc::new(store))
}

fn alpn() -> Vec<Vec<u8>> {
    vec![tsn_protocol::ALPN.to_vec()]
}

fn quic_client(
    mut tls: rustls::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, CertError> {
    tls.alpn_protocols = alpn();
    let quic = QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport);
    Ok(cfg)
}

fn client_builder(
    ca: &CertificateDer<'static>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, CertError>
{
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?))
}

impl TrustRoot {
    /// A client config that verifies the server against the CA and presents no
    /// certificate.
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, CertError> {
        quic_client(client_builder(&self.ca)?.with_no_client_auth(), transport)
    }
}

impl Identity {
    /// A server config presenting this leaf.
    pub fn server_config(
        &self,
        auth: ClientAuth,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, CertError> {
        self.server_config_with_web(auth, transport, None)
    }

    /// A server config presenting this leaf to [`tsn_protocol::ALPN`] connections and,
    /// with `web`, also accepting [`H3_ALPN`] (browsers' WebTransport), to which it shows
    /// the web certificate.
    pub fn server_config_with_web(
        &self,
        auth: ClientAuth,
        transport: Arc<quinn::TransportConfig>,
        web: Option<&WebCerts>,
    ) -> Result<quinn::ServerConfig, CertError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&self.ca)?, provider());
        let verifier = match auth {
            ClientAuth::Required => verifier.build()?,
            ClientAuth::Optional => verifier.allow_unauthenticated().build()?,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier);
        let mut tls = match web {
            None => builder.with_single_cert(self.cert_chain(), self.key())?,
            Some(web) => {
                let node = rustls::sign::CertifiedKey::from_der(
                    self.cert_chain(),
                    self.key(),
                    &rustls::crypto::ring::default_provider(),
                )?;
                builder.with_cert_resolver(Arc::new(AlpnResolver {
                    node: Arc::new(node),
                    web: web.clone(),
                }))
            }
        };
        tls.alpn_protocols = alpn();
        if web.is_some() {
            tls.alpn_protocols.push(H3_ALPN.to_vec());
        }
        let quic = QuicServerConfig::try_from(tls)?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(transport);
        Ok(cfg)
    }

    /// A client config that verifies the server against the CA and presents this leaf.
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, CertError> {
        let tls = client_builder(&self.ca)?.with_client_auth_cert(self.cert_chain(), self.key())?;
        quic_client(tls, transport)
    }
}

/// Whether the peer of this server-side connection presented a certificate. rustls has
/// verified any presented certificate against the CA, so this means "a TSN node".
pub fn peer_is_node(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .is_some_and(|chain| !chain.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;
    use crate::{ClusterCa, SERVER_NAME};

    const T: Duration = Duration::from_secs(5);

    /// The integration tests cannot build this peer through the public API: a leaf from a
    /// foreign CA whose holder nevertheless trusts our CA. It isolates the server's check:
    /// the client accepts our server, so only the server can refuse the connection.
    #[tokio::test]
    async fn server_refuses_leaf_from_another_ca_even_if_peer_trusts_ours() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ca = ClusterCa::load_or_create(d1.path()).unwrap();
        let other = ClusterCa::load_or_create(d2.path()).unwrap();
        let transport = Arc::new(quinn::TransportConfig::default());

        let server_id = ca.issue_leaf(&[]).unwrap();
        let server = quinn::Endpoint::server(
            server_id
                .server_config(ClientAuth::Required, transport.clone())
                .unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();

        let foreign = other.issue_leaf(&[]).unwrap();
        let intruder = Identity {
            ca: ca.cert_der(),
            ..foreign
        };
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(intruder.client_config(transport).unwrap());

        let (accepted, connected) = tokio::join!(
            timeout(T, async {
                let incoming = server.accept().await.unwrap();
                incoming.await
            }),
            timeout(T, async {
                let conn = client.connect(addr, SERVER_NAME).unwrap().await?;
                // TLS 1.3: the client may finish its side of the handshake before the
                // server has judged its certificate; the refusal then closes the
                // connection, which the first round trip observes.
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(b"ping").await?;
                send.finish()?;
                recv.read_to_end(64).await?;
                anyhow::Ok(())
            }),
        );
        assert!(
            accepted.unwrap().is_err(),
            "the server must not get a connection"
        );
        assert!(
            connected.unwrap().is_err(),
            "the client must not get a stream"
        );

        client.close(0u32.into(), b"");
        server.close(0u32.into(), b"");
        timeout(T, client.wait_idle()).await.unwrap();
        timeout(T, server.wait_idle()).await.unwrap();
    }
}
