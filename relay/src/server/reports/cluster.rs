//! The cluster side of the reports API: which requests fan out (`scope`), the forwarded
//! query, and the endpoints' cluster answers (`sessions` pages by composite cursor, the
//! CSV in merged order, first hits for `sessions/{id}` and `end`), each flagged
//! `partial` with the `missing_nodes` when a node did not answer. The merging itself is
//! pure, in `report::merge`; the requests are [`super::fanout`]'s.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Serialize;

use super::fanout::{self, Peers, SCOPE, SCOPE_NODE};
use super::{
    ApiError, CSV_COLUMNS, Caller, EXPORT_PAGE_ROWS, MAX_LIMIT, Page, Params, Reports, bad_cursor,
    csv_row, encode_cursor, run, session_query,
};
use crate::core::cluster::NodeId;
use crate::report::index::{Cursor, IndexedSession, SessionQuery, SortKey};
use crate::report::merge::{ClusterCursor, NodePage, NodePosition, merge_page, merge_sorted};

/// The `Authorization` header as the caller sent it: forwarded unchanged to the other
/// nodes, so each scopes the request by the caller's own token.
pub(super) fn authorization(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The other nodes to ask, when this request is answered for the whole cluster: a cluster
/// with admin addresses, and not a request another node forwarded (`scope=node`).
pub(super) fn fan_out<'a>(
    reports: &'a Reports,
    params: &Params,
) -> Result<Option<&'a Peers>, ApiError> {
    match params.text(SCOPE).as_deref() {
        None | Some("cluster") => Ok(reports.peers.as_deref()),
        Some(SCOPE_NODE) => Ok(None),
        Some(other) => Err(ApiError::bad_request(format!(
            "scope: {other:?}; node or cluster"
        ))),
    }
}

/// The nodes that did not answer a cluster-wide request, each counted and logged.
#[derive(Default)]
pub(super) struct Missing(Vec<u8>);

impl Missing {
    pub(super) fn add(&mut self, node: NodeId, endpoint: &'static str, why: &str) {
        fanout::missing(node, endpoint, why);
        self.0.push(node.get());
    }

    pub(super) fn nodes(mut self) -> Vec<u8> {
        self.0.sort_unstable();
        self.0.dedup();
        self.0
    }
}

