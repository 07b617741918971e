//! The cluster CA and leaf issuance.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{CertError, SERVER_NAME};

const CA_BUNDLE: &str = "ca.pem";
const CA_CERT: &str = "ca.crt";
const CA_NAME: &str = "TSN cluster CA";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The CA's parameters. They are rebuilt identically on every load: a leaf's issuer name
/// and key identifier come from them and the CA key, which is all a signature needs.
fn ca_params() -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// The cluster CA, able to sign leaves.
pub struct ClusterCa {
    cert: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_len", &self.cert.len())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Loads the CA from `dir`, creating it (and `dir`) if absent. Safe when several
    /// processes call it at the same moment: exactly one CA results and all load it.
    pub fn load_or_create(dir: &Path) -> Result<ClusterCa, CertError> {
        let bundle = dir.join(CA_BUNDLE);
        if !bundle.exists() {
            // ca.crt is only ever written after ca.pem, so ca.crt alone was copied here
            // from a cluster: a fresh CA would split this node from it.
            if dir.join(CA_CERT).exists() {
                return Err(CertError::NoCaKey(dir.to_path_buf()));
            }
            // Private whatever the umask: it will hold the CA's key.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
            create(dir, &bundle)?;
        }
        ClusterCa::load(dir)
    }

    /// Loads an existing CA (certificate and key) from `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCa, CertError> {
        let bundle = dir.join(CA_BUNDLE);
        let text = match std::fs::read_to_string(&bundle) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.join(CA_CERT).exists() {
                    CertError::NoCaKey(dir.to_path_buf())
                } else {
                    CertError::NoCa(dir.to_path_buf())
                });
            }
            Err(e) => return Err(io(&bundle)(e)),
        };
        let bad = |reason: &str| CertError::BadFile {
            path: bundle.clone(),
            reason: reason.to_string(),
        };
        let cert = CertificateDer::from_pem_slice(text.as_bytes())
            .map_err(|_| bad("no CA certificate in it"))?;
        let key_der = PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|_| bad("no CA private key in it"))?;
        let key = KeyPair::try_from(&key_der)
            .map_err(|e| bad(&format!("unusable CA private key: {e}")))?;
        // A certificate embeds its subject's public key verbatim: if the key's is absent,
        // the two halves of the file come from different CAs, and every leaf would fail
        // verification far from the cause.
        if !contains(&cert, &key.subject_public_key_info()) {
            return Err(bad("the private key does not belong to the certificate"));
        }
        let cert_pem = first_cert_pem(&text).ok_or_else(|| bad("no CA certificate in it"))?;
        let ca = ClusterCa {
            cert,
            cert_pem,
            issuer: Issuer::new(ca_params()?, key),
        };
        // A node does not need ca.crt itself: if the dir is read-only, say so and go on.
        if let Err(e) = ca.ensure_public_cert(dir) {
            tracing::warn!(error = %e, "could not write ca.crt for clients");
        }
        Ok(ca)
    }

    /// Writes `ca.crt` if it is missing or stale (left from another CA). Its content
    /// follows from `ca.pem`, so racing writers agree.
    fn ensure_public_cert(&self, dir: &Path) -> Result<(), CertError> {
        let path = dir.join(CA_CERT);
        match std::fs::read(&path) {
            Ok(old) if old == self.cert_pem.as_bytes() => return Ok(()),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "replacing ca.crt: it is not the certificate of ca.pem")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let mut tmp = temp_builder(".ca-crt-", 0o644)
            .tempfile_in(dir)
            .map_err(io(dir))?;
        tmp.write_all(self.cert_pem.as_bytes())
            .map_err(io(tmp.path()))?;
        // Public content: 0644 whatever the umask, so every local client can read it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(io(tmp.path()))?;
        }
        tmp.as_file().sync_all().map_err(io(tmp.path()))?;
        // rename: readers see the old state (no file) or the whole file.
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        Ok(())
    }

    /// DER of the CA certificate.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// Issues a fresh leaf (new key pair) for this process.
    pub fn issue_leaf(&self, extra_names: &[String]) -> Result<Identity, CertError> {
        let mut names = vec![SERVER_NAME.to_string()];
        names.extend(extra_names.iter().cloned());
        let mut p = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, SERVER_NAME);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            leaf: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            ca: self.cert.clone(),
        })
    }
}

/// A temporary-file builder whose files are created with `mode` (the umask may remove
/// bits, never add them), so a secret is never readable by others, not even briefly.
fn temp_builder(prefix: &str, mode: u32) -> tempfile::Builder<'_, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    b
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn first_cert_pem(text: &str) -> Option<String> {
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = text[begin..].find(end_marker)? + begin + end_marker.len();
    Some(format!("{}\n", &text[begin..end]))
}

/// Generates a candidate CA and links it into place unless another process won.
fn create(dir: &Path, bundle: &Path) -> Result<(), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    let text = format!("{}{}", cert.pem(), key.serialize_pem());
    let mut tmp = temp_builder(".ca-", 0o600)
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(text.as_bytes()).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    // A hard link fails if ca.pem exists: exactly one candidate becomes the CA, and it is
    // complete when it appears.
    let linked = std::fs::hard_link(tmp.path(), bundle);
    drop(tmp);
    match linked {
        Ok(()) => {
            let cert = CertificateDer::from_pem_slice(text.as_bytes())
                .map(|c| fingerprint(&c))
                .unwrap_or_default();
            tracing::info!(
                path = %bundle.display(),
                fingerprint = %cert,
                "created a NEW cluster CA: only processes that share this ca.pem trust each other; if this system already has a CA, stop and copy its ca.pem into this --cert-dir instead"
            );
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(bundle)(e)),
    }
}

/// The SHA-256 fingerprint of a certificate, as colon-separated hex (what
/// `openssl x509 -noout -fingerprint -sha256 -in ca.crt` prints), to compare CAs across
/// hosts.
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Trust anchors only: what a client needs.
#[derive(Debug, Clone)]
pub struct TrustRoot {
    pub(crate) ca: CertificateDer<'static>,
}

impl TrustRoot {
    /// Loads `ca.crt` from `dir`, or the certificate inside `ca.pem`.
    pub fn load(dir: &Path) -> Result<TrustRoot, CertError> {
        for name in [CA_CERT, CA_BUNDLE] {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let ca =
                        CertificateDer::from_pem_slice(&bytes).map_err(|_| CertError::BadFile {
                            path: path.clone(),
                            reason: "no certificate in it".into(),
                        })?;
                    return Ok(TrustRoot { ca });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Err(CertError::NoCa(dir.to_path_buf()))
    }

    /// The CA of `ca`.
    pub fn from_ca(ca: &ClusterCa) -> TrustRoot {
        TrustRoot { ca: ca.cert_der() }
    }
}

/// A leaf certificate, its key, and the CA it chains to.
pub struct Identity {
    pub(crate) leaf: CertificateDer<'static>,
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
    pub(crate) ca: CertificateDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("leaf_len", &self.leaf.len())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            leaf: self.leaf.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl Identity {
    /// `[leaf, ca]`.
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.clone(), self.ca.clone()]
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// `ClusterCa::load_or_create(dir)?.issue_leaf(extra_names)`.
pub fn node_identity(dir: &Path, extra_names: &[String]) -> Result<Identity, CertError> {
    ClusterCa::load_or_create(dir)?.issue_leaf(extra_names)
}
