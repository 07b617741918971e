//! Who may speak: the cluster CA, per-process leaf certificates, and the rustls/quinn
//! configurations built from them.
//!
//! # Files
//! In the cert dir (`--cert-dir`, default `./certs`):
//! - `ca.pem`: the CA certificate followed by its private key, mode 0600. Every node
//!   (coordinator, server, sync service) needs it, to issue itself a fresh leaf at start.
//! - `ca.crt`: the CA certificate alone, mode 0644: all a client needs.
//!
//! The first node to start with an empty cert dir creates the CA. Several may start at
//! the same moment: each writes a complete candidate to a temporary file and hard-links
//! it to `ca.pem`, which succeeds for exactly one of them; the others load the winner's.
//! Leaf keys never touch the disk.
//!
//! # Several hosts
//! Copy `ca.pem` to the cert dir of every host that runs a node, and `ca.crt` to hosts
//! that only run clients. Whoever holds `ca.pem` can join the cluster as a node: keep it
//! private.
//!
//! # Names
//! Every leaf carries the DNS name [`SERVER_NAME`], and every connection verifies it.
//! Trust comes from the private CA, not from names: any certificate the CA issued is a
//! TSN node, whatever its address, so one fixed name works across hosts, NAT and port
//! changes.
//!
//! # Who must present a certificate
//! Node-to-node connections are mutual TLS ([`ClientAuth::Required`] on the sync
//! service; [`ClientAuth::Optional`] on the coordinator and servers, which also accept
//! clients and use [`peer_is_node`] to refuse node-only requests from them).

mod ca;
mod tls;

pub use ca::{node_identity, ClusterCa, Identity, TrustRoot};
pub use tls::{peer_is_node, ClientAuth};

/// The DNS name on every leaf and the server name every TSN connection verifies.
pub const SERVER_NAME: &str = "tsn-node";

/// What can go wrong with certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// I/O on a file of the cert dir failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The cert dir has no CA.
    #[error("no cluster CA in {0}: copy ca.crt (clients) or ca.pem (nodes) from a host of the cluster, or start a node there first")]
    NoCa(std::path::PathBuf),
    /// A file of the cert dir is not what it should be.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the TLS configuration (e.g. no TLS 1.3 cipher suite).
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}
