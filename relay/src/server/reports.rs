//! The reports API (`/api/v1/reports/...`, `docs/reports.md`), on the admin listener.
//!
//! Two kinds of caller: the operator, with the `[admin] token_file` bearer token, sees every
//! tenant (and may narrow with `tenant=`); a tenant administrator, with a JWT of their own
//! tenant for the administration audience ([`Audience::Administration`]) and the
//! `read_reports` (or `end_sessions`) permission through the tenant's role assignments,
//! sees only their tenant. For a tenant administrator, another tenant's data does not
//! exist: asking for it (`tenant=`, a session id, an export, a summary) gets exactly the
//! answer a tenant or session that does not exist gets.
//!
//! Past sessions come from the [`ReportIndex`] (caught up with the audit files before
//! every query); active sessions come from the hub, as `/admin/sessions` does.
//!
//! In a cluster with admin addresses, every endpoint but `me` answers for the whole
//! cluster: it asks the other nodes with the caller's own token and `scope=node`
//! ([`fanout`]) and merges their answers (`report::merge`); a node that does not answer is
//! named in `missing_nodes` with `partial: true`.

mod cluster;
mod export;
pub mod fanout;
mod throttle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Serialize;
use time::OffsetDateTime;
use tracing::{info, warn};

use self::cluster::{
    Missing, answer_json, authorization, cluster_export, cluster_sessions, fan_out, first_hit,
    forwarded, not_found_in, parse_answer, url_segment,
};
pub use self::export::{CSV_COLUMNS, csv_cell};
use self::export::{EXPORT_PAGE_ROWS, csv_row, export};
use self::fanout::{Peers, SCOPE, SCOPE_NODE};
use self::throttle::{Bucket, Slot, Throttle};
use super::hub::Hub;
use crate::auth::Audience;
use crate::core::SessionId;
use crate::core::cluster::NodeId;
use crate::core::policy::Permission;
use crate::report::index::{
    Cursor, IndexError, IndexedSession, ReportIndex, SessionQuery, SortKey, unix_ms,
};
use crate::report::merge::{NodeSummary, merge_summaries};

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 1000;

/// The shared state of the reports routes.
#[derive(Clone)]
pub struct Reports {
    hub: Arc<Hub>,
    /// Opened on first use (or at start by [`Reports::warm`]); reopened after an error.
    index: Arc<Mutex<Option<ReportIndex>>>,
    /// The other nodes, in a cluster with admin addresses.
    peers: Option<Arc<Peers>>,
    /// The per-tenant bound on queries running at once (`[admin]
    /// reports_queries_per_tenant`, `reports_queued_per_tenant`).
    throttle: Arc<Throttle>,
}

impl Reports {
    /// The hub whose tenants and sessions these reports answer for.
    pub fn hub(&self) -> Arc<Hub> {
        Arc::clone(&self.hub)
    }

    /// The reports of `hub`'s node; the index lives in the state folder.
    pub fn new(hub: Arc<Hub>) -> Reports {
        let peers = Peers::from_config(hub.config.cluster.as_ref()).map(Arc::new);
        let throttle = Arc::new(Throttle::new(
            hub.config.admin.reports_queries_per_tenant,
            hub.config.admin.reports_queued_per_tenant,
        ));
        Reports {
            hub,
            index: Arc::new(Mutex::new(None)),
            peers,
            throttle,
        }
    }

    /// Opens (building if needed) the index now, so the first query does not wait for it.
    pub async fn warm(&self) {
        let reports = self.clone();
        let built = tokio::task::spawn_blocking(move || reports.with_index(|_| Ok(()))).await;
        if let Ok(Err(e)) = built {
            warn!(error = %e, "reports index could not be opened; report queries will retry");
        }
    }

    /// Runs `query` on the index, caught up first (opened first if there is none). Any
    /// error, from opening, catching up or the query, drops the index: the next query
    /// opens it afresh (a rebuild if it cannot be read), so a passing fault (a full disk,
    /// a refused folder) ends with the fault instead of lasting until a restart.
    fn with_index<T>(
        &self,
        query: impl FnOnce(&ReportIndex) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
        // Taken out while it is caught up: on an error it is not put back.
        let index = match guard.take() {
            Some(mut index) => {
                index.catch_up()?;
                index
            }
            None => {
                let path = self
                    .hub
                    .config
                    .state_dir
                    .join(crate::report::index::INDEX_FILE);
                ReportIndex::open(&path, &self.hub.config.audit.dir)?
            }
        };
        let answer = query(&index);
        if answer.is_ok() {
            *guard = Some(index);
        }
        answer
    }
}

