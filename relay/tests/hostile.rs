//! Hostile and broken clients over real QUIC: garbage, oversized and truncated frames,
//! messages out of order or from the wrong role, bad data streams, silence. Each gets a
//! specific code and closes only its own connection; afterwards the relay holds nothing
//! and still serves an honest session.

mod common;

use std::time::Duration;

use common::{TestRelay, within};
use remote_help_proto::ErrorCode;
use remote_help_proto::v1::{self, client_to_relay::Msg};
use remote_help_relay::client::connect_quic;
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::hostile::{frame, malformed_frame_cases};

/// How the relay closed a connection, as a code of ours.
async fn close_code(connection: &quinn::Connection) -> Option<ErrorCode> {
    match within(connection.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ErrorCode::from_quic(close.error_code.into_inner())
        }
        _ => None,
    }
}

/// Opens a connection, writes `bytes` on the control stream (optionally finishing it),
/// and returns the code the relay closed the connection with.
async fn send_raw(relay: &TestRelay, bytes: &[u8], finish: bool) -> Option<ErrorCode> {
    let options = relay.options(String::new(), Role::Helper);
    let (_endpoint, connection) = within(connect_quic(&options)).await.unwrap();
    let (mut send, _recv) = within(connection.open_bi()).await.unwrap();
    within(send.write_all(bytes)).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    close_code(&connection).await
}

/// Checks the relay recovered: nothing leaked and an honest session works end to end.
async fn still_serves_honest_sessions(relay: &TestRelay) {
    relay.wait_until_empty().await;
    // Honest clients protect: the key exchange, then one sealed input event.
    let (mut helper, h, mut sharer, mut s) = common::secured(relay, Mode::FullControl).await;
    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    within(input.send(b"ok")).await.unwrap();
    let (_, mut received) = within(s.accept_channel()).await.unwrap();
    assert_eq!(&within(received.recv()).await.unwrap().unwrap()[..], b"ok");
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
    helper.close().await;
    sharer.close().await;
    relay.wait_until_empty().await;
}

