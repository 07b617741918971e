//! The web client's page and where it finds its server (`--web-addr`).
//!
//! Every member of a coordinator group serves the same: the page's files, built into
//! the binary (`nodes/web/`), and `/assign/<user>`, the active server of the user's
//! cluster with the hashes of its web certificate, from committed state (the web
//! counterpart of the terminal client's assignment). The page then opens its
//! WebTransport session to that server directly.
//!
//! The page carries a strict Content-Security-Policy: scripts and styles only from this
//! origin (no inline script), nothing framed, and connections to this origin and to
//! HTTPS (WebTransport) servers only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tsn_protocol::coord::CoordError;

use super::group::Group;

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
connect-src 'self' https:; img-src 'self'; object-src 'none'; base-uri 'none'; \
frame-ancestors 'none'; form-action 'none'";

/// The page's files: path, content type, content.
const FILES: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "/codec.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/codec.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

/// Where the page asks, once the group has started.
type Groups = tokio::sync::watch::Receiver<Option<Arc<Group>>>;

fn router(groups: Groups) -> Router {
    let mut r = Router::new();
    for (path, kind, body) in FILES {
        r = r.route(path, get(move || async move { file(kind, body) }));
    }
    r.route(
        "/index.html",
        get(|| async { file(FILES[0].1, FILES[0].2) }),
    )
    .route("/assign/{user}", get(assign))
    .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
    .method_not_allowed_fallback(|| async { (StatusCode::METHOD_NOT_ALLOWED, "only GET\n") })
    .with_state(groups)
}

fn file(kind: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut r = (status, value.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn assign(State(groups): State<Groups>, Path(user): Path<String>) -> Response {
    let Ok(user) = user.parse::<u32>() else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": "Command failed with invalid username" }),
        );
    };
    let Some(group) = groups.borrow().clone() else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": "the coordinator is starting; try again in a moment" }),
        );
    };
    match group.assign_web(user) {
        Ok(a) => json(
            StatusCode::OK,
            &serde_json::json!({
                "cluster": a.cluster,
                "url": format!("https://{}{}", a.addr, crate::server::web::SESSION_PATH),
                "hashes": a.hashes.iter().map(|h| hex(h)).collect::<Vec<_>>(),
            }),
        ),
        Err(e @ CoordError::NoLiveServer { .. }) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": e.to_string() }),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

/// Binds `addr` (`--web-addr`); returns the bound address and the serving, which runs
/// until dropped, bounded like every HTTP listener of a node
/// ([`crate::metrics::bind_router`]).
pub async fn serve(
    addr: SocketAddr,
    groups: Groups,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let (local, serving) =
        crate::metrics::bind_router(addr, "the web page's listener (--web-addr)", router(groups))
            .await?;
    tracing::info!(url = %format!("http://{local}/"), "web client page served");
    Ok((local, serving))
}
