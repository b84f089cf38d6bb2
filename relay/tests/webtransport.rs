//! WebTransport on the relay's own port (PROTOCOL.md "WebTransport access"): a party that
//! comes as a browser does (ALPN `h3`, extended CONNECT to `/remote-help/1`) runs the same
//! protocol through the same code as a native client: the same session, channels, tag
//! bytes, datagrams, refusals, metrics and audit events. Real relay, real QUIC on
//! 127.0.0.1, real tokens; the WebTransport side is `web_transport_quinn`'s client.

mod common;

use bytes::Bytes;
use common::webtransport::{self, PATH, WtClient};
use common::{TestRelay, metrics, within};
use futures_util::{SinkExt, StreamExt};
use remote_help_proto::ErrorCode;
use remote_help_proto::framing::channel_tag;
use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
use remote_help_relay::audit::{EventKind, audit_files, read_events};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;

fn sum(values: &std::collections::HashMap<String, f64>, name: &str, label: &str) -> f64 {
    values
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn a_webtransport_helper_and_a_native_sharer_hold_a_session_on_one_port() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let admin = relay.handle.admin_addr().unwrap();
    let before = metrics(admin).await;

    let token = relay.tenant("contoso").token(Persona::Helper);
    let mut helper = WtClient::connect(&relay, token, Role::Helper)
        .await
        .expect("the relay welcomes a WebTransport helper");
    assert!(helper.welcome.you.is_some(), "Welcome names the helper");

    helper
        .send(Out::CreateSession(v1::CreateSession {
            mode: v1::Mode::FullControl as i32,
            reason: String::new(),
        }))
        .await;
    let created = match helper.recv().await.unwrap() {
        In::SessionCreated(c) => c,
        other => panic!("expected SessionCreated, got {other:?}"),
    };

    // A native sharer joins on the same port and consents.
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&created.code)).await.unwrap();
    match helper.recv().await.unwrap() {
        In::PeerJoined(_) => {}
        other => panic!("expected PeerJoined, got {other:?}"),
    }
    let sharer_start = within(sharer.accept()).await.unwrap();
    let started = match helper.recv().await.unwrap() {
        In::SessionStarted(s) => s,
        other => panic!("expected SessionStarted, got {other:?}"),
    };
    assert_eq!(started.session_id, sharer_start.session_id);
    assert_eq!(started.mode, v1::Mode::FullControl as i32);
    assert!(
        started.max_datagram_size > 0,
        "datagrams are offered to a WebTransport helper"
    );

    // Screen, sharer → WebTransport helper: tag byte, then the sharer's frames unchanged.
    let mut screen = within(sharer.open_unsealed_channel(Channel::Screen))
        .await
        .unwrap();
    within(screen.send(Bytes::from(vec![7u8; 200_000])))
        .await
        .unwrap();
    within(screen.send(Bytes::from_static(b"frame 2")))
        .await
        .unwrap();
    let (tag, mut screen_in) = helper.accept_channel().await;
    assert_eq!(tag, channel_tag(v1::Channel::Screen));
    let first = within(screen_in.next()).await.unwrap().unwrap();
    assert_eq!(&first[..], &vec![7u8; 200_000][..]);
    let second = within(screen_in.next()).await.unwrap().unwrap();
    assert_eq!(&second[..], b"frame 2");

    // Input and chat, WebTransport helper → native sharer, in order.
    let mut input = helper.open_channel(channel_tag(v1::Channel::Input)).await;
    for i in 0..100u32 {
        within(input.send(Bytes::copy_from_slice(&i.to_be_bytes())))
            .await
            .unwrap();
    }
    let mut chat = helper.open_channel(channel_tag(v1::Channel::Chat)).await;
    within(chat.send(Bytes::from_static(b"hello from the browser")))
        .await
        .unwrap();
    let mut sharer_side = std::collections::HashMap::new();
    for _ in 0..2 {
        let (channel, receiver) = within(sharer.accept_unsealed_channel()).await.unwrap();
        sharer_side.insert(channel, receiver);
    }
    let input_in = sharer_side.get_mut(&Channel::Input).expect("input channel");
    for i in 0..100u32 {
        let event = within(input_in.recv()).await.unwrap().unwrap();
        assert_eq!(&event[..], &i.to_be_bytes(), "input event {i} out of order");
    }
    let said = within(sharer_side.get_mut(&Channel::Chat).unwrap().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&said[..], b"hello from the browser");

    // A screen datagram reaches the WebTransport helper as the same bytes.
    let datagrams = sharer.unsealed_data().unwrap();
    let payload = Bytes::from_static(b"lossy screen frame");
    let received = within(async {
        // Datagrams may be lost even on loopback: send until one arrives (bounded).
        loop {
            datagrams.send_datagram(payload.clone()).unwrap();
            if let Ok(Ok(d)) = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                helper.session.read_datagram(),
            )
            .await
            {
                break d;
            }
        }
    })
    .await;
    assert_eq!(received, payload);

    // The WebTransport helper ends the session; the native sharer hears PEER_ENDED.
    helper.send(Out::EndSession(v1::EndSession {})).await;
    match helper.recv().await.unwrap() {
        In::SessionEnded(ended) => {
            assert_eq!(ended.session_id, started.session_id);
            assert_eq!(ended.reason, ErrorCode::EndedByClient as i32);
        }
        other => panic!("expected SessionEnded, got {other:?}"),
    }
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);

    // The same metrics and audit events as a native session.
    let after = metrics(admin).await;
    for (name, label) in [
        ("relay_sessions_started_total", "contoso"),
        ("relay_forwarded_bytes_total", "channel=\"screen\""),
        ("relay_forwarded_bytes_total", "channel=\"input\""),
        ("relay_forwarded_bytes_total", "channel=\"chat\""),
        ("relay_forwarded_bytes_total", "channel=\"screen_datagram\""),
    ] {
        assert!(
            sum(&after, name, label) > sum(&before, name, label),
            "{name} {label} moved"
        );
    }
    let events = read_events(&audit_files(&relay.audit_dir()));
    let of_session = |kind: EventKind| {
        events
            .iter()
            .filter(|e| e.event == Some(kind) && e.session_id == started.session_id)
            .count()
    };
    assert_eq!(of_session(EventKind::SessionStarted), 1);
    assert_eq!(of_session(EventKind::SessionEnded), 1);
    drop(helper);
    sharer.close().await;
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_webtransport_sharer_from_another_tenant_is_refused_cross_tenant() {
    let relay = TestRelay::builder()
        .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
        .tenant("fabrikam", TokenSigner::generate_es256("f1").unwrap())
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();

    let token = relay.tenant("fabrikam").token(Persona::Sharer);
    let mut intruder = WtClient::connect(&relay, token, Role::Sharer)
        .await
        .unwrap();
    intruder
        .send(Out::JoinSession(v1::JoinSession {
            code: created.code.clone(),
        }))
        .await;
    let refused = intruder
        .recv()
        .await
        .expect_err("a cross-tenant join is refused");
    assert_eq!(refused.code, ErrorCode::CrossTenant);
    relay.stop().await;
}

