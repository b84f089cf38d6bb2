//! The packet path (PROTOCOL.md §8a) over a real relay on loopback: native clients carry
//! the session as their own QUIC connection through the relay's packet forwarder, with
//! one verification code from its TLS exporter, input in order and complete, backpressure
//! end to end (a slow helper holds back only its own sharer), and the documented switch to
//! the stream path.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{TestRelay, join_and_consent, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::client::secure::{self, SessionChannels};
use remote_help_relay::client::{Client, ClientError};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;

/// A helper and a sharer of `contoso` in a started session, and both sides' channels.
async fn session(
    relay: &TestRelay,
    mode: Mode,
) -> (Client, SessionChannels, Client, SessionChannels) {
    let (mut helper, mut sharer) = (relay.helper("contoso").await, relay.sharer("contoso").await);
    let created = within(helper.create_session(mode)).await.unwrap();
    let (helper_start, sharer_start) =
        join_and_consent(&mut helper, &mut sharer, &created.code).await;
    assert!(helper_start.packet_path && sharer_start.packet_path);
    let (h, s) = within(async {
        tokio::join!(
            secure::channels(&helper, &helper_start, Role::Helper),
            secure::channels(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    (helper, h.unwrap(), sharer, s.unwrap())
}

fn packet_relay() -> common::TestRelayBuilder {
    TestRelay::builder().packet_path_clients()
}

#[tokio::test]
async fn a_native_session_runs_on_the_peer_connection_with_one_code_and_ordered_input() {
    let relay = packet_relay().start().await;
    let (_helper, mut h, _sharer, mut s) = session(&relay, Mode::FullControl).await;
    assert!(matches!(h, SessionChannels::Peer(_)), "{h:?}");
    assert!(matches!(s, SessionChannels::Peer(_)), "{s:?}");
    let code = h.verification_code().unwrap().to_string();
    assert_eq!(Some(code.as_str()), s.verification_code());
    assert_eq!(code.len(), 7, "six digits shown as 123 456: {code}");

    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    let mut screen = within(s.open_channel(Channel::Screen)).await.unwrap();
    let mut chat = within(s.open_channel(Channel::Chat)).await.unwrap();
    const EVENTS: u32 = 5_000;
    let sending = async {
        for i in 0..EVENTS {
            input.send(&i.to_be_bytes()).await.unwrap();
        }
        input.finish().await.unwrap();
    };
    let receiving = async {
        let (channel, mut events) = s.accept_channel().await.unwrap();
        assert_eq!(channel, Channel::Input);
        for i in 0..EVENTS {
            let event = events.recv().await.unwrap().unwrap();
            assert_eq!(
                event[..],
                i.to_be_bytes(),
                "input event {i} out of order or lost"
            );
        }
        assert_eq!(events.recv().await.unwrap(), None);
    };
    within(async { tokio::join!(sending, receiving) }).await;

    let frame: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    within(screen.send(&frame)).await.unwrap();
    within(chat.send(b"hello over the packet path"))
        .await
        .unwrap();
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let (channel, rx) = within(h.accept_channel()).await.unwrap();
        got.insert(channel, rx);
    }
    let received = within(got.get_mut(&Channel::Screen).unwrap().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received, frame);
    let text = within(got.get_mut(&Channel::Chat).unwrap().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, b"hello over the packet path"[..]);

    // Lossy screen datagrams go the same way.
    s.send_datagram(&[7u8; 600]).unwrap();
    assert_eq!(within(h.read_datagram()).await.unwrap(), vec![7u8; 600]);
    relay.stop().await;
}

/// The relay forwards the peer connection's packets and nothing it could read: the content
/// never appears in what it forwarded.
#[cfg(feature = "tap")]
#[tokio::test]
async fn the_relay_forwards_only_ciphertext() {
    use remote_help_relay::tap;
    let relay = packet_relay().start().await;
    let (_helper, h, _sharer, s) = session(&relay, Mode::FullControl).await;
    tap::enable();
    let marker = b"PLAINTEXT-MARKER-the relay must never see this".repeat(200);
    let mut screen = within(s.open_channel(Channel::Screen)).await.unwrap();
    within(screen.send(&marker)).await.unwrap();
    let mut h = h;
    let (_, mut rx) = within(h.accept_channel()).await.unwrap();
    assert_eq!(within(rx.recv()).await.unwrap().unwrap(), marker);
    let seen = tap::take();
    assert!(
        seen.len() >= marker.len(),
        "the forwarder carried the frame ({} bytes recorded)",
        seen.len()
    );
    assert!(
        !seen.windows(16).any(|w| w == &marker[..16]),
        "plaintext reached the relay"
    );
    relay.stop().await;
}

/// The documented switch: a client with `packet_path` off, or a relay with the forwarder
/// off, gets the stream path, sealed by the SDK as before.
#[tokio::test]
async fn the_stream_path_when_a_party_or_the_relay_says_so() {
    let relay = packet_relay().start().await;
    let tenant = relay.tenant("contoso");
    let mut options = relay.options(tenant.token(Persona::Helper), Role::Helper);
    options.packet_path = false;
    let mut helper = within(Client::connect(options)).await.unwrap();
    let mut sharer = relay.sharer("contoso").await;
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let (helper_start, sharer_start) =
        join_and_consent(&mut helper, &mut sharer, &created.code).await;
    assert!(!helper_start.packet_path && !sharer_start.packet_path);
    let (h, s) = within(async {
        tokio::join!(
            secure::channels(&helper, &helper_start, Role::Helper),
            secure::channels(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    let (h, mut s) = (h.unwrap(), s.unwrap());
    assert!(matches!(h, SessionChannels::Protected(_)));
    assert_eq!(h.verification_code(), s.verification_code());
    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    within(input.send(b"click")).await.unwrap();
    let (_, mut rx) = within(s.accept_channel()).await.unwrap();
    assert_eq!(within(rx.recv()).await.unwrap().unwrap(), b"click"[..]);
    relay.stop().await;

    let relay = packet_relay()
        .config(|c| c.forwarder.enabled = false)
        .start()
        .await;
    let (mut helper, mut sharer) = (relay.helper("contoso").await, relay.sharer("contoso").await);
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let (helper_start, _) = join_and_consent(&mut helper, &mut sharer, &created.code).await;
    assert!(!helper_start.packet_path, "forwarder off: the stream path");
    relay.stop().await;
}

/// On the packet path no relay sees the channels, so the endpoints hold the mode: a helper
/// in a view-only session cannot send input.
#[tokio::test]
async fn view_only_holds_at_the_endpoints() {
    let relay = packet_relay().start().await;
    let (_helper, h, _sharer, _s) = session(&relay, Mode::ViewOnly).await;
    let refused = match within(h.open_channel(Channel::Input)).await {
        Ok(mut input) => within(input.send(b"click")).await.err(),
        Err(e) => Some(e),
    };
    assert!(
        matches!(
            refused,
            Some(ClientError::Refused {
                code: ErrorCode::PermissionDenied,
                ..
            })
        ),
        "{refused:?}"
    );
    relay.stop().await;
}

/// Backpressure end to end: a helper that reads nothing holds back its own sharer (flow
/// control of the peer connection) while another session on the same relay moves 16 MB.
#[tokio::test]
async fn a_slow_helper_holds_back_only_its_own_sharer() {
    let relay = packet_relay().start().await;
    let (_slow_helper, _slow_h, _slow_sharer, slow_s) = session(&relay, Mode::FullControl).await;
    let (_helper, mut h, _sharer, s) = session(&relay, Mode::FullControl).await;

    const FRAME: usize = 64 * 1024;
    let stalled = Arc::new(AtomicU64::new(0));
    let mut slow_screen = within(slow_s.open_channel(Channel::Screen)).await.unwrap();
    let sent = stalled.clone();
    let stalled_sender = tokio::spawn(async move {
        let frame = vec![1u8; FRAME];
        loop {
            if slow_screen.send(&frame).await.is_err() {
                return;
            }
            sent.fetch_add(FRAME as u64, Ordering::SeqCst);
        }
    });

    const TOTAL: usize = 16 * 1024 * 1024;
    let mut screen = within(s.open_channel(Channel::Screen)).await.unwrap();
    let moving = async {
        let frame = vec![2u8; FRAME];
        for _ in 0..TOTAL / FRAME {
            screen.send(&frame).await.unwrap();
        }
    };
    let receiving = async {
        let (_, mut rx) = h.accept_channel().await.unwrap();
        let mut got = 0;
        while got < TOTAL {
            got += rx.recv().await.unwrap().unwrap().len();
        }
        got
    };
    let (_, got) = within(async { tokio::join!(moving, receiving) }).await;
    assert_eq!(got, TOTAL);
    // The stalled sharer got no further than the helper's stream window plus its own send
    // buffer (1 MiB + 4 MiB by the SDK's defaults), whatever the timing.
    let stalled_at = stalled.load(Ordering::SeqCst);
    assert!(
        stalled_at <= (5 << 20) + FRAME as u64,
        "the unread session ran {stalled_at} bytes ahead"
    );
    stalled_sender.abort();
    relay.stop().await;
}

/// The session's end ends its peer connection and its route.
#[tokio::test]
async fn ending_the_session_closes_the_peer_connection() {
    let relay = packet_relay().start().await;
    let (mut helper, h, mut sharer, s) = session(&relay, Mode::FullControl).await;
    let (SessionChannels::Peer(h), SessionChannels::Peer(s)) = (h, s) else {
        panic!("not on the packet path");
    };
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
    within(h.connection().closed()).await;
    within(s.connection().closed()).await;
    drop((helper, sharer));
    relay.wait_until_empty().await;
    relay.stop().await;
}

/// An unattended session (a device agent, no consent prompt) takes the packet path too.
#[tokio::test]
async fn an_unattended_session_runs_on_the_packet_path() {
    use common::with_claims;
    let relay = packet_relay().start().await;
    let contoso = relay.tenant("contoso");
    let agent_token = contoso.sign(&with_claims(
        contoso.spec(Persona::Sharer),
        serde_json::json!({"kind": "device", "licenses": [], "device_id": "kiosk-p1",
               "device_name": "KIOSK-P1", "platform": "android-dedicated", "manufacturer": "Samsung"}),
    ));
    let mut agent = relay.connect(agent_token, Role::Sharer).await.unwrap();
    within(agent.register_device()).await.unwrap();
    let mut helper = relay.helper("contoso").await;
    let (helper_start, agent_start) = within(async {
        tokio::join!(
            helper.connect_unattended("kiosk-p1", "CHG-9"),
            agent.wait_for_start()
        )
    })
    .await;
    let (helper_start, agent_start) = (helper_start.unwrap(), agent_start.unwrap());
    assert!(helper_start.packet_path && agent_start.packet_path);
    let (h, s) = within(async {
        tokio::join!(
            secure::channels(&helper, &helper_start, Role::Helper),
            secure::channels(&agent, &agent_start, Role::Sharer)
        )
    })
    .await;
    let (h, mut s) = (h.unwrap(), s.unwrap());
    assert_eq!(h.verification_code(), s.verification_code());
    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    within(input.send(b"unattended click")).await.unwrap();
    let (_, mut rx) = within(s.accept_channel()).await.unwrap();
    assert_eq!(
        within(rx.recv()).await.unwrap().unwrap(),
        b"unattended click"[..]
    );
    relay.stop().await;
}

/// Clients on dual-stack IPv6 sockets reaching an IPv4 relay (the socket reports the relay
/// as an IPv4-mapped address): the forwarded datagrams are still recognised.
#[tokio::test]
async fn dual_stack_clients_reach_an_ipv4_relay_on_the_packet_path() {
    let relay = packet_relay().start().await;
    let contoso = relay.tenant("contoso");
    let dual_stack = || {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        socket.set_only_v6(false).unwrap();
        socket
            .bind(&"[::]:0".parse::<std::net::SocketAddr>().unwrap().into())
            .unwrap();
        std::net::UdpSocket::from(socket)
    };
    let mut helper = within(Client::connect_on(
        relay.options(contoso.token(Persona::Helper), Role::Helper),
        dual_stack(),
    ))
    .await
    .unwrap();
    let mut sharer = within(Client::connect_on(
        relay.options(contoso.token(Persona::Sharer), Role::Sharer),
        dual_stack(),
    ))
    .await
    .unwrap();
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let (helper_start, sharer_start) =
        join_and_consent(&mut helper, &mut sharer, &created.code).await;
    assert!(helper_start.packet_path);
    let (h, s) = within(async {
        tokio::join!(
            secure::channels(&helper, &helper_start, Role::Helper),
            secure::channels(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    let (h, mut s) = (h.unwrap(), s.unwrap());
    assert_eq!(h.verification_code(), s.verification_code());
    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    within(input.send(b"over a mapped address")).await.unwrap();
    let (_, mut rx) = within(s.accept_channel()).await.unwrap();
    assert_eq!(
        within(rx.recv()).await.unwrap().unwrap(),
        b"over a mapped address"[..]
    );
    relay.stop().await;
}
