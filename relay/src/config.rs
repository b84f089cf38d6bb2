//! Relay configuration: a TOML file parsed into [`RawConfig`], then turned into a typed
//! [`Config`] by one fallible conversion that reports **every** problem at once, each with
//! the path of the field it concerns (`tenants[1].jwks_file: ...`).
//!
//! Nothing here binds a port: the daemon loads and checks the whole config first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{TenantKeys, TenantTrust};
use crate::claim_map::{ClaimMapping, ClaimPath, Preset, TenantSelector};
use crate::core::TenantId;
use crate::core::cluster::{MAX_NODES, NodeId, node_from_hostname};
use crate::core::policy::{
    Assignment, CloudEnvironment, DEFAULT_LICENSE, HELP_DESK_OPERATOR, Permission, PermissionSet,
    Role, Scope, TenantPolicy,
};
use crate::tenant_keys::{FetchSettings, KeySource, ProviderKeys, check_https};

mod forwarder;
use forwarder::forwarder_settings;
pub use forwarder::{
    DEFAULT_MAX_PACKET_BYTES, DEFAULT_MAX_ROUTES, DEFAULT_SESSION_BYTES_PER_SEC, ForwarderConfig,
    RawForwarder,
};

/// The development config used when `relay` runs without `--config`. Relative paths in it
/// are resolved against the state folder, where the dev tenant's key is generated.
pub const DEV_CONFIG_TOML: &str = include_str!("dev-config.toml");

/// The config file as written, before any checking.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`.
    #[serde(default)]
    pub server: RawServer,
    /// `[limits]`.
    #[serde(default)]
    pub limits: RawLimits,
    /// `[[tenants]]`.
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    /// `[audit]`.
    #[serde(default)]
    pub audit: RawAudit,
    /// `[admin]`.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[cluster]`: absent for a single relay.
    pub cluster: Option<RawCluster>,
    /// `[key_fetch]`: how keys of tenants configured by URL are fetched.
    #[serde(default)]
    pub key_fetch: RawKeyFetch,
    /// `[web]`: the web listener; absent, the web surface is on the admin listener only.
    pub web: Option<RawWeb>,
    /// `[forwarder]`: the packet path's forwarder (PROTOCOL.md §8a).
    #[serde(default)]
    pub forwarder: RawForwarder,
}

/// `[web]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// TCP address of the web listener, e.g. "0.0.0.0:443" (required).
    pub listen: Option<String>,
    /// PEM certificate chain file for HTTPS; with `tls_key`. Without both, plain HTTP,
    /// which only a loopback address may serve.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key file for HTTPS.
    pub tls_key: Option<PathBuf>,
}

/// The web listener: the web surface (the Monitor page, the reports API, the helper page)
/// for people's browsers, without the admin and metrics endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// HTTPS certificate and key files; `None` is plain HTTP, which the config allows only
    /// on a loopback address (a reverse proxy on the same machine terminates TLS).
    pub tls: Option<WebTls>,
}

/// The web listener's HTTPS certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebTls {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

/// `[key_fetch]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyFetch {
    /// Limit on one HTTPS request, ms (default 10000).
    pub timeout_ms: Option<u64>,
    /// Largest discovery document or key set read, bytes (default 262144).
    pub max_response_bytes: Option<u64>,
    /// Lower bound on the time between scheduled fetches, s (default 300).
    pub refresh_min_secs: Option<u64>,
    /// Upper bound on the time between scheduled fetches, s (default 86400).
    pub refresh_max_secs: Option<u64>,
    /// Time between scheduled fetches without `Cache-Control: max-age`, s (default 3600).
    pub refresh_default_secs: Option<u64>,
    /// Time until the next attempt after a failed fetch, s (default 60).
    pub retry_secs: Option<u64>,
    /// Shortest time between fetches caused by tokens with unknown `kid`s, s (default 300).
    pub unknown_kid_interval_secs: Option<u64>,
}

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// This node's id (0-31), or `"hostname"`: the ordinal of a StatefulSet pod's name.
    pub node_id: Option<RawNodeId>,
    /// Every node's public `host:port`, in node id order.
    pub nodes: Option<Vec<String>>,
    /// Instead of `nodes`: one address with `{id}` in it (per-pod DNS names of a
    /// Kubernetes headless Service), expanded for ids `0..size`.
    pub node_address_template: Option<String>,
    /// With `node_address_template`: how many nodes there are.
    pub size: Option<u64>,
    /// Every node's admin listener (`host:port`, or `http://` / `https://` followed by
    /// one), in node id order: where the reports API asks the other nodes (fan-out).
    pub admin_nodes: Option<Vec<String>>,
    /// Instead of `admin_nodes`: one admin address with `{id}` in it, expanded for every node.
    pub admin_address_template: Option<String>,
    /// Limit on one reports request to another node, ms (default 5000).
    pub fanout_timeout_ms: Option<u64>,
    /// PEM CA certificates trusted for `https://` admin addresses, besides the system's.
    pub admin_ca_file: Option<PathBuf>,
}

/// A node id as written: a number, or the name of where to find it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawNodeId {
    /// The id itself.
    Number(u64),
    /// `"hostname"`.
    From(String),
}

/// The default limit on one reports request to another node.
pub const DEFAULT_FANOUT_TIMEOUT: Duration = Duration::from_millis(5_000);

/// This node's place in a cluster of relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node.
    pub node: NodeId,
    /// Every node's public `host:port` (what clients are redirected to), by node id.
    pub nodes: Vec<String>,
    /// Every node's admin listener as a base URL (`http://host:port`), by node id; empty
    /// when not configured, and then each node's reports API answers for itself only.
    pub admin_nodes: Vec<String>,
    /// Limit on one reports request to another node (connection and answer).
    pub fanout_timeout: Duration,
    /// CA certificates (PEM) trusted for `https://` admin addresses besides the system's.
    pub admin_ca_file: Option<PathBuf>,
}

impl ClusterConfig {
    /// A cluster of `nodes` (public addresses) seen from `node`, without admin addresses:
    /// each node's reports API answers for itself.
    pub fn new(node: NodeId, nodes: Vec<String>) -> ClusterConfig {
        ClusterConfig {
            node,
            nodes,
            admin_nodes: Vec::new(),
            fanout_timeout: DEFAULT_FANOUT_TIMEOUT,
            admin_ca_file: None,
        }
    }

    /// The other nodes' admin base URLs, with their ids: whom the reports API asks. Empty
    /// without `admin_nodes` / `admin_address_template`.
    pub fn admin_peers(&self) -> impl Iterator<Item = (NodeId, &str)> {
        self.admin_nodes
            .iter()
            .enumerate()
            .filter_map(|(i, url)| Some((NodeId::new(u8::try_from(i).ok()?)?, url.as_str())))
            .filter(|(id, _)| *id != self.node)
    }

    /// The public address of `node`, if the cluster has it.
    pub fn address_of(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(usize::from(node.get())).map(String::as_str)
    }
}

/// The host name: `$HOSTNAME` when set (Kubernetes sets it to the pod's name), else the
/// kernel's.
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Whether `text` is a `host:port` a client can resolve and dial.
fn is_host_port(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
        None => false,
    }
}

/// The base URL of an admin address as written: `host:port` means plain HTTP; `http://`
/// and `https://` may be given. `None`: not an address.
fn admin_base_url(text: &str) -> Option<String> {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some(_) => return None,
        None => ("http", text),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    is_host_port(rest).then(|| format!("{scheme}://{rest}"))
}