#[tokio::test]
async fn a_connect_to_another_path_is_answered_404() {
    let relay = TestRelay::start().await;
    let admin = relay.handle.admin_addr().unwrap();
    let before = metrics(admin).await;
    let refused = within(webtransport::session(
        relay.addr(),
        &relay.handle.browser_certificate_hashes(),
        "/somewhere-else",
    ))
    .await;
    match refused {
        // The client reports the status it read from the CONNECT response.
        Err(e @ web_transport_quinn::ClientError::HttpError(_)) => {
            assert!(e.to_string().contains("404"), "expected a 404, got {e}")
        }
        Err(other) => panic!("expected a 404, got {other}"),
        Ok(_) => panic!("a CONNECT to another path was accepted"),
    }
    // Counted, once the relay is done with the connection (after the 404 and the client's
    // close): polled, bounded by the step timeout.
    within(async {
        while sum(
            &metrics(admin).await,
            "relay_webtransport_failures_total",
            "reason=\"path\"",
        ) <= sum(
            &before,
            "relay_webtransport_failures_total",
            "reason=\"path\"",
        ) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The right path on the same port is served.
    within(webtransport::session(
        relay.addr(),
        &relay.handle.browser_certificate_hashes(),
        PATH,
    ))
    .await
    .expect("CONNECT to /remote-help/1 is accepted");
    relay.stop().await;
}

#[tokio::test]
async fn a_webtransport_client_with_a_bad_token_is_closed_with_the_code() {
    let relay = TestRelay::start().await;
    let refused = WtClient::connect(&relay, "not.a.token".into(), Role::Helper)
        .await
        .err()
        .expect("a bad token is refused");
    // Refused before `Welcome`: no `Error` message, the session's close carries the
    // code (a browser's `WebTransport.closed` `closeCode`) and the reason.
    assert_eq!(refused.code, ErrorCode::TokenInvalid, "{}", refused.message);
    assert!(refused.message.contains("token"), "{}", refused.message);
    relay.stop().await;
}

#[tokio::test]
async fn a_stream_error_code_reaches_a_webtransport_client_as_our_number() {
    let relay = TestRelay::start().await;
    let token = relay.tenant("contoso").token(Persona::Helper);
    let helper = WtClient::connect(&relay, token, Role::Helper)
        .await
        .unwrap();
    // A data stream outside a session is refused alone, with STOP_SENDING
    // PROTOCOL_VIOLATION (§8.6); WebTransport carries the code in HTTP/3's range and the
    // client reads back our number.
    let mut stream = within(helper.session.open_uni()).await.unwrap();
    within(stream.write_all(&[channel_tag(v1::Channel::Chat), 1, 2, 3]))
        .await
        .unwrap();
    let stopped = within(stream.stopped()).await.unwrap();
    assert_eq!(stopped, Some(ErrorCode::ProtocolViolation.to_quic()));
    relay.stop().await;
}

#[tokio::test]
async fn a_webtransport_datagram_for_another_session_is_dropped_and_the_connection_lives() {
    let relay = TestRelay::start().await;
    let admin = relay.handle.admin_addr().unwrap();
    let before = metrics(admin).await;
    let token = relay.tenant("contoso").token(Persona::Sharer);
    let mut sharer = WtClient::connect(&relay, token, Role::Sharer)
        .await
        .unwrap();
    // Bypassing the session's header: an empty datagram (names no session) and one naming
    // session 99 (varint 0x40 0x63), as a buggy or hostile page might send.
    let quic: &quinn::Connection = &sharer.session;
    quic.send_datagram(Bytes::new()).unwrap();
    quic.send_datagram(Bytes::from_static(&[0x40, 0x63, 1, 2, 3]))
        .unwrap();
    // Datagrams may be lost, even on loopback: wait (bounded) until one was counted.
    within(async {
        loop {
            let now = metrics(admin).await;
            if sum(&now, "relay_datagrams_dropped_total", "unknown_session")
                > sum(&before, "relay_datagrams_dropped_total", "unknown_session")
            {
                break;
            }
            quic.send_datagram(Bytes::new()).unwrap();
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The connection still serves its control stream.
    sharer.send(Out::Ping(v1::Ping { nonce: 7 })).await;
    match sharer.recv().await.unwrap() {
        In::Pong(pong) => assert_eq!(pong.nonce, 7),
        other => panic!("expected Pong, got {other:?}"),
    }
    relay.stop().await;
}

/// Backpressure towards a WebTransport reader, as `backpressure.rs` proves it for native
/// ones: a WebTransport helper that stops reading stalls its native sharer through flow
/// control, within the relay's windows, and then receives every byte in order.
#[tokio::test]
async fn a_slow_webtransport_reader_stalls_its_sender_within_the_relays_bounds() {
    use remote_help_relay::config::Limits;
    use remote_help_relay::transport::ClientTransport;
    const FRAME: usize = 16 * 1024;
    const ATTEMPTED_FRAMES: usize = 4096; // 64 MiB: far more than any window
    // As in backpressure.rs: a write not done after this long is taken as stalled; a slow
    // machine can only make the test stop writing earlier, which keeps every assertion true.
    const STALL: std::time::Duration = std::time::Duration::from_millis(1500);
    const WINDOW: u64 = 64 * 1024;
    let limits = Limits {
        stream_receive_window: WINDOW,
        connection_receive_window: 256 * 1024,
        send_window: 256 * 1024,
        ..Limits::default()
    };
    let relay_limits = limits;
    let relay = TestRelay::builder()
        .plaintext_clients()
        .config(move |c| c.limits = relay_limits)
        .start()
        .await;
    let contoso = relay.tenant("contoso");
    // The WebTransport helper's windows as small as the native helper's in backpressure.rs.
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u64(WINDOW).unwrap())
        .receive_window(quinn::VarInt::from_u32(256 * 1024));
    let mut helper = WtClient::connect_with(
        &relay,
        contoso.token(Persona::Helper),
        Role::Helper,
        Some(std::sync::Arc::new(transport)),
    )
    .await
    .unwrap();
    let mut sharer_options = relay.options(contoso.token(Persona::Sharer), Role::Sharer);
    sharer_options.transport = ClientTransport {
        stream_receive_window: WINDOW,
        connection_receive_window: 256 * 1024,
        send_window: 256 * 1024,
        ..ClientTransport::default()
    };
    let mut sharer = within(remote_help_relay::client::Client::connect(sharer_options))
        .await
        .unwrap();
    helper
        .send(Out::CreateSession(v1::CreateSession {
            mode: v1::Mode::ViewOnly as i32,
            reason: String::new(),
        }))
        .await;
    let In::SessionCreated(created) = helper.recv().await.unwrap() else {
        panic!("expected SessionCreated")
    };
    within(sharer.join(&created.code)).await.unwrap();
    assert!(matches!(helper.recv().await.unwrap(), In::PeerJoined(_)));
    within(sharer.accept()).await.unwrap();
    assert!(matches!(
        helper.recv().await.unwrap(),
        In::SessionStarted(_)
    ));

    let mut screen = within(sharer.open_unsealed_channel(Channel::Screen))
        .await
        .unwrap();
    let mut accepted_frames = 0usize;
    for i in 0..ATTEMPTED_FRAMES {
        let frame = Bytes::from(vec![(i % 251) as u8; FRAME]);
        match tokio::time::timeout(STALL, screen.send(frame)).await {
            Ok(result) => {
                result.unwrap();
                accepted_frames += 1;
            }
            Err(_) => break,
        }
    }
    let accepted_bytes = (accepted_frames * (FRAME + 4)) as u64;
    // The relay's receive window, the helper's stream window (plus the WebTransport stream
    // header, a few bytes), one relay read chunk in hand, the frame being written.
    let bound = limits.stream_receive_window + WINDOW + 16 + 64 * 1024 + (FRAME + 4) as u64;
    assert!(
        accepted_frames < ATTEMPTED_FRAMES,
        "the sender never stalled: the relay buffered everything"
    );
    assert!(
        accepted_bytes <= bound,
        "{accepted_bytes} bytes went out before the stall; the windows allow at most {bound}"
    );

    // The reader catches up: every accepted frame arrives, in order, intact.
    let (tag, mut screen_in) = helper.accept_channel().await;
    assert_eq!(tag, channel_tag(v1::Channel::Screen));
    let finisher = tokio::spawn(async move { screen.finish().await });
    for i in 0..accepted_frames {
        let frame = within(screen_in.next()).await.unwrap().unwrap();
        assert_eq!(frame.len(), FRAME);
        assert!(
            frame.iter().all(|&b| b == (i % 251) as u8),
            "frame {i} corrupted or out of order"
        );
    }
    within(finisher).await.unwrap().unwrap();
    relay.stop().await;
}

/// Modes apply to a WebTransport party as to a native one: a helper in a view-only session
/// that opens the input channel is closed for it (§8.6), and its native peer is told.
#[tokio::test]
async fn a_webtransport_helper_may_not_send_input_in_view_only_mode() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let token = relay.tenant("contoso").token(Persona::Helper);
    let mut helper = WtClient::connect(&relay, token, Role::Helper)
        .await
        .unwrap();
    helper
        .send(Out::CreateSession(v1::CreateSession {
            mode: v1::Mode::ViewOnly as i32,
            reason: String::new(),
        }))
        .await;
    let In::SessionCreated(created) = helper.recv().await.unwrap() else {
        panic!("expected SessionCreated")
    };
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&created.code)).await.unwrap();
    assert!(matches!(helper.recv().await.unwrap(), In::PeerJoined(_)));
    within(sharer.accept()).await.unwrap();
    let In::SessionStarted(started) = helper.recv().await.unwrap() else {
        panic!("expected SessionStarted")
    };
    assert_eq!(started.mode, v1::Mode::ViewOnly as i32);

    let mut input = helper.open_channel(channel_tag(v1::Channel::Input)).await;
    // The write may or may not complete before the relay closes the session.
    let _ = within(input.send(Bytes::from_static(b"click"))).await;
    let refused = helper
        .recv()
        .await
        .expect_err("input in view-only mode closes the helper");
    assert_eq!(
        refused.code,
        ErrorCode::ProtocolViolation,
        "{}",
        refused.message
    );
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerLost);
    relay.stop().await;
}

