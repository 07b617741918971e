//! Paths of the datastore.

use std::path::{Path, PathBuf};

use tsn_protocol::coord::NodeKind;
use tsn_protocol::{ClusterId, UserId};

use crate::error::{io, DatastoreError};

/// The root of a datastore.
#[derive(Debug, Clone)]
pub struct Datastore {
    root: PathBuf,
}

impl Datastore {
    /// A datastore rooted at `root` (nothing is created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Datastore { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one role of one cluster.
    pub fn role(&self, cluster: ClusterId, kind: NodeKind) -> RoleDir {
        RoleDir {
            path: self.root.join(cluster.to_string()).join(kind.as_str()),
        }
    }

    /// The coordinator's directory, `<root>/coordinator`.
    pub fn coordinator(&self) -> CoordinatorDir {
        CoordinatorDir::new(&self.root.join("coordinator"))
    }

    /// Removes the role directories TSN created under the root
    /// (`<cluster>/{primary,secondary,sync}`), and a cluster directory left empty by that.
    /// Anything else under the root is left alone. A missing root is created.
    pub fn clear(&self) -> Result<(), DatastoreError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return crate::private::create_dirs(&self.root)
            }
            Err(e) => return Err(io(&self.root)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            let is_cluster = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.parse::<ClusterId>().is_ok_and(|c| c >= 1));
            let path = entry.path();
            if !is_cluster || !path.is_dir() {
                continue;
            }
            for role in ROLES {
                let r = path.join(role);
                if r.is_dir() {
                    std::fs::remove_dir_all(&r).map_err(io(&r))?;
                }
            }
            // Only succeeds when nothing else is left in it.
            let _ = std::fs::remove_dir(&path);
        }
        Ok(())
    }
}

/// A coordinator's directory: its Raft log and its latest snapshot.
#[derive(Debug, Clone)]
pub struct CoordinatorDir {
    path: PathBuf,
}

impl CoordinatorDir {
    /// The coordinator directory at `path`.
    pub fn new(path: &Path) -> Self {
        CoordinatorDir {
            path: path.to_path_buf(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory, private to its owner (0700).
    pub fn create(&self) -> Result<(), DatastoreError> {
        crate::private::create_dirs(&self.path)
    }

    /// `raft.log`: votes, entries, truncations and purges, one JSON object a line.
    pub fn raft_log(&self) -> PathBuf {
        self.path.join("raft.log")
    }

    /// `snapshot.json`: the decided state up to a log entry, and the group's members.
    pub fn snapshot(&self) -> PathBuf {
        self.path.join("snapshot.json")
    }

    /// Removes the directory and everything in it.
    pub fn clear(&self) -> Result<(), DatastoreError> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&self.path)(e)),
            _ => Ok(()),
        }
    }
}

/// Names of the role directories.
const ROLES: [&str; 3] = ["primary", "secondary", "sync"];

/// One role's directory.
#[derive(Debug, Clone)]
pub struct RoleDir {
    path: PathBuf,
}

impl RoleDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory and its `local_clients`, private to their owner (0700).
    pub fn create(&self) -> Result<(), DatastoreError> {
        crate::private::create_dirs(&self.local_clients())
    }

    /// `outbox.data` (sync service): the cluster's changes, merged from its servers.
    pub fn outbox(&self) -> PathBuf {
        self.path.join("outbox.data")
    }

    /// `received.data` (server): what the sync service's feed delivered, in order.
    pub fn received(&self) -> PathBuf {
        self.path.join("received.data")
    }

    /// `global_clients.data`.
    pub fn global_clients(&self) -> PathBuf {
        self.path.join("global_clients.data")
    }

    /// `journal.data`.
    pub fn journal(&self) -> PathBuf {
        self.path.join("journal.data")
    }

    /// `cursors.data`.
    pub fn cursors(&self) -> PathBuf {
        self.path.join("cursors.data")
    }

    /// `clean-shutdown`.
    pub fn clean_marker(&self) -> PathBuf {
        self.path.join("clean-shutdown")
    }

    /// `local_clients/<uid>`.
    pub fn user_dir(&self, user: UserId) -> PathBuf {
        self.local_clients().join(user.to_string())
    }

    fn local_clients(&self) -> PathBuf {
        self.path.join("local_clients")
    }

    /// The users that have a directory under `local_clients/`, ascending (none if it
    /// cannot be read; entries that are not a user id are skipped).
    pub fn users(&self) -> Vec<UserId> {
        let mut users: Vec<UserId> = std::fs::read_dir(self.local_clients())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        users.sort_unstable();
        users
    }

    /// `mirror.cursor` (server): how far it has the other server's journal.
    pub fn mirror_cursor(&self) -> PathBuf {
        self.path.join("mirror.cursor")
    }

    /// `checkpoint.data`: the role's last checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.path.join("checkpoint.data")
    }

    /// `local_clients/<uid>/timeline.data`.
    pub fn timeline(&self, user: UserId) -> PathBuf {
        self.user_dir(user).join("timeline.data")
    }

    /// `local_clients/<uid>/following.data`.
    pub fn following(&self, user: UserId) -> PathBuf {
        self.user_dir(user).join("following.data")
    }

    /// `local_clients/<uid>/followers.data`.
    pub fn followers(&self, user: UserId) -> PathBuf {
        self.user_dir(user).join("followers.data")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_follow_the_original_layout() {
        let ds = Datastore::new("/d");
        let r = ds.role(2, NodeKind::Secondary);
        assert_eq!(r.path(), Path::new("/d/2/secondary"));
        assert_eq!(r.journal(), Path::new("/d/2/secondary/journal.data"));
        assert_eq!(
            r.global_clients(),
            Path::new("/d/2/secondary/global_clients.data")
        );
        assert_eq!(r.cursors(), Path::new("/d/2/secondary/cursors.data"));
        assert_eq!(r.clean_marker(), Path::new("/d/2/secondary/clean-shutdown"));
        assert_eq!(
            r.timeline(7),
            Path::new("/d/2/secondary/local_clients/7/timeline.data")
        );
        assert_eq!(
            r.following(7),
            Path::new("/d/2/secondary/local_clients/7/following.data")
        );
        assert_eq!(
            r.followers(7),
            Path::new("/d/2/secondary/local_clients/7/followers.data")
        );
        assert_eq!(ds.role(1, NodeKind::Sync).path(), Path::new("/d/1/sync"));
        assert_eq!(
            ds.role(3, NodeKind::Primary).path(),
            Path::new("/d/3/primary")
        );
    }

    #[test]
    fn clear_removes_only_what_tsn_created() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::new(dir.path().join("store"));
        ds.clear().unwrap();
        assert!(ds.root().is_dir());
        let r = ds.role(1, NodeKind::Primary);
        r.create().unwrap();
        assert!(r.path().join("local_clients").is_dir());
        std::fs::write(r.journal(), "user 1\n").unwrap();
        ds.role(2, NodeKind::Sync).create().unwrap();
        std::fs::write(ds.root().join("stray"), "x").unwrap();
        std::fs::create_dir_all(ds.root().join("notes")).unwrap();
        std::fs::write(ds.root().join("2").join("mine.txt"), "keep").unwrap();
        ds.clear().unwrap();
        let mut left: Vec<String> = std::fs::read_dir(ds.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["2", "notes", "stray"]);
        assert!(ds.root().join("2/mine.txt").exists());
        assert!(!ds.root().join("2/sync").exists());
    }
}
