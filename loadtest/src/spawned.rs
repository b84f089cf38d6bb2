//! The relay under test: one `loadtest` starts itself (`--spawn-relay`), or one already
//! running that it is pointed at; and how to read that relay's CPU time and memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use remote_help_relay::dev::{self, Persona};
use remote_help_relay::server::admin::ProcessUsage;
use remote_help_relay::tls::RelayIdentity as _;
use remote_help_sdk::tls::Fingerprint;

/// A relay process `loadtest` started, killed when dropped.
pub struct SpawnedRelay {
    child: Child,
    /// Where it listens for QUIC.
    pub addr: SocketAddr,
    /// Its admin (metrics) address.
    pub admin: SocketAddr,
    /// Its certificate's fingerprint, to pin.
    pub fingerprint: Fingerprint,
    /// A helper token and a sharer token of its tenant.
    pub helper_token: String,
    /// See `helper_token`.
    pub sharer_token: String,
    state: PathBuf,
    /// A folder this relay's drop also removes (node 0 of a cluster: the shared certificate).
    also_remove: Option<PathBuf>,
}

/// What a spawned relay's config is sized for.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    /// Sessions the run holds at once (connection caps and buffer budget follow).
    pub sessions: usize,
    /// The relay's `limits.udp_sockets` (0: one per CPU it may run on).
    pub udp_sockets: usize,
    /// The tenant's `require_end_to_end`: on, unless the run measures without protection
    /// (`--no-e2e`), whose clients such a tenant would refuse.
    pub require_end_to_end: bool,
}

impl SpawnedRelay {
    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its state folder (config, keys, audit log, log), removed once it has exited.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Starts `relay_bin` on a config sized for `sessions` sessions, and waits until it
    /// answers on its admin endpoint.
    pub fn start(relay_bin: &Path, sizing: Sizing) -> Result<SpawnedRelay> {
        SpawnedRelay::start_node(relay_bin, sizing, None)
    }