/// A WebTransport client that leaves its control stream before a `Hello` (finishes it
/// after the stream's header, or resets it) is closed by the relay, and stops counting
/// against the connection limits, even when it never closes anything itself.
/// `web_transport_quinn` keeps a session's connection in a task of its own for as long as
/// the client keeps its CONNECT stream open, and the relay's keep-alive keeps it from
/// idling out: without an explicit close such a client could hold live connections the
/// relay had already stopped counting.
#[tokio::test]
async fn a_webtransport_client_that_leaves_its_control_stream_before_hello_is_closed() {
    let relay = TestRelay::builder()
        .config(|c| c.auth_timeout = std::time::Duration::from_millis(500))
        .start()
        .await;
    for reset in [false, true] {
        let raw = webtransport::RawSession::open(&relay).await;
        within(relay.handle.wait_for(|s| s.connections == 1)).await;
        // The relay takes this stream as the control stream; it ends without a byte of
        // `Hello`.
        let (mut send, _recv) = within(raw.connection.open_bi()).await.unwrap();
        within(send.write_all(&webtransport::RawSession::bidi_header()))
            .await
            .unwrap();
        if reset {
            send.reset(1u32.into()).unwrap();
        } else {
            send.finish().unwrap();
        }
        // The relay closes the connection: the client never does.
        match within(raw.connection.closed()).await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                let code =
                    web_transport_quinn::proto::error_from_http3(close.error_code.into_inner());
                if reset {
                    // A reset may discard the header unsent; then the relay never sees a
                    // control stream and closes at the authentication deadline instead.
                    assert!(
                        code == Some(0) || code == Some(ErrorCode::AuthTimeout.to_quic()),
                        "reset: {close:?}"
                    );
                } else {
                    assert_eq!(code, Some(0), "a lost connection is closed with code 0");
                }
            }
            other => panic!("reset: {reset}: not closed by the relay: {other}"),
        }
        // The connection's limit slot is given back once it is closed.
        within(relay.handle.wait_for(|s| s.connections == 0)).await;
    }
    relay.stop().await;
}

