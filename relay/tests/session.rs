//! Sessions end to end over real QUIC on 127.0.0.1: pairing, consent, data both ways,
//! codes, tenants, ending, peer loss and shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{STEP, TestRelay, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;

#[tokio::test]
async fn a_full_session_carries_screen_input_and_chat_both_ways() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::FullControl).await;

    let mut screen = within(sharer.open_unsealed_channel(Channel::Screen))
        .await
        .unwrap();
    let mut sharer_chat = within(sharer.open_unsealed_channel(Channel::Chat))
        .await
        .unwrap();
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    let mut helper_chat = within(helper.open_unsealed_channel(Channel::Chat))
        .await
        .unwrap();

    for i in 0..100u32 {
        within(input.send(Bytes::copy_from_slice(&i.to_be_bytes())))
            .await
            .unwrap();
    }
    within(screen.send(Bytes::from(vec![7u8; 200_000])))
        .await
        .unwrap();
    within(sharer_chat.send(Bytes::from_static(b"hello from the sharer")))
        .await
        .unwrap();
    within(helper_chat.send(Bytes::from_static(b"hello from the helper")))
        .await
        .unwrap();

    // The sharer receives input (in order) and the helper's chat.
    let mut sharer_side = std::collections::HashMap::new();
    for _ in 0..2 {
        let (channel, receiver) = within(sharer.accept_unsealed_channel()).await.unwrap();
        sharer_side.insert(channel, receiver);
    }
    let mut input_in = sharer_side.remove(&Channel::Input).expect("input channel");
    for i in 0..100u32 {
        let event = within(input_in.recv()).await.unwrap().unwrap();
        assert_eq!(&event[..], &i.to_be_bytes(), "input event {i} out of order");
    }
    let chat = within(sharer_side.get_mut(&Channel::Chat).unwrap().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&chat[..], b"hello from the helper");

    // The helper receives the screen and the sharer's chat.
    let mut helper_side = std::collections::HashMap::new();
    for _ in 0..2 {
        let (channel, receiver) = within(helper.accept_unsealed_channel()).await.unwrap();
        helper_side.insert(channel, receiver);
    }
    let frame = within(helper_side.get_mut(&Channel::Screen).unwrap().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.len(), 200_000);
    assert!(frame.iter().all(|&b| b == 7));
    let chat = within(helper_side.get_mut(&Channel::Chat).unwrap().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&chat[..], b"hello from the sharer");

    // Ending: the helper ends, the sharer is told PEER_ENDED, nothing is left behind.
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
    helper.close().await;
    sharer.close().await;
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn lossy_screen_datagrams_reach_the_helper() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (helper, sharer) = relay.paired("contoso", Mode::ViewOnly).await;
    // Datagrams may be lost on a real network; on loopback with an idle session they are
    // not, but send a few and accept the first to arrive so the test asserts delivery,
    // not perfection.
    for i in 0..5u8 {
        sharer
            .unsealed_data()
            .unwrap()
            .send_datagram(Bytes::from(vec![i; 500]))
            .unwrap();
    }
    let datagram = within(helper.unsealed_data().unwrap().read_datagram())
        .await
        .unwrap();
    assert_eq!(datagram.len(), 500);
    relay.stop().await;
}

#[tokio::test]
async fn each_party_sees_the_others_profile_and_the_requested_mode() {
    let relay = TestRelay::start().await;
    let mut helper = relay.helper("contoso").await;
    let mut sharer = relay.sharer("contoso").await;
    assert_eq!(helper.me().unwrap().given_name, "Ada");
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    assert_eq!(created.code.len(), 11, "XXXXX-XXXXX");

    let request = within(sharer.join(&created.code.to_lowercase()))
        .await
        .unwrap();
    let shown_helper = request.helper.unwrap();
    assert_eq!(shown_helper.given_name, "Ada");
    assert_eq!(shown_helper.job_title, "IT Support");
    assert_eq!(shown_helper.tenant_id, "contoso");
    assert_eq!(request.mode, remote_help_proto::v1::Mode::ViewOnly as i32);

    let shown_sharer = within(helper.wait_for_sharer()).await.unwrap();
    assert_eq!(shown_sharer.given_name, "Grace");
    let device = shown_sharer.device.unwrap();
    assert_eq!(device.device_name, "GRACE-LAPTOP");
    assert_eq!(device.platform, "windows");

    let started = within(sharer.accept()).await.unwrap();
    assert_eq!(started.mode, Mode::ViewOnly);
    assert_eq!(
        started.channels,
        vec![Channel::Screen, Channel::Chat, Channel::Keys]
    );
    let helper_view = within(helper.wait_for_start()).await.unwrap();
    assert_eq!(helper_view.session_id, started.session_id);
    assert_eq!(helper_view.mode, started.mode);
    assert_eq!(helper_view.channels, started.channels);
    relay.stop().await;
}

#[tokio::test]
async fn a_sharer_from_another_tenant_is_refused_and_learns_nothing() {
    let relay = TestRelay::builder()
        .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
        .tenant("fabrikam", TokenSigner::generate_es256("f1").unwrap())
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();

    let mut intruder = relay.sharer("fabrikam").await;
    let err = within(intruder.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CrossTenant));
    assert!(!err.to_string().contains("Ada"), "no profile leaks: {err}");

    // The code still works for its own tenant, and the helper saw nothing of the attempt.
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&created.code)).await.unwrap();
    let joined = within(helper.wait_for_sharer()).await.unwrap();
    assert_eq!(joined.tenant_id, "contoso");
    relay.stop().await;
}

