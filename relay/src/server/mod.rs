//! The async shell of the relay: the QUIC endpoint, the accept loop, one task per
//! connection, and shutdown.
//!
//! [`spawn`] binds and returns a [`ServerHandle`] that owns every task; dropping the
//! handle does not stop the relay, [`ServerHandle::shutdown`] does (drain, then close).

pub mod admin;
pub mod connection;
pub mod forward;
pub mod forwarder;
pub mod helper_page;
pub mod hub;
pub mod keys;
pub mod monitor;
pub mod party;
pub mod reports;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use remote_help_proto::ErrorCode;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::config::{Config, TlsSource};
use crate::core::cluster::SocketSteering;
use crate::tls::browser::{BrowserCertificates, CertificateHash};
use crate::tls::{Fingerprint, RelayIdentity as _, ServerIdentity, TlsError};
use hub::Hub;

/// How often unused codes are swept for expiry.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// The relay's QUIC endpoint settings: a stateless-reset key that survives restarts,
/// connection ids in the QUIC-LB format naming this node (node 0 for a single relay), and
/// never `grease_quic_bit` (the packet path needs the fixed bit). The first two
/// are needed for a relay that crashed and came back to tell its old clients at once that
/// their connections are gone: quinn answers a packet with a reset only when its connection
/// id passes the generator's check, which a per-process random generator would fail after a
/// restart.
fn endpoint_config(config: &Config, socket: SocketSteering) -> quinn::EndpointConfig {
    let key = stateless_reset_key(&config.state_dir);
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &key,
    )));
    let node = config
        .cluster
        .as_ref()
        .map_or(crate::core::cluster::NodeId::FIRST, |c| c.node);
    endpoint.cid_generator(move || Box::new(crate::transport::RoutableCids::new(node, socket)));
    // The packet path shares these sockets and is told apart by QUIC's fixed bit (PROTOCOL.md
    // §8a): a peer allowed to grease it (RFC 9287) could send QUIC packets without it.
    endpoint.grease_quic_bit(false);
    endpoint
}

/// The 32-byte stateless-reset key kept in `state_dir/stateless-reset.key` (made on first
/// start, written to a temporary file and renamed so a crash never leaves half a key); a
/// fresh random one, with a warning, when the folder cannot hold it.
fn stateless_reset_key(state_dir: &std::path::Path) -> [u8; 32] {
    use std::io::Write as _;
    let path = state_dir.join("stateless-reset.key");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.permissions().mode() & 0o077 != 0
            {
                warn!(path = %path.display(), "the stateless-reset key is readable by others; chmod 600 it (whoever reads it can reset this relay's connections)");
            }
        }
        return key;
    }
    let mut key = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut key);
    let temporary = state_dir.join(format!("stateless-reset.key.{}", std::process::id()));
    let saved = std::fs::create_dir_all(state_dir).and_then(|()| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary)?;
        file.write_all(&key)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    });
    if let Err(e) = saved {
        let _ = std::fs::remove_file(&temporary);
        warn!(path = %path.display(), error = %e, "cannot save the stateless-reset key; clients of a restarted relay will time out instead of being reset");
    }
    key
}

/// After the drain deadline, how long connections get to say goodbye before the
/// endpoint closes under them.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS identity or configuration.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The audit log could not be opened or recovered.
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The admin listener could not be bound.
    #[error("cannot listen for admin on {addr}: {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The web listener could not be bound.
    #[error("cannot listen for the web on {addr}: {source}")]
    WebBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The web listener's certificate or key could not be used.
    #[error("web TLS: {0}")]
    WebTls(TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl StartError {
    /// The config field whose setting the machine refused, for the message an operator
    /// reads (`server.listen: cannot listen on ...`).
    pub fn field(&self) -> &'static str {
        match self {
            StartError::Tls(_) => "server.tls_cert",
            StartError::Audit(_) => "audit.dir",
            StartError::AdminBind { .. } => "admin.listen",
            StartError::WebBind { .. } => "web.listen",
            StartError::WebTls(_) => "web.tls_cert",
            StartError::Bind { .. } => "server.listen",
        }
    }
}