/// The body of a node's `200` answer, or why it is not usable (another status, a body
/// that is not the expected JSON, no answer at all).
pub(super) fn parse_answer<T: serde::de::DeserializeOwned>(
    answer: Result<fanout::Answer, String>,
) -> Result<T, String> {
    let answer = answer?;
    if answer.status != 200 {
        return Err(format!(
            "answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    serde_json::from_slice(&answer.body).map_err(|e| format!("unreadable answer: {e}"))
}

/// A cluster answer: the body with `partial` and `missing_nodes` beside its fields.
#[derive(Serialize)]
struct Whole<T> {
    #[serde(flatten)]
    body: T,
    /// Some node did not answer: the report lacks its part.
    partial: bool,
    /// The nodes that did not answer, by id.
    missing_nodes: Vec<u8>,
}

/// `body` as JSON; in a cluster answer (`missing` given) with `partial` and `missing_nodes`.
pub(super) fn answer_json<T: Serialize>(body: T, missing: Option<Missing>) -> Response {
    match missing {
        None => axum::Json(body).into_response(),
        Some(missing) => {
            let missing_nodes = missing.nodes();
            axum::Json(Whole {
                body,
                partial: !missing_nodes.is_empty(),
                missing_nodes,
            })
            .into_response()
        }
    }
}

/// The request's parameters as pairs, less those named in `except`, for forwarding.
pub(super) fn forwarded(params: &Params, except: &[&str]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = params
        .0
        .iter()
        .filter(|(k, _)| !except.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pairs.sort();
    pairs
}

/// A cluster-wide cursor (one position per node): for this sort, and this cluster's size.
pub(super) fn decode_cluster_cursor(
    text: &str,
    sort: SortKey,
    desc: bool,
    nodes: usize,
) -> Result<ClusterCursor, ApiError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad_cursor())?;
    let cursor: ClusterCursor = serde_json::from_slice(&bytes).map_err(|_| bad_cursor())?;
    let own = |p: &NodePosition| match p {
        NodePosition::After(c) => c.sort == sort && c.desc == desc,
        _ => true,
    };
    if cursor.sort != sort
        || cursor.desc != desc
        || cursor.nodes.len() != nodes
        || !cursor.nodes.iter().all(own)
    {
        return Err(bad_cursor());
    }
    Ok(cursor)
}

/// One cluster-wide page: this node's page and every other node's (`scope=node`) after
/// each one's position in the cursor, merge-sorted (`report::merge::merge_page`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn cluster_sessions(
    reports: &Reports,
    peers: &Peers,
    headers: &HeaderMap,
    caller: &Caller,
    params: &Params,
    sort: SortKey,
    desc: bool,
    limit: usize,
) -> Result<Response, ApiError> {
    let cursor = match params.text("cursor") {
        Some(text) => decode_cluster_cursor(&text, sort, desc, peers.size())?,
        None => ClusterCursor::start(sort, desc, peers.size()),
    };
    let mut missing = Missing::default();
    let Some(query) = session_query(&reports.hub, caller, params)? else {
        let empty = Page {
            sessions: Vec::new(),
            next_cursor: None,
        };
        return Ok(answer_json(empty, Some(missing)));
    };
    let position = |node: NodeId| cursor.nodes.get(usize::from(node.get()));
    // This node's page, read while the other nodes are asked (below).
    let local = async {
        match position(peers.node()) {
            Some(NodePosition::Done) | None => Ok(None),
            Some(p) => {
                let after = match p {
                    NodePosition::After(c) => Some(c.clone()),
                    _ => None,
                };
                let query = query.clone();
                let (rows, next) = run(reports, "sessions", move |index| {
                    index.sessions(&query, sort, desc, after.as_ref(), limit)
                })
                .await?;
                Ok::<_, ApiError>(Some(NodePage {
                    rows,
                    more: next.is_some(),
                }))
            }
        }
    };
    let authorization = authorization(headers);
    let base = forwarded(params, &["cursor", "limit"]);
    let asked = peers.others().filter_map(|node| match position(node) {
        Some(NodePosition::Done) | None => None,
        Some(p) => {
            let mut query = base.clone();
            query.push(("limit".into(), limit.to_string()));
            if let NodePosition::After(c) = p {
                query.push(("cursor".into(), encode_cursor(c)));
            }
            Some((node, query))
        }
    });
    let remote = futures_util::future::join_all(asked.map(|(node, query)| {
        let authorization = &authorization;
        async move {
            let answer = peers
                .ask(
                    node,
                    reqwest::Method::GET,
                    "/api/v1/reports/sessions",
                    &query,
                    authorization,
                )
                .await;
            (node, answer)
        }
    }));
    let (local, answers) = tokio::join!(local, remote);
    let local = local?;
    let mut pages: Vec<Option<NodePage>> = vec![None; peers.size()];
    if let Some(page) = pages.get_mut(usize::from(peers.node().get())) {
        *page = local;
    }
    for (node, answer) in answers {
        #[derive(serde::Deserialize)]
        struct Remote {
            sessions: Vec<IndexedSession>,
            next_cursor: Option<String>,
        }
        match parse_answer::<Remote>(answer) {
            Ok(remote) => {
                if let Some(page) = pages.get_mut(usize::from(node.get())) {
                    *page = Some(NodePage {
                        rows: remote.sessions,
                        more: remote.next_cursor.is_some(),
                    });
                }
            }
            Err(why) => missing.add(node, "sessions", &why),
        }
    }
    let (sessions, next) = merge_page(&cursor, pages, limit);
    let next_cursor = next.map(|c| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&c).unwrap_or_default())
    });
    Ok(answer_json(
        Page {
            sessions,
            next_cursor,
        },
        Some(missing),
    ))
}

/// Rows per request when the export reads another node's sessions.
const EXPORT_PAGE: usize = MAX_LIMIT;

/// Every session of another node matching the forwarded filters, oldest first, read page
/// by page through its `sessions` (`scope=node`).
pub(super) async fn node_export(
    peers: &Peers,
    node: NodeId,
    base: &[(String, String)],
    authorization: &str,
) -> Result<Vec<IndexedSession>, String> {
    #[derive(serde::Deserialize)]
    struct Remote {
        sessions: Vec<IndexedSession>,
        next_cursor: Option<String>,
    }
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = base.to_vec();
        query.extend([
            ("sort".into(), "start_time".into()),
            ("order".into(), "asc".into()),
            ("limit".into(), EXPORT_PAGE.to_string()),
        ]);
        if let Some(c) = &cursor {
            query.push(("cursor".into(), c.clone()));
        }
        let answer = peers
            .ask(
                node,
                reqwest::Method::GET,
                "/api/v1/reports/sessions",
                &query,
                authorization,
            )
            .await;
        let page: Remote = parse_answer(answer)?;
        rows.extend(page.sessions);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(rows),
        }
    }
}

