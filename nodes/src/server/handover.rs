//! A planned stop of the active server: the cluster is handed to the standby first.

use super::mirror::Mirror;
use super::role::{Node, Role};

/// A planned stop of the active server: the coordinator makes the standby active now,
/// this server becomes the standby (its timeline clients are told to ask the coordinator
/// again), and the mirror tells the standby, which asks the coordinator at once. So a
/// planned restart costs no failover timeout.
pub(super) async fn hand_over(
    node: &Node,
    role: &Role,
    mirror: &Mirror,
    endpoint: &quinn::Endpoint,
    coordinator: &crate::common::Coordinators,
) {
    use tsn_protocol::coord::{CoordReply, CoordRequest};
    let asked = async {
        let group = crate::group_client::GroupClient::new(coordinator.clone());
        let req = CoordRequest::HandOver {
            cluster: node.cluster,
            kind: node.kind,
        };
        anyhow::Ok(group.call(endpoint, &req).await?.1)
    };
    match asked.await {
        Ok(CoordReply::HandedOver { epoch, to }) => {
            tracing::info!(epoch, standby = %to, "handed the cluster over to the standby");
            role.handed_over(epoch, to);
            let told = mirror.standby_told();
            if tokio::time::timeout(std::time::Duration::from_secs(1), told)
                .await
                .is_err()
            {
                tracing::info!(
                    "the standby was not told directly: it learns at its next heartbeat"
                );
            }
        }
        Ok(CoordReply::Failed(e)) => {
            tracing::info!("no hand-over before stopping: {e}");
        }
        Ok(other) => tracing::warn!("unexpected hand-over reply: {other:?}"),
        Err(e) if crate::net::part_of_a_stop(&e) => {
            tracing::info!("no hand-over before stopping: the coordinator is stopping too ({e:#})")
        }
        Err(e) => tracing::warn!("could not ask the coordinator for a hand-over: {e:#}"),
    }
}