/// When the relay stops forwarding a WebTransport party's data stream because the session
/// ended (the forwarder is aborted and the stream dropped, PROTOCOL.md §8.5), the sender
/// sees STOP_SENDING with our code 0, mapped as WebTransport maps every code (§2a): a raw 0
/// lies outside WebTransport's range, and its library would report no code at all.
#[tokio::test]
async fn a_webtransport_sender_whose_stream_the_relay_drops_sees_code_0() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let token = relay.tenant("contoso").token(Persona::Helper);
    let mut helper = WtClient::connect(&relay, token, Role::Helper)
        .await
        .unwrap();
    helper
        .send(Out::CreateSession(v1::CreateSession {
            mode: v1::Mode::FullControl as i32,
            reason: String::new(),
        }))
        .await;
    let created = match helper.recv().await.unwrap() {
        In::SessionCreated(c) => c,
        other => panic!("expected SessionCreated, got {other:?}"),
    };
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&created.code)).await.unwrap();
    within(sharer.accept()).await.unwrap();
    loop {
        if let In::SessionStarted(_) = helper.recv().await.unwrap() {
            break;
        }
    }
    // A chat stream being forwarded: its first message reached the sharer.
    let mut chat = helper.open_channel(channel_tag(v1::Channel::Chat)).await;
    within(chat.send(Bytes::from_static(b"still typing")))
        .await
        .unwrap();
    let (channel, mut said) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(channel, Channel::Chat);
    within(said.recv()).await.unwrap().unwrap();
    // The session ends with the stream still open: the relay drops it.
    helper.send(Out::EndSession(v1::EndSession {})).await;
    let stopped = within(chat.get_ref().stopped()).await.unwrap();
    assert_eq!(
        stopped,
        Some(0),
        "STOP_SENDING 0, as WebTransport carries it"
    );
    drop(helper);
    sharer.close().await;
    relay.wait_until_empty().await;
    relay.stop().await;
}

