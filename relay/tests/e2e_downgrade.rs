//! A relay that rewrites the end-to-end announcements in `SessionStarted` (test build with
//! the tap, `--features tap`), to force a weaker suite or none: the announcements are bound
//! into the transcript, so the two sides end up with different keys and different
//! verification codes; a rewritten choice alone is caught at once; a peer said to announce
//! nothing gets no content. Its own test binary, since the tap's switch is process-wide.
#![cfg(feature = "tap")]

mod common;

use common::{TestRelay, started_with, within};
use remote_help_relay::client::secure::{self, SecureSession};
use remote_help_relay::client::{Client, ClientError, Protection, SessionStart};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::e2e::{E2eError, Suite};
use remote_help_relay::tap;

/// A session in which the relay tells the helper and the sharer what `to_helper` and
/// `to_sharer` say (suite, the peer's list; `None`: the truth).
async fn lied_to(
    relay: &TestRelay,
    to_helper: Option<(u32, Vec<u32>)>,
    to_sharer: Option<(u32, Vec<u32>)>,
) -> (Client, Client, SessionStart, SessionStart) {
    tap::rewrite_announcement(Role::Helper, to_helper);
    tap::rewrite_announcement(Role::Sharer, to_sharer);
    let started = started_with(
        relay,
        Mode::FullControl,
        Protection::default(),
        Protection::default(),
    )
    .await;
    tap::rewrite_announcement(Role::Helper, None);
    tap::rewrite_announcement(Role::Sharer, None);
    started
}

/// Both sides run the key exchange after the relay said what `lied_to` made it say.
async fn exchanged(
    relay: &TestRelay,
    to_helper: Option<(u32, Vec<u32>)>,
    to_sharer: Option<(u32, Vec<u32>)>,
) -> (Client, SecureSession, Client, SecureSession) {
    let (helper, sharer, helper_start, sharer_start) = lied_to(relay, to_helper, to_sharer).await;
    let (h, s) = within(async {
        tokio::join!(
            secure::establish(&helper, &helper_start, Role::Helper),
            secure::establish(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    (helper, h.unwrap(), sharer, s.unwrap())
}

/// The helper's key exchange alone (it is expected to stop before sending anything).
async fn helper_exchange(
    relay: &TestRelay,
    to_helper: Option<(u32, Vec<u32>)>,
) -> Result<SecureSession, ClientError> {
    let (helper, _sharer, helper_start, _) = lied_to(relay, to_helper, None).await;
    within(secure::establish(&helper, &helper_start, Role::Helper)).await
}

#[tokio::test]
async fn a_relay_that_rewrites_the_announcements_is_revealed() {
    let relay = TestRelay::start().await;
    let all: Vec<u32> = Suite::ALL.iter().map(|s| s.id()).collect();

    // The truth: both announce 1, 2; the helper's order picks 1.
    let (_h, h, _s, s) = exchanged(&relay, None, None).await;
    assert_eq!(
        (h.suite(), s.suite()),
        (Suite::X25519ChaCha20Poly1305, Suite::X25519ChaCha20Poly1305)
    );
    assert_eq!(h.verification_code(), s.verification_code());

    // Downgrade attempts that each side finds consistent on its own: the helper is told
    // the sharer announced only 2, the sharer is told the helper announced only 2. Each
    // side's transcript holds a list the other never sent.
    for (to_helper, to_sharer) in [
        (Some((2, vec![2])), Some((2, vec![2]))),
        (Some((2, vec![2])), None),
        (None, Some((2, vec![2]))),
    ] {
        let (_h, h, _s, mut s) = exchanged(&relay, to_helper.clone(), to_sharer.clone()).await;
        assert_ne!(
            h.verification_code(),
            s.verification_code(),
            "told helper {to_helper:?}, sharer {to_sharer:?}: the users would see different codes"
        );
        let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
        within(input.send(b"click")).await.unwrap();
        let (_, mut input_in) = within(s.accept_channel()).await.unwrap();
        let refused = within(input_in.recv()).await.unwrap_err();
        assert!(
            matches!(refused, ClientError::E2e(E2eError::Tampered)),
            "{refused}"
        );
    }

    // A rewritten choice alone: caught before any key is sent.
    let h = helper_exchange(&relay, Some((2, all.clone()))).await;
    assert!(
        matches!(
            h,
            Err(ClientError::E2e(E2eError::SuiteMismatch {
                announced: 2,
                computed: 1
            }))
        ),
        "{h:?}"
    );

    // Told the peer announced nothing: nothing is sent to it.
    let h = helper_exchange(&relay, Some((0, Vec::new()))).await;
    assert!(
        matches!(h, Err(ClientError::E2e(E2eError::PeerUnprotected))),
        "{h:?}"
    );
    relay.stop().await;
}