/// `[audit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Folder of the audit files (default "audit" under the state folder).
    pub dir: Option<PathBuf>,
    /// Size at which a file is closed and the next begun, MiB (default 64).
    pub max_file_mb: Option<u64>,
    /// Days files are kept (default 30).
    pub retention_days: Option<u64>,
}

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// TCP address of the admin/metrics listener (default "127.0.0.1:9464"); "" disables it.
    pub listen: Option<String>,
    /// File holding the bearer token for the session endpoints.
    pub token_file: Option<PathBuf>,
    /// Report queries one tenant (or the operator) may run at once (default 4).
    pub reports_queries_per_tenant: Option<u64>,
    /// Report queries of one tenant that may wait for a slot; more are refused (default 32).
    pub reports_queued_per_tenant: Option<u64>,
}

/// The admin/metrics HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// Bearer token for `/admin/*`; without one those endpoints answer 403.
    pub token: Option<String>,
    /// Report queries one tenant's administrators (or the operator) may run at once.
    pub reports_queries_per_tenant: usize,
    /// Report queries of one tenant that may wait for a running one to finish; beyond
    /// them a query is refused (`429 too_many_queries`).
    pub reports_queued_per_tenant: usize,
}

/// Default of `[admin] reports_queries_per_tenant`: the index answers one query at a
/// time, so more running at once only wait for it; a few keep a tenant's page responsive.
pub const DEFAULT_REPORTS_QUERIES_PER_TENANT: usize = 4;
/// Default of `[admin] reports_queued_per_tenant`: room for the Monitor page's burst (one
/// summary per day of the month at once) without refusing it.
pub const DEFAULT_REPORTS_QUEUED_PER_TENANT: usize = 32;

/// `[server]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// UDP address to listen on.
    pub listen: Option<String>,
    /// Audience (`aud`) every token must carry.
    pub audience: Option<String>,
    /// Audience of tenant administrators' tokens for the reports API (default: `audience`
    /// followed by `/admin`).
    pub admin_audience: Option<String>,
    /// PEM certificate chain file; with `tls_key`, else a self-signed certificate is made.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key file.
    pub tls_key: Option<PathBuf>,
    /// Folder for the relay's state (the certificate fingerprint file, dev keys).
    pub state_dir: Option<PathBuf>,
    /// Allowed clock skew for `exp`/`nbf`, seconds.
    pub token_leeway_secs: Option<u64>,
    /// Lifetime of a session code, seconds.
    pub code_ttl_secs: Option<u64>,
    /// Time a new connection has to authenticate, milliseconds.
    pub auth_timeout_ms: Option<u64>,
    /// A connection silent this long is lost, milliseconds.
    pub idle_timeout_ms: Option<u64>,
    /// Keep-alive interval, milliseconds (must be below the idle timeout).
    pub keep_alive_ms: Option<u64>,
    /// On shutdown, how long active sessions may continue before they are ended, ms.
    pub drain_timeout_ms: Option<u64>,
    /// How long a consent prompt waits for the sharer, seconds.
    pub consent_timeout_secs: Option<u64>,
}

/// `[limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest control message, bytes.
    pub max_control_message_bytes: Option<u64>,
    /// Per-stream receive window, bytes.
    pub stream_receive_window: Option<u64>,
    /// Per-connection receive window (all streams together), bytes.
    pub connection_receive_window: Option<u64>,
    /// Per-connection send window (unacknowledged and buffered stream data), bytes.
    pub send_window: Option<u64>,
    /// Datagram receive buffer per connection, bytes.
    pub datagram_receive_buffer: Option<u64>,
    /// Datagram send buffer per connection, bytes.
    pub datagram_send_buffer: Option<u64>,
    /// Most simultaneous client connections.
    pub max_connections: Option<u64>,
    /// Failed joins a connection may make before it is closed.
    pub max_failed_joins_per_connection: Option<u64>,
    /// Wrong attempts against one open code that burn it.
    pub wrong_attempts_per_code: Option<u64>,
    /// Budget for the relay's buffered bytes over all connections, MiB.
    pub max_buffered_mib: Option<u64>,
    /// Kernel receive and send buffer of the relay's UDP socket, bytes.
    pub udp_socket_buffer_bytes: Option<u64>,
    /// UDP sockets sharing the listen address (0: one per CPU, at most 16).
    pub udp_sockets: Option<u64>,
    /// Keep UDP receive offload (GRO) on with several sockets.
    pub udp_receive_offload: Option<bool>,
    /// Most simultaneous connections from one IP address.
    pub max_connections_per_source: Option<u64>,
    /// Most connections that have not authenticated yet.
    pub max_unauthenticated_connections: Option<u64>,
    /// Above this many unauthenticated connections, new clients must prove their address
    /// (QUIC Retry) before the relay does any handshake work.
    pub retry_above_unauthenticated: Option<u64>,
    /// Join attempts allowed per source IP address per minute.
    pub joins_per_source_per_minute: Option<u64>,
    /// Join attempts allowed per tenant per minute.
    pub joins_per_tenant_per_minute: Option<u64>,
    /// Sessions (any state) one tenant may have at once.
    pub max_sessions_per_tenant: Option<u64>,
    /// Sessions one tenant may set up per minute.
    pub session_setups_per_tenant_per_minute: Option<u64>,
}

/// `[[tenants]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Tenant id (the tokens' `tid`).
    pub id: Option<String>,
    /// Required `iss` of the tenant's tokens.
    pub issuer: Option<String>,
    /// JWK Set file with the tenant's public keys.
    pub jwks_file: Option<PathBuf>,
    /// The tenant's JWK Set URL (https); without it and without `jwks_file`, OpenID
    /// Connect discovery at the issuer finds it.
    pub jwks_uri: Option<String>,
    /// PEM file of CA certificates trusted for the tenant's identity provider, besides the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// The `aud` this tenant's tokens carry, when not `server.audience`.
    pub audience: Option<String>,
    /// The `aud` this tenant's administrators' tokens carry, when not
    /// `server.admin_audience`.
    pub admin_audience: Option<String>,
    /// Claim mapping preset: "relay" (default), "entra", "keycloak" or "okta".
    pub claims: Option<String>,
    /// Per-entry overrides on top of the preset: entry name to a claim path or a list of
    /// them (`select_by` takes "tid" or "iss").
    pub claim_map: Option<std::collections::BTreeMap<String, toml::Value>>,
    /// Remote Help is enabled for the tenant (default false).
    pub enabled: Option<bool>,
    /// Sharers on unenrolled devices are allowed (default false).
    pub allow_unenrolled_devices: Option<bool>,
    /// The chat channel is refused (default false).
    pub disable_chat: Option<bool>,
    /// No direct (peer-to-peer) paths: all data through the relay (default false).
    pub relay_only: Option<bool>,
    /// Pair only parties that protect end to end with a suite in common (default true).
    pub require_end_to_end: Option<bool>,
    /// Licence name both parties need (default "remote-help").
    pub license: Option<String>,
    /// "commercial" (default) or "gcc"; "gcc-high" and "dod" are refused.
    pub cloud: Option<String>,
    /// Custom roles.
    #[serde(default)]
    pub roles: Vec<RawRole>,
    /// Role assignments.
    #[serde(default)]
    pub assignments: Vec<RawAssignment>,
    /// The administrators' browser sign-in at the tenant's issuer (the Monitor page).
    pub web_sign_in: Option<RawWebSignIn>,
}

/// `[tenants.web_sign_in]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSignIn {
    /// The public client's id at the tenant's provider.
    pub client_id: Option<String>,
    /// Scopes asked for (default `["openid"]`; must include `openid`).
    pub scopes: Option<Vec<String>>,
    /// The RFC 8707 `resource` parameter sent with the requests, if the provider needs one.
    pub resource: Option<String>,
    /// The `resource` parameter of the web helper page's sign-in (tokens for the session
    /// audience); none by default.
    pub helper_resource: Option<String>,
    /// The name the page shows for the tenant (default: its id).
    pub display_name: Option<String>,
}

