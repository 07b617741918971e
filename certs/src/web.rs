//! The certificate a server shows to browsers.
//!
//! A browser opens a WebTransport session to a server with a self-signed certificate
//! only if the page names the certificate's SHA-256 hash (`serverCertificateHashes` of
//! the W3C WebTransport API), and then only for an ECDSA P-256 certificate valid for at
//! most 14 days. So each server makes its own such certificate at start, makes a new one
//! every [`ROTATE_EVERY`], and offers both hashes while the older is still valid: a page
//! that fetched the hashes before a rotation still connects after it. The hashes reach
//! pages through the coordinator (a server's heartbeat carries them).
//!
//! An operator with a certificate from a public CA passes it instead
//! ([`WebCerts::from_pem_files`]): browsers then check it the usual way and no hash is
//! offered.
//!
//! Connections that ask for ALPN `h3` get this certificate; every other connection gets
//! the node's cluster-CA leaf ([`AlpnResolver`]).

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::CertError;

/// The ALPN of HTTP/3, which WebTransport runs on.
pub const H3_ALPN: &[u8] = b"h3";

/// How long a self-signed web certificate is valid: the most browsers accept for a
/// certificate named by its hash is 14 days; a day less leaves room for clock skew.
pub const VALID_FOR: Duration = Duration::from_secs(13 * 24 * 3600);

/// How often a server makes a new self-signed web certificate. The old one stays valid
/// for [`VALID_FOR`] minus this, and its hash stays on offer until the next rotation.
pub const ROTATE_EVERY: Duration = Duration::from_secs(6 * 24 * 3600);

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    /// The hashes pages may name: the current certificate's first, then the previous
    /// one's while it is valid. Empty for an operator's certificate.
    hashes: Vec<[u8; 32]>,
}

/// The web certificate of one server, shared by its TLS configuration and its heartbeat.
#[derive(Debug, Clone)]
pub struct WebCerts {
    current: Arc<RwLock<Current>>,
    self_signed: bool,
    names: Vec<String>,
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CertError> {
    let provider = rustls::crypto::ring::default_provider();
    Ok(CertifiedKey::from_der(chain, key, &provider)?)
}

fn bad(path: &Path, reason: String) -> CertError {
    CertError::BadFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// The SHA-256 of a certificate's DER: what `serverCertificateHashes` names.
pub fn cert_hash(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A fresh self-signed ECDSA P-256 certificate for `names`, valid from an hour ago for
/// [`VALID_FOR`], and its hash.
fn self_signed(names: &[String]) -> Result<(CertifiedKey, [u8; 32]), CertError> {
    let mut p = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "TSN web");
    p.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    // Browsers count the whole validity period: an hour before now plus the rest stays
    // within the limit.
    p.not_before = now - time::Duration::hours(1);
    p.not_after =
        now + time::Duration::seconds(VALID_FOR.as_secs() as i64) - time::Duration::hours(1);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = p.self_signed(&key)?;
    let hash = cert_hash(cert.der());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((certified(vec![cert.der().clone()], key)?, hash))
}

impl WebCerts {
    /// A self-signed certificate for `names` (the server's host names or addresses; the
    /// hash, not the name, is what a browser checks).
    pub fn self_signed(names: &[String]) -> Result<WebCerts, CertError> {
        let names = if names.is_empty() {
            vec!["localhost".to_string()]
        } else {
            names.to_vec()
        };
        let (key, hash) = self_signed(&names)?;
        Ok(WebCerts {
            current: Arc::new(RwLock::new(Current {
                key: Arc::new(key),
                hashes: vec![hash],
            })),
            self_signed: true,
            names,
        })
    }

    /// An operator's certificate chain and key, PEM files (e.g. from a public CA).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<WebCerts, CertError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| CertError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let chain = CertificateDer::pem_slice_iter(&read(cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(bad(cert, "no certificate in it".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|e| bad(key, format!("not a PEM private key: {e}")))?;
        Ok(WebCerts {
            current: Arc::new(RwLock::new(Current {
                key: Arc::new(certified(chain, key)?),
                hashes: Vec::new(),
            })),
            self_signed: false,
            names: Vec::new(),
        })
    }

    /// The hashes a page may name, the current certificate's first (none for an
    /// operator's certificate).
    pub fn hashes(&self) -> Vec<[u8; 32]> {
        self.read().hashes.clone()
    }

    /// Whether the certificate is one this server made (and rotates).
    pub fn rotates(&self) -> bool {
        self.self_signed
    }

    /// Replaces a self-signed certificate by a new one; the old hash stays on offer
    /// until the next rotation. Does nothing for an operator's certificate.
    pub fn rotate(&self) -> Result<(), CertError> {
        if !self.self_signed {
            return Ok(());
        }
        let (key, hash) = self_signed(&self.names)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let previous = current.hashes.first().copied();
        current.key = Arc::new(key);
        current.hashes = std::iter::once(hash).chain(previous).collect();
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.read().key.clone()
    }
}

/// Chooses the certificate by the ALPN a client asks for: [`H3_ALPN`] alone gets the web
/// certificate, anything else the node's leaf.
#[derive(Debug)]
pub struct AlpnResolver {
    pub(crate) node: Arc<CertifiedKey>,
    pub(crate) web: WebCerts,
}

impl ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wants_h3 = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.all(|p| p == H3_ALPN));
        Some(if wants_h3 {
            self.web.key()
        } else {
            self.node.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_rotation_offers_the_new_hash_first_and_keeps_the_old_one() {
        let web = WebCerts::self_signed(&["127.0.0.1".into()]).unwrap();
        let first = web.hashes();
        assert_eq!(first.len(), 1);
        web.rotate().unwrap();
        let second = web.hashes();
        assert_eq!(second.len(), 2);
        assert_ne!(second[0], first[0]);
        assert_eq!(second[1], first[0]);
        web.rotate().unwrap();
        let third = web.hashes();
        assert_eq!(third[1], second[0], "only the last two are offered");
        assert_eq!(third.len(), 2);
    }

    #[test]
    fn an_operators_certificate_is_shown_and_offers_no_hash() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = CertificateParams::new(vec!["tsn.example.org".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let web = WebCerts::from_pem_files(&c, &k).unwrap();
        assert!(web.hashes().is_empty());
        assert!(!web.rotates());
        web.rotate().unwrap();
        assert_eq!(web.key().cert[0].as_ref(), cert.der().as_ref());
        // A key file that is not one is refused with the file's name.
        std::fs::write(&k, "not a key").unwrap();
        let e = WebCerts::from_pem_files(&c, &k).unwrap_err().to_string();
        assert!(e.contains("key.pem"), "{e}");
    }

    #[test]
    fn the_certificate_is_p256_and_valid_at_most_fourteen_days() {
        let web = WebCerts::self_signed(&[]).unwrap();
        let key = web.key();
        let der = key.cert[0].as_ref();
        assert_eq!(cert_hash(der), web.hashes()[0]);
        // id-ecPublicKey with the prime256v1 curve.
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(der.windows(p256.len()).any(|w| w == p256));
        assert!(VALID_FOR <= Duration::from_secs(14 * 24 * 3600));
        assert!(ROTATE_EVERY < VALID_FOR / 2 + Duration::from_secs(24 * 3600));
    }
}
