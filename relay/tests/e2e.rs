//! End-to-end encryption over a real relay: both users see the same verification code,
//! sealed channels and datagrams carry content, and a receiver refuses forged, replayed,
//! reordered and truncated streams that arrive over real QUIC.

mod common;

use bytes::Bytes;
use common::{TestRelay, secured, within};
use remote_help_relay::client::secure::SecureSession;
use remote_help_relay::client::{Client, ClientError};
use remote_help_relay::core::{Channel, Mode};
use remote_help_relay::e2e::{E2eError, stream_domain};

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

/// Opens `helper`'s input channel raw (bypassing sealing) and sends `frames`; then finishes.
async fn send_raw_input(helper: &Client, frames: Vec<Vec<u8>>) {
    let mut raw = within(helper.open_channel(Channel::Input)).await.unwrap();
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