#[tokio::test]
async fn malformed_control_frames_get_specific_codes() {
    let relay = TestRelay::start().await;
    let token = relay.tenant("contoso").token(Persona::Helper);
    // The campaign's cases, plus one that depends on this relay's limit (the default).
    let mut cases = malformed_frame_cases(&token);
    cases.push((
        "just over the limit",
        (64 * 1024 + 1u32).to_be_bytes().to_vec(),
        false,
        ErrorCode::MessageTooLarge,
    ));
    for (name, bytes, finish, expected) in cases {
        assert_eq!(
            send_raw(&relay, &bytes, finish).await,
            Some(expected),
            "{name}"
        );
    }
    still_serves_honest_sessions(&relay).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_closed_at_the_auth_deadline() {
    let relay = TestRelay::builder()
        .config(|c| c.auth_timeout = Duration::from_millis(200))
        .start()
        .await;
    let options = relay.options(String::new(), Role::Helper);
    let (_endpoint, connection) = within(connect_quic(&options)).await.unwrap();
    assert_eq!(close_code(&connection).await, Some(ErrorCode::AuthTimeout));
    // A slow drip of a partial frame does not extend the deadline either.
    let (_endpoint, connection) = within(connect_quic(&options)).await.unwrap();
    let (mut send, _recv) = within(connection.open_bi()).await.unwrap();
    within(send.write_all(&[0, 0])).await.unwrap();
    assert_eq!(close_code(&connection).await, Some(ErrorCode::AuthTimeout));
    still_serves_honest_sessions(&relay).await;
    relay.stop().await;
}

#[tokio::test]
async fn messages_out_of_order_or_from_the_wrong_role_close_the_connection() {
    let relay = TestRelay::start().await;
    let contoso = relay.tenant("contoso");
    let cases: Vec<(&str, Role, Msg, ErrorCode)> = vec![
        (
            "second Hello",
            Role::Helper,
            Msg::Hello(v1::Hello::default()),
            ErrorCode::ProtocolViolation,
        ),
        (
            "consent with no session",
            Role::Sharer,
            Msg::ConsentAnswer(v1::ConsentAnswer { accept: true }),
            ErrorCode::ProtocolViolation,
        ),
        (
            "end with no session",
            Role::Helper,
            Msg::EndSession(v1::EndSession {}),
            ErrorCode::ProtocolViolation,
        ),
        (
            "sharer creates",
            Role::Sharer,
            Msg::CreateSession(v1::CreateSession {
                mode: 1,
                ..Default::default()
            }),
            ErrorCode::WrongRole,
        ),
        (
            "helper joins",
            Role::Helper,
            Msg::JoinSession(v1::JoinSession {
                code: "AAAAA-AAAAA".into(),
            }),
            ErrorCode::WrongRole,
        ),
        (
            "helper consents",
            Role::Helper,
            Msg::ConsentAnswer(v1::ConsentAnswer { accept: true }),
            ErrorCode::WrongRole,
        ),
        (
            "unknown mode",
            Role::Helper,
            Msg::CreateSession(v1::CreateSession {
                mode: 42,
                ..Default::default()
            }),
            ErrorCode::ProtocolViolation,
        ),
    ];
    for (name, role, message, expected) in cases {
        let persona = if role == Role::Helper {
            Persona::Helper
        } else {
            Persona::Sharer
        };
        let client = relay.connect(contoso.token(persona), role).await.unwrap();
        // Speak past the SDK on the already-authenticated control stream.
        let (_endpoint, connection, mut send, _recv) = client.into_raw_parts().unwrap();
        within(send.write_all(&frame(&v1::ClientToRelay { msg: Some(message) })))
            .await
            .unwrap();
        assert_eq!(close_code(&connection).await, Some(expected), "{name}");
    }
    still_serves_honest_sessions(&relay).await;
    relay.stop().await;
}

#[tokio::test]
async fn bad_data_streams_close_the_offender_and_tell_its_peer() {
    let relay = TestRelay::start().await;
    // (name, mode, which side attacks, the tags of the streams it opens)
    let cases: Vec<(&str, Mode, Role, Vec<u8>)> = vec![
        (
            "unknown channel tag",
            Mode::FullControl,
            Role::Helper,
            vec![9],
        ),
        ("zero channel tag", Mode::FullControl, Role::Sharer, vec![0]),
        (
            "sharer sends input",
            Mode::FullControl,
            Role::Sharer,
            vec![Channel::Input.to_wire() as u8],
        ),
        (
            "helper sends screen",
            Mode::FullControl,
            Role::Helper,
            vec![Channel::Screen.to_wire() as u8],
        ),
        (
            "input in view-only mode",
            Mode::ViewOnly,
            Role::Helper,
            vec![Channel::Input.to_wire() as u8],
        ),
        (
            "chat opened twice",
            Mode::ViewOnly,
            Role::Sharer,
            vec![Channel::Chat.to_wire() as u8, Channel::Chat.to_wire() as u8],
        ),
    ];
    for (name, mode, attacker_role, tags) in cases {
        let (mut helper, mut sharer) = relay.paired("contoso", mode).await;
        let (attacker, victim) = match attacker_role {
            Role::Helper => (&mut helper, &mut sharer),
            Role::Sharer => (&mut sharer, &mut helper),
        };
        for tag in tags {
            let mut stream = within(attacker.connection().open_uni()).await.unwrap();
            within(stream.write_all(&[tag, 1, 2, 3])).await.unwrap();
        }
        assert_eq!(
            within(attacker.wait_for_end()).await,
            ErrorCode::ProtocolViolation,
            "{name}: attacker"
        );
        assert_eq!(
            within(victim.wait_for_end()).await,
            ErrorCode::PeerLost,
            "{name}: victim"
        );
    }
    still_serves_honest_sessions(&relay).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_data_stream_outside_a_session_is_refused_but_the_connection_lives() {
    let relay = TestRelay::start().await;
    let mut helper = relay.helper("contoso").await;
    let mut stream = within(helper.connection().open_uni()).await.unwrap();
    within(stream.write_all(&[Channel::Input.to_wire() as u8, 1, 2, 3]))
        .await
        .unwrap();
    let stopped = within(stream.stopped()).await.unwrap();
    assert_eq!(
        stopped.map(|c| c.into_inner()),
        Some(u64::from(ErrorCode::ProtocolViolation.to_quic()))
    );
    // The connection is still good for a session.
    within(helper.ping()).await.unwrap();
    within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn a_data_stream_opened_before_hello_is_refused_after_welcome_and_the_connection_lives() {
    use futures_util::{SinkExt, StreamExt};
    use remote_help_proto::framing::ControlCodec;
    use remote_help_proto::v1::relay_to_client::Msg as In;
    use tokio_util::codec::{FramedRead, FramedWrite};

    let relay = TestRelay::start().await;
    let token = relay.tenant("contoso").token(Persona::Helper);
    let options = relay.options(String::new(), Role::Helper);
    let (_endpoint, connection) = within(connect_quic(&options)).await.unwrap();
    // The data stream goes first, before the control stream exists.
    let mut early = within(connection.open_uni()).await.unwrap();
    within(early.write_all(&[Channel::Input.to_wire() as u8, 0, 0, 0, 1, b'x']))
        .await
        .unwrap();
    let (send, recv) = within(connection.open_bi()).await.unwrap();
    let mut send = FramedWrite::new(
        send,
        ControlCodec::<v1::RelayToClient, v1::ClientToRelay>::new(1 << 20),
    );
    let mut recv = FramedRead::new(
        recv,
        ControlCodec::<v1::RelayToClient, v1::ClientToRelay>::new(1 << 20),
    );
    within(send.send(remote_help_relay::hostile::hello(
        &token,
        v1::Role::Helper,
        1,
    )))
    .await
    .unwrap();
    let welcome = within(recv.next()).await.unwrap().unwrap().msg.unwrap();
    assert!(matches!(welcome, In::Welcome(_)), "{welcome:?}");
    // Refused like any data stream outside an active session: the stream alone.
    let stopped = within(early.stopped()).await.unwrap();
    assert_eq!(
        stopped.map(|c| c.into_inner()),
        Some(u64::from(ErrorCode::ProtocolViolation.to_quic()))
    );
    within(send.send(v1::ClientToRelay {
        msg: Some(Msg::Ping(v1::Ping { nonce: 3 })),
    }))
    .await
    .unwrap();
    let pong = within(recv.next()).await.unwrap().unwrap().msg.unwrap();
    assert!(matches!(pong, In::Pong(v1::Pong { nonce: 3 })), "{pong:?}");
    connection.close(0u32.into(), b"done");
    relay.stop().await;
}

#[tokio::test]
async fn a_client_without_our_alpn_is_refused_in_the_handshake() {
    let relay = TestRelay::start().await;
    let trust = remote_help_relay::tls::RelayTrust::Pin(relay.handle.fingerprint());
    let mut tls = trust.rustls_client_config().unwrap();
    // Neither `remote-help/1` nor `h3` (WebTransport, which the relay serves too).
    tls.alpn_protocols = vec![b"hq-interop".to_vec()];
    let config = quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let err = within(endpoint.connect(relay.addr(), "localhost").unwrap())
        .await
        .unwrap_err();
    // TLS alert 120 (no_application_protocol) as a QUIC CRYPTO_ERROR (0x100 + alert).
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(u64::from(close.error_code), 0x100 + 120, "{close}")
        }
        other => panic!("expected a handshake refusal, got {other}"),
    }
    still_serves_honest_sessions(&relay).await;
    relay.stop().await;
}

#[tokio::test]
async fn the_hostile_campaign_finds_nothing_and_leaves_nothing_behind() {
    use remote_help_relay::hostile::{Campaign, Target, run};
    // The guesses and the honest session come from one address; let the honest join past
    // the per-source join limit that the guessing uses up (limits.rs tests that limit).
    let relay = TestRelay::builder()
        .config(|c| c.limits.joins_per_source_per_minute = 600)
        .start()
        .await;
    let target = Target {
        options: relay.options(String::new(), Role::Helper),
        helper_token: relay.tenant("contoso").token(Persona::Helper),
        sharer_token: relay.tenant("contoso").token(Persona::Sharer),
    };
    let reports = run(
        &target,
        Campaign {
            rounds: 2,
            ..Campaign::default()
        },
    )
    .await;
    for report in &reports {
        assert!(report.inputs > 0, "{} tried nothing", report.attack);
        assert!(
            report.findings.is_empty(),
            "{}: {:#?}",
            report.attack,
            report.findings
        );
        assert_eq!(report.as_expected, report.inputs, "{}", report.attack);
    }
    // No sessions, connections, registrations or relay tasks left; honest sessions work.
    still_serves_honest_sessions(&relay).await;
    let stats = relay.handle.stats();
    assert_eq!(stats.tasks, 0);
    relay.stop().await;
}
