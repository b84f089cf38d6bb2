//! A relay that substitutes the parties' public keys (test build with the tap,
//! `--features tap`): the two users' verification codes differ, and nothing sealed by one
//! opens at the other. Its own test binary, since the tap's switch is process-wide.
#![cfg(feature = "tap")]

mod common;

use common::{TestRelay, within};
use remote_help_relay::client::secure;
use remote_help_relay::core::{Channel, Mode, Role};

#[tokio::test]
async fn a_relay_that_substitutes_keys_is_revealed_by_the_verification_codes() {
    let relay = TestRelay::start().await;
    remote_help_relay::tap::substitute_keys(true);
    let (mut helper, mut sharer) = (relay.helper("contoso").await, relay.sharer("contoso").await);
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    within(sharer.join(&created.code)).await.unwrap();
    within(helper.wait_for_sharer()).await.unwrap();
    let ss = within(sharer.accept()).await.unwrap();
    let hs = within(helper.wait_for_start()).await.unwrap();
    let (h, s) = within(async {
        tokio::join!(
            secure::establish(&helper, &hs, Role::Helper),
            secure::establish(&sharer, &ss, Role::Sharer)
        )
    })
    .await;
    remote_help_relay::tap::substitute_keys(false);
    let (h, mut s) = (h.unwrap(), s.unwrap());
    assert_ne!(
        h.verification_code(),
        s.verification_code(),
        "the users would see different codes"
    );
    // And nothing sealed by one opens at the other.
    let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
    within(input.send(b"click")).await.unwrap();
    let (_, mut input_in) = within(s.accept_channel()).await.unwrap();
    let refused = within(input_in.recv()).await.unwrap_err();
    assert!(
        matches!(
            refused,
            remote_help_relay::client::ClientError::E2e(remote_help_relay::e2e::E2eError::Tampered)
        ),
        "{refused}"
    );
    relay.stop().await;
}
