//! Raft messages between coordinators: postcard-encoded openraft requests in
//! [`CoordRequest::Raft`] messages, over QUIC with mutual TLS (each member dials the
//! others with its node certificate from the cluster CA), one request per stream on one
//! connection per peer, dialled again when it is gone.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tsn_protocol::coord::{CoordReply, CoordRequest, RaftRpc};

use super::TypeConfig;

type Rpc<T, E = RaftError<u64>> = Result<T, RPCError<u64, BasicNode, E>>;

/// Makes a [`Peer`] for each other member.
#[derive(Debug, Clone)]
pub struct Network {
    endpoint: quinn::Endpoint,
}

impl Network {
    /// Dials from `endpoint` (which carries the node identity).
    pub fn new(endpoint: quinn::Endpoint) -> Self {
        Network { endpoint }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            endpoint: self.endpoint.clone(),
            target,
            addr: node.addr.clone(),
            conn: None,
        }
    }
}

/// The link to one other member.
#[derive(Debug)]
pub struct Peer {
    endpoint: quinn::Endpoint,
    target: u64,
    addr: String,
    conn: Option<quinn::Connection>,
}

/// Why a message did not get through.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Net(#[from] crate::net::NetError),
    #[error("encoding: {0}")]
    Encode(#[from] postcard::Error),
    #[error("member {0} did not answer in time")]
    Timeout(String),
    #[error("member {0} answered {1}")]
    Unexpected(String, String),
}

impl Peer {
    async fn send<Req, Rep, E>(
        &mut self,
        wrap: fn(Vec<u8>) -> RaftRpc,
        req: &Req,
        ttl: Duration,
    ) -> Rpc<Rep, E>
    where
        Req: Serialize,
        Rep: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let exchange = async {
            let conn = match self.conn.as_ref().filter(|c| c.close_reason().is_none()) {
                Some(c) => c.clone(),
                None => {
                    let c = crate::net::connect_within(&self.endpoint, &self.addr, ttl).await?;
                    self.conn = Some(c.clone());
                    c
                }
            };
            let msg = CoordRequest::Raft(wrap(postcard::to_allocvec(req)?));
            match crate::net::call::<_, CoordReply>(&conn, &msg).await? {
                CoordReply::Raft(bytes) => Ok(postcard::from_bytes::<Result<Rep, E>>(&bytes)?),
                other => Err(SendError::Unexpected(
                    self.addr.clone(),
                    format!("{other:?}"),
                )),
            }
        };
        let result = match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout(self.addr.clone())),
        };
        match result {
            Ok(Ok(rep)) => Ok(rep),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(e) => {
                self.conn = None;
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>> {
        self.send(RaftRpc::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        self.send(RaftRpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> Rpc<VoteResponse<u64>> {
        self.send(RaftRpc::Vote, &rpc, option.hard_ttl()).await
    }
}

/// Answers a Raft message from another member: the postcard-encoded result.
pub async fn answer(raft: &Raft<TypeConfig>, rpc: RaftRpc) -> Result<Vec<u8>, postcard::Error> {
    match rpc {
        RaftRpc::Vote(b) => {
            let req: VoteRequest<u64> = postcard::from_bytes(&b)?;
            postcard::to_allocvec(&raft.vote(req).await)
        }
        RaftRpc::Append(b) => {
            let req: AppendEntriesRequest<TypeConfig> = postcard::from_bytes(&b)?;
            postcard::to_allocvec(&raft.append_entries(req).await)
        }
        RaftRpc::Snapshot(b) => {
            let req: InstallSnapshotRequest<TypeConfig> = postcard::from_bytes(&b)?;
            postcard::to_allocvec(&raft.install_snapshot(req).await)
        }
    }
}
