//! Three relay processes on loopback as one cluster: a sharer who lands on another node is
//! redirected to the node holding the session; device agents live on their home node; a
//! drained node refuses new sessions while the others serve them; a killed node ends only
//! its own sessions, which its next start records as ended. Any node's reports API answers
//! for the cluster (a draining node still answers its part; a killed one is named missing).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::daemon::{Daemon, start_daemon};
use common::{http, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::audit::{EventKind, audit_files, read_events};
use remote_help_relay::client::{
    ChannelReceiver, ChannelSender, Client, ClientError, ClientOptions,
};
use remote_help_relay::core::cluster::device_home;
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::{Persona, mint, persona_claims};
use remote_help_relay::issuer::{TokenSigner, TokenSpec};
use remote_help_relay::tls::{RelayIdentity as _, RelayTrust};

const NODES: usize = 3;

/// One node: its config, address and admin address, and the running process.
struct Node {
    config: PathBuf,
    audit: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    daemon: Daemon,
    log: std::sync::mpsc::Receiver<String>,
}

/// Free UDP ports for the nodes (each node's config must name all of them before any starts).
fn free_ports() -> Vec<u16> {
    let sockets: Vec<UdpSocket> = (0..NODES)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    signer: TokenSigner,
    trust: RelayTrust,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let tenant_state = dir.path().join("tenant");
        let (dev, signer) = remote_help_relay::dev::config(&tenant_state).unwrap();
        // One certificate for every node (as a wildcard certificate would be in production),
        // so one pin trusts the whole cluster.
        let identity = remote_help_relay::tls::ServerIdentity::self_signed_in(
            &dir.path().join("tls"),
            vec!["localhost".into()],
        )
        .unwrap();
        let trust = RelayTrust::Pin(identity.fingerprint());
        let ports = free_ports();
        let admin_ports: Vec<u16> = {
            let listeners: Vec<std::net::TcpListener> = (0..NODES)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            listeners
                .iter()
                .map(|l| l.local_addr().unwrap().port())
                .collect()
        };
        let admin_list = admin_ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes_list = ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, "cluster-test-admin-token-0123456789\n").unwrap();
        let mut nodes = Vec::new();
        for (id, port) in ports.iter().enumerate() {
            let node_dir = dir.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let audit = node_dir.join("audit");
            let config = node_dir.join("relay.toml");
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = {state:?}\n\
                     tls_cert = {cert:?}\ntls_key = {key:?}\ndrain_timeout_ms = 120000\n\
                     [audit]\ndir = {audit:?}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = {token:?}\n\
                     [cluster]\nnode_id = {id}\nnodes = [{nodes_list}]\nadmin_nodes = [{admin_list}]\n\
                     [[tenants]]\nid = \"dev\"\nissuer = {issuer:?}\njwks_file = {jwks:?}\nenabled = true\n\
                     require_end_to_end = false\n\
                     [[tenants.assignments]]\nrole = \"Help Desk Operator\"\nmembers = [\"helpdesk\"]\n\
                     scope = [\"all_users\", \"all_devices\"]\n",
                    admin_port = admin_ports[id],
                    state = node_dir.join("state").display().to_string(),
                    cert = dir.path().join("tls/relay-cert.pem").display().to_string(),
                    key = dir.path().join("tls/relay-key.pem").display().to_string(),
                    audit = audit.display().to_string(),
                    token = token_file.display().to_string(),
                    issuer = dev.tenants[0].trust.issuer,
                    jwks = tenant_state
                        .join(remote_help_relay::dev::JWKS_FILE)
                        .display()
                        .to_string(),
                ),
            )
            .unwrap();
            nodes.push(Node::start(config, audit));
        }
        Cluster {
            _dir: dir,
            nodes,
            signer,
            trust,
        }
    }

    async fn connect(&self, node: usize, token: String, role: Role) -> Result<Client, ClientError> {
        // These tests read their input frames as sent on the stream path (the tenant above
        // does not require protection): the relay's stream forwarding across nodes is under
        // test, not protection (the packet path's own tests: packet_path.rs, forwarder.rs).
        let mut options =
            ClientOptions::new(self.nodes[node].addr, self.trust.clone(), token, role)
                .insecure_plaintext_for_measurement();
        options.packet_path = false;
        Client::connect(options).await
    }

    async fn helper(&self, node: usize, name: &str) -> Client {
        let token = mint(&self.signer, Persona::Helper, Some(name), 600).unwrap();
        within(self.connect(node, token, Role::Helper))
            .await
            .unwrap()
    }

    async fn sharer(&self, node: usize, name: &str) -> Client {
        let token = mint(&self.signer, Persona::Sharer, Some(name), 600).unwrap();
        within(self.connect(node, token, Role::Sharer))
            .await
            .unwrap()
    }

    /// A helper on `helper_node` and a sharer who joins through `sharer_node`, with an input
    /// channel open between them.
    async fn session(&self, helper_node: usize, sharer_node: usize, name: &str) -> Session {
        let mut helper = self.helper(helper_node, &format!("helper-{name}")).await;
        let created = within(helper.create_session(Mode::FullControl))
            .await
            .unwrap();
        let mut sharer = self.sharer(sharer_node, &format!("sharer-{name}")).await;
        common::join_and_consent(&mut helper, &mut sharer, &created.code).await;
        let input = within(helper.open_unsealed_channel(Channel::Input))
            .await
            .unwrap();
        let (channel, received) = within(sharer.accept_unsealed_channel()).await.unwrap();
        assert_eq!(channel, Channel::Input);
        let mut session = Session {
            id: created.session_id,
            code: created.code,
            helper,
            sharer,
            input,
            received,
            next: 0,
        };
        session.input_flows().await;
        session
    }
}