/// A snapshot of what a relay holds, for tests and leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Open connections (any phase).
    pub connections: u64,
    /// Authenticated connections registered with the hub.
    pub registered: usize,
    /// Sessions in any state.
    pub sessions: usize,
    /// Codes remembered (open, used or expired).
    pub remembered_codes: usize,
    /// Live per-connection tasks (connection tasks, stream readers, forwarders).
    pub tasks: u64,
    /// Active sessions whose data goes over a direct path.
    pub direct_sessions: usize,
}

/// A running relay. Owns its accept loop and, through it, every connection task.
pub struct ServerHandle {
    local_addr: SocketAddr,
    fingerprint: Fingerprint,
    hub: Arc<Hub>,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    admin_addr: Option<SocketAddr>,
    web_addr: Option<SocketAddr>,
    browser_certificates: Option<Arc<BrowserCertificates>>,
    udp_sockets: usize,
}

impl ServerHandle {
    /// How many UDP sockets (quinn endpoints) share the listen address.
    pub fn udp_sockets(&self) -> usize {
        self.udp_sockets
    }

    /// The UDP address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin/metrics listener's address, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The `[web]` listener's address, if it runs.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// The SHA-256 fingerprint of the relay's certificate (the long-lived one native
    /// clients pin; WebTransport clients may be served another, see
    /// [`ServerHandle::browser_certificate_hashes`]).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The hashes a browser page passes as WebTransport's `serverCertificateHashes`: the
    /// served browser certificate's, then the next one's while it is published. Empty with a
    /// configured certificate (browsers verify that one through its CA). The web surface
    /// reads the same list through [`web::WebSurface::browser_certificate_hashes`].
    pub fn browser_certificate_hashes(&self) -> Vec<CertificateHash> {
        self.browser_certificates
            .as_ref()
            .map(|c| c.hashes())
            .unwrap_or_default()
    }

    /// The browser certificates (to drive a rotation with a given clock in tests); `None`
    /// with a configured certificate.
    pub fn browser_certificates(&self) -> Option<&Arc<BrowserCertificates>> {
        self.browser_certificates.as_ref()
    }

    /// What the relay holds right now.
    pub fn stats(&self) -> ServerStats {
        let (sessions, remembered_codes, registered) = self.hub.counts();
        ServerStats {
            connections: self.hub.open_connections(),
            registered,
            sessions,
            remembered_codes,
            tasks: self.hub.live_tasks(),
            direct_sessions: self.hub.direct_sessions(),
        }
    }

    /// Whether packet-path routing key `key` routes now (its session is active).
    pub fn routes_packets(&self, key: u64) -> bool {
        self.hub.forwarder.has_route(key)
    }

    /// Routes in the packet forwarder's table (packet-path sessions).
    pub fn packet_routes(&self) -> usize {
        self.hub.forwarder.routes()
    }

    /// Waits until `condition` holds for the relay's stats (checked after every change).
    pub async fn wait_for(&self, condition: impl Fn(&ServerStats) -> bool) -> ServerStats {
        loop {
            // Register interest before checking, so a change in between is not missed.
            let changed = self.hub.changed.notified();
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    /// Applies a new config's tenants, keys, policies and admin token to new requests;
    /// active sessions carry on. Settings that need a restart are kept as they were: each
    /// one that differs is named in a warning and counted in
    /// `relay_config_reload_unapplied_total{field}`, and the list is returned.
    pub fn reload(&self, config: &Config) -> Vec<&'static str> {
        let unapplied = unapplied_fields(&self.hub.config, config);
        self.hub.reload(config);
        metrics::counter!("relay_config_reloads_total", "result" => "ok").increment(1);
        for field in &unapplied {
            metrics::counter!("relay_config_reload_unapplied_total", "field" => *field)
                .increment(1);
        }
        if unapplied.is_empty() {
            info!(
                tenants = config.tenants.len(),
                "configuration reloaded: tenants, keys, policies and the admin token"
            );
        } else {
            warn!(
                tenants = config.tenants.len(),
                unapplied = %unapplied.join(", "),
                "configuration reloaded: tenants, keys, policies and the admin token; \
                 NOT applied until a restart (kept as they were): {}",
                unapplied.join(", ")
            );
        }
        unapplied
    }

    /// The count of finished key fetches of a tenant configured by URL (see
    /// [`keys::TenantKeyFetchers::fetches`]); `None` for other tenants.
    pub fn key_fetches(
        &self,
        tenant: &crate::core::TenantId,
    ) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.hub.key_fetchers.fetches(tenant)
    }