/// The reports routes, to merge into the admin listener's router.
pub fn router(reports: Reports) -> Router {
    Router::new()
        .route("/api/v1/reports/me", get(me))
        .route("/api/v1/reports/active", get(active))
        .route("/api/v1/reports/sessions", get(sessions))
        .route("/api/v1/reports/sessions.csv", get(export))
        .route("/api/v1/reports/summary", get(summary))
        .route("/api/v1/reports/sessions/{id}", get(detail))
        .route("/api/v1/reports/sessions/{id}/end", post(end))
        .with_state(reports)
}

/// A refused or failed request: a stable `code` (`docs/reports.md`), a sentence, and for
/// refused tokens the verifier's reason.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    reason: Option<&'static str>,
    /// In a cluster answer: the nodes that did not answer (`partial`, `missing_nodes`).
    missing: Option<Vec<u8>>,
    /// Seconds for `Retry-After` (a throttled query).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            reason: None,
            missing: None,
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("relay_report_errors_total", "code" => self.code).increment(1);
        info!(code = self.code, reason = self.reason.unwrap_or(""), message = %self.message, "reports API request refused");
        let mut body = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(reason) = self.reason {
            body["reason"] = reason.into();
        }
        let mut answer = serde_json::json!({ "error": body });
        if let Some(missing) = self.missing {
            answer["partial"] = (!missing.is_empty()).into();
            answer["missing_nodes"] = missing.into();
        }
        let mut response = (self.status, axum::Json(answer)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> ApiError {
        warn!(error = %e, "report query failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "index_unavailable",
            "the reports index cannot answer now; try again",
        )
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
enum Caller {
    /// The holder of the relay's admin token: every tenant.
    Operator,
    /// A tenant administrator.
    Tenant {
        tenant: String,
        subject: String,
        may_end: bool,
    },
}

impl Caller {
    /// The tenant filter for a request that asked for `requested`: `Err(())` when the
    /// answer is "nothing" (a tenant administrator asking about another tenant, which
    /// must look exactly like a tenant that does not exist).
    fn tenant_filter(&self, requested: Option<String>) -> Result<Option<String>, ()> {
        match self {
            Caller::Operator => Ok(requested),
            Caller::Tenant { tenant, .. } => match requested {
                Some(other) if &other != tenant => Err(()),
                _ => Ok(Some(tenant.clone())),
            },
        }
    }

    /// How the audit log names this caller when it ends a session.
    fn administrator(&self) -> String {
        match self {
            Caller::Operator => super::admin::OPERATOR.into(),
            Caller::Tenant { subject, .. } => format!("tenant:{subject}"),
        }
    }
}

/// How long a throttled caller is told to wait (`Retry-After`): a typical query is over
/// by then.
const RETRY_AFTER_SECS: u64 = 1;

impl Reports {
    /// A query slot of `caller`'s tenant (the operator has its own): at once, after a
    /// wait in the tenant's queue, or refused with `429 too_many_queries` when the queue
    /// is full. Held until the answer is complete.
    async fn admit(&self, caller: &Caller) -> Result<Slot, ApiError> {
        let bucket = match caller {
            Caller::Operator => Bucket::Operator,
            Caller::Tenant { tenant, .. } => Bucket::Tenant(tenant.clone()),
        };
        self.throttle.admit(&bucket).await.map_err(|refused| {
            metrics::counter!("relay_reports_throttled_total", "reason" => refused.reason())
                .increment(1);
            let who = match &bucket {
                Bucket::Operator => "the operator",
                Bucket::Tenant(_) => "this tenant",
            };
            warn!(
                ?bucket,
                reason = refused.reason(),
                "report query refused: too many at once"
            );
            ApiError {
                retry_after: Some(RETRY_AFTER_SECS),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_queries",
                    format!(
                        "{who} has too many report queries running and waiting; try again shortly"
                    ),
                )
            }
        })
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The operator token (compared in constant time) or a tenant administrator's JWT with
/// `read_reports`.
async fn authenticate(hub: &Hub, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if presented.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "an Authorization: Bearer token is required",
        ));
    }
    if let Some(expected) = hub.admin_token()
        && presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    {
        return Ok(Caller::Operator);
    }
    let policies = hub.policies();
    // Through the key fetchers: a tenant whose keys come by URL is verified as its helpers
    // are (an unknown `kid` may fetch its provider's keys, within the same limits).
    let principal = hub
        .key_fetchers
        .verify(
            &policies.verifier,
            presented,
            now_unix,
            Audience::Administration,
        )
        .await
        .map_err(|e| {
            metrics::counter!("relay_admin_unauthorized_total").increment(1);
            ApiError {
                reason: Some(e.reason()),
                ..ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_refused",
                    format!("the token is not valid for the reports API: {e}"),
                )
            }
        })?;
    let permissions = policies
        .tenant(&principal.tenant)
        .admin_permissions(&principal);
    if !permissions.contains(Permission::ReadReports) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the tenant's role assignments do not grant read_reports to this administrator",
        ));
    }
    Ok(Caller::Tenant {
        tenant: principal.tenant.as_str().to_string(),
        subject: principal.subject.clone(),
        may_end: permissions.contains(Permission::EndSessions),
    })
}