impl Node {
    fn start(config: PathBuf, audit: PathBuf) -> Node {
        let (daemon, addr, _fingerprint, admin, log) = start_daemon(&config, &[]);
        Node {
            config,
            audit,
            addr: addr.parse().unwrap(),
            admin: admin.parse().unwrap(),
            daemon,
            log,
        }
    }

    fn signal(&self, signal: libc::c_int) {
        self.daemon.signal(signal);
    }

    /// Waits until the node logs a line containing `text`.
    fn wait_for_log(&self, text: &str) {
        loop {
            let line = self
                .log
                .recv_timeout(common::STEP)
                .unwrap_or_else(|e| panic!("no log line {text:?}: {e}"));
            if line.contains(text) {
                return;
            }
        }
    }
}

struct Session {
    id: String,
    code: String,
    helper: Client,
    sharer: Client,
    input: ChannelSender,
    received: ChannelReceiver,
    next: u8,
}

impl Session {
    /// One input event goes from helper to sharer, intact.
    async fn input_flows(&mut self) {
        self.next += 1;
        let event = Bytes::from(vec![self.next; 24]);
        within(self.input.send(event.clone())).await.unwrap();
        let got = within(self.received.recv()).await.unwrap().unwrap();
        assert_eq!(&got[..], &event[..]);
    }
}

const OPERATOR_TOKEN: &str = "cluster-test-admin-token-0123456789";

