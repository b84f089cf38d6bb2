//! The relay's connection ids route through a stateless QUIC-LB load balancer: three relay
//! nodes behind one address, a load balancer that keeps no per-connection state (it reads
//! the node from each packet's destination connection id, and hashes a client's first
//! Initial), and clients that change their address mid-connection. Their packets still reach
//! the node that holds their connection, and a session still pairs across nodes.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;

use bytes::Bytes;
use common::{TestRelay, within};
use remote_help_relay::client::{Client, ClientOptions};
use remote_help_relay::config::{ClusterConfig, TlsSource};
use remote_help_relay::core::cluster::{CID_LEN, NodeId, node_of_cid};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use remote_help_relay::tls::{RelayIdentity as _, RelayTrust, ServerIdentity};
use tokio::net::UdpSocket;

const NODES: usize = 3;

/// Where a QUIC-LB load balancer sends a datagram: the node in the destination connection
/// id, or for a client's first Initial (whose id the client chose at random) a hash of it,
/// so that its retransmissions go to the same node. Short-header packets with an id no node
/// issued are dropped.
fn route(datagram: &[u8]) -> Option<usize> {
    let first = *datagram.first()?;
    let long_header = first & 0x80 != 0;
    let dcid = if long_header {
        let len = usize::from(*datagram.get(5)?);
        datagram.get(6..6 + len)?
    } else {
        datagram.get(1..1 + CID_LEN)?
    };
    match node_of_cid(dcid).map(|n| usize::from(n.get())) {
        Some(node) if node < NODES => Some(node),
        _ if long_header => {
            let hash = dcid.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            Some((hash % NODES as u64) as usize)
        }
        _ => None,
    }
}

/// A stateless UDP load balancer on 127.0.0.1. Its only table maps a client address to the
/// socket it forwards that client's datagrams from (so replies find their way back): it
/// is per *address*, not per connection, and says nothing about which node to use.
async fn load_balancer(nodes: Vec<SocketAddr>) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((len, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let Some(node) = route(&buf[..len]) else {
                continue;
            };
            let flow = match flows.get(&client) {
                Some(flow) => flow.clone(),
                None => {
                    let flow = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    let (back, front) = (flow.clone(), front.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok((len, _)) = back.recv_from(&mut buf).await {
                            let _ = front.send_to(&buf[..len], client).await;
                        }
                    });
                    flows.insert(client, flow.clone());
                    flow
                }
            };
            let _ = flow.send_to(&buf[..len], nodes[node]).await;
        }
    });
    addr
}

