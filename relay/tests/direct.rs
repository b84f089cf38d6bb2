//! Direct paths over real QUIC on 127.0.0.1: the relay brokers a pinned peer-to-peer
//! connection between helper and sharer, channels move to it without losing or reordering
//! input, fall back to the relay when it dies, and a `relay_only` tenant never gets one.
//! (Real NATs, in network namespaces: `tests/nat.rs`.)

mod common;

use bytes::Bytes;
use common::{TestRelay, join_and_consent, raise_with_consent, within};
use futures_util::{SinkExt, StreamExt};
use remote_help_proto::ErrorCode;
use remote_help_proto::framing::ControlCodec;
use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
use remote_help_relay::audit::{EventKind, audit_files, read_events};
use remote_help_relay::client::{Client, DirectOutcome, SessionStart, secure};
use remote_help_relay::core::path::Path;
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use tokio_util::codec::{FramedRead, FramedWrite};

async fn direct_client(relay: &TestRelay, role: Role) -> Client {
    let persona = match role {
        Role::Helper => Persona::Helper,
        Role::Sharer => Persona::Sharer,
    };
    let mut options = relay.options(relay.tenant("contoso").token(persona), role);
    options.direct_path = true;
    within(Client::connect(options)).await.unwrap()
}

/// A helper and a sharer in a session started in `mode`, with their `SessionStart`s.
async fn pair(
    mut helper: Client,
    mut sharer: Client,
    mode: Mode,
) -> (Client, Client, SessionStart, SessionStart) {
    let created = within(helper.create_session(mode)).await.unwrap();
    let (helper_start, sharer_start) =
        join_and_consent(&mut helper, &mut sharer, &created.code).await;
    (helper, sharer, helper_start, sharer_start)
}

/// Both with direct paths on, in a full-control session.
async fn direct_pair(relay: &TestRelay) -> (Client, Client, SessionStart, SessionStart) {
    let helper = direct_client(relay, Role::Helper).await;
    let sharer = direct_client(relay, Role::Sharer).await;
    pair(helper, sharer, Mode::FullControl).await
}

/// Waits for both sides' direct attempt; both must have gone direct.
async fn both_direct(helper: &Client, sharer: &Client) {
    let (a, b) =
        within(async { tokio::join!(helper.direct_outcome(), sharer.direct_outcome()) }).await;
    assert!(matches!(a, DirectOutcome::Direct { .. }), "helper: {a:?}");
    assert!(matches!(b, DirectOutcome::Direct { .. }), "sharer: {b:?}");
}

/// Sends `message` past the SDK on an authenticated control stream and returns the
/// relay's answer to it, then its answer to a `Ping` (proving the connection still serves).
async fn raw_exchange(client: Client, message: Out) -> (In, In) {
    let (_endpoint, _connection, send, recv) = client.into_raw_parts().unwrap();
    let mut send = FramedWrite::new(
        send,
        ControlCodec::<v1::RelayToClient, v1::ClientToRelay>::new(1 << 20),
    );
    let mut recv = FramedRead::new(
        recv,
        ControlCodec::<v1::RelayToClient, v1::ClientToRelay>::new(1 << 20),
    );
    let mut next = async || within(recv.next()).await.unwrap().unwrap().msg.unwrap();
    within(send.send(v1::ClientToRelay { msg: Some(message) }))
        .await
        .unwrap();
    let answer = next().await;
    within(send.send(v1::ClientToRelay {
        msg: Some(Out::Ping(v1::Ping { nonce: 7 })),
    }))
    .await
    .unwrap();
    (answer, next().await)
}

fn numbered(i: u32) -> Bytes {
    let mut frame = i.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xab; 96]);
    Bytes::from(frame)
}

fn number_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[..4].try_into().unwrap())
}