/// `[[tenants.roles]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    /// The role's name.
    pub name: Option<String>,
    /// Permission names.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// `[[tenants.assignments]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssignment {
    /// A role name (built-in "Help Desk Operator" or a custom role).
    pub role: Option<String>,
    /// Groups whose members get the role.
    #[serde(default)]
    pub members: Vec<String>,
    /// Groups (or "all_users", "all_devices") the members may help.
    #[serde(default)]
    pub scope: Vec<String>,
}

/// One tenant: how to verify its tokens, and its Remote Help policy.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Identity: id, issuer, keys.
    pub trust: TenantTrust,
    /// Where its keys come from (a file: already in `trust`; its provider: fetched by
    /// `server::keys`, `trust.keys` empty until then).
    pub keys_from: KeySource,
    /// Settings and access control.
    pub policy: TenantPolicy,
    /// The `aud` of its administrators' tokens, when not the relay's `admin_audience`.
    pub admin_audience: Option<String>,
    /// How its administrators sign in to the Monitor page in a browser, if they may.
    pub web_sign_in: Option<WebSignIn>,
}

/// A tenant's browser sign-in (`[tenants.web_sign_in]`, docs/reports.md "Signing in with
/// the tenant's provider"): the public client (no secret) its administrators use at the
/// tenant's issuer, through the OpenID Connect authorization code flow with PKCE. The page
/// is its own redirect URI. Everything here is public: the relay hands it to anyone who
/// opens the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSignIn {
    /// The client id registered at the provider.
    pub client_id: String,
    /// The scopes asked for; `openid` among them, for the ID token whose nonce the page checks.
    pub scopes: Vec<String>,
    /// The `resource` parameter (RFC 8707) for providers that pick the token's audience by it:
    /// the Monitor page's, for a token of the tenant's administration audience.
    pub resource: Option<String>,
    /// The `resource` parameter of the web helper page's sign-in (docs/web-helper.md), whose
    /// token must carry the tenant's session audience (`audience`), never the administration
    /// one. `None` sends no `resource`: the provider then issues its default audience, which
    /// must be the tenant's `audience`. A separate field because one indicator cannot name
    /// both audiences, and the two must differ.
    pub helper_resource: Option<String>,
    /// The tenant's name on the page (default: its id).
    pub display_name: Option<String>,
}

impl WebSignIn {
    /// The issuer's origin (`https://host[:port]`), the one address the page talks to for
    /// sign-in (discovery, token endpoint): what the page's Content-Security-Policy allows.
    /// `None` for an issuer that is not an `https` URL (refused at load).
    pub fn origin_of(issuer: &str) -> Option<String> {
        check_https(issuer).ok()?;
        let rest = &issuer["https://".len()..];
        let host = rest.split(['/', '?', '#']).next()?;
        Some(format!("https://{}", host.to_ascii_lowercase()))
    }
}

/// A scope token as RFC 6749 §3.3 allows: printable ASCII, no space, `"` or `\`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// Parses `[tenants.web_sign_in]` of a tenant whose issuer is `issuer`; each problem goes to
/// `problem` with its field name under `web_sign_in`.
fn parse_web_sign_in(
    raw: RawWebSignIn,
    issuer: &str,
    problem: &mut dyn FnMut(&str, String),
) -> Option<WebSignIn> {
    let mut fine = true;
    // The issuer goes into a Content-Security-Policy header and the page fetches its
    // discovery document: an https URL with nothing a header could be split on.
    if WebSignIn::origin_of(issuer).is_none()
        || issuer
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | ',' | '\'' | '"'))
    {
        problem(
            "web_sign_in",
            format!(
                "browser sign-in needs the tenant's issuer to be an https URL the page can \
                 reach (OpenID Connect discovery); the issuer is {issuer:?}"
            ),
        );
        fine = false;
    }
    let client_id = raw.client_id.unwrap_or_default();
    if client_id.trim().is_empty() {
        problem("web_sign_in.client_id", "required".into());
        fine = false;
    } else if client_id.chars().any(|c| c.is_control()) {
        problem(
            "web_sign_in.client_id",
            "must not contain control characters".into(),
        );
        fine = false;
    }
    let scopes = raw.scopes.unwrap_or_else(|| vec!["openid".to_string()]);
    for (k, scope) in scopes.iter().enumerate() {
        if !is_scope_token(scope) {
            problem(
                &format!("web_sign_in.scopes[{k}]"),
                format!("{scope:?} is not a scope (printable ASCII, no spaces or quotes)"),
            );
            fine = false;
        }
    }
    if !scopes.iter().any(|s| s == "openid") {
        problem(
            "web_sign_in.scopes",
            "must include \"openid\": the page checks the ID token's nonce".into(),
        );
        fine = false;
    }
    // RFC 8707: an absolute URI without a fragment.
    let mut check_resource = |field: &str, resource: &Option<String>| {
        let Some(resource) = resource else {
            return true;
        };
        let scheme = resource.split(':').next().unwrap_or_default();
        let absolute = resource.contains(':')
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !absolute || resource.contains('#') || resource.chars().any(char::is_whitespace) {
            problem(
                field,
                format!("{resource:?} is not an absolute URI without a fragment (RFC 8707)"),
            );
            return false;
        }
        true
    };
    let resource = raw.resource;
    fine &= check_resource("web_sign_in.resource", &resource);
    let helper_resource = raw.helper_resource;
    fine &= check_resource("web_sign_in.helper_resource", &helper_resource);
    let display_name = raw.display_name;
    if let Some(name) = &display_name
        && (name.trim().is_empty() || name.chars().count() > 100)
    {
        problem(
            "web_sign_in.display_name",
            "must be 1 to 100 characters".into(),
        );
        fine = false;
    }
    fine.then_some(WebSignIn {
        client_id,
        scopes,
        resource,
        helper_resource,
        display_name,
    })
}

/// Where the relay's TLS identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A self-signed certificate made at start.
    SelfSigned,
}

/// Flow-control and resource limits; together they bound memory per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest control message, bytes.
    pub max_control_message: usize,
    /// Per-stream receive window, bytes.
    pub stream_receive_window: u64,
    /// Per-connection receive window, bytes.
    pub connection_receive_window: u64,
    /// Per-connection send window, bytes.
    pub send_window: u64,
    /// Datagram receive buffer per connection, bytes.
    pub datagram_receive_buffer: usize,
    /// Datagram send buffer per connection, bytes.
    pub datagram_send_buffer: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Failed joins a connection may make before it is closed.
    pub max_failed_joins_per_connection: u32,
    /// Wrong attempts against one open code (same locator, same tenant) that burn it.
    pub wrong_attempts_per_code: u32,
    /// Budget for the worst-case buffered bytes of all connections together, bytes; with
    /// the per-connection bound it caps connections (see `connection_cap`).
    pub max_buffered_bytes: u64,
    /// Kernel receive and send buffer asked for the relay's UDP socket, bytes. Bursts of
    /// handshakes overflow a small one, and every dropped Initial costs its client a
    /// one-second retransmission.
    pub udp_socket_buffer: usize,
    /// UDP sockets (each with its own quinn endpoint) sharing the listen address, among
    /// which the kernel steers packets by connection id; 0 picks one per CPU, at most 16.
    /// More spreads packet processing and handshakes over more cores.
    pub udp_sockets: usize,
    /// With several UDP sockets, keep UDP generic receive offload on (faster; quinn's
    /// default). A client socket that carries several connections to the node can then
    /// lose packets: the kernel may batch its datagrams to the socket of the first one's
    /// connection id. Off for such clients (load generators over a real network).
    pub udp_receive_offload: bool,
    /// Most simultaneous connections from one IP address.
    pub max_connections_per_source: usize,
    /// Most connections that have not authenticated yet.
    pub max_unauthenticated_connections: usize,
    /// Above this many unauthenticated connections, clients must pass a QUIC Retry first.
    pub retry_above_unauthenticated: usize,
    /// Join attempts allowed per source IP address per minute (bursts of a third of it).
    pub joins_per_source_per_minute: u32,
    /// Join attempts allowed per tenant per minute (bursts of a tenth of it).
    pub joins_per_tenant_per_minute: u32,
    /// Sessions (any state) one tenant may have at once.
    pub max_sessions_per_tenant: usize,
    /// Sessions one tenant may set up per minute (bursts of a tenth of it).
    pub session_setups_per_tenant_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_control_message: 64 * 1024,
            stream_receive_window: 256 * 1024,
            connection_receive_window: 1024 * 1024,
            send_window: 1024 * 1024,
            datagram_receive_buffer: 64 * 1024,
            datagram_send_buffer: 64 * 1024,
            max_connections: 10_000,
            max_failed_joins_per_connection: 5,
            wrong_attempts_per_code: 3,
            max_buffered_bytes: 8 << 30,
            udp_socket_buffer: 8 << 20,
            udp_sockets: 0,
            udp_receive_offload: true,
            max_connections_per_source: 256,
            max_unauthenticated_connections: 2_000,
            retry_above_unauthenticated: 100,
            joins_per_source_per_minute: 30,
            joins_per_tenant_per_minute: 3_000,
            max_sessions_per_tenant: 5_000,
            session_setups_per_tenant_per_minute: 1_200,
        }
    }
}

