//! The packet path's forwarder (PROTOCOL.md §8a) over real QUIC on 127.0.0.1 with real
//! tokens: clients that announce it get a routing key, and the relay forwards their
//! datagrams (header + the peer connection's own payload) between their relay-connection
//! addresses, unchanged, and nothing else. The clients drive the wire by hand
//! (`common::packet_path`): a quinn connection to the relay and forwarded datagrams from
//! the same UDP socket.

mod common;

use common::packet_path::{
    DivertingSocket, PacketClient, certificate_of, metric, metric_reaches, packet_session,
    session_of,
};
use common::{TestRelay, within};
use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
use remote_help_proto::{ErrorCode, forwarded};
use remote_help_relay::audit::{EventKind, audit_files, read_events};
use remote_help_relay::core::Role;
use remote_help_relay::issuer::TokenSigner;

/// A relay with one tenant `id` (unique per test: metrics are per process).
async fn relay_with(
    id: &str,
    tweak: impl FnOnce(&mut remote_help_relay::config::Config) + 'static,
) -> TestRelay {
    TestRelay::builder()
        .tenant(
            id,
            TokenSigner::generate_ed25519(&format!("{id}-1")).unwrap(),
        )
        .config(tweak)
        .start()
        .await
}

fn tenant(id: &str) -> String {
    format!("tenant=\"{id}\"")
}

