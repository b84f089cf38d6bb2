//! The admin and metrics HTTP listener (loopback by default).
//!
//! - `GET /metrics`: Prometheus text exposition (see `docs/metrics.md`);
//! - `GET /healthz`: liveness, 200 while the process serves;
//! - `GET /readyz`: readiness, 503 while draining or while the audit log cannot be written;
//! - `GET /admin/sessions[?tenant=ID]`: active sessions, JSON (bearer token);
//! - `POST /admin/sessions/{id}/end`: ends a session with `ADMIN_ENDED`, audited (bearer token);
//! - `POST /admin/drain`: starts the drain SIGTERM starts, then the relay exits (bearer token);
//! - the web surface ([`super::web::web_routes`]): the reports API (`/api/v1/reports/...`,
//!   `docs/reports.md`), the Monitor page (`/monitor/`) and the web helper page (`/helper/`,
//!   `docs/web-helper.md`), which the `[web]` listener also serves.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::hub::Hub;
use crate::core::SessionId;

/// Histogram buckets, in seconds, for every latency the relay records.
const BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0,
];

/// Histogram buckets, in seconds, for waits on the hub's lock.
const LOCK_WAIT_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.01,
    0.1,
];

/// The process-wide Prometheus recorder, installed on first use. Metrics are global to
/// a process (the `metrics` facade has one recorder), so relays embedded in one process
/// (tests) share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(|b| {
                // A wait for the hub's lock is microseconds when it is contended at all.
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "relay_hub_lock_wait_seconds".into(),
                    ),
                    LOCK_WAIT_BUCKETS,
                )
            })
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            warn!(
                "a metrics recorder was already installed; /metrics shows only this one's series"
            );
        }
        metrics::gauge!("relay_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// Serves the admin listener until `stop`: its own endpoints, and `web` (the web surface's
/// routes, [`super::web::web_routes`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    web: Router,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/admin/sessions", get(list_sessions))
        .route("/admin/sessions/{id}/end", post(end_session))
        .route("/admin/drain", post(drain))
        .with_state(hub)
        .merge(web);
    // No Nagle delay on answers: a response written in more than one piece would otherwise
    // wait for the client's delayed ACK (about 40 ms), which the reports fan-out pays on
    // every node-to-node request.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "admin connection: TCP_NODELAY refused");
        }
    });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "admin listener failed");
    }
}

async fn metrics_text() -> Response {
    let handle = prometheus();
    // /proc reads are file I/O: off the runtime's workers, which also forward data.
    let _ = tokio::task::spawn_blocking(record_process_metrics).await;
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

async fn ready(State(hub): State<Arc<Hub>>) -> Response {
    if hub.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !hub.audit.is_available() {
        (StatusCode::SERVICE_UNAVAILABLE, "audit log unavailable\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// How the audit log names the operator (the holder of `[admin] token_file`'s token).
pub const OPERATOR: &str = "operator";

/// Why an admin request is not allowed.
enum Denied {
    NoTokenConfigured,
    WrongToken,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::NoTokenConfigured => (
                StatusCode::FORBIDDEN,
                "no admin token is configured ([admin] token_file)\n",
            )
                .into_response(),
            Denied::WrongToken => {
                (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response()
            }
        }
    }
}

/// Checks the bearer token in constant time.
fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<(), Denied> {
    // The token as last (re)loaded: a rotated `token_file` applies on SIGHUP.
    let Some(expected) = hub.admin_token() else {
        return Err(Denied::NoTokenConfigured);
    };
    let expected: &str = &expected;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches = presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if matches {
        Ok(())
    } else {
        metrics::counter!("relay_admin_unauthorized_total").increment(1);
        Err(Denied::WrongToken)
    }
}

#[derive(Deserialize)]
struct TenantFilter {
    tenant: Option<String>,
}

async fn list_sessions(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(filter): Query<TenantFilter>,
) -> Response {
    if let Err(denied) = authorize(&hub, &headers) {
        return denied.into_response();
    }
    axum::Json(hub.active_sessions(filter.tenant.as_deref())).into_response()
}

async fn end_session(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(denied) = authorize(&hub, &headers) {
        return denied.into_response();
    }
    let session = hub
        .active_sessions(None)
        .into_iter()
        .find(|s| s.session_id == id);
    let Some(session) = session else {
        return (StatusCode::NOT_FOUND, "no active session with that id\n").into_response();
    };
    let id = SessionId::from_wire(&session.session_id);
    match hub.end_by_administrator(&id, OPERATOR.into()).await {
        Some(_) => {
            info!(session = %id, tenant = %session.tenant, "session ended by an administrator");
            StatusCode::NO_CONTENT.into_response()
        }
        None => (StatusCode::NOT_FOUND, "no active session with that id\n").into_response(),
    }
}

async fn drain(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&hub, &headers) {
        return denied.into_response();
    }
    info!("drain requested by an administrator");
    hub.drain_requested.cancel();
    (StatusCode::ACCEPTED, "draining\n").into_response()
}

/// Sets `process_cpu_seconds_total` and `process_resident_memory_bytes` (the Prometheus
/// client conventions) from `/proc/self`, so `loadtest` and dashboards can read the relay's
/// cost from its metrics endpoint. Linux only; elsewhere the series are absent.
fn record_process_metrics() {
    if let Some(usage) = ProcessUsage::of_self() {
        metrics::gauge!("process_cpu_seconds_total").set(usage.cpu_seconds);
        metrics::gauge!("process_resident_memory_bytes").set(usage.resident_bytes as f64);
    }
}

/// CPU time and resident memory of a process, read from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
}

impl ProcessUsage {
    /// This process's usage.
    pub fn of_self() -> Option<ProcessUsage> {
        Self::read("self")
    }

    /// Another local process's usage.
    pub fn of_pid(pid: u32) -> Option<ProcessUsage> {
        Self::read(&pid.to_string())
    }

    fn read(which: &str) -> Option<ProcessUsage> {
        let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state.
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{which}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        // USER_HZ is 100 on every Linux ABI Rust targets.
        Some(ProcessUsage {
            cpu_seconds: ticks / 100.0,
            resident_bytes: rss_kb * 1024,
        })
    }
}

#[cfg(test)]
mod process_tests {
    use super::ProcessUsage;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        assert!(spin > 0);
        let usage = ProcessUsage::of_self().expect("/proc/self is readable on Linux");
        assert!(usage.resident_bytes > 0);
        assert!(usage.cpu_seconds >= 0.0);
    }
}