/// A WebTransport client has no more data streams than a native one (6, PROTOCOL.md §2).
/// QUIC grants it 3 more, for the HTTP/3 streams a browser opens (control, QPACK encoder and
/// decoder); `web_transport_quinn`'s client opens only the control stream, so it could
/// open 8 data streams at once. The relay holds it to 6: the streams beyond them are
/// refused alone, STOP_SENDING `LIMIT_EXCEEDED`, and the connection lives.
#[tokio::test]
async fn a_webtransport_client_cannot_hold_more_data_streams_than_a_native_one() {
    use futures_util::stream::FuturesUnordered;
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let token = relay.tenant("contoso").token(Persona::Helper);
    let mut helper = WtClient::connect(&relay, token, Role::Helper)
        .await
        .unwrap();
    helper
        .send(Out::CreateSession(v1::CreateSession {
            mode: v1::Mode::FullControl as i32,
            reason: String::new(),
        }))
        .await;
    let created = match helper.recv().await.unwrap() {
        In::SessionCreated(c) => c,
        other => panic!("expected SessionCreated, got {other:?}"),
    };
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&created.code)).await.unwrap();
    within(sharer.accept()).await.unwrap();
    loop {
        if let In::SessionStarted(_) = helper.recv().await.unwrap() {
            break;
        }
    }
    // Eight data streams, each no more than its WebTransport header (no tag byte yet): the
    // relay holds every one it admits, waiting for its tag.
    let native = remote_help_relay::transport::UNI_STREAMS as usize;
    let mut streams = Vec::new();
    for _ in 0..native + 2 {
        streams.push(within(helper.session.open_uni()).await.unwrap());
    }
    let mut stopped: FuturesUnordered<_> = streams.iter().map(|s| s.stopped()).collect();
    for _ in 0..2 {
        let code = within(stopped.next()).await.unwrap().unwrap();
        assert_eq!(code, Some(ErrorCode::LimitExceeded.to_quic()));
    }
    drop(stopped);
    // The connection lives, and still serves its control stream.
    helper.send(Out::Ping(v1::Ping { nonce: 9 })).await;
    match helper.recv().await.unwrap() {
        In::Pong(pong) => assert_eq!(pong.nonce, 9),
        other => panic!("expected Pong, got {other:?}"),
    }
    drop(streams);
    drop(helper);
    sharer.close().await;
    relay.wait_until_empty().await;
    relay.stop().await;
}