#[tokio::test]
async fn forwarded_datagrams_reach_the_peer_unchanged_both_ways_and_the_audit_counts_them() {
    let relay = relay_with("fw-both-ways", |_| {}).await;
    let ((mut helper, to_helper), (mut sharer, to_sharer)) =
        packet_session(&relay, "fw-both-ways").await;
    // One key for the session, shaped like this node's connection ids (QUIC-LB: the first
    // octet says 8 octets, the second names node 0); the sharer dials; each pins the
    // other's certificate.
    assert_eq!(to_helper.routing_key, to_sharer.routing_key);
    let key = to_helper.routing_key.to_be_bytes();
    assert_eq!((key[0], key[1]), (7, 0), "{key:02x?}");
    assert!(to_sharer.dial && !to_helper.dial);
    assert_eq!(
        to_helper.peer_certificate_sha256,
        certificate_of(Role::Sharer)
    );
    assert_eq!(
        to_sharer.peer_certificate_sha256,
        certificate_of(Role::Helper)
    );
    assert_eq!(to_helper.max_packet_size, 1472);
    let key = to_helper.routing_key;

    helper
        .forward(key, b"from the helper's peer connection")
        .await;
    let got = sharer.next_forwarded().await;
    assert_eq!(got[..forwarded::HEADER_LEN], forwarded::header(key));
    assert_eq!(
        &got[forwarded::HEADER_LEN..],
        b"from the helper's peer connection"
    );
    sharer.forward(key, b"and back").await;
    let got = helper.next_forwarded().await;
    assert_eq!(forwarded::parse(&got), Some((key, &b"and back"[..])));
    metric_reaches(
        &relay,
        "relay_forwarder_packets_total",
        &[&tenant("fw-both-ways")],
        2.0,
    )
    .await;

    // The session ends: the route is gone before the parties hear of it.
    helper.send(Out::EndSession(v1::EndSession {})).await;
    let In::SessionEnded(_) = sharer.next().await else {
        panic!("expected SessionEnded")
    };
    assert!(!relay.handle.routes_packets(key));
    let unknown = metric(
        &relay,
        "relay_forwarder_drops_total",
        &["reason=\"unknown_key\""],
    )
    .await;
    sharer.forward(key, b"after the end").await;
    metric_reaches(
        &relay,
        "relay_forwarder_drops_total",
        &["reason=\"unknown_key\""],
        unknown + 1.0,
    )
    .await;

    // The audit's end counts the forwarded datagrams, header included.
    let events = read_events(&audit_files(&relay.audit_dir()));
    let ended = events
        .iter()
        .find(|e| e.event == Some(EventKind::SessionEnded))
        .expect("a session end");
    let header = forwarded::HEADER_LEN as u64;
    assert_eq!(
        ended.bytes_helper_to_sharer,
        Some(header + b"from the helper's peer connection".len() as u64)
    );
    assert_eq!(
        ended.bytes_sharer_to_helper,
        Some(header + b"and back".len() as u64)
    );
    drop((helper, sharer));
    relay.wait_until_empty().await;
    assert_eq!(relay.handle.packet_routes(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_party_lost_or_an_administrators_end_removes_the_route() {
    let id = "fw-lost";
    let relay = relay_with(id, |c| {
        c.admin.token = Some("an-admin-token-for-tests".into())
    })
    .await;

    // A party's connection closes: its peer hears PEER_LOST, and the key is gone.
    let ((mut helper, path), (sharer, _)) = packet_session(&relay, id).await;
    sharer.connection.close(0u32.into(), b"gone");
    let In::SessionEnded(ended) = helper.next().await else {
        panic!("expected SessionEnded")
    };
    assert_eq!(ended.reason, ErrorCode::PeerLost as i32);
    assert!(!relay.handle.routes_packets(path.routing_key));

    // An administrator ends a session: both hear ADMIN_ENDED, and the key is gone.
    let ((mut helper, path), (mut sharer, _)) = packet_session(&relay, id).await;
    assert!(relay.handle.routes_packets(path.routing_key));
    let (status, body) = common::http(
        relay.handle.admin_addr().unwrap(),
        "GET",
        "/admin/sessions",
        Some("an-admin-token-for-tests"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let session_id = listed[0]["session_id"].as_str().unwrap().to_string();
    let (status, body) = common::http(
        relay.handle.admin_addr().unwrap(),
        "POST",
        &format!("/admin/sessions/{session_id}/end"),
        Some("an-admin-token-for-tests"),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    for party in [&mut helper, &mut sharer] {
        let In::SessionEnded(ended) = party.next().await else {
            panic!("expected SessionEnded")
        };
        assert_eq!(ended.reason, ErrorCode::AdminEnded as i32);
    }
    assert!(!relay.handle.routes_packets(path.routing_key));
    assert_eq!(relay.handle.packet_routes(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn datagrams_from_elsewhere_with_unknown_keys_too_large_or_malformed_are_dropped() {
    let id = "fw-drops";
    let relay = relay_with(id, |_| {}).await;
    let ((helper, path), (mut sharer, _)) = packet_session(&relay, id).await;
    let key = path.routing_key;
    let drops = |reason: &'static str| {
        let relay = &relay;
        async move {
            metric(
                relay,
                "relay_forwarder_drops_total",
                &[&format!("reason=\"{reason}\"")],
            )
            .await
        }
    };

    // The right key from a socket that is neither party's relay connection.
    let (stranger, _) = DivertingSocket::bind();
    let mut datagram = forwarded::header(key).to_vec();
    datagram.extend_from_slice(b"spoofed");
    stranger.send(relay.addr(), &datagram, None).await;
    metric_reaches(
        &relay,
        "relay_forwarder_drops_total",
        &["reason=\"unbound_address\"", &tenant(id)],
        1.0,
    )
    .await;

    // A key nobody was given.
    let unknown = drops("unknown_key").await;
    helper.forward(key ^ 0x5555, b"no such route").await;
    metric_reaches(
        &relay,
        "relay_forwarder_drops_total",
        &["reason=\"unknown_key\""],
        unknown + 1.0,
    )
    .await;

    // Over max_packet_bytes (1472, header included).
    helper.forward(key, &[7u8; 1472 - 9 + 1]).await;
    metric_reaches(
        &relay,
        "relay_forwarder_drops_total",
        &["reason=\"too_large\"", &tenant(id)],
        1.0,
    )
    .await;

    // Fixed bit clear, but no header.
    let malformed = drops("malformed").await;
    helper
        .socket
        .send(relay.addr(), &[0x2B, 1, 2, 3, 4, 5, 6, 7, 8, 9], None)
        .await;
    metric_reaches(
        &relay,
        "relay_forwarder_drops_total",
        &["reason=\"malformed\""],
        malformed + 1.0,
    )
    .await;

    // The largest allowed datagram passes, and it is the first the sharer gets: nothing
    // dropped above reached it.
    helper.forward(key, &[8u8; 1472 - 9]).await;
    let got = sharer.next_forwarded().await;
    assert_eq!(got.len(), 1472);
    assert_eq!(got[9..], [8u8; 1472 - 9]);
    assert!(sharer.received.try_recv().is_err());
    relay.stop().await;
}

#[tokio::test]
async fn a_route_over_its_byte_budget_drops_the_excess() {
    let id = "fw-rate";
    let relay = relay_with(id, |c| {
        c.forwarder.session_bytes_per_sec = 1;
        c.forwarder.burst_bytes = 1500;
    })
    .await;
    let ((helper, path), (mut sharer, _)) = packet_session(&relay, id).await;
    let key = path.routing_key;
    // 1009 bytes fit the burst; the next 1009 do not (one byte a second comes back).
    helper.forward(key, &[1u8; 1000]).await;
    assert_eq!(sharer.next_forwarded().await.len(), 1009);
    helper.forward(key, &[2u8; 1000]).await;
    metric_reaches(
        &relay,
        "relay_forwarder_drops_total",
        &["reason=\"rate_limited\"", &tenant(id)],
        1.0,
    )
    .await;
    // The other direction has its own budget.
    sharer.forward(key, &[3u8; 1000]).await;
    let mut helper = helper;
    assert_eq!(helper.next_forwarded().await.len(), 1009);
    assert!(sharer.received.try_recv().is_err());
    relay.stop().await;
}

#[tokio::test]
async fn the_binding_follows_a_party_whose_relay_connection_migrates() {
    let id = "fw-migrate";
    let relay = relay_with(id, |_| {}).await;
    let ((mut helper, path), (mut sharer, _)) = packet_session(&relay, id).await;
    let key = path.routing_key;
    let old = helper.socket.clone();

    // The helper's relay connection moves to a new socket (a NAT rebinding or a new
    // network); a control round trip makes the relay see a packet from it.
    let (fresh, fresh_received) = DivertingSocket::bind();
    helper.endpoint.rebind_abstract(fresh.clone()).unwrap();
    helper.socket = fresh;
    helper.received = fresh_received;
    helper.round_trip(1).await;

    // From the new address both ways...
    helper.forward(key, b"from the new address").await;
    let got = sharer.next_forwarded().await;
    assert_eq!(&got[9..], b"from the new address");
    sharer.forward(key, b"to the new address").await;
    let got = helper.next_forwarded().await;
    assert_eq!(&got[9..], b"to the new address");
    // ...and the old one no longer counts.
    let mut datagram = forwarded::header(key).to_vec();
    datagram.extend_from_slice(b"from the old address");
    old.send(relay.addr(), &datagram, None).await;
    metric_reaches(
        &relay,
        "relay_forwarder_drops_total",
        &["reason=\"unbound_address\"", &tenant(id)],
        1.0,
    )
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_announce_gets_the_stream_path() {
    let id = "fw-not-announced";
    let relay = relay_with(id, |_| {}).await;
    let ((helper, to_helper), (sharer, to_sharer)) = session_of(&relay, id, true, false).await;
    assert_eq!(to_helper.packet_path, None);
    assert_eq!(to_sharer.packet_path, None);
    assert_eq!(relay.handle.packet_routes(), 0);
    // The stream path carries the session: a screen datagram from the sharer arrives.
    sharer
        .connection
        .send_datagram(bytes::Bytes::from_static(b"screen"))
        .unwrap();
    let got = within(helper.connection.read_datagram()).await.unwrap();
    assert_eq!(&got[..], b"screen");
    relay.stop().await;
}

#[tokio::test]
async fn a_webtransport_helper_gets_the_stream_path() {
    let id = "fw-webtransport";
    // The test's browser client does not protect: the tenant allows that.
    let relay = relay_with(id, |c| {
        for tenant in &mut c.tenants {
            tenant.policy.require_end_to_end = false;
        }
    })
    .await;
    let mut helper = common::webtransport::WtClient::connect(
        &relay,
        relay
            .tenant(id)
            .token(remote_help_relay::dev::Persona::Helper),
        Role::Helper,
    )
    .await
    .unwrap();
    let mut sharer = PacketClient::connect(&relay, id, Role::Sharer).await;
    helper
        .send(Out::CreateSession(v1::CreateSession {
            mode: v1::Mode::FullControl as i32,
            reason: "packet path test".into(),
        }))
        .await;
    let created = match helper.recv().await {
        Ok(In::SessionCreated(created)) => created,
        other => panic!("expected SessionCreated, got {other:?}"),
    };
    sharer
        .send(Out::JoinSession(v1::JoinSession { code: created.code }))
        .await;
    let In::ConsentRequest(_) = sharer.next().await else {
        panic!("expected ConsentRequest")
    };
    sharer
        .send(Out::ConsentAnswer(v1::ConsentAnswer { accept: true }))
        .await;
    let In::SessionStarted(started) = sharer.next().await else {
        panic!("expected SessionStarted")
    };
    assert_eq!(started.packet_path, None);
    let started = loop {
        match helper.recv().await {
            Ok(In::SessionStarted(started)) => break started,
            Ok(_) => continue,
            Err(refusal) => panic!("refused: {refusal:?}"),
        }
    };
    assert_eq!(started.packet_path, None);
    assert_eq!(relay.handle.packet_routes(), 0);
    // The stream path carries it: a screen datagram reaches the browser helper.
    sharer
        .connection
        .send_datagram(bytes::Bytes::from_static(b"screen"))
        .unwrap();
    let got = within(helper.session.read_datagram()).await.unwrap();
    assert_eq!(&got[..], b"screen");
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_connection_of_a_packet_path_session_carries_no_data() {
    let id = "fw-no-streams";
    let relay = relay_with(id, |_| {}).await;
    let ((helper, _), (sharer, _)) = packet_session(&relay, id).await;
    // A data stream (input, from the helper) is stopped with PROTOCOL_VIOLATION.
    let mut stream = within(helper.connection.open_uni()).await.unwrap();
    stream
        .write_all(&[remote_help_proto::framing::channel_tag(v1::Channel::Input)])
        .await
        .unwrap();
    let stopped = within(stream.stopped()).await.unwrap();
    assert_eq!(
        stopped.map(u64::from),
        Some(u64::from(ErrorCode::ProtocolViolation.to_quic()))
    );
    // A screen datagram is dropped and counted.
    let before = metric(
        &relay,
        "relay_packet_path_refusals_total",
        &["what=\"datagram\""],
    )
    .await;
    sharer
        .connection
        .send_datagram(bytes::Bytes::from_static(b"screen"))
        .unwrap();
    metric_reaches(
        &relay,
        "relay_packet_path_refusals_total",
        &["what=\"datagram\""],
        before + 1.0,
    )
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_packet_path_hello_without_a_32_byte_certificate_hash_is_refused() {
    let id = "fw-bad-hello";
    let relay = relay_with(id, |_| {}).await;
    let refused = PacketClient::connect_with(&relay, id, Role::Helper, true, 31).await;
    let Err((code, message)) = refused else {
        panic!("a 31-byte hash was accepted")
    };
    assert_eq!(code, ErrorCode::ProtocolViolation);
    assert!(message.contains("peer_certificate_sha256"), "{message}");
    relay.stop().await;
}

#[tokio::test]
async fn with_the_forwarder_off_or_its_table_full_sessions_take_the_stream_path() {
    for (id, tweak) in [
        (
            "fw-off",
            Box::new(|c: &mut remote_help_relay::config::Config| c.forwarder.enabled = false)
                as Box<dyn FnOnce(&mut remote_help_relay::config::Config)>,
        ),
        (
            "fw-full",
            Box::new(|c: &mut remote_help_relay::config::Config| c.forwarder.max_routes = 0),
        ),
    ] {
        let relay = relay_with(id, tweak).await;
        let ((_helper, to_helper), (_sharer, to_sharer)) = session_of(&relay, id, true, true).await;
        assert_eq!(to_helper.packet_path, None, "{id}");
        assert_eq!(to_sharer.packet_path, None, "{id}");
        relay.stop().await;
    }
}

#[tokio::test]
async fn a_burst_of_equal_size_datagrams_arrives_complete() {
    let id = "fw-burst";
    let relay = relay_with(id, |_| {}).await;
    let ((helper, path), (mut sharer, _)) = packet_session(&relay, id).await;
    let key = path.routing_key;
    // 32 datagrams of 1200 bytes, numbered, as segmentation-offload sends where the
    // socket can (the relay then receives them as one batch), else one by one.
    const COUNT: usize = 32;
    const SIZE: usize = 1200;
    let mut burst = Vec::with_capacity(COUNT * SIZE);
    for i in 0..COUNT {
        burst.extend_from_slice(&forwarded::header(key));
        burst.push(i as u8);
        burst.resize((i + 1) * SIZE, 0xAB);
    }
    let segments = helper.socket.max_transmit_segments();
    for chunk in burst.chunks(SIZE * segments.min(COUNT)) {
        helper
            .socket
            .send(relay.addr(), chunk, (segments > 1).then_some(SIZE))
            .await;
    }
    let mut seen = [false; COUNT];
    for _ in 0..COUNT {
        let got = sharer.next_forwarded().await;
        assert_eq!(got.len(), SIZE);
        assert_eq!(forwarded::parse(&got).map(|(k, _)| k), Some(key));
        seen[usize::from(got[9])] = true;
    }
    assert!(seen.iter().all(|s| *s));
    let packets = metric(&relay, "relay_forwarder_packets_total", &[&tenant(id)]).await;
    assert_eq!(packets, COUNT as f64);
    if segments > 1 {
        // Received as batches, sent on as batches.
        let batches = metric(&relay, "relay_forwarder_batches_total", &[&tenant(id)]).await;
        assert!(batches < packets, "{batches} sends for {packets} datagrams");
    }
    relay.stop().await;
}

#[cfg(feature = "tap")]
#[tokio::test]
async fn the_tap_records_forwarded_payloads_and_can_lie_about_the_peer_certificate() {
    let id = "fw-tap";
    let relay = relay_with(id, |_| {}).await;
    remote_help_relay::tap::enable();
    remote_help_relay::tap::substitute_peer_certificate(Role::Sharer, Some([0xEE; 32]));
    let ((helper, to_helper), (mut sharer, to_sharer)) = packet_session(&relay, id).await;
    remote_help_relay::tap::substitute_peer_certificate(Role::Sharer, None);
    assert_eq!(to_sharer.peer_certificate_sha256, [0xEE; 32]);
    assert_eq!(
        to_helper.peer_certificate_sha256,
        certificate_of(Role::Sharer)
    );
    helper
        .forward(to_helper.routing_key, b"the tap sees this payload")
        .await;
    sharer.next_forwarded().await;
    let seen = remote_help_relay::tap::take();
    assert!(
        seen.windows(25).any(|w| w == b"the tap sees this payload"),
        "the tap recorded the forwarded payload"
    );
    relay.stop().await;
}
