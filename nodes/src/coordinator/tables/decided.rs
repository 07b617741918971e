//! What is decided about the clusters, and the decisions that change it: the part of the
//! routing tables a coordinator group replicates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tsn_protocol::coord::NodeKind;
use tsn_protocol::ClusterId;

/// What is decided about one cluster: it outlives the coordinator that decided it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDecided {
    /// The registered address of each of its nodes.
    pub addrs: BTreeMap<NodeKind, String>,
    /// Which server is active, if any.
    pub active: Option<NodeKind>,
    /// The failover epoch.
    pub epoch: u64,
    /// The web certificate hashes of each server that accepts browsers (absent from
    /// tables written before servers had them).
    #[serde(default)]
    pub web: BTreeMap<NodeKind, Vec<[u8; 32]>>,
}

/// Everything decided: the state a coordinator group replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// Number of clusters (0 until the first decision sets it).
    pub clusters: u32,
    /// Each cluster that has had a node register.
    pub by_id: BTreeMap<ClusterId, ClusterDecided>,
}

/// One decision, as replicated: applied only if the state it was made from is still the
/// state it meets (so a decision made from stale tables changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The number of clusters, set once by the first leader.
    Clusters(u32),
    /// A cluster's new decided state, replacing `was`.
    Cluster {
        /// The cluster.
        id: ClusterId,
        /// Its state before the decision.
        was: Option<ClusterDecided>,
        /// Its state after.
        now: ClusterDecided,
    },
}

impl Decided {
    /// Whether every one of `decisions` meets the state it was made from.
    pub fn admits(&self, decisions: &[Decision]) -> bool {
        decisions.iter().all(|d| match d {
            Decision::Clusters(_) => self.clusters == 0,
            Decision::Cluster { id, was, .. } => self.by_id.get(id) == was.as_ref(),
        })
    }

    /// Applies `decisions` if [`Decided::admits`] them, all or none; says which.
    pub fn apply(&mut self, decisions: &[Decision]) -> bool {
        if !self.admits(decisions) {
            return false;
        }
        for d in decisions {
            match d {
                Decision::Clusters(n) => self.clusters = *n,
                Decision::Cluster { id, now, .. } => {
                    self.by_id.insert(*id, now.clone());
                }
            }
        }
        true
    }

    /// The decisions that turn `self` into `next`.
    pub fn diff(&self, next: &Decided) -> Vec<Decision> {
        let mut out = Vec::new();
        if self.clusters != next.clusters && self.clusters == 0 {
            out.push(Decision::Clusters(next.clusters));
        }
        for (id, c) in &next.by_id {
            let was = self.by_id.get(id);
            if was != Some(c) {
                out.push(Decision::Cluster {
                    id: *id,
                    was: was.cloned(),
                    now: c.clone(),
                });
            }
        }
        out
    }
}