/// This node's rows of a cluster export, oldest first, read a page at a time (the index
/// is locked for one page, not the whole export, so other tenants' queries run between).
async fn local_export(
    reports: &Reports,
    query: SessionQuery,
) -> Result<Vec<IndexedSession>, ApiError> {
    let mut rows = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let query = query.clone();
        let (page, next) = run(reports, "export", move |index| {
            index.sessions(
                &query,
                SortKey::StartTime,
                false,
                after.as_ref(),
                EXPORT_PAGE_ROWS,
            )
        })
        .await?;
        rows.extend(page);
        match next {
            Some(next) => after = Some(next),
            None => return Ok(rows),
        }
    }
}

/// The cluster's CSV: every node's rows merged in the export's order (start, tenant,
/// session id). A node that did not answer is named in the `Relay-Report-Missing-Nodes`
/// header (`Relay-Report-Partial: true`) and the file is offered as `sessions-partial.csv`.
pub(super) async fn cluster_export(
    reports: &Reports,
    peers: &Peers,
    headers: &HeaderMap,
    caller: &Caller,
    params: &Params,
) -> Result<Response, ApiError> {
    let mut missing = Missing::default();
    let mut parts = Vec::new();
    if let Some(query) = session_query(&reports.hub, caller, params)? {
        let authorization = authorization(headers);
        let base = forwarded(params, &[]);
        let local = local_export(reports, query);
        let remote = futures_util::future::join_all(peers.others().map(|node| {
            let (base, authorization) = (&base, &authorization);
            async move { (node, node_export(peers, node, base, authorization).await) }
        }));
        let (local, answers) = tokio::join!(local, remote);
        parts.push(local?);
        for (node, answer) in answers {
            match answer {
                Ok(rows) => parts.push(rows),
                Err(why) => missing.add(node, "export", &why),
            }
        }
    }
    let missing = missing.nodes();
    // Formatting a cluster's month is CPU the runtime's workers must not spend.
    let body = tokio::task::spawn_blocking(move || {
        let mut body = CSV_COLUMNS.join(",");
        body.push_str("\r\n");
        for row in merge_sorted(SortKey::StartTime, false, parts) {
            body.push_str(&csv_row(&row));
        }
        body
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the export task failed",
        )
    })?;
    let partial = !missing.is_empty();
    let names = missing
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                if partial {
                    "attachment; filename=\"sessions-partial.csv\"".to_string()
                } else {
                    "attachment; filename=\"sessions.csv\"".to_string()
                },
            ),
            (
                header::HeaderName::from_static("relay-report-partial"),
                partial.to_string(),
            ),
            (
                header::HeaderName::from_static("relay-report-missing-nodes"),
                names,
            ),
        ],
        body,
    )
        .into_response())
}

/// A session id as a path segment: ids are hex, but a caller's text is escaped rather than
/// trusted to be.
pub(super) fn url_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `not_found`; in a cluster answer with `partial: false` and no missing nodes, as every
/// cluster answer carries them (so another tenant's session looks like none at all).
pub(super) fn not_found_in(peers: Option<&Peers>) -> ApiError {
    ApiError {
        missing: peers.map(|_| Vec::new()),
        ..ApiError::not_found()
    }
}

/// Asks every other node for a session this node does not have (`detail`, `end`): the
/// first node that answers 200 is the answer, passed on as it came; `404` from every node
/// that answered is `not_found`, with `partial` and `missing_nodes` when some did not.
pub(super) async fn first_hit(
    peers: &Peers,
    method: reqwest::Method,
    path: &str,
    params: &Params,
    headers: &HeaderMap,
    endpoint: &'static str,
) -> Result<Response, ApiError> {
    let mut missing = Missing::default();
    let mut hit = None;
    for (node, answer) in peers
        .ask_all(
            method,
            path,
            &forwarded(params, &[]),
            &authorization(headers),
        )
        .await
    {
        match answer {
            Ok(a) if a.status == 200 && hit.is_none() => {
                match serde_json::from_slice::<serde_json::Value>(&a.body) {
                    Ok(body) => hit = Some(body),
                    Err(e) => missing.add(node, endpoint, &format!("unreadable answer: {e}")),
                }
            }
            Ok(a) if a.status == 200 || a.status == 404 => {}
            other => {
                let why = parse_answer::<serde_json::Value>(other)
                    .err()
                    .unwrap_or_default();
                missing.add(node, endpoint, &why);
            }
        }
    }
    match hit {
        Some(body) => Ok(axum::Json(body).into_response()),
        None => Err(ApiError {
            missing: Some(missing.nodes()),
            ..ApiError::not_found()
        }),
    }
}