/// Query parameters, checked: unknown names are refused so a typo does not widen a report.
struct Params(HashMap<String, String>);

impl Params {
    fn checked(raw: HashMap<String, String>, allowed: &[&str]) -> Result<Params, ApiError> {
        if let Some(unknown) = raw.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {unknown:?}; allowed: {}",
                allowed.join(", ")
            )));
        }
        Ok(Params(raw))
    }

    fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.is_empty()).cloned()
    }

    fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.text(name)
            .map(|v| {
                crate::audit::parse_time(&v).map(unix_ms).ok_or_else(|| {
                    ApiError::bad_request(format!("{name}: {v:?} is not an RFC 3339 time"))
                })
            })
            .transpose()
    }
}

/// The oldest start the retention allows, Unix ms.
fn retention_floor(hub: &Hub) -> i64 {
    let days = i64::from(hub.config.audit.retention_days);
    unix_ms(OffsetDateTime::now_utc()) - days * 86_400_000
}

const FILTERS: &[&str] = &[
    "tenant",
    "since",
    "until",
    "helper",
    "recipient",
    "device",
    "mode",
    "end_reason",
];

/// The session query of `params` for `caller`; `None`: nothing can match.
fn session_query(
    hub: &Hub,
    caller: &Caller,
    params: &Params,
) -> Result<Option<SessionQuery>, ApiError> {
    let since = params.time("since")?;
    let until = params.time("until")?;
    let Ok(tenant) = caller.tenant_filter(params.text("tenant")) else {
        return Ok(None);
    };
    Ok(Some(SessionQuery {
        tenant,
        since_ms: Some(since.unwrap_or(i64::MIN).max(retention_floor(hub))),
        until_ms: until,
        helper: params.text("helper"),
        recipient: params.text("recipient"),
        device: params.text("device"),
        mode: params.text("mode"),
        end_reason: params.text("end_reason"),
    }))
}

/// Runs `query` against the index off the async workers, timing it per endpoint.
async fn run<T: Send + 'static>(
    reports: &Reports,
    endpoint: &'static str,
    query: impl FnOnce(&ReportIndex) -> Result<T, IndexError> + Send + 'static,
) -> Result<T, ApiError> {
    let started = Instant::now();
    let reports = reports.clone();
    let answer = tokio::task::spawn_blocking(move || reports.with_index(query))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the query task failed",
            )
        })??;
    metrics::histogram!("relay_report_query_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    Ok(answer)
}

/// Who the caller is and what they may do: the Monitor page shows "end session" only to
/// those who may.
#[derive(Serialize)]
struct Me {
    operator: bool,
    tenant: Option<String>,
    subject: Option<String>,
    may_end: bool,
}

async fn me(
    State(reports): State<Reports>,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&reports.hub, &headers).await?;
    Params::checked(raw, &[])?;
    let me = match caller {
        Caller::Operator => Me {
            operator: true,
            tenant: None,
            subject: None,
            may_end: true,
        },
        Caller::Tenant {
            tenant,
            subject,
            may_end,
        } => Me {
            operator: false,
            tenant: Some(tenant),
            subject: Some(subject),
            may_end,
        },
    };
    Ok(axum::Json(me).into_response())
}

#[derive(Serialize)]
struct ActiveList {
    sessions: Vec<super::hub::ActiveSession>,
}