#[tokio::test]
async fn input_moves_to_the_direct_path_without_loss_or_reordering() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (mut helper, mut sharer, _, _) = direct_pair(&relay).await;
    // Input starts on the relay, before the direct path is up.
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    let (_, mut input_in) = within(async {
        input.send(numbered(0)).await.unwrap();
        sharer.accept_unsealed_channel().await
    })
    .await
    .unwrap();
    for i in 1..100 {
        within(input.send(numbered(i))).await.unwrap();
    }
    let (helper_outcome, sharer_outcome) =
        within(async { tokio::join!(helper.direct_outcome(), sharer.direct_outcome()) }).await;
    let DirectOutcome::Direct { peer, .. } = helper_outcome else {
        panic!("helper: {helper_outcome:?}");
    };
    assert_eq!(peer.to_string(), sharer.observed_addr());
    assert!(
        matches!(sharer_outcome, DirectOutcome::Direct { .. }),
        "{sharer_outcome:?}"
    );
    assert_eq!(helper.path(), Path::Direct);
    within(relay.handle.wait_for(|s| s.direct_sessions == 1)).await;
    // The rest goes direct; the receiver sees one ordered sequence.
    for i in 100..1000 {
        within(input.send(numbered(i))).await.unwrap();
    }
    for expected in 0..1000 {
        let frame = within(input_in.recv()).await.unwrap().unwrap();
        assert_eq!(number_of(&frame), expected);
    }
    // Screen datagrams go direct too.
    within(async {
        loop {
            sharer
                .unsealed_data()
                .unwrap()
                .send_datagram(Bytes::from_static(b"frame"))
                .unwrap();
            let got = tokio::time::timeout(
                std::time::Duration::from_millis(50),
                helper.unsealed_data().unwrap().read_datagram(),
            )
            .await;
            if let Ok(got) = got {
                assert_eq!(&got.unwrap()[..], b"frame");
                break;
            }
        }
    })
    .await;
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
    assert_eq!(helper.path(), Path::Relayed);

    // The relay carried only what went before the move: 100 frames of 100 bytes with their
    // length prefixes, and the move marker (an empty frame: its prefix).
    let events = read_events(&audit_files(&relay.audit_dir()));
    let ended = events
        .iter()
        .find(|e| e.event == Some(EventKind::SessionEnded))
        .unwrap();
    let relayed_input = ended.bytes_helper_to_sharer.unwrap();
    assert_eq!(relayed_input, 100 * (4 + 100) + 4, "{ended:?}");
    assert_eq!(ended.path.as_deref(), Some("direct"));
    let changed: Vec<_> = events
        .iter()
        .filter(|e| e.event == Some(EventKind::PathChanged))
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].path.as_deref(), Some("direct"));
    assert!(
        changed[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("reached the peer at")
    );
    let rows = remote_help_relay::report::sessions(&events, &Default::default());
    assert!(rows.len() == 1 && rows[0].went_direct, "{rows:?}");
    assert_eq!(
        events
            .iter()
            .find(|e| e.event == Some(EventKind::SessionStarted))
            .unwrap()
            .path
            .as_deref(),
        Some("relayed")
    );
    helper.close().await;
    sharer.close().await;
    relay.stop().await;
}