#[tokio::test]
async fn unknown_malformed_and_reused_codes_are_refused() {
    let relay = TestRelay::start().await;
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();

    let mut sharer = relay.sharer("contoso").await;
    for bad in ["00000-00000", "not a code", ""] {
        let err = within(sharer.join(bad)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::CodeInvalid), "code {bad:?}");
    }
    // The refusals were not fatal: the same connection can still join.
    within(sharer.join(&created.code)).await.unwrap();

    let mut second = relay.sharer("contoso").await;
    let err = within(second.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeUsed));
    relay.stop().await;
}

#[tokio::test]
async fn an_expired_code_is_refused_and_its_helper_is_told() {
    let relay = TestRelay::builder()
        .config(|c| c.code_ttl = Duration::ZERO)
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    let mut sharer = relay.sharer("contoso").await;
    let err = within(sharer.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeExpired));
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::CodeExpired);
    relay.stop().await;
}

#[tokio::test]
async fn a_declined_session_ends_for_the_helper_with_declined() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let mut helper = relay.helper("contoso").await;
    let mut sharer = relay.sharer("contoso").await;
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    within(sharer.join(&created.code)).await.unwrap();
    within(helper.wait_for_sharer()).await.unwrap();
    within(sharer.decline()).await.unwrap();
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::Declined);
    // No data channel can be opened into a declined session.
    let stream = within(helper.open_unsealed_channel(Channel::Input)).await;
    if let Ok(mut input) = stream {
        let _ = input.send(Bytes::from_static(b"x")).await;
    }
    assert_eq!(relay.handle.stats().sessions, 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_sharer_who_disconnects_is_reported_lost_to_the_helper() {
    let relay = TestRelay::start().await;
    let (mut helper, sharer) = relay.paired("contoso", Mode::ViewOnly).await;
    sharer.close().await;
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::PeerLost);
    helper.close().await;
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[test]
fn a_peer_that_vanishes_silently_is_noticed_by_idle_timeout() {
    // The sharer runs on its own runtime, which is then torn down without closing the
    // connection: no CONNECTION_CLOSE is ever sent, as when a laptop lid shuts.
    let main = tokio::runtime::Runtime::new().unwrap();
    let relay = main.block_on(
        TestRelay::builder()
            .config(|c| {
                c.idle_timeout = Duration::from_millis(1_000);
                c.keep_alive = Duration::from_millis(300);
            })
            .start(),
    );
    let code_and_helper = main.block_on(async {
        let mut helper = relay.helper("contoso").await;
        let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
        (created.code, helper)
    });
    let (code, mut helper) = code_and_helper;

    let doomed = tokio::runtime::Runtime::new().unwrap();
    let sharer = doomed.block_on(async {
        let mut sharer = relay.sharer("contoso").await;
        within(sharer.join(&code)).await.unwrap();
        within(sharer.accept()).await.unwrap();
        sharer
    });
    main.block_on(async {
        within(helper.wait_for_sharer()).await.unwrap();
        within(helper.wait_for_start()).await.unwrap()
    });
    doomed.shutdown_background();
    // Keep the sharer's socket open but unattended; dropping it could send a close.
    std::mem::forget(sharer);

    main.block_on(async {
        assert_eq!(within(helper.wait_for_end()).await, ErrorCode::PeerLost);
        helper.close().await;
        relay.wait_until_empty().await;
        relay.stop().await;
    });
}

#[tokio::test]
async fn shutdown_with_no_drain_time_tells_every_peer() {
    let relay = TestRelay::start().await;
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::FullControl).await;
    let mut idle = relay.helper("contoso").await;
    relay.handle.begin_shutdown();
    assert_eq!(
        within(helper.wait_for_end()).await,
        ErrorCode::RelayShutdown
    );
    assert_eq!(
        within(sharer.wait_for_end()).await,
        ErrorCode::RelayShutdown
    );
    assert_eq!(within(idle.wait_for_end()).await, ErrorCode::RelayShutdown);
    within(relay.handle.stopped()).await;
}

#[tokio::test]
async fn draining_keeps_active_sessions_refuses_new_ones_and_stops_when_they_end() {
    let relay = TestRelay::builder()
        .plaintext_clients()
        .config(|c| c.drain_timeout = STEP * 10)
        .start()
        .await;
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::FullControl).await;
    let mut pending = relay.helper("contoso").await;
    within(pending.create_session(Mode::ViewOnly))
        .await
        .unwrap();

    relay.handle.begin_shutdown();
    // Sessions not yet active end at once.
    assert_eq!(
        within(pending.wait_for_end()).await,
        ErrorCode::RelayShutdown
    );
    // New connections are refused.
    let newcomer = relay
        .connect(relay.tenant("contoso").token(Persona::Helper), Role::Helper)
        .await;
    assert!(
        newcomer.is_err(),
        "a draining relay accepted a new connection"
    );
    // The active session still carries data.
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"still here")))
        .await
        .unwrap();
    let (_, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"still here"
    );
    // When it ends, the relay stops well before its (long) drain deadline.
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
    within(relay.handle.stopped()).await;
}

#[tokio::test]
async fn too_many_failed_joins_close_the_connection() {
    let relay = TestRelay::builder()
        .config(|c| c.limits.max_failed_joins_per_connection = 3)
        .start()
        .await;
    let mut guesser = relay.sharer("contoso").await;
    for _ in 0..2 {
        let err = within(guesser.join("AAAAA-AAAAA")).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::CodeInvalid));
    }
    let err = within(guesser.join("AAAAA-AAAAA")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded));
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_helper_ending_a_pending_session_frees_its_code() {
    let relay = TestRelay::start().await;
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    within(helper.end_session()).await.unwrap();
    let mut sharer = relay.sharer("contoso").await;
    let err = within(sharer.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeInvalid));
    // The helper can open a new session on the same connection.
    within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    relay.stop().await;
}