async fn active(
    State(reports): State<Reports>,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&reports.hub, &headers).await?;
    let params = Params::checked(raw, &["tenant", SCOPE])?;
    let sessions = match caller.tenant_filter(params.text("tenant")) {
        Ok(tenant) => reports.hub.active_sessions(tenant.as_deref()),
        Err(()) => Vec::new(),
    };
    let Some(peers) = fan_out(&reports, &params)? else {
        return Ok(axum::Json(ActiveList { sessions }).into_response());
    };
    // Each row names its node: that is where `end` goes.
    let tagged = |node: NodeId, rows: Vec<serde_json::Value>| {
        rows.into_iter().map(move |mut row| {
            row["relay_node"] = node.get().into();
            row
        })
    };
    let mut rows: Vec<serde_json::Value> = tagged(
        peers.node(),
        sessions
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect(),
    )
    .collect();
    let mut missing = Missing::default();
    let query = forwarded(&params, &[]);
    for (node, answer) in peers
        .ask_all(
            reqwest::Method::GET,
            "/api/v1/reports/active",
            &query,
            &authorization(&headers),
        )
        .await
    {
        #[derive(serde::Deserialize)]
        struct Remote {
            sessions: Vec<serde_json::Value>,
        }
        match parse_answer::<Remote>(answer) {
            Ok(remote) => rows.extend(tagged(node, remote.sessions)),
            Err(why) => missing.add(node, "active", &why),
        }
    }
    // Oldest first across nodes (RFC 3339 UTC times of one format sort as text).
    let key = |row: &serde_json::Value| {
        (
            row["start_time"].as_str().unwrap_or("").to_string(),
            row["session_id"].as_str().unwrap_or("").to_string(),
        )
    };
    rows.sort_by_key(key);
    Ok(answer_json(
        serde_json::json!({ "sessions": rows }),
        Some(missing),
    ))
}

#[derive(Serialize)]
struct Page {
    sessions: Vec<IndexedSession>,
    next_cursor: Option<String>,
}

fn encode_cursor(cursor: &Cursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(cursor).unwrap_or_default())
}

fn bad_cursor() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_cursor",
        "cursor is not one this API gave for this sort",
    )
}

fn decode_cursor(text: &str, sort: SortKey, desc: bool) -> Result<Cursor, ApiError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad_cursor())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad_cursor())?;
    if cursor.sort != sort || cursor.desc != desc {
        return Err(bad_cursor());
    }
    Ok(cursor)
}

async fn sessions(
    State(reports): State<Reports>,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&reports.hub, &headers).await?;
    let mut allowed = FILTERS.to_vec();
    allowed.extend(["sort", "order", "limit", "cursor", SCOPE]);
    let params = Params::checked(raw, &allowed)?;
    let peers = fan_out(&reports, &params)?;
    let _slot = reports.admit(&caller).await?;
    let sort = match params.text("sort") {
        None => SortKey::StartTime,
        Some(s) => SortKey::parse(&s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "sort: {s:?}; one of start_time, duration, helper, recipient, device"
            ))
        })?,
    };
    let desc = match params.text("order").as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order: {other:?}; asc or desc"
            )));
        }
    };
    let limit = match params.text("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::bad_request(format!("limit: {l:?}; 1 to {MAX_LIMIT}")))?,
    };
    if let Some(peers) = peers {
        return cluster_sessions(
            &reports, peers, &headers, &caller, &params, sort, desc, limit,
        )
        .await;
    }
    let cursor = params
        .text("cursor")
        .map(|c| decode_cursor(&c, sort, desc))
        .transpose()?;
    let Some(query) = session_query(&reports.hub, &caller, &params)? else {
        return Ok(axum::Json(Page {
            sessions: Vec::new(),
            next_cursor: None,
        })
        .into_response());
    };
    let (sessions, next) = run(&reports, "sessions", move |index| {
        index.sessions(&query, sort, desc, cursor.as_ref(), limit)
    })
    .await?;
    Ok(axum::Json(Page {
        sessions,
        next_cursor: next.as_ref().map(encode_cursor),
    })
    .into_response())
}

