//! Who may speak: the cluster CA, per-process leaf certificates, and the rustls/quinn
//! configurations built from them.
//!
//! # Layout
//! - `ca`: the cluster CA on disk ([`ClusterCa`]), its atomic creation, leaf issuance
//!   ([`Identity`]) and the client-side trust anchor ([`TrustRoot`]).
//! - `tls`: the rustls and quinn configurations built from those ([`ClientAuth`],
//!   [`peer_is_node`]). Every configuration uses the ring provider and TLS 1.3 only, and
//!   negotiates ALPN [`tsn_protocol::ALPN`]; none depends on a process-wide provider.
//!
//! - `web`: the certificate servers show to browsers ([`WebCerts`]), chosen by ALPN
//!   ([`AlpnResolver`]).
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
//! Start one node first (or any node, on the host that will hold the CA); it creates the
//! CA. Then copy `ca.pem` to the cert dir of every host that runs a node, keeping its mode
//! (e.g. `scp -p`, or `install -m 600`), and `ca.crt` to hosts that only run clients.
//! Copy before those hosts start a node: a node that finds no CA creates its own, and
//! nodes of two CAs refuse each other (delete the stray CA and copy the right one).
//! Whoever holds `ca.pem` can join the cluster as a node: keep it private.
//!
//! # Names
//! Every leaf carries the DNS name [`SERVER_NAME`], and every connection verifies it.
//! Trust comes from the private CA, not from names: the only certificates that chain to
//! it are the ones our own nodes issued with `ca.pem`, and every one of them is a TSN
//! node, whatever its address. A name check would add nothing (no public CA is trusted,
//! so nobody else can obtain a `tsn-node` certificate that we accept), while per-host
//! names would break when a node moves, sits behind NAT or is dialed by IP. Extra names
//! passed to [`ClusterCa::issue_leaf`] only help outside tools.
//!
//! # Who must present a certificate
//! Node-to-node connections are mutual TLS ([`ClientAuth::Required`] on the sync
//! service; [`ClientAuth::Optional`] on the coordinator and servers, which also accept
//! clients and use [`peer_is_node`] to refuse node-only requests from them).

mod ca;
mod tls;
mod web;

pub use ca::{fingerprint, node_identity, ClusterCa, Identity, TrustRoot};
pub use tls::{peer_is_node, ClientAuth};
pub use web::{cert_hash, AlpnResolver, WebCerts, H3_ALPN, ROTATE_EVERY, VALID_FOR};

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
    /// The cert dir has the CA certificate (`ca.crt`) but not its key (`ca.pem`): enough
    /// for a client, not for a node, which must issue itself a leaf.
    #[error("{0} has ca.crt but no ca.pem: a node needs the CA key; copy ca.pem from a node host of the cluster")]
    NoCaKey(std::path::PathBuf),
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
    /// quinn refused the TLS configuration (it lacks the cipher suite QUIC's initial
    /// packets need).
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}
