//! End-to-end encryption over a real relay: both users see the same verification code,
//! sealed channels and datagrams carry content, and a receiver refuses forged, replayed,
//! reordered and truncated streams that arrive over real QUIC.

mod common;

use bytes::Bytes;
use common::{TestRelay, secured, started_with, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::client::secure::{self, SecureSession};
use remote_help_relay::client::{Client, ClientError, Protection, UnsealedChannels};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::e2e::{E2eError, Suite, stream_domain};

#[tokio::test]
async fn both_users_see_the_same_code_and_sealed_channels_carry_content() {
    let relay = TestRelay::start().await;
    let (_helper, mut h, _sharer, mut s) = secured(&relay, Mode::FullControl).await;
    assert_eq!(h.verification_code(), s.verification_code());

    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    let mut screen = within(s.open_channel(Channel::Screen)).await.unwrap();
    let mut chat = within(s.open_channel(Channel::Chat)).await.unwrap();
    for i in 0..50u32 {
        within(input.send(&i.to_be_bytes())).await.unwrap();
    }
    within(input.finish()).await.unwrap();
    within(screen.send(&vec![9u8; 300_000])).await.unwrap();
    within(chat.send(b"hello, sealed")).await.unwrap();

    let (channel, mut input_in) = within(s.accept_channel()).await.unwrap();
    assert_eq!(channel, Channel::Input);
    for i in 0..50u32 {
        assert_eq!(
            within(input_in.recv()).await.unwrap().unwrap(),
            i.to_be_bytes()
        );
    }
    assert_eq!(
        within(input_in.recv()).await.unwrap(),
        None,
        "sealed end marker"
    );
    let mut helper_side = std::collections::HashMap::new();
    for _ in 0..2 {
        let (channel, rx) = within(h.accept_channel()).await.unwrap();
        helper_side.insert(channel, rx);
    }
    let frame = within(helper_side.get_mut(&Channel::Screen).unwrap().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame, vec![9u8; 300_000]);
    let text = within(helper_side.get_mut(&Channel::Chat).unwrap().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, b"hello, sealed");

    // Sealed lossy screen frames.
    for i in 0..5u8 {
        s.send_datagram(&[i; 400]).unwrap();
    }
    let first = within(h.read_datagram()).await.unwrap();
    assert_eq!(first.len(), 400);
    relay.stop().await;
}

/// Plaintext only by an explicit opt-out: a protecting client (the default) is refused
/// every unsealed data-plane call with a typed error, and nothing it tried reaches the
/// peer: the peer's first channel after the key exchange is the sealed one.
#[tokio::test]
async fn a_protecting_client_is_refused_unsealed_calls_and_sends_nothing() {
    let relay = TestRelay::start().await;
    let (helper, sharer, helper_start, sharer_start) = started_with(
        &relay,
        Mode::FullControl,
        Protection::default(),
        Protection::default(),
    )
    .await;
    let refused = |result: Result<(), ClientError>| {
        matches!(
            result,
            Err(ClientError::E2e(E2eError::UnsealedWhileProtected))
        )
    };
    assert!(refused(helper.unsealed_data().map(|_| ())));
    assert!(refused(
        within(helper.open_unsealed_channel(Channel::Input))
            .await
            .map(|_| ())
    ));
    assert!(refused(
        within(helper.open_unsealed_channel(Channel::Screen))
            .await
            .map(|_| ())
    ));
    assert!(refused(
        within(sharer.accept_unsealed_channel()).await.map(|_| ())
    ));
    assert!(refused(sharer.unsealed_data().map(|_| ())));

    let (h, s) = within(async {
        tokio::join!(
            secure::channels(&helper, &helper_start, Role::Helper),
            secure::channels(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    let (h, mut s) = (h.unwrap(), s.unwrap());
    assert!(h.verification_code().is_some());
    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    within(input.send(b"sealed")).await.unwrap();
    let (channel, mut input_in) = within(s.accept_channel()).await.unwrap();
    assert_eq!(channel, Channel::Input);
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"sealed"
    );
    relay.stop().await;
}

/// Opens `helper`'s input channel raw (bypassing sealing, on its bare connection, as a
/// meddling relay's frames would arrive) and sends `frames`; then finishes.
async fn send_raw_input(helper: &Client, frames: Vec<Vec<u8>>) {
    let raw = UnsealedChannels::over(helper.connection().clone());
    let mut raw = within(raw.open_channel(Channel::Input)).await.unwrap();
    for frame in frames {
        within(raw.send(Bytes::from(frame))).await.unwrap();
    }
    within(raw.finish()).await.unwrap();
}

/// The sharer's first error reading the helper's input channel.
async fn first_error(s: &mut SecureSession) -> E2eError {
    let (_, mut input) = within(s.accept_channel()).await.unwrap();
    loop {
        match within(input.recv()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream was accepted as complete"),
            Err(ClientError::E2e(e)) => return e,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}

#[tokio::test]
async fn forged_replayed_reordered_and_truncated_frames_are_refused_by_the_receiver() {
    let relay = TestRelay::start().await;
    // The "attacker" holds the helper's keys and crafts frames as a meddling relay would
    // deliver them: the receiver must refuse each.
    type Meddle = fn(Vec<Vec<u8>>) -> Vec<Vec<u8>>;
    type Expect = fn(&E2eError) -> bool;
    let cases: Vec<(&str, Meddle, Expect)> = vec![
        (
            "tampered",
            |f| {
                let mut f = f;
                let last = f[0].len() - 1;
                f[0][last] ^= 0x01;
                f
            },
            |e| *e == E2eError::Tampered,
        ),
        (
            "replayed",
            |f| vec![f[0].clone(), f[0].clone()],
            |e| *e == E2eError::Replayed(0),
        ),
        (
            "reordered",
            |f| vec![f[1].clone(), f[0].clone()],
            |e| {
                matches!(
                    e,
                    E2eError::OutOfOrder {
                        expected: 0,
                        got: 1
                    }
                )
            },
        ),
        (
            "truncated",
            |f| vec![f[0].clone(), f[1].clone()],
            |e| *e == E2eError::Truncated,
        ),
        (
            "dropped",
            |f| vec![f[0].clone(), f[2].clone()],
            |e| {
                matches!(
                    e,
                    E2eError::OutOfOrder {
                        expected: 1,
                        got: 2
                    }
                )
            },
        ),
    ];
    for (name, meddle, expected) in cases {
        let (helper, h, _sharer, mut s) = secured(&relay, Mode::FullControl).await;
        let keys = h_keys(&h);
        let mut sealer = keys.sealer(stream_domain(Channel::Input));
        let frames: Vec<Vec<u8>> = (0..3u8).map(|i| sealer.seal(&[i]).unwrap()).collect();
        send_raw_input(&helper, meddle(frames)).await;
        let error = first_error(&mut s).await;
        assert!(expected(&error), "{name}: got {error:?}");
    }
    relay.stop().await;
}

fn h_keys(session: &SecureSession) -> remote_help_relay::e2e::SessionKeys {
    session.keys().clone()
}

/// A client of `contoso` in `role` with `protection`.
async fn client_with(relay: &TestRelay, role: Role, protection: Protection) -> Client {
    let persona = match role {
        Role::Helper => Persona::Helper,
        Role::Sharer => Persona::Sharer,
    };
    let mut options = relay.options(relay.tenant("contoso").token(persona), role);
    options.protection = protection;
    within(Client::connect(options)).await.unwrap()
}

#[tokio::test]
async fn the_sdk_protects_by_default_and_the_relay_announces_the_helpers_choice() {
    let relay = TestRelay::start().await;
    assert_eq!(
        relay
            .options(String::new(), Role::Helper)
            .protection
            .announced(),
        [1, 2],
        "every suite, by default"
    );
    // The helper prefers AES-256-GCM, the sharer ChaCha20: the helper's order wins.
    let (mut helper, sharer, helper_start, sharer_start) = started_with(
        &relay,
        Mode::FullControl,
        Protection::EndToEnd(vec![Suite::X25519Aes256Gcm, Suite::X25519ChaCha20Poly1305]),
        Protection::default(),
    )
    .await;
    assert_eq!((helper_start.e2e_suite, sharer_start.e2e_suite), (2, 2));
    assert_eq!(helper_start.peer_e2e_suites, [1, 2]);
    assert_eq!(sharer_start.peer_e2e_suites, [2, 1]);
    // The session API seals by default.
    let (h, s) = within(async {
        tokio::join!(
            secure::channels(&helper, &helper_start, Role::Helper),
            secure::channels(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    let (h, mut s) = (h.unwrap(), s.unwrap());
    assert_eq!(h.suite(), Some(Suite::X25519Aes256Gcm));
    assert!(h.verification_code().is_some());
    assert_eq!(h.verification_code(), s.verification_code());
    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    within(input.send(b"click")).await.unwrap();
    let (_, mut input_in) = within(s.accept_channel()).await.unwrap();
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"click"
    );
    within(helper.end_session()).await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn a_tenant_requiring_protection_refuses_unprotected_pairs_before_consent() {
    let relay = TestRelay::start().await;
    let plain = || Protection::PlaintextForMeasurement;

    // A helper that announced nothing could never be paired: told at once.
    let mut helper = client_with(&relay, Role::Helper, plain()).await;
    let err = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::E2eRequired), "{err}");

    // An unprotected sharer, and a sharer with no suite in common: refused at the join,
    // with no consent prompt; the helper's session ends with the same code.
    for sharer_protection in [plain(), Protection::EndToEnd(vec![Suite::X25519Aes256Gcm])] {
        let mut helper = client_with(
            &relay,
            Role::Helper,
            Protection::EndToEnd(vec![Suite::X25519ChaCha20Poly1305]),
        )
        .await;
        let created = within(helper.create_session(Mode::FullControl))
            .await
            .unwrap();
        let mut sharer = client_with(&relay, Role::Sharer, sharer_protection.clone()).await;
        let err = within(sharer.join(&created.code)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::E2eRequired),
            "{sharer_protection:?}: {err}"
        );
        assert_eq!(within(helper.wait_for_end()).await, ErrorCode::E2eRequired);
    }
    relay.stop().await;
}

#[tokio::test]
async fn without_the_requirement_a_protecting_client_sends_nothing_to_an_unprotected_peer() {
    let relay = TestRelay::builder()
        .policy("contoso", |p| p.require_end_to_end = false)
        .start()
        .await;
    let (helper, sharer, helper_start, sharer_start) = started_with(
        &relay,
        Mode::FullControl,
        Protection::default(),
        Protection::PlaintextForMeasurement,
    )
    .await;
    assert_eq!((helper_start.e2e_suite, sharer_start.e2e_suite), (0, 0));
    assert!(helper_start.peer_e2e_suites.is_empty());
    let refused = within(secure::channels(&helper, &helper_start, Role::Helper))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ClientError::E2e(E2eError::PeerUnprotected)),
        "{refused}"
    );
    // Not through the unsealed calls either: a protecting client has none.
    let raw = within(helper.open_unsealed_channel(Channel::Input)).await;
    assert!(
        matches!(raw, Err(ClientError::E2e(E2eError::UnsealedWhileProtected))),
        "a protecting client opened an unsealed channel to an unprotected peer"
    );
    // The measuring side gets plaintext channels, by its own explicit choice.
    let s = within(secure::channels(&sharer, &sharer_start, Role::Sharer))
        .await
        .unwrap();
    assert!(s.verification_code().is_none());
    relay.stop().await;
}

/// The transport under a sealed session refuses too: a helper that keeps its sealed
/// channels from one session sends nothing on them once its next session's peer announced
/// no protection.
#[tokio::test]
async fn a_sealed_session_kept_into_a_session_with_an_unprotected_peer_sends_nothing() {
    let relay = TestRelay::builder()
        .policy("contoso", |p| p.require_end_to_end = false)
        .start()
        .await;
    let (mut helper, mut kept, mut sharer, _s) = common::secured(&relay, Mode::FullControl).await;
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);

    let options = relay
        .options(relay.tenant("contoso").token(Persona::Sharer), Role::Sharer)
        .insecure_plaintext_for_measurement();
    let mut plain_sharer = within(Client::connect(options)).await.unwrap();
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let (helper_start, _) =
        common::join_and_consent(&mut helper, &mut plain_sharer, &created.code).await;
    assert!(helper_start.peer_e2e_suites.is_empty());
    let refused = within(kept.open_channel(Channel::Input)).await;
    assert!(
        matches!(refused, Err(ClientError::E2e(E2eError::PeerUnprotected))),
        "a kept sealed session opened a channel to an unprotected peer"
    );
    let refused = kept.send_datagram(b"frame").unwrap_err();
    assert!(
        matches!(refused, ClientError::E2e(E2eError::PeerUnprotected)),
        "{refused}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn unattended_sessions_need_a_suite_in_common_too() {
    let relay = TestRelay::start().await;
    let contoso = relay.tenant("contoso");
    let agent_token = contoso.sign(&common::with_claims(
        contoso.spec(Persona::Sharer),
        serde_json::json!({
            "kind": "device", "licenses": [], "groups": [],
            "device_id": "kiosk-9", "device_name": "KIOSK", "platform": "android-dedicated",
            "manufacturer": "Zebra", "os_version": "14", "device_groups": ["kiosks"],
        }),
    ));
    let agent_with = |protection: Protection| {
        let mut options = relay.options(agent_token.clone(), Role::Sharer);
        options.protection = protection;
        Client::connect(options)
    };
    // An agent that announced nothing could never be reached: told at registration.
    let mut plain_agent = within(agent_with(Protection::PlaintextForMeasurement))
        .await
        .unwrap();
    let err = within(plain_agent.register_device()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::E2eRequired), "{err}");

    let mut agent = within(agent_with(Protection::EndToEnd(vec![
        Suite::X25519Aes256Gcm,
    ])))
    .await
    .unwrap();
    within(agent.register_device()).await.unwrap();
    for protection in [
        Protection::PlaintextForMeasurement,
        Protection::EndToEnd(vec![Suite::X25519ChaCha20Poly1305]),
    ] {
        let mut helper = client_with(&relay, Role::Helper, protection.clone()).await;
        let err = within(helper.connect_unattended("kiosk-9", "INC-1"))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::E2eRequired),
            "{protection:?}: {err}"
        );
    }
    let mut helper = client_with(&relay, Role::Helper, Protection::default()).await;
    let started = within(helper.connect_unattended("kiosk-9", "INC-1"))
        .await
        .unwrap();
    assert_eq!(
        (started.e2e_suite, &started.peer_e2e_suites[..]),
        (2, &[2][..])
    );
    let agent_view = within(agent.wait_for_start()).await.unwrap();
    assert_eq!(
        (agent_view.e2e_suite, &agent_view.peer_e2e_suites[..]),
        (2, &[1, 2][..])
    );
    relay.stop().await;
}

/// Two QUIC endpoints connected to each other on loopback, with no relay between them (so
/// a channel may be opened again at once), and both sides' keys agreed in memory.
async fn peer_to_peer() -> (
    SecureSession,
    SecureSession,
    remote_help_relay::e2e::SessionKeys,
    quinn::Connection,
) {
    use remote_help_relay::e2e::{KeyExchange, Party, Transcript};
    use remote_help_relay::tls::{RelayIdentity as _, RelayTrust, ServerIdentity};
    use remote_help_relay::transport::{ClientTransport, client};
    use std::sync::Arc;
    let identity = ServerIdentity::self_signed(vec!["localhost".into()]).unwrap();
    let settings = ClientTransport::default();
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(identity.quic_server_config().unwrap()));
    server.transport_config(client(&settings));
    let sharer_end = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut helper_end = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(
        RelayTrust::Pin(identity.fingerprint())
            .quic_client_config()
            .unwrap(),
    ));
    config.transport_config(client(&settings));
    helper_end.set_default_client_config(config);
    let addr = sharer_end.local_addr().unwrap();
    let (helper, sharer) = within(async {
        let dial = async {
            helper_end
                .connect(addr, "localhost")
                .unwrap()
                .await
                .unwrap()
        };
        let accept = async { sharer_end.accept().await.unwrap().await.unwrap() };
        tokio::join!(dial, accept)
    })
    .await;
    let (h, s) = (KeyExchange::start().unwrap(), KeyExchange::start().unwrap());
    let party = |subject: &str| Party {
        tenant: "contoso".into(),
        subject: subject.into(),
    };
    let transcript = Transcript {
        session_id: "0123456789abcdef0123456789abcdef".into(),
        helper: party("ada"),
        sharer: party("grace"),
        helper_suites: vec![1],
        sharer_suites: vec![1],
        suite: Suite::X25519ChaCha20Poly1305,
        helper_key: h.public_key(),
        sharer_key: s.public_key(),
    };
    let helper_keys = h.finish(Role::Helper, &transcript).unwrap();
    let sharer_keys = s.finish(Role::Sharer, &transcript).unwrap();
    (
        SecureSession::with_keys(UnsealedChannels::over(helper.clone()), helper_keys.clone()),
        SecureSession::with_keys(UnsealedChannels::over(sharer), sharer_keys),
        helper_keys,
        helper,
    )
}