async fn summary(
    State(reports): State<Reports>,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&reports.hub, &headers).await?;
    let params = Params::checked(raw, &["tenant", "since", "until", SCOPE])?;
    let _slot = reports.admit(&caller).await?;
    let since = params
        .time("since")?
        .unwrap_or(i64::MIN)
        .max(retention_floor(&reports.hub));
    let until = params.time("until")?.unwrap_or(i64::MAX);
    let peers = fan_out(&reports, &params)?;
    let forwarded_here = params.text(SCOPE).as_deref() == Some(SCOPE_NODE);
    if peers.is_none() && !forwarded_here {
        let summary = match caller.tenant_filter(params.text("tenant")) {
            Ok(tenant) => {
                run(&reports, "summary", move |index| {
                    index.summary(tenant.as_deref(), since, until)
                })
                .await?
            }
            Err(()) => Default::default(),
        };
        return Ok(axum::Json(summary).into_response());
    }
    // This node's part with its raw material: its durations, for percentiles over the
    // union (they do not add up as counts do).
    let tenant = caller.tenant_filter(params.text("tenant"));
    let own = async {
        match tenant {
            Ok(tenant) => {
                run(&reports, "summary", move |index| {
                    Ok(NodeSummary {
                        summary: index.summary(tenant.as_deref(), since, until)?,
                        durations: index.durations(tenant.as_deref(), since, until)?,
                    })
                })
                .await
            }
            Err(()) => Ok(NodeSummary::default()),
        }
    };
    let Some(peers) = peers else {
        return Ok(axum::Json(own.await?).into_response());
    };
    // This node's part is read while the other nodes are asked.
    let (query, authorization) = (forwarded(&params, &[]), authorization(&headers));
    let (own, answers) = tokio::join!(
        own,
        peers.ask_all(
            reqwest::Method::GET,
            "/api/v1/reports/summary",
            &query,
            &authorization,
        )
    );
    let mut parts = vec![own?];
    let mut missing = Missing::default();
    for (node, answer) in answers {
        match parse_answer::<NodeSummary>(answer) {
            Ok(part) => parts.push(part),
            Err(why) => missing.add(node, "summary", &why),
        }
    }
    Ok(answer_json(merge_summaries(parts), Some(missing)))
}

#[derive(Serialize)]
struct Detail {
    session: IndexedSession,
    /// Still running on this node now.
    active: bool,
    changes: Vec<crate::report::index::Change>,
}

async fn detail(
    State(reports): State<Reports>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&reports.hub, &headers).await?;
    let params = Params::checked(raw, &["tenant", SCOPE])?;
    let peers = fan_out(&reports, &params)?;
    let _slot = reports.admit(&caller).await?;
    let Ok(tenant) = caller.tenant_filter(params.text("tenant")) else {
        return Err(not_found_in(peers));
    };
    let floor = retention_floor(&reports.hub);
    let lookup = (tenant.clone(), id.clone());
    let found = run(&reports, "detail", move |index| {
        index.session(lookup.0.as_deref(), &lookup.1, floor)
    })
    .await?;
    let Some((session, changes)) = found else {
        return match peers {
            None => Err(ApiError::not_found()),
            Some(peers) => {
                first_hit(
                    peers,
                    reqwest::Method::GET,
                    &format!("/api/v1/reports/sessions/{}", url_segment(&id)),
                    &params,
                    &headers,
                    "detail",
                )
                .await
            }
        };
    };
    let active = reports
        .hub
        .active_sessions(Some(&session.row.tenant))
        .iter()
        .any(|a| a.session_id == id);
    Ok(axum::Json(Detail {
        session,
        active,
        changes,
    })
    .into_response())
}

async fn end(
    State(reports): State<Reports>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&reports.hub, &headers).await?;
    if let Caller::Tenant { may_end: false, .. } = caller {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the tenant's role assignments do not grant end_sessions to this administrator",
        ));
    }
    let params = Params::checked(raw, &["tenant", SCOPE])?;
    let peers = fan_out(&reports, &params)?;
    let Ok(tenant) = caller.tenant_filter(params.text("tenant")) else {
        return Err(not_found_in(peers));
    };
    let Some(session) = reports
        .hub
        .active_sessions(tenant.as_deref())
        .into_iter()
        .find(|s| s.session_id == id)
    else {
        // Running on another node, if anywhere: the one that holds it ends it (the others
        // answer 404), under the same token's permission and name.
        return match peers {
            None => Err(ApiError::not_found()),
            Some(peers) => {
                first_hit(
                    peers,
                    reqwest::Method::POST,
                    &format!("/api/v1/reports/sessions/{}/end", url_segment(&id)),
                    &params,
                    &headers,
                    "end",
                )
                .await
            }
        };
    };
    let administrator = caller.administrator();
    let sid = SessionId::from_wire(&session.session_id);
    if reports
        .hub
        .end_by_administrator(&sid, administrator.clone())
        .await
        .is_none()
    {
        return Err(not_found_in(peers));
    }
    info!(session = %sid, tenant = %session.tenant, %administrator, "session ended by an administrator through the reports API");
    Ok(axum::Json(serde_json::json!({ "session_id": id, "ended": true })).into_response())
}