    /// Waits until the audit log is writable (at once if it is).
    pub async fn audit_writable(&self) {
        self.hub.audit.writable().await;
    }

    /// Starts shutting down without waiting: stop accepting, drain, close.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down and waits until every task has ended.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Resolves when an administrator has asked this relay to drain (`POST /admin/drain`);
    /// the relay has then begun draining and will stop by itself.
    pub async fn drain_requested(&self) {
        self.hub.drain_requested.cancelled().await
    }

    /// Waits until the relay has stopped (after `begin_shutdown`).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// The fields, as written in the config file, that differ between the `running` config and
/// a `fresh` one and that only a restart applies (everything but tenants, their keys and
/// policies, the token audience and leeway, and the admin token).
pub fn unapplied_fields(running: &Config, fresh: &Config) -> Vec<&'static str> {
    let (r, f) = (&running.limits, &fresh.limits);
    let tls_files = |tls: &TlsSource| match tls {
        TlsSource::Files { cert, key } => (Some(cert.clone()), Some(key.clone())),
        TlsSource::SelfSigned => (None, None),
    };
    let ((running_cert, running_key), (fresh_cert, fresh_key)) =
        (tls_files(&running.tls), tls_files(&fresh.tls));
    let checks: [(&'static str, bool); 37] = [
        ("server.listen", running.listen != fresh.listen),
        ("server.tls_cert", running_cert != fresh_cert),
        ("server.tls_key", running_key != fresh_key),
        ("server.state_dir", running.state_dir != fresh.state_dir),
        ("server.code_ttl_secs", running.code_ttl != fresh.code_ttl),
        (
            "server.auth_timeout_ms",
            running.auth_timeout != fresh.auth_timeout,
        ),
        (
            "server.idle_timeout_ms",
            running.idle_timeout != fresh.idle_timeout,
        ),
        (
            "server.keep_alive_ms",
            running.keep_alive != fresh.keep_alive,
        ),
        (
            "server.drain_timeout_ms",
            running.drain_timeout != fresh.drain_timeout,
        ),
        (
            "server.consent_timeout_secs",
            running.consent_timeout != fresh.consent_timeout,
        ),
        ("audit.dir", running.audit.dir != fresh.audit.dir),
        (
            "audit.max_file_mb",
            running.audit.max_file_bytes != fresh.audit.max_file_bytes,
        ),
        (
            "audit.retention_days",
            running.audit.retention_days != fresh.audit.retention_days,
        ),
        ("admin.listen", running.admin.listen != fresh.admin.listen),
        ("web", running.web != fresh.web),
        ("cluster", running.cluster != fresh.cluster),
        ("forwarder", running.forwarder != fresh.forwarder),
        (
            "limits.max_control_message_bytes",
            r.max_control_message != f.max_control_message,
        ),
        (
            "limits.stream_receive_window",
            r.stream_receive_window != f.stream_receive_window,
        ),
        (
            "limits.connection_receive_window",
            r.connection_receive_window != f.connection_receive_window,
        ),
        ("limits.send_window", r.send_window != f.send_window),
        (
            "limits.datagram_receive_buffer",
            r.datagram_receive_buffer != f.datagram_receive_buffer,
        ),
        (
            "limits.datagram_send_buffer",
            r.datagram_send_buffer != f.datagram_send_buffer,
        ),
        (
            "limits.max_connections",
            r.max_connections != f.max_connections,
        ),
        (
            "limits.max_failed_joins_per_connection",
            r.max_failed_joins_per_connection != f.max_failed_joins_per_connection,
        ),
        (
            "limits.wrong_attempts_per_code",
            r.wrong_attempts_per_code != f.wrong_attempts_per_code,
        ),
        (
            "limits.max_buffered_mib",
            r.max_buffered_bytes != f.max_buffered_bytes,
        ),
        (
            "limits.udp_socket_buffer_bytes",
            r.udp_socket_buffer != f.udp_socket_buffer,
        ),
        ("limits.udp_sockets", r.udp_sockets != f.udp_sockets),
        (
            "limits.udp_receive_offload",
            r.udp_receive_offload != f.udp_receive_offload,
        ),
        (
            "limits.max_connections_per_source",
            r.max_connections_per_source != f.max_connections_per_source,
        ),
        (
            "limits.max_unauthenticated_connections",
            r.max_unauthenticated_connections != f.max_unauthenticated_connections,
        ),
        (
            "limits.retry_above_unauthenticated",
            r.retry_above_unauthenticated != f.retry_above_unauthenticated,
        ),
        (
            "limits.joins_per_source_per_minute",
            r.joins_per_source_per_minute != f.joins_per_source_per_minute,
        ),
        (
            "limits.joins_per_tenant_per_minute",
            r.joins_per_tenant_per_minute != f.joins_per_tenant_per_minute,
        ),
        (
            "limits.max_sessions_per_tenant",
            r.max_sessions_per_tenant != f.max_sessions_per_tenant,
        ),
        (
            "limits.session_setups_per_tenant_per_minute",
            r.session_setups_per_tenant_per_minute != f.session_setups_per_tenant_per_minute,
        ),
    ];
    let listed: Vec<&'static str> = checks
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(field, _)| *field)
        .collect();
    // A limit added to `Limits` but not to the list above still shows, as `limits`.
    if listed.iter().all(|f| !f.starts_with("limits.")) && running.limits != fresh.limits {
        return listed.into_iter().chain(["limits"]).collect();
    }
    listed
}

