//! A relay that lies about a peer's certificate on the packet path (the test tap,
//! `--features tap`): it tells the helper a certificate hash that is not the sharer's. The
//! helper's pinned TLS then refuses the sharer's peer connection, and both sides get an error
//! instead of channels — nothing flows, nothing falls back to an unprotected path. A relay
//! that also terminated both handshakes (with certificates of its own towards each party)
//! would give the two sides different verification codes: that part is shown over real UDP
//! with a man in the middle in `remote_help_sdk::client::peer`'s tests
//! (`a_man_in_the_middle_gives_the_two_sides_different_codes`).
//!
//! Its own test binary: the tap is process-wide.
#![cfg(feature = "tap")]

mod common;

use common::{TestRelay, join_and_consent, within};
use remote_help_relay::client::secure;
use remote_help_relay::core::{Mode, Role};
use remote_help_relay::tap;

#[tokio::test]
async fn a_substituted_peer_certificate_stops_the_peer_connection_on_both_sides() {
    let relay = TestRelay::builder().packet_path_clients().start().await;
    tap::substitute_peer_certificate(Role::Helper, Some([0x5A; 32]));
    let (mut helper, mut sharer) = (relay.helper("contoso").await, relay.sharer("contoso").await);
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
    tap::substitute_peer_certificate(Role::Helper, None);
    let (h, s) = (h.unwrap_err(), s.unwrap_err());
    // The sharer hears the helper's TLS refusal; the helper, its own.
    assert!(
        format!("{s}").to_lowercase().contains("certificate")
            || format!("{s}").to_lowercase().contains("crypto"),
        "sharer: {s}"
    );
    assert!(
        format!("{h}").to_lowercase().contains("certificate")
            || format!("{h}").to_lowercase().contains("crypto"),
        "helper: {h}"
    );
    relay.stop().await;
}