impl Limits {
    /// The join rate per source address.
    pub fn join_rate_per_source(&self) -> crate::core::limits::Rate {
        crate::core::limits::Rate {
            per_minute: self.joins_per_source_per_minute,
            burst: (self.joins_per_source_per_minute / 3).max(1),
        }
    }

    /// The join rate per tenant.
    pub fn join_rate_per_tenant(&self) -> crate::core::limits::Rate {
        crate::core::limits::Rate {
            per_minute: self.joins_per_tenant_per_minute,
            burst: (self.joins_per_tenant_per_minute / 10).max(1),
        }
    }

    /// The session setup rate per tenant.
    pub fn setup_rate_per_tenant(&self) -> crate::core::limits::Rate {
        crate::core::limits::Rate {
            per_minute: self.session_setups_per_tenant_per_minute,
            burst: (self.session_setups_per_tenant_per_minute / 10).max(1),
        }
    }

    /// Upper bound of the relay's buffered bytes for one session: both connections'
    /// receive windows, send windows and datagram buffers. See ARCHITECTURE.md.
    pub fn session_memory_bound(&self) -> u64 {
        2 * self.connection_memory_bound()
    }

    /// Upper bound of the relay's buffered bytes for one connection: its receive window,
    /// send window and datagram buffers.
    pub fn connection_memory_bound(&self) -> u64 {
        self.connection_receive_window
            + self.send_window
            + self.datagram_receive_buffer as u64
            + self.datagram_send_buffer as u64
    }

    /// Most simultaneous connections: `max_connections`, lowered if needed so that every
    /// connection at its memory bound still fits `max_buffered_bytes`.
    pub fn connection_cap(&self) -> usize {
        let by_budget = self.max_buffered_bytes / self.connection_memory_bound().max(1);
        self.max_connections
            .min(usize::try_from(by_budget).unwrap_or(usize::MAX))
            .max(1)
    }
}

/// The typed, checked configuration the relay runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Audience every session token must carry.
    pub audience: String,
    /// Audience every administration (reports API) token must carry.
    pub admin_audience: String,
    /// TLS identity source.
    pub tls: TlsSource,
    /// State folder.
    pub state_dir: PathBuf,
    /// Allowed clock skew.
    pub token_leeway: Duration,
    /// Session code lifetime.
    pub code_ttl: Duration,
    /// Authentication deadline for new connections.
    pub auth_timeout: Duration,
    /// Idle timeout of connections.
    pub idle_timeout: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Drain deadline on shutdown.
    pub drain_timeout: Duration,
    /// Flow-control and resource limits.
    pub limits: Limits,
    /// How long a consent prompt waits for the sharer.
    pub consent_timeout: Duration,
    /// The tenants this relay serves.
    pub tenants: Vec<Tenant>,
    /// Where audit events go.
    pub audit: crate::audit::AuditConfig,
    /// The admin/metrics listener.
    pub admin: AdminConfig,
    /// This node's place in a cluster; `None` for a single relay.
    pub cluster: Option<ClusterConfig>,
    /// How keys of tenants configured by URL are fetched.
    pub key_fetch: FetchSettings,
    /// The web listener; `None` when `[web]` is absent.
    pub web: Option<WebConfig>,
    /// The packet path's forwarder.
    pub forwarder: ForwarderConfig,
}