#[tokio::test]
async fn a_channel_opened_again_opens_and_a_replayed_stream_is_refused() {
    let (helper, mut sharer, helper_keys, helper_connection) = peer_to_peer().await;
    let domain = stream_domain(Channel::Chat);
    for text in [&b"first stream"[..], b"second stream"] {
        let mut chat = within(helper.open_channel(Channel::Chat)).await.unwrap();
        within(chat.send(text)).await.unwrap();
        within(chat.finish()).await.unwrap();
        let (_, mut chat_in) = within(sharer.accept_channel()).await.unwrap();
        assert_eq!(within(chat_in.recv()).await.unwrap().unwrap(), text);
        assert_eq!(within(chat_in.recv()).await.unwrap(), None);
    }
    // The first stream, byte for byte, sent again as a new stream: every frame
    // authenticates, but its stream number was used.
    let mut replay = helper_keys.stream_sealer(domain, 0);
    let frames = vec![
        replay.seal(b"first stream").unwrap(),
        replay.seal_end().unwrap(),
    ];
    let raw = UnsealedChannels::over(helper_connection);
    let mut raw_chat = within(raw.open_channel(Channel::Chat)).await.unwrap();
    for frame in frames {
        within(raw_chat.send(Bytes::from(frame))).await.unwrap();
    }
    within(raw_chat.finish()).await.unwrap();
    let (_, mut replayed) = within(sharer.accept_channel()).await.unwrap();
    let refused = within(replayed.recv()).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::E2e(E2eError::Replayed(0))),
        "{refused}"
    );
}

#[tokio::test]
async fn a_hello_announcing_more_than_16_suites_is_refused() {
    let relay = TestRelay::start().await;
    let mut options = relay.options(relay.tenant("contoso").token(Persona::Helper), Role::Helper);
    options.protection = Protection::EndToEnd(vec![Suite::X25519Aes256Gcm; 17]);
    let err = within(Client::connect(options.clone())).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ProtocolViolation), "{err}");
    options.protection = Protection::EndToEnd(vec![Suite::X25519Aes256Gcm; 16]);
    within(Client::connect(options)).await.unwrap();
    relay.stop().await;
}