/// A sealed channel that moves from the relay to the direct path keeps its counter: the
/// continuation carries on where the relayed stream stopped (PROTOCOL.md §8.7.3), so the
/// receiver's opener takes one ordered sequence and no nonce is used twice.
#[tokio::test]
async fn a_sealed_channel_moves_to_the_direct_path_and_keeps_its_counter() {
    let relay = TestRelay::start().await;
    let (helper, sharer, helper_start, sharer_start) = direct_pair(&relay).await;
    let (h, mut s) = within(async {
        let (h, s) = tokio::join!(
            secure::establish(&helper, &helper_start, Role::Helper),
            secure::establish(&sharer, &sharer_start, Role::Sharer)
        );
        (h.unwrap(), s.unwrap())
    })
    .await;
    // Input starts on the relay, before the direct path is up.
    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    within(input.send(&0u32.to_be_bytes())).await.unwrap();
    let (_, mut input_in) = within(s.accept_channel()).await.unwrap();
    for i in 1..100u32 {
        within(input.send(&i.to_be_bytes())).await.unwrap();
    }
    let (helper_outcome, sharer_outcome) =
        within(async { tokio::join!(helper.direct_outcome(), sharer.direct_outcome()) }).await;
    assert!(
        matches!(helper_outcome, DirectOutcome::Direct { .. }),
        "{helper_outcome:?}"
    );
    assert!(
        matches!(sharer_outcome, DirectOutcome::Direct { .. }),
        "{sharer_outcome:?}"
    );
    within(relay.handle.wait_for(|s| s.direct_sessions == 1)).await;
    for i in 100..300u32 {
        within(input.send(&i.to_be_bytes())).await.unwrap();
    }
    within(input.finish()).await.unwrap();
    for i in 0..300u32 {
        let frame = within(input_in.recv()).await.unwrap().unwrap();
        assert_eq!(frame, i.to_be_bytes(), "sealed frame {i}");
    }
    assert_eq!(within(input_in.recv()).await.unwrap(), None, "sealed end");
    let mut helper = helper;
    let mut sharer = sharer;
    within(helper.end_session()).await.unwrap();
    within(sharer.wait_for_end()).await;
    // The relay carried the key frame and at least the first sealed frame (each with its
    // 4-byte length; a sealed frame: 8-byte counter, 4-byte payload, type byte, 16-byte
    // tag), and not the rest: the channel moved mid-stream.
    let events = read_events(&audit_files(&relay.audit_dir()));
    let ended = events
        .iter()
        .find(|e| e.event == Some(EventKind::SessionEnded))
        .unwrap();
    let relayed = ended.bytes_helper_to_sharer.unwrap();
    let (key_frame, sealed_frame) = (4 + 32, 4 + 8 + 4 + 1 + 16);
    assert!(
        relayed >= key_frame + sealed_frame && relayed < key_frame + 300 * sealed_frame,
        "{ended:?}"
    );
    assert_eq!(ended.path.as_deref(), Some("direct"));
    helper.close().await;
    sharer.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn channels_fall_back_to_the_relay_when_the_direct_path_dies() {
    let relay = TestRelay::start().await;
    let (mut helper, mut sharer, helper_start, sharer_start) = direct_pair(&relay).await;
    both_direct(&helper, &sharer).await;
    within(relay.handle.wait_for(|s| s.direct_sessions == 1)).await;
    // End to end sealed, over the direct path.
    let (helper_secure, mut sharer_secure) = within(async {
        let h = secure::establish(&helper, &helper_start, Role::Helper);
        let s = secure::establish(&sharer, &sharer_start, Role::Sharer);
        let (h, s) = tokio::join!(h, s);
        (h.unwrap(), s.unwrap())
    })
    .await;
    let mut input = within(helper_secure.open_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(b"first")).await.unwrap();
    let (channel, mut input_in) = within(sharer_secure.accept_channel()).await.unwrap();
    assert_eq!(channel, Channel::Input);
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"first"
    );

    // The direct connection dies (as when a NAT drops its mapping).
    let direct = helper.direct_connection().expect("direct path up");
    direct.close(0u32.into(), b"test: path lost");
    let lost = within(helper.wait_for_path(Path::Relayed)).await;
    assert!(matches!(lost, DirectOutcome::Relayed(_)), "{lost:?}");
    assert_eq!(helper.path(), Path::Relayed);
    within(relay.handle.wait_for(|s| s.direct_sessions == 0)).await;
    for i in 0..50u32 {
        within(input.send(&i.to_be_bytes())).await.unwrap();
    }
    for i in 0..50u32 {
        let frame = within(input_in.recv()).await.unwrap().unwrap();
        assert_eq!(&frame[..], &i.to_be_bytes(), "sealed frame {i}");
    }
    within(helper.end_session()).await.unwrap();
    within(sharer.wait_for_end()).await;
    let paths: Vec<String> = read_events(&audit_files(&relay.audit_dir()))
        .into_iter()
        .filter(|e| e.event == Some(EventKind::PathChanged))
        .filter_map(|e| e.path)
        .collect();
    assert_eq!(paths, ["direct", "relayed"]);
    helper.close().await;
    sharer.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_relay_only_tenant_gets_no_direct_path() {
    let relay = TestRelay::builder()
        .plaintext_clients()
        .policy("contoso", |p| p.relay_only = true)
        .start()
        .await;
    let (helper, sharer, _, _) = direct_pair(&relay).await;
    assert_eq!(
        within(helper.direct_outcome()).await,
        DirectOutcome::NotOffered
    );
    assert_eq!(
        within(sharer.direct_outcome()).await,
        DirectOutcome::NotOffered
    );
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"click")))
        .await
        .unwrap();
    let (_, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"click"
    );
    assert_eq!(helper.path(), Path::Relayed);
    helper.close().await;
    sharer.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn one_side_without_candidates_means_no_offer() {
    let relay = TestRelay::start().await;
    let helper = direct_client(&relay, Role::Helper).await;
    let sharer = relay.sharer("contoso").await;
    let (helper, sharer, _, _) = pair(helper, sharer, Mode::FullControl).await;
    assert_eq!(
        within(helper.direct_outcome()).await,
        DirectOutcome::NotOffered
    );
    helper.close().await;
    sharer.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_reports_a_migrated_address() {
    let relay = TestRelay::start().await;
    let mut helper = direct_client(&relay, Role::Helper).await;
    let before = helper.observed_addr().to_string();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let new_port = socket.local_addr().unwrap().port();
    helper.rebind(socket).unwrap();
    // The next message the relay reads from the moved client triggers the notice, which
    // the SDK takes in before the Pong.
    within(helper.ping()).await.unwrap();
    let after = helper.observed_addr().to_string();
    assert_ne!(after, before);
    assert!(after.ends_with(&format!(":{new_port}")), "{after}");
    helper.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn bad_candidates_and_unexpected_results_are_refused_with_reasons() {
    let relay = TestRelay::start().await;
    let cases: Vec<(Out, &str)> = vec![
        (
            Out::OfferCandidates(v1::OfferCandidates {
                addresses: vec!["not-an-address".into()],
                certificate_sha256: vec![0; 32],
            }),
            "not an ip:port",
        ),
        (
            Out::OfferCandidates(v1::OfferCandidates {
                addresses: vec!["192.0.2.1:4000".into()],
                certificate_sha256: vec![0; 5],
            }),
            "32 bytes",
        ),
        (
            Out::OfferCandidates(v1::OfferCandidates {
                addresses: vec!["192.0.2.1:4000".into(); 9],
                certificate_sha256: vec![0; 32],
            }),
            "at most 8",
        ),
    ];
    // Addresses a peer must never be told to send to (PROTOCOL.md §11b, 1).
    let cases: Vec<(Out, &str)> = cases
        .into_iter()
        .chain(
            [
                "0.0.0.0:4000",
                "[::]:4000",
                "192.0.2.1:0",
                "127.0.0.1:4000",
                "127.8.9.10:4000",
                "[::1]:4000",
                "[::ffff:127.0.0.1]:4000",
                "169.254.1.2:4000",
                "[fe80::1]:4000",
                "224.0.0.1:4000",
                "[ff02::1]:4000",
                "255.255.255.255:4000",
            ]
            .into_iter()
            .map(|address| {
                (
                    Out::OfferCandidates(v1::OfferCandidates {
                        addresses: vec!["192.0.2.1:4000".into(), address.into()],
                        certificate_sha256: vec![0; 32],
                    }),
                    "addresses[1]",
                )
            }),
        )
        .collect();
    for (message, needle) in cases {
        let helper = relay.helper("contoso").await;
        let (answer, pong) = raw_exchange(helper, message).await;
        let In::Error(refused) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(refused.code, ErrorCode::ProtocolViolation as i32);
        assert!(!refused.fatal, "{refused:?}");
        assert!(refused.message.contains(needle), "{}", refused.message);
        // Not fatal: the connection still serves.
        assert!(matches!(pong, In::Pong(_)), "{pong:?}");
    }
    // A result in an active session that had no offer is a violation, also not fatal.
    let helper = relay.helper("contoso").await;
    let sharer = relay.sharer("contoso").await;
    let (helper, sharer, helper_start, _) = pair(helper, sharer, Mode::FullControl).await;
    let (answer, pong) = raw_exchange(
        helper,
        Out::DirectPathResult(v1::DirectPathResult {
            session_id: helper_start.session_id,
            established: true,
            peer_address: String::new(),
        }),
    )
    .await;
    let In::Error(refused) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(refused.code, ErrorCode::ProtocolViolation as i32);
    assert!(!refused.fatal, "{refused:?}");
    assert!(
        refused.message.contains("without a DirectPathOffer"),
        "{}",
        refused.message
    );
    assert!(matches!(pong, In::Pong(_)), "{pong:?}");
    sharer.close().await;
    relay.stop().await;
}

/// A data frame as the SDK writes it: length prefix and bytes.
fn raw_frame(bytes: &[u8]) -> Vec<u8> {
    let mut frame = (bytes.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(bytes);
    frame
}

/// A stream opened past the SDK on `connection`: `channel`'s tag, then one frame.
async fn rogue_stream(
    connection: &quinn::Connection,
    channel: Channel,
    frame: &[u8],
) -> quinn::SendStream {
    let mut stream = within(connection.open_uni()).await.unwrap();
    within(stream.write_all(&[channel.to_wire() as u8]))
        .await
        .unwrap();
    within(stream.write_all(&raw_frame(frame))).await.unwrap();
    stream
}

#[tokio::test]
async fn on_a_direct_path_the_sharer_enforces_the_mode() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (mut helper, mut sharer, _, _) = direct_pair(&relay).await;
    both_direct(&helper, &sharer).await;
    // A helper that goes past its SDK on the direct connection (no relay in the middle).
    let direct = helper.direct_connection().unwrap();
    let mut rogue = rogue_stream(&direct, Channel::Input, b"click").await;
    let (channel, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(channel, Channel::Input);
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"click"
    );

    // Down to view only: the relay tells both; the honest SDK refuses to send input, and
    // the sharer's SDK refuses what the rogue stream still carries, and new input streams.
    assert_eq!(
        within(helper.request_mode(Mode::ViewOnly, ""))
            .await
            .unwrap(),
        Mode::ViewOnly
    );
    assert_eq!(
        within(sharer.wait_for_mode_change()).await.unwrap(),
        Mode::ViewOnly
    );
    within(rogue.write_all(&raw_frame(b"sneaky click")))
        .await
        .unwrap();
    let refused = within(input_in.recv()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::PermissionDenied),
        "{refused:?}"
    );
    assert_eq!(
        within(rogue.stopped()).await.unwrap(),
        Some(ErrorCode::PermissionDenied.to_quic().into())
    );
    let second = rogue_stream(&direct, Channel::Input, b"click").await;
    // It is handed over as a channel, but none of its frames gets through.
    let (_, mut second_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    let refused = within(second_in.recv()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::PermissionDenied),
        "{refused:?}"
    );
    assert_eq!(
        within(second.stopped()).await.unwrap(),
        Some(ErrorCode::PermissionDenied.to_quic().into())
    );
    // A channel the peer may never send on (screen from the helper) is refused on arrival.
    let third = rogue_stream(&direct, Channel::Screen, b"fake screen").await;
    assert_eq!(
        within(third.stopped()).await.unwrap(),
        Some(ErrorCode::ProtocolViolation.to_quic().into())
    );
    let refused = within(helper.open_unsealed_channel(Channel::Input)).await;
    // Opened on the relay (which refuses input in view-only mode) or refused at once.
    if let Ok(mut input) = refused {
        let sent = within(input.send(Bytes::from_static(b"click"))).await;
        assert!(sent.is_err(), "input sent in view-only mode");
    }
    helper.close().await;
    sharer.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_continuation_without_a_direct_path_offer_is_refused() {
    let relay = TestRelay::start().await;
    let (helper, sharer) = relay.paired("contoso", Mode::FullControl).await;
    let connection = helper.connection().clone();
    let mut stream = within(connection.open_uni()).await.unwrap();
    within(stream.write_all(&[Channel::Input.to_wire() as u8 | 0x80]))
        .await
        .unwrap();
    let closed = within(connection.closed()).await;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == ErrorCode::ProtocolViolation.to_quic().into()),
        "{closed:?}"
    );
    sharer.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_raised_mode_lets_input_flow_on_the_direct_path() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let helper = direct_client(&relay, Role::Helper).await;
    let sharer = direct_client(&relay, Role::Sharer).await;
    let (mut helper, mut sharer, _, _) = pair(helper, sharer, Mode::ViewOnly).await;
    both_direct(&helper, &sharer).await;
    raise_with_consent(&mut helper, &mut sharer, Mode::FullControl, "needs control").await;
    // The helper's input goes direct at once; the sharer's SDK, which read the same
    // ModeChanged, lets it through.
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"click")))
        .await
        .unwrap();
    let (channel, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(channel, Channel::Input);
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"click"
    );
    assert_eq!(helper.path(), Path::Direct);
    helper.close().await;
    sharer.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_receiver_cancelled_mid_move_loses_nothing() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (helper, sharer, _, _) = direct_pair(&relay).await;
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(numbered(0))).await.unwrap();
    let (_, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    let sender = tokio::spawn(async move {
        for i in 1..400 {
            input.send(numbered(i)).await.unwrap();
            if i == 50 {
                // Move mid-stream, once the path is up.
                helper.wait_for_path(Path::Direct).await;
            }
        }
        (helper, input)
    });
    // The application polls with a short timer, so `recv` is dropped again and again,
    // including while a frame waits for its check or the channel waits for its continuation.
    let mut expected = 0;
    within(async {
        while expected < 400 {
            tokio::select! {
                frame = input_in.recv() => {
                    assert_eq!(number_of(&frame.unwrap().unwrap()), expected);
                    expected += 1;
                }
                () = tokio::time::sleep(std::time::Duration::from_micros(50)) => {}
            }
        }
    })
    .await;
    let (helper, _input) = within(sender).await.unwrap();
    assert_eq!(helper.path(), Path::Direct);
    helper.close().await;
    sharer.close().await;
    relay.stop().await;
}