/// Default admin/metrics listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// Default UDP port of the relay.
pub const DEFAULT_PORT: u16 = 4433;
/// Default token audience.
pub const DEFAULT_AUDIENCE: &str = "remote-help-relay";

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field, e.g. `server.listen` or `tenants[0].jwks_file`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Everything wrong with a config, or why it could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config is not valid: {0}")]
    Syntax(String),
    /// The file parsed, but some values are wrong.
    #[error("config has {} problem(s):\n{}", .0.len(), render(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn render(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {}: {}", p.field, p.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// A config with every default, serving `tenants`, listening on `listen`, with a
    /// self-signed certificate: for embedding the relay (tests, `relay demo`, `loadtest`).
    pub fn with_defaults(listen: SocketAddr, tenants: Vec<Tenant>) -> Config {
        Config {
            listen,
            audience: DEFAULT_AUDIENCE.to_string(),
            admin_audience: crate::auth::default_admin_audience(DEFAULT_AUDIENCE),
            tls: TlsSource::SelfSigned,
            state_dir: PathBuf::from("state"),
            token_leeway: Duration::from_secs(60),
            code_ttl: Duration::from_secs(600),
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_millis(6_000),
            keep_alive: Duration::from_millis(1_500),
            drain_timeout: Duration::from_secs(10),
            consent_timeout: Duration::from_secs(300),
            limits: Limits::default(),
            tenants,
            audit: crate::audit::AuditConfig {
                dir: PathBuf::from("state/audit"),
                max_file_bytes: 64 << 20,
                retention_days: 30,
                // Both follow other settings at start (`server::spawn`).
                reserve_bytes: 0,
                key_file: None,
            },
            admin: AdminConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                token: None,
                reports_queries_per_tenant: DEFAULT_REPORTS_QUERIES_PER_TENANT,
                reports_queued_per_tenant: DEFAULT_REPORTS_QUEUED_PER_TENANT,
            },
            cluster: None,
            key_fetch: FetchSettings::default(),
            web: None,
            forwarder: ForwarderConfig::default(),
        }
    }

    /// Reads and checks a config file; relative paths in it are resolved against the
    /// file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// Parses and checks config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        Config::from_raw(raw, base)
    }

    /// The one conversion from what was written to what the relay runs on.
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, reason: String| {
            problems.push(ConfigProblem {
                field: field.to_string(),
                reason,
            })
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let s = raw.server;
        let listen = match s.listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            Some(text) => text.parse().unwrap_or_else(|e| {
                problem(
                    "server.listen",
                    format!("{text:?} is not an ip:port address ({e})"),
                );
                SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))
            }),
        };
        let audience = s.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.to_string());
        if audience.trim().is_empty() {
            problem("server.audience", "must not be empty".into());
        }
        let admin_audience = s
            .admin_audience
            .unwrap_or_else(|| crate::auth::default_admin_audience(&audience));
        if admin_audience.trim().is_empty() {
            problem("server.admin_audience", "must not be empty".into());
        } else if admin_audience == audience {
            problem(
                "server.admin_audience",
                "must differ from server.audience, or a helper's token would open the reports API"
                    .into(),
            );
        }
        let tls = match (s.tls_cert, s.tls_key) {
            (None, None) => TlsSource::SelfSigned,
            (Some(cert), Some(key)) => {
                let (cert, key) = (resolve(&cert), resolve(&key));
                for (field, path) in [("server.tls_cert", &cert), ("server.tls_key", &key)] {
                    if !path.is_file() {
                        problem(field, format!("{} is not a readable file", path.display()));
                    }
                }
                TlsSource::Files { cert, key }
            }
            (Some(_), None) => {
                problem("server.tls_key", "required when tls_cert is set".into());
                TlsSource::SelfSigned
            }
            (None, Some(_)) => {
                problem("server.tls_cert", "required when tls_key is set".into());
                TlsSource::SelfSigned
            }
        };
        let state_dir = resolve(&s.state_dir.unwrap_or_else(|| PathBuf::from("state")));

        let mut duration = |field: &str,
                            value: Option<u64>,
                            default: u64,
                            min: u64,
                            max: u64,
                            unit: fn(u64) -> Duration| {
            let v = value.unwrap_or(default);
            if v < min || v > max {
                problem(field, format!("{v} is out of range {min}..={max}"));
            }
            unit(v)
        };
        let token_leeway = duration(
            "server.token_leeway_secs",
            s.token_leeway_secs,
            60,
            0,
            600,
            Duration::from_secs,
        );
        let code_ttl = duration(
            "server.code_ttl_secs",
            s.code_ttl_secs,
            600,
            10,
            86_400,
            Duration::from_secs,
        );
        let auth_timeout = duration(
            "server.auth_timeout_ms",
            s.auth_timeout_ms,
            10_000,
            100,
            120_000,
            Duration::from_millis,
        );
        let idle_timeout = duration(
            "server.idle_timeout_ms",
            s.idle_timeout_ms,
            6_000,
            500,
            600_000,
            Duration::from_millis,
        );
        let keep_alive = duration(
            "server.keep_alive_ms",
            s.keep_alive_ms,
            1_500,
            100,
            300_000,
            Duration::from_millis,
        );
        let drain_timeout = duration(
            "server.drain_timeout_ms",
            s.drain_timeout_ms,
            10_000,
            0,
            3_600_000,
            Duration::from_millis,
        );
        let consent_timeout = duration(
            "server.consent_timeout_secs",
            s.consent_timeout_secs,
            300,
            10,
            3_600,
            Duration::from_secs,
        );
        if keep_alive >= idle_timeout {
            problem(
                "server.keep_alive_ms",
                format!(
                    "must be below server.idle_timeout_ms ({} ms), or idle peers time out",
                    idle_timeout.as_millis()
                ),
            );
        }

        let l = raw.limits;
        let d = Limits::default();
        let mut bytes = |field: &str, value: Option<u64>, default: u64, min: u64, max: u64| {
            let v = value.unwrap_or(default);
            if v < min || v > max {
                problem(field, format!("{v} is out of range {min}..={max}"));
            }
            v
        };
        let limits = Limits {
            max_control_message: bytes(
                "limits.max_control_message_bytes",
                l.max_control_message_bytes,
                d.max_control_message as u64,
                1024,
                1 << 20,
            ) as usize,
            stream_receive_window: bytes(
                "limits.stream_receive_window",
                l.stream_receive_window,
                d.stream_receive_window,
                16 * 1024,
                64 << 20,
            ),
            connection_receive_window: bytes(
                "limits.connection_receive_window",
                l.connection_receive_window,
                d.connection_receive_window,
                16 * 1024,
                256 << 20,
            ),
            send_window: bytes(
                "limits.send_window",
                l.send_window,
                d.send_window,
                16 * 1024,
                256 << 20,
            ),
            datagram_receive_buffer: bytes(
                "limits.datagram_receive_buffer",
                l.datagram_receive_buffer,
                d.datagram_receive_buffer as u64,
                0,
                16 << 20,
            ) as usize,
            datagram_send_buffer: bytes(
                "limits.datagram_send_buffer",
                l.datagram_send_buffer,
                d.datagram_send_buffer as u64,
                0,
                16 << 20,
            ) as usize,
            max_connections: bytes(
                "limits.max_connections",
                l.max_connections,
                d.max_connections as u64,
                1,
                10_000_000,
            ) as usize,
            max_failed_joins_per_connection: bytes(
                "limits.max_failed_joins_per_connection",
                l.max_failed_joins_per_connection,
                u64::from(d.max_failed_joins_per_connection),
                1,
                1_000,
            ) as u32,
            wrong_attempts_per_code: bytes(
                "limits.wrong_attempts_per_code",
                l.wrong_attempts_per_code,
                u64::from(d.wrong_attempts_per_code),
                1,
                10,
            ) as u32,
            max_buffered_bytes: bytes(
                "limits.max_buffered_mib",
                l.max_buffered_mib,
                d.max_buffered_bytes >> 20,
                64,
                16 << 20,
            ) << 20,
            udp_socket_buffer: bytes(
                "limits.udp_socket_buffer_bytes",
                l.udp_socket_buffer_bytes,
                d.udp_socket_buffer as u64,
                64 * 1024,
                1 << 30,
            ) as usize,
            udp_sockets: bytes(
                "limits.udp_sockets",
                l.udp_sockets,
                d.udp_sockets as u64,
                0,
                crate::core::cluster::MAX_SOCKETS as u64,
            ) as usize,
            udp_receive_offload: l.udp_receive_offload.unwrap_or(d.udp_receive_offload),
            max_connections_per_source: bytes(
                "limits.max_connections_per_source",
                l.max_connections_per_source,
                d.max_connections_per_source as u64,
                1,
                10_000_000,
            ) as usize,
            max_unauthenticated_connections: bytes(
                "limits.max_unauthenticated_connections",
                l.max_unauthenticated_connections,
                d.max_unauthenticated_connections as u64,
                1,
                10_000_000,
            ) as usize,
            retry_above_unauthenticated: bytes(
                "limits.retry_above_unauthenticated",
                l.retry_above_unauthenticated,
                d.retry_above_unauthenticated as u64,
                0,
                10_000_000,
            ) as usize,
            joins_per_source_per_minute: bytes(
                "limits.joins_per_source_per_minute",
                l.joins_per_source_per_minute,
                u64::from(d.joins_per_source_per_minute),
                1,
                1_000_000,
            ) as u32,
            joins_per_tenant_per_minute: bytes(
                "limits.joins_per_tenant_per_minute",
                l.joins_per_tenant_per_minute,
                u64::from(d.joins_per_tenant_per_minute),
                1,
                10_000_000,
            ) as u32,
            max_sessions_per_tenant: bytes(
                "limits.max_sessions_per_tenant",
                l.max_sessions_per_tenant,
                d.max_sessions_per_tenant as u64,
                1,
                10_000_000,
            ) as usize,
            session_setups_per_tenant_per_minute: bytes(
                "limits.session_setups_per_tenant_per_minute",
                l.session_setups_per_tenant_per_minute,
                u64::from(d.session_setups_per_tenant_per_minute),
                1,
                10_000_000,
            ) as u32,
        };
        if limits.stream_receive_window > limits.connection_receive_window {
            problem(
                "limits.stream_receive_window",
                "must not exceed limits.connection_receive_window".into(),
            );
        }

        let mut tenants: Vec<Tenant> = Vec::new();
        // Each tenant's `audience` shadows the relay's below.
        let audience_default = audience.clone();
        if raw.tenants.is_empty() {
            problem(
                "tenants",
                "at least one [[tenants]] entry is required".into(),
            );
        }
        for (i, t) in raw.tenants.into_iter().enumerate() {
            let field = |name: &str| format!("tenants[{i}].{name}");
            let id = t.id.unwrap_or_default();
            if id.trim().is_empty() {
                problem(&field("id"), "required".into());
            } else if tenants.iter().any(|other| other.trust.id.as_str() == id) {
                problem(&field("id"), format!("tenant {id:?} is configured twice"));
            }
            let issuer = t.issuer.unwrap_or_default();
            if issuer.trim().is_empty() {
                problem(&field("issuer"), "required".into());
            }
            let keys = match (t.jwks_file, t.jwks_uri, t.ca_file) {
                (Some(_), Some(_), _) => {
                    problem(
                        &field("jwks_uri"),
                        "give jwks_file or jwks_uri, not both".into(),
                    );
                    None
                }
                (Some(_), None, Some(_)) => {
                    problem(
                        &field("ca_file"),
                        "only for keys fetched by URL (jwks_uri or discovery), not with jwks_file"
                            .into(),
                    );
                    None
                }
                (Some(path), None, None) => match load_jwks(&resolve(&path)) {
                    Ok(keys) => Some((keys.into(), KeySource::File(resolve(&path)))),
                    Err(reason) => {
                        problem(&field("jwks_file"), format!("tenant {id:?}: {reason}"));
                        None
                    }
                },
                (None, jwks_uri, ca_file) => {
                    let mut fine = true;
                    if !issuer.trim().is_empty()
                        && let Err(e) = check_https(&issuer)
                    {
                        problem(
                            &field("issuer"),
                            format!(
                                "{e}; a tenant without jwks_file finds its keys at its issuer                                  (OpenID Connect discovery)"
                            ),
                        );
                        fine = false;
                    }
                    if let Some(uri) = &jwks_uri
                        && let Err(e) = check_https(uri)
                    {
                        problem(&field("jwks_uri"), e.to_string());
                        fine = false;
                    }
                    let ca_file = ca_file.map(|path| resolve(&path));
                    if let Some(path) = &ca_file
                        && let Err(reason) = crate::tls::read_ca_certificates(path)
                    {
                        problem(&field("ca_file"), reason);
                        fine = false;
                    }
                    fine.then(|| {
                        (
                            crate::auth::KeySet::empty(),
                            KeySource::Provider(ProviderKeys {
                                issuer: issuer.clone(),
                                jwks_uri,
                                ca_file,
                            }),
                        )
                    })
                }
            };
            let audience = match t.audience {
                Some(audience) if audience.trim().is_empty() => {
                    problem(&field("audience"), "must not be empty".into());
                    None
                }
                other => other,
            };
            let tenant_admin_audience = match t.admin_audience {
                Some(aud) if aud.trim().is_empty() => {
                    problem(&field("admin_audience"), "must not be empty".into());
                    None
                }
                other => other,
            };
            // A token for one use must never pass as the other: the two audiences this
            // tenant's tokens are checked against must differ.
            let session_aud = audience.as_deref().unwrap_or(&audience_default);
            let admin_aud = tenant_admin_audience.as_deref().unwrap_or(&admin_audience);
            if session_aud == admin_aud {
                problem(
                    &field("admin_audience"),
                    format!(
                        "the tenant's administration audience {admin_aud:?} equals its session audience; they must differ"
                    ),
                );
            }
            let claims = parse_claim_mapping(
                t.claims.as_deref(),
                t.claim_map.unwrap_or_default(),
                &mut |name: &str, reason: String| problem(&field(name), reason),
            );
            if claims.select_by == TenantSelector::Issuer
                && let Some(other) = tenants.iter().find(|other| {
                    other.trust.claims.select_by == TenantSelector::Issuer
                        && other.trust.issuer == issuer
                })
            {
                problem(
                    &field("issuer"),
                    format!(
                        "tenant {:?} has the same issuer and also selects its tokens by issuer; \
                         one issuer can select only one tenant",
                        other.trust.id.as_str()
                    ),
                );
            }
            let cloud = match t.cloud.as_deref().unwrap_or("commercial") {
                "commercial" => CloudEnvironment::Commercial,
                "gcc" => CloudEnvironment::Gcc,
                other @ ("gcc-high" | "dod") => {
                    problem(
                        &field("cloud"),
                        format!(
                            "Remote Help is not available in the {other} cloud; supported: commercial, gcc"
                        ),
                    );
                    CloudEnvironment::Commercial
                }
                other => {
                    problem(
                        &field("cloud"),
                        format!("unknown cloud {other:?}; supported: commercial, gcc"),
                    );
                    CloudEnvironment::Commercial
                }
            };
            let mut roles = vec![Role::help_desk_operator()];
            for (r, raw_role) in t.roles.into_iter().enumerate() {
                let role_field = |name: &str| format!("tenants[{i}].roles[{r}].{name}");
                let name = raw_role.name.unwrap_or_default();
                if name.trim().is_empty() {
                    problem(&role_field("name"), "required".into());
                    continue;
                }
                if roles.iter().any(|existing| existing.name == name) {
                    problem(
                        &role_field("name"),
                        format!(
                            "role {name:?} is defined twice (or shadows the built-in {HELP_DESK_OPERATOR:?})"
                        ),
                    );
                    continue;
                }
                let mut listed = Vec::new();
                for (k, permission) in raw_role.permissions.iter().enumerate() {
                    match Permission::parse(permission) {
                        Some(p) => listed.push(p),
                        None => problem(
                            &format!("tenants[{i}].roles[{r}].permissions[{k}]"),
                            format!(
                                "unknown permission {permission:?}; known: {}",
                                Permission::ALL.map(Permission::as_str).join(", ")
                            ),
                        ),
                    }
                }
                roles.push(Role {
                    name,
                    permissions: PermissionSet::granting(listed),
                });
            }
            let mut assignments = Vec::new();
            for (a, raw_assignment) in t.assignments.into_iter().enumerate() {
                let assignment_field = |name: &str| format!("tenants[{i}].assignments[{a}].{name}");
                let role_name = raw_assignment.role.unwrap_or_default();
                let Some(role) = roles.iter().find(|r| r.name == role_name) else {
                    problem(
                        &assignment_field("role"),
                        format!("no role named {role_name:?}"),
                    );
                    continue;
                };
                if raw_assignment.members.is_empty() {
                    problem(
                        &assignment_field("members"),
                        "at least one member group is required".into(),
                    );
                }
                if raw_assignment.scope.is_empty() {
                    problem(
                        &assignment_field("scope"),
                        "at least one scope group (or all_users / all_devices) is required".into(),
                    );
                }
                assignments.push(Assignment {
                    permissions: role.permissions.clone(),
                    role: role.name.clone(),
                    members: raw_assignment.members.into_iter().collect(),
                    scope: Scope::from_entries(raw_assignment.scope.iter().map(String::as_str)),
                });
            }
            let web_sign_in = t.web_sign_in.and_then(|raw| {
                parse_web_sign_in(raw, &issuer, &mut |name: &str, reason: String| {
                    problem(&field(name), reason)
                })
            });
            let license = t.license.unwrap_or_else(|| DEFAULT_LICENSE.to_string());
            if license.trim().is_empty() {
                problem(&field("license"), "must not be empty".into());
            }
            let policy = TenantPolicy {
                enabled: t.enabled.unwrap_or(false),
                allow_unenrolled_devices: t.allow_unenrolled_devices.unwrap_or(false),
                disable_chat: t.disable_chat.unwrap_or(false),
                relay_only: t.relay_only.unwrap_or(false),
                require_end_to_end: t.require_end_to_end.unwrap_or(true),
                license,
                cloud,
                assignments,
            };
            if let Some((keys, keys_from)) = keys {
                tenants.push(Tenant {
                    trust: TenantTrust {
                        id: TenantId::new(&id),
                        issuer,
                        keys,
                        audience,
                        claims,
                    },
                    keys_from,
                    policy,
                    admin_audience: tenant_admin_audience,
                    web_sign_in,
                });
            }
        }

        let raw_audit = raw.audit;
        let audit = crate::audit::AuditConfig {
            // An explicit folder is relative to the config file; the default sits in the
            // state folder, which is already resolved.
            dir: raw_audit
                .dir
                .map(|dir| resolve(&dir))
                .unwrap_or_else(|| state_dir.join("audit")),
            max_file_bytes: {
                let mb = raw_audit.max_file_mb.unwrap_or(64);
                if !(1..=4096).contains(&mb) {
                    problem(
                        "audit.max_file_mb",
                        format!("{mb} is out of range 1..=4096"),
                    );
                }
                mb << 20
            },
            retention_days: {
                let days = raw_audit.retention_days.unwrap_or(30);
                if !(1..=3650).contains(&days) {
                    problem(
                        "audit.retention_days",
                        format!("{days} is out of range 1..=3650"),
                    );
                }
                days as u32
            },
            // Both follow other settings at start (`server::spawn`).
            reserve_bytes: 0,
            key_file: None,
        };
        let cluster = raw.cluster.and_then(|c| {
            let nodes: Vec<String> = match (c.nodes, c.node_address_template, c.size) {
                (Some(nodes), None, None) => nodes,
                (None, Some(template), Some(size)) => {
                    if !template.contains("{id}") {
                        problem(
                            "cluster.node_address_template",
                            "must contain {id}".into(),
                        );
                        return None;
                    }
                    (0..size.min(MAX_NODES as u64 + 1))
                        .map(|id| template.replace("{id}", &id.to_string()))
                        .collect()
                }
                _ => {
                    problem(
                        "cluster",
                        "give either `nodes`, or `node_address_template` with `size`".into(),
                    );
                    return None;
                }
            };
            if nodes.is_empty() || nodes.len() > MAX_NODES {
                problem(
                    "cluster.nodes",
                    format!("a cluster has 1 to {MAX_NODES} nodes, not {}", nodes.len()),
                );
            }
            for (i, address) in nodes.iter().enumerate() {
                if !is_host_port(address) {
                    problem(
                        &format!("cluster.nodes[{i}]"),
                        format!("{address:?} is not a host:port address"),
                    );
                } else if nodes[..i].contains(address) {
                    problem(
                        &format!("cluster.nodes[{i}]"),
                        format!("{address:?} is listed twice: every node needs its own address"),
                    );
                }
            }
            if tls == TlsSource::SelfSigned {
                // Each node would make its own certificate: a client pinned to one, or
                // trusting a CA, could never follow a redirect to another.
                problem(
                    "cluster",
                    "a cluster needs server.tls_cert and server.tls_key (one certificate every node presents, or each node's own from a CA the clients trust)".into(),
                );
            }
            let admin_nodes: Vec<String> = match (c.admin_nodes, c.admin_address_template) {
                (None, None) => Vec::new(),
                (Some(list), None) => list,
                (None, Some(template)) if template.contains("{id}") => (0..nodes.len())
                    .map(|id| template.replace("{id}", &id.to_string()))
                    .collect(),
                (None, Some(_)) => {
                    problem(
                        "cluster.admin_address_template",
                        "must contain {id}".into(),
                    );
                    Vec::new()
                }
                (Some(_), Some(_)) => {
                    problem(
                        "cluster",
                        "give either `admin_nodes` or `admin_address_template`, not both".into(),
                    );
                    Vec::new()
                }
            };
            if !admin_nodes.is_empty() && admin_nodes.len() != nodes.len() {
                problem(
                    "cluster.admin_nodes",
                    format!(
                        "lists {} admin addresses for {} nodes: give one per node, in node id order",
                        admin_nodes.len(),
                        nodes.len()
                    ),
                );
            }
            let mut admin_urls = Vec::new();
            for (i, address) in admin_nodes.iter().enumerate() {
                match admin_base_url(address) {
                    None => problem(
                        &format!("cluster.admin_nodes[{i}]"),
                        format!("{address:?} is not a host:port address (http:// or https:// may precede it)"),
                    ),
                    Some(url) if admin_urls.contains(&url) => problem(
                        &format!("cluster.admin_nodes[{i}]"),
                        format!("{address:?} is listed twice: every node needs its own admin address"),
                    ),
                    Some(url) => admin_urls.push(url),
                }
            }
            let fanout_timeout = match c.fanout_timeout_ms {
                None => DEFAULT_FANOUT_TIMEOUT,
                Some(ms) if (100..=60_000).contains(&ms) => Duration::from_millis(ms),
                Some(ms) => {
                    problem(
                        "cluster.fanout_timeout_ms",
                        format!("{ms}: give 100 to 60000"),
                    );
                    DEFAULT_FANOUT_TIMEOUT
                }
            };
            let admin_ca_file = c.admin_ca_file.map(|path| resolve(&path));
            if let Some(path) = &admin_ca_file
                && let Err(reason) = crate::tls::read_ca_certificates(path)
            {
                problem("cluster.admin_ca_file", reason);
            }
            let node = match c.node_id {
                None => {
                    problem("cluster.node_id", "is required".into());
                    return None;
                }
                Some(RawNodeId::Number(n)) => u8::try_from(n).ok().and_then(NodeId::new),
                Some(RawNodeId::From(from)) if from == "hostname" => {
                    let host = hostname();
                    let node = host.as_deref().and_then(node_from_hostname);
                    if node.is_none() {
                        problem(
                            "cluster.node_id",
                            format!(
                                "the host name {host:?} does not end in a node ordinal (like relay-2)"
                            ),
                        );
                        return None;
                    }
                    node
                }
                Some(RawNodeId::From(other)) => {
                    problem(
                        "cluster.node_id",
                        format!("{other:?}: give a number or \"hostname\""),
                    );
                    return None;
                }
            };
            match node {
                Some(node) if usize::from(node.get()) < nodes.len() => Some(ClusterConfig {
                    node,
                    nodes,
                    admin_nodes: admin_urls,
                    fanout_timeout,
                    admin_ca_file,
                }),
                _ => {
                    problem(
                        "cluster.node_id",
                        format!("must be one of the {} nodes' ids (0..{})", nodes.len(), nodes.len()),
                    );
                    None
                }
            }
        });
        let raw_admin = raw.admin;
        let admin_listen = match raw_admin.listen.as_deref() {
            Some("") => None,
            text => {
                let text = text.unwrap_or(DEFAULT_ADMIN_LISTEN);
                match text.parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        problem(
                            "admin.listen",
                            format!("{text:?} is not an ip:port address ({e})"),
                        );
                        None
                    }
                }
            }
        };
        let admin_token = match raw_admin.token_file {
            None => None,
            Some(path) => match std::fs::read_to_string(resolve(&path)) {
                Ok(text) if text.trim().len() >= 16 => Some(text.trim().to_string()),
                Ok(_) => {
                    problem(
                        "admin.token_file",
                        "the token must be at least 16 characters".into(),
                    );
                    None
                }
                Err(e) => {
                    problem(
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            },
        };

        let reports_queries_per_tenant = match raw_admin.reports_queries_per_tenant {
            None => DEFAULT_REPORTS_QUERIES_PER_TENANT,
            Some(n) if (1..=1024).contains(&n) => n as usize,
            Some(n) => {
                problem(
                    "admin.reports_queries_per_tenant",
                    format!("{n} is out of range; 1 to 1024"),
                );
                DEFAULT_REPORTS_QUERIES_PER_TENANT
            }
        };
        let reports_queued_per_tenant = match raw_admin.reports_queued_per_tenant {
            None => DEFAULT_REPORTS_QUEUED_PER_TENANT,
            Some(n) if n <= 65_536 => n as usize,
            Some(n) => {
                problem(
                    "admin.reports_queued_per_tenant",
                    format!("{n} is out of range; 0 to 65536"),
                );
                DEFAULT_REPORTS_QUEUED_PER_TENANT
            }
        };

        let key_fetch = key_fetch_settings(&raw.key_fetch, &mut problem);
        let forwarder = forwarder_settings(&raw.forwarder, &mut problem);
        let web = raw
            .web
            .and_then(|web| web_config(web, &resolve, &mut problem));

        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(Config {
            web,
            key_fetch,
            forwarder,
            cluster,
            audit,
            admin: AdminConfig {
                listen: admin_listen,
                token: admin_token,
                reports_queries_per_tenant,
                reports_queued_per_tenant,
            },
            listen,
            audience,
            admin_audience,
            tls,
            state_dir,
            token_leeway,
            code_ttl,
            auth_timeout,
            idle_timeout,
            keep_alive,
            drain_timeout,
            consent_timeout,
            limits,
            tenants,
        })
    }
}