/// Publishes every configured limit as `relay_limit{name}` so dashboards can show usage
/// against it, and logs the connection cap the buffer budget allows.
fn report_limits(limits: &crate::config::Limits) {
    let values: [(&'static str, f64); 23] = [
        ("max_connections", limits.max_connections as f64),
        ("connection_cap", limits.connection_cap() as f64),
        ("max_buffered_bytes", limits.max_buffered_bytes as f64),
        (
            "connection_memory_bound_bytes",
            limits.connection_memory_bound() as f64,
        ),
        (
            "session_memory_bound_bytes",
            limits.session_memory_bound() as f64,
        ),
        (
            "max_connections_per_source",
            limits.max_connections_per_source as f64,
        ),
        (
            "max_unauthenticated_connections",
            limits.max_unauthenticated_connections as f64,
        ),
        (
            "retry_above_unauthenticated",
            limits.retry_above_unauthenticated as f64,
        ),
        (
            "max_control_message_bytes",
            limits.max_control_message as f64,
        ),
        (
            "stream_receive_window_bytes",
            limits.stream_receive_window as f64,
        ),
        (
            "connection_receive_window_bytes",
            limits.connection_receive_window as f64,
        ),
        ("send_window_bytes", limits.send_window as f64),
        (
            "datagram_receive_buffer_bytes",
            limits.datagram_receive_buffer as f64,
        ),
        (
            "datagram_send_buffer_bytes",
            limits.datagram_send_buffer as f64,
        ),
        ("udp_socket_buffer_bytes", limits.udp_socket_buffer as f64),
        (
            "max_failed_joins_per_connection",
            f64::from(limits.max_failed_joins_per_connection),
        ),
        (
            "wrong_attempts_per_code",
            f64::from(limits.wrong_attempts_per_code),
        ),
        (
            "joins_per_source_per_minute",
            f64::from(limits.joins_per_source_per_minute),
        ),
        (
            "joins_per_tenant_per_minute",
            f64::from(limits.joins_per_tenant_per_minute),
        ),
        (
            "max_sessions_per_tenant",
            limits.max_sessions_per_tenant as f64,
        ),
        (
            "session_setups_per_tenant_per_minute",
            f64::from(limits.session_setups_per_tenant_per_minute),
        ),
        (
            "max_bidi_streams_per_connection",
            f64::from(crate::transport::BIDI_STREAMS),
        ),
        (
            "max_uni_streams_per_connection",
            f64::from(crate::transport::UNI_STREAMS),
        ),
    ];
    for (name, value) in values {
        metrics::gauge!("relay_limit", "name" => name).set(value);
    }
    if limits.connection_cap() < limits.max_connections {
        info!(
            max_connections = limits.max_connections,
            cap = limits.connection_cap(),
            per_connection_bytes = limits.connection_memory_bound(),
            budget_bytes = limits.max_buffered_bytes,
            "limits.max_buffered_mib caps connections below limits.max_connections"
        );
    }
}

/// Opens the audit log (closing sessions a crash left open), binds the endpoint and the
/// admin listener, and starts serving. Must be called inside a tokio runtime.
pub fn spawn(config: Config) -> Result<ServerHandle, StartError> {
    admin::prometheus();
    let node = config.cluster.as_ref().map(|c| c.node.get());
    let mut audit_config = config.audit.clone();
    // Room for the end of every session the connection limit allows (two connections each).
    audit_config.reserve_bytes =
        crate::audit::AuditConfig::reserve_for(config.limits.connection_cap() as u64 / 2);
    audit_config.key_file = Some(config.state_dir.join(crate::audit::KEY_FILE));
    let (audit, recovered) = crate::audit::AuditLog::open(audit_config, node)?;
    if recovered > 0 {
        warn!(
            sessions = recovered,
            "sessions left open by the last run are closed (RELAY_RESTARTED) before any new session starts"
        );
    }
    let (identity, browser_certificates) = match &config.tls {
        TlsSource::Files { cert, key } => (ServerIdentity::from_pem_files(cert, key)?, None),
        TlsSource::SelfSigned => (
            ServerIdentity::self_signed_in(
                &config.state_dir,
                vec!["localhost".into(), "remote-help-relay".into()],
            )?,
            // Browsers refuse the long-lived certificate; WebTransport clients get this one.
            Some(BrowserCertificates::open(
                &config.state_dir,
                std::time::SystemTime::now(),
            )?),
        ),
    };
    let fingerprint = identity.fingerprint();
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
        identity.quic_server_config_with(browser_certificates.clone())?,
    ));
    server_config.transport_config(crate::transport::server(
        &config.limits,
        config.idle_timeout,
        config.keep_alive,
    ));
    let bind_error = |source| StartError::Bind {
        addr: config.listen,
        source,
    };
    let group = crate::transport::udp_sockets(
        config.listen,
        config.limits.udp_socket_buffer,
        udp_socket_count(&config.limits),
    )
    .map_err(bind_error)?;
    if group.granted_buffer < config.limits.udp_socket_buffer {
        info!(
            asked = config.limits.udp_socket_buffer,
            granted = group.granted_buffer,
            "the kernel granted a smaller UDP receive buffer (raise net.core.rmem_max)"
        );
    }
    match (&group.fallback, config.limits.udp_sockets) {
        (None, _) => {}
        // Asked for explicitly: the operator should know it did not happen.
        (Some(why), 2..) => warn!(reason = %why, "one UDP socket instead of limits.udp_sockets"),
        (Some(why), _) => info!(reason = %why, "one UDP socket"),
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_error(std::io::Error::other("no async runtime")))?;
    let sockets = group.sockets.len();
    // quinn's bounds on connection attempts not yet accepted (65,536 of them, 100 MiB of
    // their packets) hold per endpoint: the node keeps quinn's totals, shared out.
    server_config
        .max_incoming(((1 << 16) / sockets).max(1024))
        .incoming_buffer_size_total((100 << 20) / sockets as u64);
    let mut endpoints = Vec::with_capacity(sockets);
    let node = config
        .cluster
        .as_ref()
        .map_or(crate::core::cluster::NodeId::FIRST, |c| c.node);
    let packet_forwarder = Arc::new(forwarder::Forwarder::new(config.forwarder, node));
    for (index, socket) in group.sockets.into_iter().enumerate() {
        let steering = SocketSteering::new(index, sockets).unwrap_or(SocketSteering::SINGLE);
        let gro_handle = (sockets > 1 && !config.limits.udp_receive_offload)
            .then(|| socket.try_clone())
            .transpose();
        // Every relay socket carries the packet path beside QUIC: the forwarder takes the
        // datagrams with QUIC's fixed bit clear before quinn sees the batch.
        let socket: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(forwarder::ForwardingSocket::new(
            runtime.wrap_udp_socket(socket).map_err(bind_error)?,
            packet_forwarder.clone(),
        ));
        endpoints.push(
            quinn::Endpoint::new_with_abstract_socket(
                endpoint_config(&config, steering),
                Some(server_config.clone()),
                socket,
                runtime.clone(),
            )
            .map_err(bind_error)?,
        );
        // quinn turns receive offload (GRO) on; the kernel may then hand a batch of one
        // client address's datagrams to the socket the first one's connection id names,
        // though the others may belong to connections of another socket where several
        // connections share a client socket. Off where the operator says such clients come.
        if let Ok(Some(handle)) = gro_handle
            && let Err(e) = crate::transport::turn_off_receive_offload(&handle)
        {
            warn!(error = %e, "could not turn UDP receive offload off; datagrams of connections that share a client address may be dropped");
        }
    }
    metrics::gauge!("relay_udp_sockets").set(endpoints.len() as f64);
    let endpoint = &endpoints[0];
    let local_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    info!(%local_addr, %fingerprint, udp_sockets = endpoints.len(), "relay listening (certificate SHA-256 fingerprint)");
    report_limits(&config.limits);
    for (name, value) in [
        (
            "forwarder_max_packet_bytes",
            config.forwarder.max_packet_bytes as f64,
        ),
        (
            "forwarder_session_bytes_per_sec",
            config.forwarder.session_bytes_per_sec as f64,
        ),
        ("forwarder_burst_bytes", config.forwarder.burst_bytes as f64),
        ("forwarder_max_routes", config.forwarder.max_routes as f64),
    ] {
        metrics::gauge!("relay_limit", "name" => name).set(value);
    }
    if let Some(cluster) = &config.cluster {
        metrics::gauge!("relay_cluster_node").set(f64::from(cluster.node.get()));
        metrics::gauge!("relay_cluster_nodes").set(cluster.nodes.len() as f64);
        info!(node = %cluster.node, nodes = cluster.nodes.len(), "cluster node");
    }
    let admin_listener = match config.admin.listen {
        None => None,
        Some(addr) => {
            let std_listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| StartError::AdminBind { addr, source })?;
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|source| StartError::AdminBind { addr, source })?;
            Some(listener)
        }
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(addr) = admin_addr {
        info!(%addr, "admin and metrics listener (/metrics, /healthz, /readyz, /admin/sessions)");
    }
    let web_listener = match &config.web {
        None => None,
        Some(web) => {
            let acceptor = web
                .tls
                .as_ref()
                .map(web::tls_acceptor)
                .transpose()
                .map_err(StartError::WebTls)?;
            let addr = web.listen;
            let std_listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| StartError::WebBind { addr, source })?;
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|source| StartError::WebBind { addr, source })?;
            Some((listener, acceptor))
        }
    };
    let web_addr = web_listener.as_ref().and_then(|(l, _)| l.local_addr().ok());
    if let Some(addr) = web_addr {
        let scheme = match web_listener.as_ref().map(|(_, tls)| tls.is_some()) {
            Some(true) => "https",
            _ => "http",
        };
        info!(%addr, scheme, "web listener (/monitor/, /api/v1/reports/)");
    }
    if let Some(browser) = &browser_certificates {
        let hashes: Vec<String> = browser.hashes().into_iter().map(|h| h.value).collect();
        info!(hashes = %hashes.join(","), "WebTransport clients are served a short-lived browser certificate (serverCertificateHashes, sha-256)");
    }
    let hub = Arc::new(Hub::new(config, audit, packet_forwarder));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let udp_sockets = endpoints.len();
    let surface = web::WebSurface {
        reports: reports::Reports::new(hub.clone()),
        helper_page: helper_page::HelperPage::new(
            local_addr.port(),
            // Invariant: constructors refuse empty chains.
            &identity.chain[0],
            browser_certificates.clone(),
        ),
        browser_certificates: browser_certificates.clone(),
    };
    let task = tokio::spawn(run(
        endpoints,
        hub.clone(),
        shutdown.clone(),
        Listeners {
            admin: admin_listener,
            web: web_listener,
            surface,
        },
    ));
    Ok(ServerHandle {
        udp_sockets,
        local_addr,
        fingerprint,
        hub,
        shutdown,
        task,
        admin_addr,
        web_addr,
        browser_certificates,
    })
}

