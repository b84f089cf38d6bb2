//! Redirects in process, where the cluster settings can be made wrong on purpose: a node
//! never redirects a request it holds, a redirect loop between misconfigured nodes ends
//! after one hop with a clear error, an address the client cannot use is refused with its
//! reason, and a code naming a node the cluster lacks is an unknown code.

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::{TestRelay, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::client::{Client, ClientError};
use remote_help_relay::config::{ClusterConfig, Config, TlsSource};
use remote_help_relay::core::cluster::NodeId;
use remote_help_relay::core::{Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use remote_help_relay::tls::{RelayIdentity as _, RelayTrust, ServerIdentity};

struct TwoNodes {
    nodes: Vec<TestRelay>,
    trust: RelayTrust,
    _dir: tempfile::TempDir,
}

/// Two nodes on reserved ports sharing a tenant and a certificate; `view(id, truth)` is the
/// address list node `id` is configured with (`truth` holds the real addresses).
async fn two_nodes(view: impl Fn(usize, &[String]) -> Vec<String>) -> TwoNodes {
    two_nodes_with(view, |_, _| {}).await
}

/// Like [`two_nodes`], with `tweak(id, config)` applied to each node's config.
async fn two_nodes_with(
    view: impl Fn(usize, &[String]) -> Vec<String>,
    tweak: impl Fn(usize, &mut Config) + Clone + 'static,
) -> TwoNodes {
    let dir = tempfile::tempdir().unwrap();
    let identity = ServerIdentity::self_signed_in(dir.path(), vec!["localhost".into()]).unwrap();
    let held: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = held.iter().map(|s| s.local_addr().unwrap()).collect();
    drop(held);
    let truth: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut nodes: Vec<TestRelay> = Vec::new();
    for (id, &listen) in addrs.iter().enumerate() {
        let tenants = nodes.first().map(|n| vec![n.tenant("contoso").config()]);
        let list = view(id, &truth);
        let tls = TlsSource::Files {
            cert: dir.path().join("relay-cert.pem"),
            key: dir.path().join("relay-key.pem"),
        };
        let tweak = tweak.clone();
        let relay = TestRelay::builder()
            .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
            .config(move |c| {
                tweak(id, c);
                c.listen = listen;
                c.tls = tls;
                c.cluster = Some(ClusterConfig::new(NodeId::new(id as u8).unwrap(), list));
                // One tenant, the same keys on both nodes.
                if let Some(tenants) = tenants {
                    c.tenants = tenants;
                }
            })
            .start()
            .await;
        nodes.push(relay);
    }
    TwoNodes {
        nodes,
        trust: RelayTrust::Pin(identity.fingerprint()),
        _dir: dir,
    }
}

impl TwoNodes {
    async fn client(&self, node: usize, persona: Persona, role: Role) -> Client {
        let token = self.nodes[0].tenant("contoso").token(persona);
        let mut options = self.nodes[node].options(token, role);
        options.trust = self.trust.clone();
        within(Client::connect(options)).await.unwrap()
    }

    /// A session created on node 0; returns its code.
    async fn code_on_node_0(&self) -> (Client, String) {
        let mut helper = self.client(0, Persona::Helper, Role::Helper).await;
        let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
        assert!(created.code.starts_with('0'), "{}", created.code);
        (helper, created.code)
    }
}

/// The join failed because its redirect to `address` could not be followed, saying `why`.
fn expect_redirect_failure<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    address: &str,
    why: &str,
) {
    match result {
        Err(ClientError::Redirect {
            address: to,
            reason,
        }) => {
            assert_eq!(to, address);
            assert!(reason.contains(why), "{reason}");
        }
        other => panic!("expected a redirect failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_join_at_the_holding_node_is_never_redirected() {
    let cluster = two_nodes(|_, truth| truth.to_vec()).await;
    let (_helper, code) = cluster.code_on_node_0().await;
    let mut sharer = cluster.client(0, Persona::Sharer, Role::Sharer).await;
    let before = sharer.relay_addr();
    within(sharer.join(&code)).await.unwrap();
    assert_eq!(sharer.relay_addr(), before);
}

#[tokio::test]
async fn a_redirect_loop_between_misconfigured_nodes_stops_after_one_hop() {
    // Node 1 believes node 0 lives at node 1's own address.
    let cluster = two_nodes(|id, truth| match id {
        1 => vec![truth[1].clone(), truth[1].clone()],
        _ => truth.to_vec(),
    })
    .await;
    let (_helper, code) = cluster.code_on_node_0().await;
    let mut sharer = cluster.client(1, Persona::Sharer, Role::Sharer).await;
    let failed = within(sharer.join(&code)).await;
    expect_redirect_failure(
        failed,
        &cluster.nodes[1].addr().to_string(),
        "redirected again",
    );
}

#[tokio::test]
async fn a_redirect_the_client_cannot_follow_says_why() {
    // Node 1 names an IPv6 address for node 0; this client's socket is IPv4.
    let cluster = two_nodes(|id, truth| match id {
        1 => vec!["[::1]:4433".into(), truth[1].clone()],
        _ => truth.to_vec(),
    })
    .await;
    let (_helper, code) = cluster.code_on_node_0().await;
    let mut sharer = cluster.client(1, Persona::Sharer, Role::Sharer).await;
    let failed = within(sharer.join(&code)).await;
    expect_redirect_failure(failed, "[::1]:4433", "IP family");
}

#[tokio::test]
async fn a_code_of_a_node_the_cluster_lacks_is_an_unknown_code() {
    let cluster = two_nodes(|_, truth| truth.to_vec()).await;
    let mut sharer = cluster.client(0, Persona::Sharer, Role::Sharer).await;
    let refused = within(sharer.join("5ABCD-EFGHJ")).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::CodeInvalid));
    // The connection is still usable, and still on node 0.
    assert_eq!(sharer.relay_addr(), cluster.nodes[0].addr());
    within(sharer.ping()).await.unwrap();
}

#[tokio::test]
async fn the_joining_nodes_rate_limit_applies_before_it_redirects() {
    // Node 1 allows one join attempt per source per minute.
    let cluster = two_nodes_with(
        |_, truth| truth.to_vec(),
        |id, c| {
            if id == 1 {
                c.limits.joins_per_source_per_minute = 1;
            }
        },
    )
    .await;
    let (_helper, code) = cluster.code_on_node_0().await;
    let mut first = cluster.client(1, Persona::Sharer, Role::Sharer).await;
    within(first.join(&code)).await.unwrap();
    assert_eq!(first.relay_addr(), cluster.nodes[0].addr(), "redirected");
    let (_helper2, code2) = cluster.code_on_node_0().await;
    let mut second = cluster.client(1, Persona::Sharer, Role::Sharer).await;
    let refused = within(second.join(&code2)).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited));
    assert_eq!(
        second.relay_addr(),
        cluster.nodes[1].addr(),
        "not redirected"
    );
}