/// `[web]`: an address, and HTTPS files both or neither; plain HTTP only on a loopback
/// address, since the pages carry administrators' tokens and helpers' sign-ins.
fn web_config(
    raw: RawWeb,
    resolve: &dyn Fn(&Path) -> PathBuf,
    problem: &mut dyn FnMut(&str, String),
) -> Option<WebConfig> {
    let listen = match raw.listen.as_deref() {
        None => {
            problem(
                "web.listen",
                "required in [web] (e.g. \"0.0.0.0:443\")".into(),
            );
            None
        }
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                problem(
                    "web.listen",
                    format!("{text:?} is not an ip:port address ({e})"),
                );
                None
            }
        },
    };
    // Half the HTTPS files is reported as such, not also as plain HTTP.
    let https_meant = raw.tls_cert.is_some() || raw.tls_key.is_some();
    let tls = match (raw.tls_cert, raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let (cert, key) = (resolve(&cert), resolve(&key));
            for (field, path) in [("web.tls_cert", &cert), ("web.tls_key", &key)] {
                if !path.is_file() {
                    problem(field, format!("{} is not a readable file", path.display()));
                }
            }
            Some(WebTls { cert, key })
        }
        (Some(_), None) => {
            problem("web.tls_key", "required when tls_cert is set".into());
            None
        }
        (None, Some(_)) => {
            problem("web.tls_cert", "required when tls_key is set".into());
            None
        }
    };
    let listen = listen?;
    if !https_meant && !listen.ip().is_loopback() {
        problem(
            "web.listen",
            format!(
                "plain HTTP is allowed only on a loopback address, and {listen} is not one: \
                 set web.tls_cert and web.tls_key, or listen on 127.0.0.1 behind a reverse \
                 proxy that terminates TLS"
            ),
        );
        return None;
    }
    // With a half-given pair `tls` is None, but a problem is reported, so no config results.
    Some(WebConfig { listen, tls })
}

