//! Backpressure: a helper that stops reading the screen stalls its own sharer through
//! QUIC flow control, the relay buffers no more than its configured windows, another
//! session on the same relay runs normally meanwhile, and when the reader resumes every
//! byte arrives, in order.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestRelay, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::config::Limits;
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::transport::ClientTransport;

const FRAME: usize = 16 * 1024;
/// Far more than any window: if the relay buffered without bound, all of it would go.
const ATTEMPTED_FRAMES: usize = 4096; // 64 MiB

/// A write that has not completed after this long is taken as stalled. A slow machine
/// can only make the test stop writing earlier, which keeps every assertion true.
const STALL: Duration = Duration::from_millis(1500);

fn limits() -> Limits {
    Limits {
        stream_receive_window: 64 * 1024,
        connection_receive_window: 256 * 1024,
        send_window: 256 * 1024,
        ..Limits::default()
    }
}

fn client_transport() -> ClientTransport {
    ClientTransport {
        stream_receive_window: 64 * 1024,
        connection_receive_window: 256 * 1024,
        send_window: 256 * 1024,
        ..ClientTransport::default()
    }
}

#[tokio::test]
async fn a_slow_reader_stalls_its_sender_within_the_relays_bounds_and_no_one_else() {
    let relay = TestRelay::builder()
        .config(|c| c.limits = limits())
        .start()
        .await;
    let contoso = relay.tenant("contoso");
    let mut helper_options = relay.options(contoso.token(Persona::Helper), Role::Helper);
    let mut sharer_options = relay.options(contoso.token(Persona::Sharer), Role::Sharer);
    helper_options.transport = client_transport();
    sharer_options.transport = client_transport();
    let mut helper = within(remote_help_relay::client::Client::connect(helper_options))
        .await
        .unwrap();
    let mut sharer = within(remote_help_relay::client::Client::connect(sharer_options))
        .await
        .unwrap();
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    common::join_and_consent(&mut helper, &mut sharer, &created.code).await;

    // The sharer streams numbered frames; the helper accepts the stream but reads nothing.
    let mut screen = within(sharer.open_channel(Channel::Screen)).await.unwrap();
    let mut accepted_frames = 0usize;
    for i in 0..ATTEMPTED_FRAMES {
        let frame = Bytes::from(vec![(i % 251) as u8; FRAME]);
        match tokio::time::timeout(STALL, screen.send(frame)).await {
            Ok(result) => {
                result.unwrap();
                accepted_frames += 1;
            }
            Err(_) => break,
        }
    }
    let accepted_bytes = accepted_frames * (FRAME + 4);

    // What can be in flight. A QUIC sender never accepts writes beyond its peer's
    // flow-control credit, so the sharer's accepted bytes are what the relay holds in its
    // receive window for the stream, plus what it wrote towards the helper (at most the
    // helper's stream window), plus one relay read chunk (64 KiB) in hand, plus the frame
    // being written when the stall hit.
    let l = limits();
    let c = client_transport();
    let bound = l.stream_receive_window + c.stream_receive_window + 64 * 1024 + (FRAME + 4) as u64;
    assert!(
        accepted_frames < ATTEMPTED_FRAMES,
        "the sender never stalled: the relay buffered everything"
    );
    assert!(
        accepted_bytes as u64 <= bound,
        "{accepted_bytes} bytes went out before the stall; the windows allow at most {bound}"
    );

    // Meanwhile another session on the same relay is unaffected: a full exchange completes.
    let (mut other_helper, mut other_sharer) = relay.paired("contoso", Mode::FullControl).await;
    let mut input = within(other_helper.open_channel(Channel::Input))
        .await
        .unwrap();
    let mut other_screen = within(other_sharer.open_channel(Channel::Screen))
        .await
        .unwrap();
    for i in 0..50u32 {
        within(input.send(Bytes::copy_from_slice(&i.to_be_bytes())))
            .await
            .unwrap();
    }
    for _ in 0..64 {
        within(other_screen.send(Bytes::from(vec![1u8; FRAME])))
            .await
            .unwrap();
    }
    let (_, mut input_in) = within(other_sharer.accept_channel()).await.unwrap();
    for i in 0..50u32 {
        assert_eq!(
            &within(input_in.recv()).await.unwrap().unwrap()[..],
            &i.to_be_bytes()
        );
    }
    let (_, mut other_screen_in) = within(other_helper.accept_channel()).await.unwrap();
    for _ in 0..64 {
        assert_eq!(
            within(other_screen_in.recv()).await.unwrap().unwrap().len(),
            FRAME
        );
    }
    within(other_helper.end_session()).await.unwrap();
    assert_eq!(
        within(other_sharer.wait_for_end()).await,
        ErrorCode::PeerEnded
    );

    // The slow reader catches up: every accepted frame arrives, in order, intact.
    let (channel, mut screen_in) = within(helper.accept_channel()).await.unwrap();
    assert_eq!(channel, Channel::Screen);
    let finisher = tokio::spawn(async move {
        // The write that stalled may complete once the reader drains; then finish.
        screen.finish().await
    });
    for i in 0..accepted_frames {
        let frame = within(screen_in.recv()).await.unwrap().unwrap();
        assert_eq!(frame.len(), FRAME);
        assert!(
            frame.iter().all(|&b| b == (i % 251) as u8),
            "frame {i} corrupted or out of order"
        );
    }
    within(finisher).await.unwrap().unwrap();
    // The relay counted the stalls of that screen stream.
    let (_, metrics) =
        common::http(relay.handle.admin_addr().unwrap(), "GET", "/metrics", None).await;
    let stalls: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("relay_backpressure_stalls_total{") && l.contains("channel=\"screen\"")
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    assert!(stalls > 0.0, "no backpressure stall counted:\n{metrics}");
    within(helper.end_session()).await.unwrap();
    relay.stop().await;
}