    /// Starts `nodes` relays as one cluster on loopback (node 0 first; the others share its
    /// certificate and tenant key, so one pin and one pair of tokens serve them all).
    pub fn start_cluster(
        relay_bin: &Path,
        sizing: Sizing,
        nodes: usize,
    ) -> Result<Vec<SpawnedRelay>> {
        let addrs = (0..nodes)
            .map(|_| free_udp_port())
            .collect::<Result<Vec<_>>>()?;
        // One certificate for every node (a cluster needs certificate files), so one pin
        // trusts them all.
        let tls_dir = std::env::temp_dir().join(format!("loadtest-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tls_dir);
        remote_help_relay::tls::ServerIdentity::self_signed_in(&tls_dir, vec!["localhost".into()])
            .context("the cluster's certificate")?;
        let mut started: Vec<SpawnedRelay> = Vec::new();
        for id in 0..nodes {
            let shared = started.first().map(|first| first.state.clone());
            let node = NodeSpec {
                id,
                addrs: addrs.clone(),
                shared_state: shared,
                tls_dir: tls_dir.clone(),
            };
            match SpawnedRelay::start_node(relay_bin, sizing, Some(node)) {
                Ok(relay) => started.push(relay),
                Err(e) => {
                    // The nodes already up are stopped as `started` drops.
                    let _ = std::fs::remove_dir_all(&tls_dir);
                    return Err(e);
                }
            }
        }
        if let Some(first) = started.first_mut() {
            first.also_remove = Some(tls_dir);
        }
        Ok(started)
    }

    fn start_node(
        relay_bin: &Path,
        Sizing {
            sessions,
            udp_sockets,
            require_end_to_end,
        }: Sizing,
        node: Option<NodeSpec>,
    ) -> Result<SpawnedRelay> {
        let id = node.as_ref().map_or(0, |n| n.id);
        let state =
            std::env::temp_dir().join(format!("loadtest-relay-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).context("state folder for the spawned relay")?;
        // Nodes after the first use its tenant key and certificate.
        let key_from = node.as_ref().and_then(|n| n.shared_state.clone());
        if let Some(first) = &key_from {
            for file in [dev::KEY_FILE, dev::JWKS_FILE] {
                std::fs::copy(first.join(file), state.join(file))
                    .with_context(|| format!("copying {file} from node 0"))?;
            }
        }
        let signer = dev::ensure_signer(&state).context("tenant key")?;
        let addr = match &node {
            Some(n) => n.addrs[n.id],
            None => free_udp_port()?,
        };
        let tls = match &node {
            Some(n) => format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                n.tls_dir.join("relay-cert.pem").display().to_string(),
                n.tls_dir.join("relay-key.pem").display().to_string()
            ),
            None => String::new(),
        };
        let cluster = match &node {
            Some(n) => format!(
                "\n[cluster]\nnode_id = {}\nnodes = [{}]\n",
                n.id,
                n.addrs
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let admin = free_tcp_port()?;
        let connections = (sessions * 2 + 256).max(1024);
        // Everything comes from one address, so per-source caps are lifted; the buffer
        // budget is sized so that the windows, not the budget, bound each connection.
        let buffered_mib = (connections as u64 * 3).max(8192);
        let config = format!(
            r#"# Written by loadtest --spawn-relay.
[server]
listen = "{addr}"
audience = "remote-help-relay"
state_dir = "."
{tls}
[admin]
listen = "{admin}"

[limits]
max_connections = {connections}
max_connections_per_source = {connections}
max_unauthenticated_connections = {connections}
retry_above_unauthenticated = {connections}
max_buffered_mib = {buffered_mib}
udp_sockets = {udp_sockets}
joins_per_source_per_minute = 1000000
joins_per_tenant_per_minute = 10000000
max_sessions_per_tenant = {connections}
session_setups_per_tenant_per_minute = 10000000

# The packet path's per-session budget (default 2 Gbit/s each way) would cap a one-session
# throughput run: the load generator measures the forwarder, not the budget.
[forwarder]
session_bytes_per_sec = 100000000000
max_routes = {connections}

[[tenants]]
id = "dev"
issuer = "https://dev.remote-help.invalid/"
jwks_file = "dev-tenant.jwks.json"
enabled = true
require_end_to_end = {require_end_to_end}

[[tenants.assignments]]
role = "Help Desk Operator"
members = ["helpdesk"]
scope = ["all_users", "all_devices"]
{cluster}"#
        );
        let config_path = state.join("loadtest-relay.toml");
        std::fs::write(&config_path, config).context("writing the relay config")?;
        let log = std::fs::File::create(state.join("relay.log")).context("relay log")?;
        let child = Command::new(relay_bin)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", relay_bin.display()))?;
        let mut relay = SpawnedRelay {
            child,
            addr,
            admin,
            fingerprint: Fingerprint([0; 32]),
            helper_token: dev::mint(&signer, Persona::Helper, None, 24 * 3600)?,
            sharer_token: dev::mint(&signer, Persona::Sharer, None, 24 * 3600)?,
            state,
            also_remove: None,
        };
        relay.wait_ready()?;
        let text = std::fs::read_to_string(relay.state.join(dev::FINGERPRINT_FILE))
            .context("the relay's fingerprint file")?;
        relay.fingerprint = Fingerprint::parse(text.trim()).context("fingerprint")?;
        Ok(relay)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the relay exited ({status}); see {}",
                    self.state.join("relay.log").display()
                );
            }
            if http_get(self.admin, "/readyz").is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the relay did not become ready within 30 s")
    }
}

impl Drop for SpawnedRelay {
    /// Stops the relay the way an operator does (SIGTERM: drain, write the audit, exit),
    /// and kills it if it is not gone within 15 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
        if let Some(dir) = &self.also_remove {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One node of a spawned cluster.
struct NodeSpec {
    id: usize,
    addrs: Vec<SocketAddr>,
    /// Node 0's state folder (its tenant key), for the other nodes.
    shared_state: Option<PathBuf>,
    /// The folder of the certificate every node presents.
    tls_dir: PathBuf,
}

/// Where to read the relay's CPU time and memory from.
#[derive(Debug, Clone)]
pub enum RelayProbe {
    /// A local process, through `/proc`.
    Pid(u32),
    /// A Prometheus endpoint exposing `process_cpu_seconds_total` and
    /// `process_resident_memory_bytes` (the relay's `/metrics` does).
    Metrics(SocketAddr),
    /// Not measured.
    None,
}

impl RelayProbe {
    /// The relay's usage now, if it can be read. The reads (`/proc`, or an HTTP scrape that
    /// may take seconds) are blocking, so they run on the blocking pool, never on the
    /// runtime's workers that drive the sessions.
    pub async fn usage(&self) -> Option<ProcessUsage> {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || probe.usage_now())
            .await
            .ok()
            .flatten()
    }

    fn usage_now(&self) -> Option<ProcessUsage> {
        match self {
            RelayProbe::Pid(pid) => ProcessUsage::of_pid(*pid),
            RelayProbe::Metrics(addr) => {
                let (_, body) = http_get(*addr, "/metrics").ok()?;
                let value = |name: &str| {
                    body.lines()
                        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                        .and_then(|l| l.rsplit(' ').next())
                        .and_then(|v| v.parse::<f64>().ok())
                };
                Some(ProcessUsage {
                    cpu_seconds: value("process_cpu_seconds_total")?,
                    resident_bytes: value("process_resident_memory_bytes")? as u64,
                })
            }
            RelayProbe::None => None,
        }
    }
}

/// A minimal HTTP/1.0 GET (the admin endpoint is plain HTTP on a trusted address).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn free_udp_port() -> Result<SocketAddr> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?)
}

fn free_tcp_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
