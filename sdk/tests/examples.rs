//! The SDK's examples, run against a real relay in this process (over QUIC on 127.0.0.1):
//! the helper creates a session, the sharer joins with its code and consents, the test card
//! flows one way and an input event the other, sealed end to end. The examples' own `run`
//! functions are compiled into this test, so what the README shows is what is tested.
//!
//! The relay is a dev-dependency: the SDK itself does not depend on the daemon.

#[allow(dead_code)]
#[path = "../examples/helper.rs"]
mod helper;
#[allow(dead_code)]
#[path = "../examples/share_test_card.rs"]
mod share_test_card;

use std::time::Duration;

use remote_help_relay::dev::{self, Persona};
use remote_help_relay::server;
use remote_help_sdk::client::ClientOptions;
use remote_help_sdk::session::Role;
use remote_help_sdk::tls::RelayTrust;

/// Generous: a session on loopback takes milliseconds; this only stops a hung test.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_hold_a_protected_session_through_a_relay() {
    let state = tempfile::tempdir().unwrap();
    let (mut config, signer) = dev::config(state.path()).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.drain_timeout = Duration::from_secs(1);
    let relay = server::spawn(config).unwrap();
    let options = |persona, role| {
        ClientOptions::new(
            relay.local_addr(),
            RelayTrust::Pin(relay.fingerprint()),
            dev::mint(&signer, persona, None, 600).unwrap(),
            role,
        )
    };
    let helper_options = options(Persona::Helper, Role::Helper);
    let sharer_options = options(Persona::Sharer, Role::Sharer);

    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let helper = tokio::spawn(async move {
        helper::run(helper_options, 3, |code| {
            let _ = code_tx.send(code.to_string());
        })
        .await
        .map_err(|e| e.to_string())
    });
    let code = tokio::time::timeout(LIMIT, code_rx).await.unwrap().unwrap();
    let sharer = tokio::spawn(async move {
        // The sharer ends the session once the helper's pointer move has arrived, which the
        // helper sends after its third frame: both counts are certain when it ends.
        share_test_card::run(sharer_options, &code, 50, 1)
            .await
            .map_err(|e| e.to_string())
    });

    let helper = tokio::time::timeout(LIMIT, helper).await.unwrap().unwrap();
    let sharer = tokio::time::timeout(LIMIT, sharer).await.unwrap().unwrap();
    let (helper, sharer) = (helper.unwrap(), sharer.unwrap());
    assert!(helper.frames >= 3, "received {} frames", helper.frames);
    assert!(
        sharer.frames >= helper.frames,
        "sent {} frames",
        sharer.frames
    );
    assert_eq!(sharer.input_events, ["pointer-move 0.5 0.5"]);
    assert!(!helper.verification_code.is_empty());
    assert_eq!(helper.verification_code, sharer.verification_code);
    relay.shutdown().await;
}