/// How many UDP sockets `limits.udp_sockets` asks for: itself, or for 0 one per CPU (at
/// most 16: past that, one endpoint's share of packets is too small to matter).
fn udp_socket_count(limits: &crate::config::Limits) -> usize {
    match limits.udp_sockets {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
        n => n,
    }
}

/// What the endpoints' merged accept stream yields.
enum Accepted {
    /// A new connection attempt (boxed: it carries the first packet and its keys, and the
    /// connection task keeps it boxed).
    Incoming(Box<quinn::Incoming>),
    /// The endpoint of socket `socket` stopped (its driver ended). The kernel still steers
    /// that socket's share of clients to it, and nobody reads it any more.
    Stopped { socket: usize },
}

/// New connections from every endpoint, as one stream, and a `Stopped` for each endpoint
/// that ends. Cancel-safe: an accept in progress lives inside the stream, not in the future
/// that polls it.
fn incoming_connections(
    endpoints: &[quinn::Endpoint],
) -> futures_util::stream::SelectAll<
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Accepted> + Send>>,
> {
    futures_util::stream::select_all(endpoints.iter().enumerate().map(|(socket, endpoint)| {
        let stream = futures_util::stream::unfold(endpoint.clone(), |endpoint| async move {
            let incoming = endpoint.accept().await?;
            Some((Accepted::Incoming(Box::new(incoming)), endpoint))
        })
        .chain(futures_util::stream::once(std::future::ready(
            Accepted::Stopped { socket },
        )));
        Box::pin(stream) as std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send>>
    }))
}

