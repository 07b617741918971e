//! A user's key: an Ed25519 key pair (one a browser's WebCrypto can hold too), kept in the
//! client's key directory as `user-<id>.key` (PKCS#8, mode 0600) and created on first use.
//! At login the client signs the server's fresh challenge with it; the user's home
//! cluster binds the user to the first key it sees. To use an account from another
//! device, copy this file to that device's key directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tsn_protocol::client::LoginProof;
use tsn_protocol::UserId;

/// The login was refused for good (another key is bound): no retry helps.
#[derive(Debug, thiserror::Error)]
#[error("Login refused: user {user} is registered with another key")]
pub struct LoginRefused {
    /// The user.
    pub user: UserId,
}

/// A user's key pair.
#[derive(Debug)]
pub struct UserKey {
    pair: Ed25519KeyPair,
    path: PathBuf,
}

impl UserKey {
    /// The file of `user`'s key in `dir`.
    pub fn path(dir: &Path, user: UserId) -> PathBuf {
        dir.join(format!("user-{user}.key"))
    }

    /// Loads `user`'s key from `dir`, creating it (and `dir`) if there is none yet.
    /// Several clients starting at once end with one key: the file appears whole or not
    /// at all (written aside, then hard-linked into place).
    pub fn load_or_create(dir: &Path, user: UserId) -> anyhow::Result<UserKey> {
        let path = UserKey::path(dir, user);
        if !path.exists() {
            // Private whatever the umask (the datastore's rule): it holds the user's key.
            tsn_datastore::private::create_dirs(dir)
                .with_context(|| format!("creating key directory {}", dir.display()))?;
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("generating a key for user {user} failed"))?;
            let tmp = dir.join(format!(".user-{user}.key.{}", std::process::id()));
            {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                f.write_all(pkcs8.as_ref())?;
                f.sync_all()?;
            }
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => tracing::info!(path = %path.display(), "created a key for user {user}"),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e).with_context(|| format!("storing {}", path.display()));
                }
            }
            let _ = std::fs::remove_file(&tmp);
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 key", path.display()))?;
        Ok(UserKey { pair, path })
    }

    /// Where the key is kept.
    pub fn file(&self) -> &Path {
        &self.path
    }

    /// The proof for a login of `user` after the server's `challenge`.
    pub fn prove(&self, user: UserId, challenge: &[u8]) -> LoginProof {
        let message = tsn_protocol::types::login_message(user, challenge);
        LoginProof {
            key: self.pair.public_key().as_ref().to_vec(),
            signature: self.pair.sign(&message).as_ref().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_created_once_private_and_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let a = UserKey::load_or_create(dir.path(), 5).unwrap();
        let b = UserKey::load_or_create(dir.path(), 5).unwrap();
        let mode = std::fs::metadata(a.file()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let p = a.prove(5, b"challenge");
        assert_eq!(p.key, b.prove(5, b"x").key, "the same key both times");
        let msg = tsn_protocol::types::login_message(5, b"challenge");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &p.key)
            .verify(&msg, &p.signature)
            .unwrap();
        let other = UserKey::load_or_create(dir.path(), 6).unwrap();
        assert_ne!(other.prove(6, b"c").key, p.key);
    }
}