/// `[key_fetch]`: every setting at least its floor, and the scheduled refresh's default
/// within its bounds.
fn key_fetch_settings(raw: &RawKeyFetch, problem: &mut dyn FnMut(&str, String)) -> FetchSettings {
    let defaults = FetchSettings::default();
    let mut seconds = |name: &str, value: Option<u64>, default: Duration| match value {
        None => default,
        Some(0) => {
            problem(&format!("key_fetch.{name}"), "must be at least 1".into());
            default
        }
        Some(value) => Duration::from_secs(value),
    };
    let refresh_min = seconds(
        "refresh_min_secs",
        raw.refresh_min_secs,
        defaults.refresh_min,
    );
    let refresh_max = seconds(
        "refresh_max_secs",
        raw.refresh_max_secs,
        defaults.refresh_max,
    );
    let refresh_default = seconds(
        "refresh_default_secs",
        raw.refresh_default_secs,
        defaults
            .refresh_default
            .clamp(refresh_min, refresh_max.max(refresh_min)),
    );
    let retry = seconds("retry_secs", raw.retry_secs, defaults.retry);
    let unknown_kid_interval = seconds(
        "unknown_kid_interval_secs",
        raw.unknown_kid_interval_secs,
        defaults.unknown_kid_interval,
    );
    let timeout = match raw.timeout_ms {
        None => defaults.timeout,
        Some(ms) if ms < 100 => {
            problem("key_fetch.timeout_ms", "must be at least 100".into());
            defaults.timeout
        }
        Some(ms) => Duration::from_millis(ms),
    };
    let max_response_bytes = match raw.max_response_bytes {
        None => defaults.max_response_bytes,
        Some(bytes) if !(1024..=16 << 20).contains(&bytes) => {
            problem(
                "key_fetch.max_response_bytes",
                "must be between 1024 and 16777216".into(),
            );
            defaults.max_response_bytes
        }
        Some(bytes) => usize::try_from(bytes).unwrap_or(defaults.max_response_bytes),
    };
    if refresh_min > refresh_max {
        problem(
            "key_fetch.refresh_min_secs",
            "must not be above key_fetch.refresh_max_secs".into(),
        );
    } else if !(refresh_min..=refresh_max).contains(&refresh_default) {
        problem(
            "key_fetch.refresh_default_secs",
            "must be between key_fetch.refresh_min_secs and key_fetch.refresh_max_secs".into(),
        );
    }
    FetchSettings {
        timeout,
        max_response_bytes,
        refresh_min,
        refresh_max,
        refresh_default,
        retry,
        unknown_kid_interval,
    }
}