/// The HTTP listeners [`run`] serves beside the QUIC endpoints.
struct Listeners {
    admin: Option<tokio::net::TcpListener>,
    web: Option<(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
    surface: web::WebSurface,
}

async fn run(
    endpoints: Vec<quinn::Endpoint>,
    hub: Arc<Hub>,
    shutdown: tokio_util::sync::CancellationToken,
    listeners: Listeners,
) {
    // The HTTP listeners outlive the drain (so readiness reports it) and stop last; so does
    // the browser certificates' rotation.
    let admin_stop = tokio_util::sync::CancellationToken::new();
    let mut http_tasks = JoinSet::new();
    let routes = web::web_routes(&listeners.surface);
    if listeners.admin.is_some() || listeners.web.is_some() {
        // Build or catch up the reports index in the background: the first query need not
        // wait.
        let reports = listeners.surface.reports.clone();
        http_tasks.spawn(async move { reports.warm().await });
    }
    if let Some(listener) = listeners.admin {
        http_tasks.spawn(admin::serve(
            listener,
            hub.clone(),
            routes.clone(),
            admin_stop.clone(),
        ));
    }
    if let Some((listener, tls)) = listeners.web {
        http_tasks.spawn(web::serve(listener, tls, routes, admin_stop.clone()));
    }
    if let Some(browser) = listeners.surface.browser_certificates.clone() {
        http_tasks.spawn(browser.rotate_until(admin_stop.clone()));
    }
    let mut incoming_connections = incoming_connections(&endpoints);
    let mut connections = JoinSet::new();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hub.drain_requested.cancelled() => break,
            accepted = incoming_connections.next() => {
                let incoming = match accepted {
                    Some(Accepted::Incoming(incoming)) => incoming,
                    Some(Accepted::Stopped { socket }) => {
                        // Outside shutdown an endpoint never stops by design: a share of
                        // clients would go unanswered, so stop the node and let the
                        // supervisor (systemd, Kubernetes) start a whole one.
                        error!(socket, "a UDP socket's QUIC endpoint stopped; shutting down");
                        metrics::gauge!("relay_udp_sockets").decrement(1.0);
                        break;
                    }
                    None => break,
                };
                // Under handshake load, make new clients prove their address first (QUIC
                // Retry): a spoofed source can then not make the relay do handshake work.
                if hub.unauthenticated() >= hub.config.limits.retry_above_unauthenticated as u64
                    && incoming.may_retry()
                {
                    metrics::counter!("relay_retries_total").increment(1);
                    let _ = incoming.retry();
                    continue;
                }
                match hub.admit_connection(incoming.remote_address().ip()) {
                    Ok(open) => {
                        connections.spawn(hub.tracked(connection::serve(hub.clone(), incoming, open)));
                    }
                    Err(limit) => {
                        metrics::counter!("relay_connections_refused_total", "reason" => limit).increment(1);
                        debug!(remote = %incoming.remote_address(), limit, "connection refused");
                        incoming.refuse();
                    }
                }
            }
            Some(_) = connections.join_next() => {}
            _ = sweep.tick() => {
                hub.expire(Instant::now());
                hub.audit.probe();
                admin::prometheus().run_upkeep();
            }
        }
    }

    // Drain: no new connections or sessions; active sessions may run until the deadline.
    // Draining (and /readyz's 503) starts before the line is logged, so whoever reads the
    // log line finds the relay already draining.
    hub.draining.cancel();
    info!(
        active = connections.len(),
        deadline_ms = hub.config.drain_timeout.as_millis() as u64,
        "shutting down: draining"
    );
    let deadline = tokio::time::Instant::now() + hub.config.drain_timeout;
    while !connections.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            Some(_) = connections.join_next() => {}
            // A stopped endpoint, or all of them, disable this arm until the next turn.
            Some(Accepted::Incoming(incoming)) = incoming_connections.next() => {
                incoming.refuse();
            }
        }
    }

    // Deadline: everything still open ends now, with RELAY_SHUTDOWN.
    hub.stopping.cancel();
    let grace = tokio::time::Instant::now() + CLOSE_GRACE;
    while !connections.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(grace) => {
                warn!(left = connections.len(), "connection tasks did not end in time; aborting them");
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                break;
            }
            Some(_) = connections.join_next() => {}
        }
    }
    drop(incoming_connections);
    for endpoint in &endpoints {
        endpoint.close(ErrorCode::RelayShutdown.to_quic().into(), b"relay shutdown");
    }
    let all_idle = futures_util::future::join_all(endpoints.iter().map(|e| e.wait_idle()));
    if tokio::time::timeout(CLOSE_GRACE, all_idle).await.is_err() {
        warn!("endpoint did not go idle in time");
    }
    admin_stop.cancel();
    let http_stopped = async { while http_tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_GRACE, http_stopped)
        .await
        .is_err()
    {
        http_tasks.abort_all();
    }
    // Last: the audit writer writes what is queued and its final checkpoint, and ends. A
    // stop returns only after that, so the process may exit at once, and a relay started
    // next on the same folder is its only writer (docs/audit.md, Tamper evidence).
    hub.audit.close().await;
    info!("relay stopped");
}

#[cfg(test)]
mod tests;
