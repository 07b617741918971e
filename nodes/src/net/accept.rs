//! Serving what peers open: connections, each a task of the accept loop (at most
//! [`MAX_CONNECTIONS`] at once), and the streams of one connection, each a task of it.

use std::sync::Arc;

use super::MAX_CONNECTIONS;

/// Accepts connections until the endpoint is closed, running `handle` for each in its
/// own task, at most [`MAX_CONNECTIONS`] at once (further attempts are refused).
pub async fn accept_loop<F, Fut>(
    endpoint: quinn::Endpoint,
    connections: prometheus_client::metrics::gauge::Gauge,
    handle: F,
) where
    F: Fn(quinn::Connection) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let handle = Arc::new(handle);
    // The connections' tasks end with the loop (dropping the set aborts them).
    let mut connections_served = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            Some(_) = connections_served.join_next(), if !connections_served.is_empty() => continue,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let handle = handle.clone();
        let connections = connections.clone();
        connections_served.spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    connections.inc();
                    handle(conn).await;
                    connections.dec();
                }
                Err(e) => tracing::debug!(%remote, "handshake failed: {e}"),
            }
            drop(permit);
        });
    }
    connections_served.shutdown().await;
}

/// Serves the streams a peer opens on `conn`, each as a task running `serve`, until the
/// connection closes and every stream has ended (each sees the connection's end and
/// finishes as it does when its peer goes away).
pub async fn serve_streams<Fut>(
    conn: quinn::Connection,
    serve: impl Fn(quinn::SendStream, quinn::RecvStream) -> Fut,
) where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    serve_each(
        || {
            let conn = conn.clone();
            async move { conn.accept_bi().await.ok() }
        },
        |(send, recv)| serve(send, recv),
    )
    .await;
}

/// Runs `serve` on everything `accept` yields, each in a task of its own, until `accept`
/// yields `None` and every task has ended: the stream loop of a terminal's connection
/// and of a browser's session alike.
pub async fn serve_each<T, Acc, AccFut, Fut>(mut accept: Acc, serve: impl Fn(T) -> Fut)
where
    Acc: FnMut() -> AccFut,
    AccFut: std::future::Future<Output = Option<T>>,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let item = tokio::select! {
            accepted = accept() => match accepted {
                Some(item) => item,
                None => break,
            },
            // Reap the tasks that ended.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        tasks.spawn(serve(item));
    }
    while tasks.join_next().await.is_some() {}
}
