//! With a tap on the relay's forwarding path (test build, `--features tap`): the relay never
//! sees the content of an end-to-end protected session, while the same tap does see the
//! content of an unprotected one (so the tap works).
#![cfg(feature = "tap")]

mod common;

use bytes::Bytes;
use common::{TestRelay, secured_with, within};
use remote_help_relay::client::Protection;
use remote_help_relay::core::{Channel, Mode};
use remote_help_relay::e2e::Suite;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_relay_never_sees_protected_content() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    remote_help_relay::tap::enable();

    // Every suite, each in its own session: both parties announce only that suite.
    for suite in Suite::ALL {
        let only = || Protection::EndToEnd(vec![suite]);
        let (_helper, h, _sharer, s) =
            secured_with(&relay, Mode::FullControl, only(), only()).await;
        assert_eq!((h.suite(), s.suite()), (suite, suite));
        let (mut h, mut s) = (h, s);
        let screen_secret = b"TOP-SECRET-SCREEN-PIXELS".repeat(100);
        let keystrokes = b"PASSWORD-hunter2-KEYSTROKES";
        let chat_secret = b"CHAT-SECRET-MEET-AT-NOON";
        let mut screen = within(s.open_channel(Channel::Screen)).await.unwrap();
        within(screen.send(&screen_secret)).await.unwrap();
        s.send_datagram(b"DATAGRAM-SECRET-FRAME").unwrap();
        let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
        within(input.send(keystrokes)).await.unwrap();
        let mut chat = within(h.open_channel(Channel::Chat)).await.unwrap();
        within(chat.send(chat_secret)).await.unwrap();
        let (_, mut screen_in) = within(h.accept_channel()).await.unwrap();
        assert_eq!(
            within(screen_in.recv()).await.unwrap().unwrap(),
            screen_secret
        );
        assert_eq!(
            within(h.read_datagram()).await.unwrap(),
            b"DATAGRAM-SECRET-FRAME"
        );
        for _ in 0..2 {
            let (_, mut rx) = within(s.accept_channel()).await.unwrap();
            within(rx.recv()).await.unwrap().unwrap();
        }

        let seen = remote_help_relay::tap::take();
        assert!(
            seen.len() > screen_secret.len(),
            "the tap recorded the sealed traffic"
        );
        for secret in [
            &b"TOP-SECRET-SCREEN-PIXELS"[..],
            keystrokes,
            chat_secret,
            b"DATAGRAM-SECRET-FRAME",
        ] {
            assert!(
                !contains(&seen, secret),
                "the relay saw {:?}",
                String::from_utf8_lossy(secret)
            );
        }
    }

    // Control: without end-to-end protection, the same tap does see content.
    let (_h2, s2) = relay.paired("contoso", Mode::ViewOnly).await;
    let mut plain = within(s2.open_unsealed_channel(Channel::Screen))
        .await
        .unwrap();
    within(plain.send(Bytes::from_static(b"PLAIN-VISIBLE-MARKER")))
        .await
        .unwrap();
    let (_, mut plain_in) = within(_h2.accept_unsealed_channel()).await.unwrap();
    within(plain_in.recv()).await.unwrap().unwrap();
    assert!(contains(
        &remote_help_relay::tap::take(),
        b"PLAIN-VISIBLE-MARKER"
    ));
    relay.stop().await;
}
