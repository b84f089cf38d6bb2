//! The reports API's cluster fan-out: the node a caller asks forwards the request to every
//! other node's admin listener (`[cluster] admin_nodes` / `admin_address_template`) and
//! merges the answers (`report::merge`).
//!
//! The caller's own `Authorization` header is forwarded unchanged (a tenant
//! administrator's JWT or the operator token), so each node authenticates and scopes the
//! request exactly as if it had been asked directly: no node-to-node credential exists that
//! could widen a tenant administrator's view. Forwarded requests carry `scope=node`, which
//! makes the receiving node answer for itself only and never fan out again, so requests
//! cannot loop. A node that does not answer (connection refused, timeout, an error status,
//! an unreadable body) is named in the answer (`missing_nodes`), counted in
//! `relay_reports_fanout_failures_total{node}` and logged; the answer is never silently
//! smaller.

use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Url;
use tracing::warn;

use crate::config::ClusterConfig;
use crate::core::cluster::NodeId;

/// The query parameter that marks a forwarded request, and its value.
pub const SCOPE: &str = "scope";
/// `scope=node`: answer for this node only (what forwarded requests carry).
pub const SCOPE_NODE: &str = "node";

/// The other nodes, and the HTTP client that asks them.
#[derive(Debug)]
pub struct Peers {
    /// The client; `Err` when it could not be built (every node then counts as missing).
    client: Result<reqwest::Client, String>,
    /// Every other node's admin base URL, by id.
    others: Vec<(NodeId, String)>,
    /// This node.
    node: NodeId,
    /// How many nodes the cluster has.
    size: usize,
}

/// A node's answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Peers {
    /// The peers of a cluster with admin addresses; `None` for a single relay or a cluster
    /// without them (each node then answers for itself).
    pub fn from_config(cluster: Option<&ClusterConfig>) -> Option<Peers> {
        let cluster = cluster?;
        if cluster.admin_nodes.is_empty() {
            return None;
        }
        let client = build_client(cluster.fanout_timeout, cluster.admin_ca_file.as_deref());
        if let Err(e) = &client {
            warn!(error = %e, "reports fan-out: no HTTP client; other nodes will be reported missing");
        }
        Some(Peers {
            client,
            others: cluster
                .admin_peers()
                .map(|(id, url)| (id, url.to_string()))
                .collect(),
            node: cluster.node,
            size: cluster.nodes.len(),
        })
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Every other node's id.
    pub fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.others.iter().map(|(id, _)| *id)
    }

    /// Sends `method path?query&scope=node` with `authorization` to every other node at
    /// once; the answers (or why none came) by node.
    pub async fn ask_all(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
        authorization: &str,
    ) -> Vec<(NodeId, Result<Answer, String>)> {
        join_all(self.others.iter().map(|(id, _)| {
            let method = method.clone();
            async move { (*id, self.ask(*id, method, path, query, authorization).await) }
        }))
        .await
    }

    /// Sends one request to node `node` (see [`Peers::ask_all`]).
    pub async fn ask(
        &self,
        node: NodeId,
        method: reqwest::Method,
        path: &str,
        query: &[(String, String)],
        authorization: &str,
    ) -> Result<Answer, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let base = self
            .others
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, url)| url.as_str())
            .ok_or_else(|| format!("node {node} has no admin address"))?;
        let mut url = Url::parse(&format!("{base}{path}")).map_err(|e| e.to_string())?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().filter(|(k, _)| k != SCOPE))
            .append_pair(SCOPE, SCOPE_NODE);
        let response = client
            .request(method, url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(describe)?.to_vec();
        Ok(Answer { status, body })
    }
}

/// The error without the URL (which holds the query, e.g. names a caller filtered by).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let e = e.without_url();
    format!("{kind}: {e}")
}

/// Records that `node` did not answer `endpoint` usefully: the metric and a log line.
pub fn missing(node: NodeId, endpoint: &'static str, why: &str) {
    metrics::counter!("relay_reports_fanout_failures_total", "node" => node.get().to_string())
        .increment(1);
    warn!(node = %node, endpoint, reason = why, "reports fan-out: a node did not answer; the answer is partial");
}

/// Plain HTTP or HTTPS (system roots, plus `ca_file`'s) with the fan-out's timeout and no
/// redirects: a node's answer is where its address says.
fn build_client(timeout: Duration, ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let extra = match ca_file {
        Some(path) => crate::tls::read_ca_certificates(path)?,
        None => Vec::new(),
    };
    let tls = crate::tls::https_client_config(extra).map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("remote-help-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}