/// A client endpoint of our own, so the test can move it to another local port.
fn client_endpoint() -> quinn::Endpoint {
    let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_change_address_still_reach_their_node() {
    let dir = tempfile::tempdir().unwrap();
    let identity = ServerIdentity::self_signed_in(dir.path(), vec!["localhost".into()]).unwrap();
    let trust = RelayTrust::Pin(identity.fingerprint());
    let ports: Vec<u16> = {
        let held: Vec<StdUdpSocket> = (0..NODES)
            .map(|_| StdUdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect()
    };
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut nodes: Vec<TestRelay> = Vec::new();
    let mut tenants = None;
    for id in 0..NODES {
        let (addrs, tenants_now) = (addrs.clone(), tenants.clone());
        let tls = TlsSource::Files {
            cert: dir.path().join("relay-cert.pem"),
            key: dir.path().join("relay-key.pem"),
        };
        let relay = TestRelay::builder()
            .plaintext_clients()
            .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
            .config(move |c| {
                c.listen = addrs[id];
                c.tls = tls;
                c.cluster = Some(ClusterConfig::new(
                    NodeId::new(id as u8).unwrap(),
                    addrs.iter().map(|a| a.to_string()).collect(),
                ));
                // Every node trusts the first node's tenant keys: one tenant, three nodes.
                if let Some(tenants) = tenants_now {
                    c.tenants = tenants;
                }
            })
            .start()
            .await;
        if tenants.is_none() {
            // As the first node has it: this test reads its input frames as sent.
            let mut contoso = relay.tenant("contoso").config();
            contoso.policy.require_end_to_end = false;
            tenants = Some(vec![contoso]);
        }
        nodes.push(relay);
    }
    let contoso = nodes[0].tenant("contoso");
    let lb = load_balancer(addrs.clone()).await;

    let mut seen_nodes = std::collections::HashSet::new();
    for round in 0..6 {
        let endpoint = client_endpoint();
        let options = |token, role| {
            ClientOptions::new(lb, trust.clone(), token, role).insecure_plaintext_for_measurement()
        };
        let mut helper = within(Client::connect_from(
            &endpoint,
            options(contoso.token(Persona::Helper), Role::Helper),
        ))
        .await
        .unwrap();
        let created = within(helper.create_session(Mode::FullControl))
            .await
            .unwrap();
        let holder = usize::from(
            remote_help_relay::core::code::SessionCode::parse(&created.code)
                .unwrap()
                .node()
                .get(),
        );
        seen_nodes.insert(holder);
        assert_eq!(nodes[holder].handle.stats().sessions, 1, "round {round}");

        // The helper's address changes twice; each time the load balancer sees a client
        // it never saw and routes it by connection id alone.
        for _ in 0..2 {
            endpoint
                .rebind(StdUdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            within(helper.ping()).await.unwrap();
        }

        // The sharer arrives through the load balancer too, wherever its Initial lands,
        // and is redirected to the holder if need be.
        let mut sharer = within(Client::connect(options(
            contoso.token(Persona::Sharer),
            Role::Sharer,
        )))
        .await
        .unwrap();
        common::join_and_consent(&mut helper, &mut sharer, &created.code).await;
        let mut input = within(helper.open_unsealed_channel(Channel::Input))
            .await
            .unwrap();
        let event = Bytes::from_static(b"key down: A");
        within(input.send(event.clone())).await.unwrap();
        let (_, mut received) = within(sharer.accept_unsealed_channel()).await.unwrap();
        assert_eq!(
            &within(received.recv()).await.unwrap().unwrap()[..],
            &event[..]
        );
        // And once more after another move, mid-session.
        endpoint
            .rebind(StdUdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        within(input.send(event.clone())).await.unwrap();
        assert_eq!(
            &within(received.recv()).await.unwrap().unwrap()[..],
            &event[..]
        );
        within(helper.end_session()).await.unwrap();
        within(sharer.wait_for_end()).await;
        helper.close().await;
        sharer.close().await;
        for node in &nodes {
            within(node.wait_until_empty()).await;
        }
    }
    // Not asserted beyond "some": which node a hash picks is up to the client's random ids.
    assert!(!seen_nodes.is_empty());
    for node in nodes {
        node.stop().await;
    }
}

/// Within one node, the relay's UDP sockets share the listen port and the kernel steers
/// each packet by its destination connection id, so a client that changes its address
/// mid-session stays with the socket (and quinn endpoint) that holds its connection. The
/// kernel's default 4-tuple hash would deliver a moved client's packets to whichever socket
/// the new address hashes to: with four sockets and sixteen moves, the odds that every one
/// lands right by chance are 4^-16. (Receive offload off, as for load generators: every
/// other test runs with it on and the default two sockets or more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_clients_stay_on_their_socket() {
    const SOCKETS: usize = 4;
    let relay = TestRelay::builder()
        .plaintext_clients()
        .config(|c| {
            c.limits.udp_sockets = SOCKETS;
            c.limits.udp_receive_offload = false;
        })
        .start()
        .await;
    assert_eq!(relay.handle.udp_sockets(), SOCKETS);
    let contoso = relay.tenant("contoso");
    for pair in 0..8 {
        let (helper_endpoint, sharer_endpoint) = (client_endpoint(), client_endpoint());
        let mut helper = within(Client::connect_from(
            &helper_endpoint,
            relay.options(contoso.token(Persona::Helper), Role::Helper),
        ))
        .await
        .unwrap();
        let mut sharer = within(Client::connect_from(
            &sharer_endpoint,
            relay.options(contoso.token(Persona::Sharer), Role::Sharer),
        ))
        .await
        .unwrap();
        let created = within(helper.create_session(Mode::FullControl))
            .await
            .unwrap();
        common::join_and_consent(&mut helper, &mut sharer, &created.code).await;
        let mut input = within(helper.open_unsealed_channel(Channel::Input))
            .await
            .unwrap();
        let (_, mut received) = {
            within(input.send(Bytes::from_static(b"before")))
                .await
                .unwrap();
            within(sharer.accept_unsealed_channel()).await.unwrap()
        };
        assert_eq!(
            &within(received.recv()).await.unwrap().unwrap()[..],
            b"before"
        );
        for (moved, endpoint) in [("helper", &helper_endpoint), ("sharer", &sharer_endpoint)] {
            endpoint
                .rebind(StdUdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            let event = Bytes::from(format!("pair {pair}: after the {moved} moved"));
            within(input.send(event.clone())).await.unwrap();
            assert_eq!(
                &within(received.recv()).await.unwrap().unwrap()[..],
                &event[..]
            );
            within(helper.ping()).await.unwrap();
            within(sharer.ping()).await.unwrap();
        }
        within(helper.end_session()).await.unwrap();
        within(sharer.wait_for_end()).await;
        helper.close().await;
        sharer.close().await;
    }
    within(relay.wait_until_empty()).await;
    relay.stop().await;
}
