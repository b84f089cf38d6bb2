//! The Monitor page (`/monitor/`, `docs/reports.md`, "The Monitor page"): three static files
//! built into the binary and served on the admin listener beside the reports API, so the
//! page and the API share one origin (no CORS). The page holds no data of its own: it calls
//! the reports API with the administrator's token, so it shows exactly what the API allows.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../web/monitor/index.html");
const MONITOR_JS: &str = include_str!("../../web/monitor/monitor.js");
const MONITOR_CSS: &str = include_str!("../../web/monitor/monitor.css");

/// The page's Content-Security-Policy: scripts, styles and requests from this origin only,
/// no inline script or style, no frames, no forms posted anywhere. `blob:` for `connect-src`
/// lets the page (and its tests) read back the CSV it offers as a download.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self' blob:; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The Monitor page's routes, to merge into the admin listener's router.
pub fn router() -> Router {
    Router::new()
        .route(
            "/monitor",
            get(|| async { Redirect::permanent("/monitor/") }),
        )
        .route(
            "/monitor/",
            get(|| async { file(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/monitor/monitor.js",
            get(|| async { file(MONITOR_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/monitor/monitor.css",
            get(|| async { file(MONITOR_CSS, "text/css; charset=utf-8") }),
        )
}

/// One file with the page's headers. `no-cache`: the files change with the relay's version,
/// and a stale script against a newer API would misbehave; they are small.
fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
