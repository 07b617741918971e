//! Asking the coordinator group, for nodes, clients and tools alike: any member answers
//! (it passes writes to the leader), so a request goes to the member that answered last
//! and, when that one does not answer in time or says the group has no leader, to the
//! next.

use tsn_protocol::coord::{CoordError, CoordReply, CoordRequest};

use crate::common::Coordinators;
use crate::net::NetError;

/// The least time a member gets to answer a request (it may pass it to the leader).
const MIN_REQUEST_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// A request that no member answered, in the words every binary uses.
pub type GroupError = crate::net::CoordinatorError;

/// One connection to a member of the group at a time, dialled again (to the next
/// member) once it fails.
#[derive(Debug)]
pub struct GroupClient {
    coords: Coordinators,
    conn: tokio::sync::Mutex<Option<(usize, quinn::Connection)>>,
    /// The member to try first next time.
    next: std::sync::atomic::AtomicUsize,
    /// How long to wait for one member.
    timeout: std::time::Duration,
}

impl GroupClient {
    /// A client of the group at `coords`.
    pub fn new(coords: Coordinators) -> Self {
        GroupClient {
            timeout: coords.member_timeout(),
            coords,
            conn: tokio::sync::Mutex::new(None),
            next: Default::default(),
        }
    }

    /// The same, waiting at most `limit` for a member to answer a dial.
    pub fn with_timeout(mut self, limit: std::time::Duration) -> Self {
        self.timeout = self.timeout.min(limit);
        self
    }

    /// The group's addresses.
    pub fn coordinators(&self) -> &Coordinators {
        &self.coords
    }

    /// A connection to some member, and which one (the one connected, else the members
    /// in turn from the one that answered last).
    pub async fn connection(
        &self,
        endpoint: &quinn::Endpoint,
    ) -> Result<(String, quinn::Connection), GroupError> {
        use std::sync::atomic::Ordering;
        let addrs = self.coords.addrs();
        let mut slot = self.conn.lock().await;
        if let Some((i, c)) = slot.as_ref().filter(|(_, c)| c.close_reason().is_none()) {
            return Ok((addrs[*i].clone(), c.clone()));
        }
        let start = self.next.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..addrs.len() {
            let i = (start + k) % addrs.len();
            match crate::net::connect_within(endpoint, &addrs[i], self.timeout).await {
                Ok(c) => {
                    *slot = Some((i, c.clone()));
                    self.next.store(i, Ordering::Relaxed);
                    return Ok((addrs[i].clone(), c));
                }
                Err(e) => last = Some(e),
            }
        }
        // Named by every address tried: none of them answered.
        let error = last.unwrap_or(NetError::NoReply);
        Err(GroupError::dialling(
            &self.coords.to_string(),
            self.timeout,
            error,
        ))
    }

    /// Drops the connection; the next request starts with the next member.
    pub async fn forget(&self) {
        use std::sync::atomic::Ordering;
        if let Some((i, c)) = self.conn.lock().await.take() {
            c.close(0u32.into(), b"failed");
            self.next.store(i + 1, Ordering::Relaxed);
        }
    }

    /// Sends `req` to a member and returns its answer and its address; a member that
    /// fails, or says the group has no leader, is skipped for the next (each member is
    /// tried once).
    pub async fn call(
        &self,
        endpoint: &quinn::Endpoint,
        req: &CoordRequest,
    ) -> Result<(String, CoordReply), GroupError> {
        let mut last = None;
        for _ in 0..self.coords.addrs().len() {
            let (addr, conn) = match self.connection(endpoint).await {
                Ok(c) => c,
                Err(e) => return Err(last.unwrap_or(e)),
            };
            // A member that went away mid-request is given up on as soon as one that
            // does not answer a dial would be.
            let answer = tokio::time::timeout(
                self.timeout.max(MIN_REQUEST_TIME),
                crate::net::call::<_, CoordReply>(&conn, req),
            )
            .await
            .unwrap_or(Err(NetError::Timeout { what: "request" }));
            match answer {
                Ok(CoordReply::Failed(CoordError::NoLeader)) if self.coords.addrs().len() > 1 => {
                    self.forget().await;
                    last = None;
                    continue;
                }
                Ok(reply) => return Ok((addr, reply)),
                Err(error) => {
                    self.forget().await;
                    last = Some(GroupError::asking(&addr, error));
                }
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok((
                self.coords.first().to_string(),
                CoordReply::Failed(CoordError::NoLeader),
            )),
        }
    }
}
