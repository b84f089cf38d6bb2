//! A relay that substitutes the parties' public keys (test build with the tap,
//! `--features tap`): the two users' verification codes differ, and nothing sealed by one
//! opens at the other, whichever suite the session uses. Its own test binary, since the
//! tap's switch is process-wide.
#![cfg(feature = "tap")]

mod common;

use common::{TestRelay, secured_with, within};
use remote_help_relay::client::Protection;
use remote_help_relay::core::{Channel, Mode};
use remote_help_relay::e2e::Suite;

#[tokio::test]
async fn a_relay_that_substitutes_keys_is_revealed_by_the_verification_codes() {
    let relay = TestRelay::start().await;
    for suite in Suite::ALL {
        let only = || Protection::EndToEnd(vec![suite]);
        remote_help_relay::tap::substitute_keys(true);
        let (_helper, h, _sharer, s) =
            secured_with(&relay, Mode::FullControl, only(), only()).await;
        remote_help_relay::tap::substitute_keys(false);
        assert_eq!((h.suite(), s.suite()), (suite, suite));
        let mut s = s;
        assert_ne!(
            h.verification_code(),
            s.verification_code(),
            "the users would see different codes ({suite:?})"
        );
        // And nothing sealed by one opens at the other.
        let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
        within(input.send(b"click")).await.unwrap();
        let (_, mut input_in) = within(s.accept_channel()).await.unwrap();
        let refused = within(input_in.recv()).await.unwrap_err();
        assert!(
            matches!(
                refused,
                remote_help_relay::client::ClientError::E2e(
                    remote_help_relay::e2e::E2eError::Tampered
                )
            ),
            "{suite:?}: {refused}"
        );
    }
    relay.stop().await;
}