/// Reads a tenant's JWK Set file; the error is a sentence for the config report, naming
/// the refused key by index and `kid`.
pub fn load_jwks(path: &Path) -> Result<TenantKeys, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a JWK Set: {e}", path.display()))?;
    TenantKeys::from_jwks(&set).map_err(|(index, e)| {
        match set.keys.get(index).and_then(|k| k.common.key_id.as_deref()) {
            Some(kid) => format!("{}: keys[{index}] (kid {kid:?}): {e}", path.display()),
            None => format!("{}: keys[{index}]: {e}", path.display()),
        }
    })
}

/// A tenant's claim mapping from its `claims` preset and `claim_map` overrides; each
/// problem goes to `problem` with the field (`claims`, `claim_map.NAME`) it concerns, and
/// the preset (or the default) stands in for what was wrong.
pub fn parse_claim_mapping(
    preset: Option<&str>,
    overrides: std::collections::BTreeMap<String, toml::Value>,
    problem: &mut dyn FnMut(&str, String),
) -> ClaimMapping {
    let preset = match preset {
        None => Preset::Relay,
        Some(name) => Preset::parse(name).unwrap_or_else(|| {
            problem(
                "claims",
                format!(
                    "unknown claim mapping preset {name:?}; known: {}",
                    Preset::ALL.map(Preset::as_str).join(", ")
                ),
            );
            Preset::Relay
        }),
    };
    let mut mapping = ClaimMapping::preset(preset);
    for (name, value) in overrides {
        let field = format!("claim_map.{name}");
        if name == "select_by" {
            match value.as_str() {
                Some("tid") => mapping.select_by = TenantSelector::Tid,
                Some("iss") => mapping.select_by = TenantSelector::Issuer,
                _ => problem(&field, "must be \"tid\" or \"iss\"".into()),
            }
            continue;
        }
        let texts: Vec<&str> = match &value {
            toml::Value::String(one) => vec![one.as_str()],
            toml::Value::Array(many) if many.iter().all(toml::Value::is_str) => {
                many.iter().filter_map(toml::Value::as_str).collect()
            }
            _ => {
                problem(
                    &field,
                    "must be a claim path (\"oid\", \"realm_access.roles\") or a list of them"
                        .into(),
                );
                continue;
            }
        };
        let mut paths = Vec::with_capacity(texts.len());
        for text in texts {
            match ClaimPath::parse(text) {
                Ok(path) => paths.push(path),
                Err(reason) => problem(&field, reason),
            }
        }
        if let Err(reason) = mapping.set(&name, paths) {
            problem(&field, reason);
        }
    }
    mapping
}

#[cfg(test)]
mod tests;
