//! The operator's HTTP listener (`--metrics-addr`): `/metrics`, `/health`, `/ready`,
//! routed by axum and served by hyper, one request per connection.
//!
//! Strangers reach it without logging in, so what it costs is bounded: at most
//! [`MAX_HTTP_CONNECTIONS`] connections are taken at once (more wait in the kernel's
//! accept queue, holding no descriptor of this process), and each may take
//! [`HTTP_TIMEOUT`] in all.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

use super::Metrics;

/// HTTP connections served at once, at most. More wait in the kernel's accept queue,
/// holding no descriptor of this process: strangers on `--metrics-addr` (no login is
/// needed) can never take the descriptors the journal, view files and feeds need. Each
/// costs one descriptor and a few KiB of buffers; a scraper and a few probes use a
/// handful.
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// How long a connection may take to send its request and read the answer: a slow or
/// idle one is closed after this, freeing its place for the next.
pub const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Largest HTTP request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// After a failed accept (out of descriptors), the pause before the next: the error
/// repeats until a descriptor is free, and must not spin a core meanwhile.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// The routes, over `metrics`.
fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/health", get(|| async { "alive\n" }))
        .route("/ready", get(ready))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .method_not_allowed_fallback(|| async { (StatusCode::METHOD_NOT_ALLOWED, "only GET\n") })
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    if metrics.first_scrape() {
        tracing::info!("first metrics scrape");
    }
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], metrics.render()).into_response()
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.not_ready() {
        None => "ready\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Binds `addr` (`--metrics-addr`) for `/metrics`, `/health` and `/ready`; returns the
/// bound address and the serving, which runs until dropped, [`MAX_HTTP_CONNECTIONS`]
/// connections at a time, each for at most [`HTTP_TIMEOUT`] (a connection's task ends
/// with it).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let (local, serving) = bind_router(addr, "the metrics listener", router(metrics)).await?;
    tracing::info!(addr = %local, "metrics listening (/metrics, /health, /ready)");
    Ok((local, serving))
}

/// Binds `addr` for `router` (`what` names the listener in the error); returns the bound
/// address and the serving of [`serve_router`].
pub async fn bind_router(
    addr: SocketAddr,
    what: &str,
    router: Router,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((local, serve_router(listener, router)))
}

/// Serves `router` on `listener` until dropped, [`MAX_HTTP_CONNECTIONS`] connections at
/// a time, each for at most [`HTTP_TIMEOUT`] and one request: every HTTP listener of a
/// node (metrics, the coordinators' web page) is bounded alike.
pub fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let service = TowerToHyperService::new(router);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            // A place first, then the connection: what waits stays in the kernel's queue.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            while connections.try_join_next().is_some() {}
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("accepting an HTTP connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let service = service.clone();
            connections.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .max_buf_size(MAX_REQUEST)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(HTTP_TIMEOUT, conn).await;
                drop(permit);
            });
        }
    }
}
