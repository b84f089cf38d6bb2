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
        .plaintext_clients()
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
    let mut screen = within(sharer.open_unsealed_channel(Channel::Screen))
        .await
        .unwrap();
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
    let mut input = within(other_helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    let mut other_screen = within(other_sharer.open_unsealed_channel(Channel::Screen))
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
    let (_, mut input_in) = within(other_sharer.accept_unsealed_channel())
        .await
        .unwrap();
    for i in 0..50u32 {
        assert_eq!(
            &within(input_in.recv()).await.unwrap().unwrap()[..],
            &i.to_be_bytes()
        );
    }
    let (_, mut other_screen_in) = within(other_helper.accept_unsealed_channel())
        .await
        .unwrap();
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
    let (channel, mut screen_in) = within(helper.accept_unsealed_channel()).await.unwrap();
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

/// Relay windows where the connection window binds: smaller than one stream's window, so
/// several channels together can never have more than it in flight to the relay.
const MANY_STREAM_WINDOW: u64 = 1024 * 1024;
const MANY_CONNECTION_WINDOW: u64 = 256 * 1024;
/// The stalled helper's windows: what the relay can have forwarded towards it.
const HELPER_WINDOW: u64 = 64 * 1024;
/// The relay's read chunk (`server::forward`): what one forwarder may hold in hand.
const RELAY_CHUNK: u64 = 64 * 1024;

#[tokio::test]
async fn several_channels_to_a_stalled_reader_are_bounded_by_the_connection_window() {
    let relay = TestRelay::builder()
        .plaintext_clients()
        .config(|c| {
            c.limits = Limits {
                stream_receive_window: MANY_STREAM_WINDOW,
                connection_receive_window: MANY_CONNECTION_WINDOW,
                send_window: 256 * 1024,
                ..Limits::default()
            }
        })
        .start()
        .await;
    let contoso = relay.tenant("contoso");
    let mut helper_options = relay.options(contoso.token(Persona::Helper), Role::Helper);
    let mut sharer_options = relay.options(contoso.token(Persona::Sharer), Role::Sharer);
    helper_options.transport = ClientTransport {
        stream_receive_window: HELPER_WINDOW,
        connection_receive_window: HELPER_WINDOW,
        ..ClientTransport::default()
    };
    // The sharer's own send window is far larger than anything the relay may allow, so
    // only the relay's flow control can stop it.
    sharer_options.transport = ClientTransport {
        send_window: 64 * 1024 * 1024,
        ..ClientTransport::default()
    };
    let mut helper = within(remote_help_relay::client::Client::connect(helper_options))
        .await
        .unwrap();
    let mut sharer = within(remote_help_relay::client::Client::connect(sharer_options))
        .await
        .unwrap();
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    common::join_and_consent(&mut helper, &mut sharer, &created.code).await;

    // The sharer writes as fast as it can on every channel it may send on; the helper
    // reads nothing.
    let channels = [Channel::Screen, Channel::Chat, Channel::Keys];
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for channel in channels {
        let mut out = within(sharer.open_unsealed_channel(channel)).await.unwrap();
        let accepted = accepted.clone();
        writers.spawn(async move {
            loop {
                out.send(Bytes::from(vec![7u8; FRAME])).await.unwrap();
                accepted.fetch_add((FRAME + 4) as u64, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }

    // Wait until the sharer's QUIC stack reports being blocked by the relay's flow control:
    // the connection's (DATA_BLOCKED) or a stream's (STREAM_DATA_BLOCKED), whichever binds.
    let connection = sharer.connection().clone();
    let stats = within(async {
        loop {
            let stats = connection.stats();
            if stats.frame_tx.data_blocked > 0 || stats.frame_tx.stream_data_blocked > 0 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);

    // A QUIC sender never writes beyond its peer's credit, so what the sharer got rid of is
    // what the relay holds unread (its connection window), plus what its forwarders took
    // in hand (a chunk each), plus what they wrote to the helper (the helper's connection
    // window). With per-stream windows only, it would be three times a stream window.
    let bound = MANY_CONNECTION_WINDOW + channels.len() as u64 * RELAY_CHUNK + HELPER_WINDOW;
    assert!(
        accepted <= bound,
        "{accepted} bytes left the sharer while its reader was stalled; the relay's windows \
         allow at most {bound} (DATA_BLOCKED {}, STREAM_DATA_BLOCKED {})",
        stats.frame_tx.data_blocked,
        stats.frame_tx.stream_data_blocked
    );
    assert!(
        accepted >= MANY_CONNECTION_WINDOW / 2,
        "only {accepted} bytes went out: the relay did not take the data it had credit for"
    );
    assert_eq!(
        stats.frame_tx.stream_data_blocked, 0,
        "a stream window bound before the connection window"
    );
    writers.abort_all();
    within(helper.end_session()).await.unwrap();
    relay.stop().await;
}