/// The active sessions `node`'s reports API lists for the cluster: (session id, node) pairs,
/// and the `missing_nodes`.
async fn active_through(cluster: &Cluster, node: usize) -> (Vec<(String, u64)>, serde_json::Value) {
    let (status, body) = http(
        cluster.nodes[node].admin,
        "GET",
        "/api/v1/reports/active",
        Some(OPERATOR_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut rows: Vec<(String, u64)> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["session_id"].as_str().unwrap().to_string(),
                r["relay_node"].as_u64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    (rows, body["missing_nodes"].clone())
}

fn ended_reason(audit: &Path, session: &str) -> Option<String> {
    read_events(&audit_files(audit))
        .into_iter()
        .find(|e| e.session_id == session && e.event == Some(EventKind::SessionEnded))
        .and_then(|e| e.end_reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_pair_across_nodes_drain_and_lose_a_node_independently() {
    let mut cluster = Cluster::start();
    let addr = |c: &Cluster, n: usize| c.nodes[n].addr;

    // A helper on node 0 (A); the sharer lands on node 1 (B) and is redirected to A.
    let mut on_a = cluster.session(0, 1, "a").await;
    assert!(
        on_a.code.starts_with('0'),
        "a code of node 0: {}",
        on_a.code
    );
    assert_eq!(on_a.sharer.relay_addr(), addr(&cluster, 0));
    // Sessions held by B and by C (node 2), with sharers arriving through the other nodes.
    let mut on_b = cluster.session(1, 2, "b").await;
    assert!(on_b.code.starts_with('1'));
    assert_eq!(on_b.sharer.relay_addr(), addr(&cluster, 1));
    let mut on_c = cluster.session(2, 0, "c").await;
    assert!(on_c.code.starts_with('2'));
    assert_eq!(on_c.sharer.relay_addr(), addr(&cluster, 2));
    // Any node's reports API lists the whole cluster's sessions, each with its node.
    let mut everywhere = vec![
        (on_a.id.clone(), 0),
        (on_b.id.clone(), 1),
        (on_c.id.clone(), 2),
    ];
    everywhere.sort();
    for node in 0..NODES {
        assert_eq!(
            active_through(&cluster, node).await,
            (everywhere.clone(), serde_json::json!([]))
        );
    }

    // A device agent registers through node 0 and ends up on its home node; a helper on
    // any node reaches it there.
    let device_id = "kiosk-cluster-7";
    let home = usize::from(device_home(device_id, NODES).get());
    let (subject, mut claims) = persona_claims(Persona::Sharer, Some("kiosk"));
    claims.insert("kind".into(), "device".into());
    claims.insert("licenses".into(), serde_json::json!([]));
    claims.insert("device_id".into(), device_id.into());
    let now = common::now();
    let agent_token = cluster
        .signer
        .sign(
            &TokenSpec {
                issuer: remote_help_relay::dev::DEV_ISSUER.into(),
                audience: remote_help_relay::config::DEFAULT_AUDIENCE.into(),
                tenant: remote_help_relay::dev::DEV_TENANT.into(),
                subject,
                issued_at: now,
                expires_at: now + 600,
                extra: claims,
            }
            .claims(),
        )
        .unwrap();
    let mut agent = within(cluster.connect((home + 1) % NODES, agent_token, Role::Sharer))
        .await
        .unwrap();
    assert_eq!(within(agent.register_device()).await.unwrap(), device_id);
    assert_eq!(agent.relay_addr(), addr(&cluster, home));
    let mut remote_helper = cluster
        .helper((home + 2) % NODES, "helper-unattended")
        .await;
    within(remote_helper.connect_unattended(device_id, "CHG-1"))
        .await
        .unwrap();
    assert_eq!(remote_helper.relay_addr(), addr(&cluster, home));
    within(remote_helper.end_session()).await.unwrap();
    assert_eq!(within(agent.wait_for_end()).await, ErrorCode::PeerEnded);

    // Drain A the way a Kubernetes preStop hook does (`relay drain`; SIGTERM does the same):
    // it reports not-ready and refuses new connections, its session carries on, and B and C
    // serve new sessions (one whose sharer comes through C).
    let mut idle_on_a = cluster.helper(0, "helper-idle").await;
    let drain = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args([
            "drain",
            "--wait",
            "--admin",
            &cluster.nodes[0].admin.to_string(),
            "--token-file",
        ])
        .arg(cluster._dir.path().join("admin-token"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cluster.nodes[0].wait_for_log("shutting down: draining");
    assert_eq!(
        http(cluster.nodes[0].admin, "GET", "/readyz", None).await.0,
        503
    );
    // A helper already connected to A, with no session, cannot start one there.
    let refused = within(idle_on_a.create_session(Mode::ViewOnly))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::RelayShutdown), "{refused}");
    let token = mint(&cluster.signer, Persona::Helper, Some("late"), 600).unwrap();
    let refused = within(cluster.connect(0, token, Role::Helper)).await;
    assert!(refused.is_err(), "a draining node takes no new connections");
    on_a.input_flows().await;
    // A draining node still answers its part of a report.
    let (rows, missing) = active_through(&cluster, 1).await;
    assert!(rows.contains(&(on_a.id.clone(), 0)), "{rows:?}");
    assert_eq!(missing, serde_json::json!([]));
    let mut fresh = cluster.session(1, 2, "fresh").await;
    fresh.input_flows().await;

    // Kill C: its sessions end with RELAY_LOST at the clients; A's and B's carry on.
    cluster.nodes[2].signal(libc::SIGKILL);
    assert!(!cluster.nodes[2].daemon.0.wait().unwrap().success());
    // While C is down, B answers for A and B and names C as missing, in its log too.
    let (rows, missing) = active_through(&cluster, 1).await;
    assert!(rows.iter().all(|(_, node)| *node != 2), "{rows:?}");
    assert!(rows.contains(&(on_b.id.clone(), 1)), "{rows:?}");
    assert_eq!(missing, serde_json::json!([2]));
    cluster.nodes[1].wait_for_log("reports fan-out: a node did not answer");
    // Restarted on its port and state, C records the end of the session it lost, and its
    // stateless resets tell the old clients at once.
    let (config, audit) = (
        cluster.nodes[2].config.clone(),
        cluster.nodes[2].audit.clone(),
    );
    cluster.nodes[2] = Node::start(config, audit);
    assert_eq!(
        within(on_c.helper.wait_for_end()).await,
        ErrorCode::RelayLost
    );
    assert_eq!(
        within(on_c.sharer.wait_for_end()).await,
        ErrorCode::RelayLost
    );
    // Told by a stateless reset from the restarted node, not by the idle timeout.
    for client in [&on_c.helper, &on_c.sharer] {
        assert_eq!(
            client.connection().close_reason(),
            Some(quinn::ConnectionError::Reset)
        );
    }
    assert_eq!(
        ended_reason(&cluster.nodes[2].audit, &on_c.id).as_deref(),
        Some("RELAY_RESTARTED")
    );
    // Every node stamps its events with its id, so a merged audit trail says who wrote what.
    let stamped = |node: usize| {
        read_events(&audit_files(&cluster.nodes[node].audit))
            .iter()
            .all(|e| e.relay_node == Some(node as u8))
    };
    assert!(stamped(0) && stamped(1) && stamped(2));
    on_a.input_flows().await;
    on_b.input_flows().await;
    fresh.input_flows().await;
    assert_eq!(ended_reason(&cluster.nodes[0].audit, &on_a.id), None);
    assert_eq!(ended_reason(&cluster.nodes[1].audit, &on_b.id), None);

    // A's last session ends normally; A then finishes its drain and exits cleanly.
    within(on_a.helper.end_session()).await.unwrap();
    assert_eq!(
        within(on_a.sharer.wait_for_end()).await,
        ErrorCode::PeerEnded
    );
    assert_eq!(cluster.nodes[0].daemon.0.wait().unwrap().code(), Some(0));
    let drained = drain.wait_with_output().unwrap();
    assert!(drained.status.success());
    assert!(String::from_utf8_lossy(&drained.stdout).contains("drained and stopped"));
    assert_eq!(
        ended_reason(&cluster.nodes[0].audit, &on_a.id).as_deref(),
        Some("PEER_ENDED")
    );
    for session in [&mut on_b, &mut fresh] {
        within(session.helper.end_session()).await.unwrap();
    }

    // A security team's view of the whole cluster: one report over the three nodes' folders.
    let mut report = Command::new(env!("CARGO_BIN_EXE_relay"));
    report.args(["sessions", "--json"]);
    for node in &cluster.nodes {
        report.arg("--audit-dir").arg(&node.audit);
    }
    let out = report.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["sessions"].as_array().unwrap();
    let node_of = |id: &str| {
        rows.iter().find(|r| r["session_id"] == id).map(|r| {
            (
                r["relay_node"].as_u64(),
                r["end_reason"].as_str().map(str::to_string),
            )
        })
    };
    assert_eq!(
        node_of(&on_a.id),
        Some((Some(0), Some("PEER_ENDED".into())))
    );
    assert_eq!(
        node_of(&on_b.id),
        Some((Some(1), Some("PEER_ENDED".into())))
    );
    assert_eq!(
        node_of(&on_c.id),
        Some((Some(2), Some("RELAY_RESTARTED".into())))
    );
    assert_eq!(node_of(&fresh.id).map(|(n, _)| n), Some(Some(1)));
    // a, b, c, the unattended session and the one started during the drain.
    assert_eq!(report["summary"]["count"], 5, "{report:#}");
    // A mistyped folder fails the report instead of silently leaving a node out.
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["sessions", "--audit-dir"])
        .arg(&cluster.nodes[0].audit)
        .args(["--audit-dir", "/nonexistent/audit"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an audit folder"));
}
