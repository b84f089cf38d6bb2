//! Content profile v1 (PROTOCOL.md §8.8) over a real relay: screen frames of the test card
//! whose decoded counter advances, input events that arrive in order and unchanged, chat
//! both ways, malformed content counted and skipped, the same on unsealed sessions; and
//! `rhelp share --test-pattern` with `rhelp helper` end to end.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{TestRelay, secured, started_with, within};
use remote_help_proto::{ErrorCode, v1};
use remote_help_relay::client::Protection;
use remote_help_relay::client::content::{
    ChatMessage, Content, ContentError, ContentReceiver, ContentSender, ImageFormat, InputEvent,
    Malformed, Modifiers, ScreenFrame, WheelMode,
};
use remote_help_relay::client::secure::{self, SessionChannels};
use remote_help_relay::client::test_card::{self, TestCard};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;

fn events() -> Vec<Content> {
    vec![
        Content::Input(InputEvent::PointerMove { x: 0.5, y: 0.25 }),
        Content::Input(InputEvent::PointerButton {
            button: 0,
            down: true,
            x: 0.5,
            y: 0.25,
        }),
        Content::Input(InputEvent::PointerButton {
            button: 0,
            down: false,
            x: 0.75,
            y: 1.0 / 3.0,
        }),
        Content::Input(InputEvent::Wheel {
            dx: 0.0,
            dy: -3.0,
            mode: WheelMode::Line,
        }),
        Content::Input(InputEvent::Key {
            code: "KeyA".into(),
            down: true,
            modifiers: Modifiers::SHIFT,
        }),
        Content::Input(InputEvent::Key {
            code: "KeyA".into(),
            down: false,
            modifiers: Modifiers::SHIFT,
        }),
        Content::Input(InputEvent::Text("grüße ✓".into())),
        Content::KeyFrameRequest,
    ]
}

/// Sends every event, then reads them back on the other side, in order.
async fn input_round_trip(helper: &SessionChannels, sharer: &mut SessionChannels) {
    let mut input = within(ContentSender::open(helper, Channel::Input, "test"))
        .await
        .unwrap();
    for event in events() {
        within(input.send(&event)).await.unwrap();
    }
    within(input.finish()).await.unwrap();
    let (channel, receiver) = within(sharer.accept_channel()).await.unwrap();
    assert_eq!(channel, Channel::Input);
    let mut received = ContentReceiver::new(channel, receiver);
    for event in events() {
        assert_eq!(within(received.recv()).await.unwrap(), Some(event));
    }
    assert_eq!(within(received.recv()).await.unwrap(), None);
    assert_eq!(received.skipped(), 0);
}

#[tokio::test]
async fn the_test_card_streams_and_its_decoded_counter_advances() {
    let relay = TestRelay::start().await;
    let (_helper, mut h, _sharer, s) = secured(&relay, Mode::FullControl).await;
    let card = TestCard::new(160, 90).unwrap();
    let sender = within(s.open_channel(Channel::Screen)).await.unwrap();
    let mut screen = within(ContentSender::start(sender, Channel::Screen, "test"))
        .await
        .unwrap();
    for n in 0..5u64 {
        let frame = ScreenFrame {
            frame_number: n,
            timestamp_us: n * 100_000,
            width: 160,
            height: 90,
            format: ImageFormat::Png,
            data: Bytes::from(card.png(n).unwrap()),
        };
        within(screen.send(&Content::Screen(frame))).await.unwrap();
    }
    let (channel, receiver) = within(h.accept_channel()).await.unwrap();
    assert_eq!(channel, Channel::Screen);
    let mut frames = ContentReceiver::new(channel, receiver);
    let mut counters = Vec::new();
    for n in 0..5u64 {
        let Some(Content::Screen(frame)) = within(frames.recv()).await.unwrap() else {
            panic!("not a screen frame");
        };
        assert_eq!(frame.frame_number, n);
        assert_eq!((frame.width, frame.height), (160, 90));
        assert_eq!(frame.timestamp_us, n * 100_000);
        let (w, h, rgb) = test_card::decode_png(&frame.data).unwrap();
        assert_eq!((w, h), (160, 90));
        counters.push(card.read_counter(&rgb).expect("a readable counter"));
    }
    assert_eq!(counters, vec![0, 1, 2, 3, 4]);
    relay.stop().await;
}

#[tokio::test]
async fn input_events_arrive_in_order_and_unchanged_on_a_sealed_session() {
    let relay = TestRelay::start().await;
    let (helper, sharer, helper_start, sharer_start) = started_with(
        &relay,
        Mode::FullControl,
        Protection::default(),
        Protection::default(),
    )
    .await;
    let (h, s) = within(async {
        tokio::join!(
            secure::channels(&helper, &helper_start, Role::Helper),
            secure::channels(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    let (h, mut s) = (h.unwrap(), s.unwrap());
    assert!(matches!(h, SessionChannels::Protected(_)));
    input_round_trip(&h, &mut s).await;
    relay.stop().await;
}

#[tokio::test]
async fn the_profile_is_the_same_on_an_unsealed_session() {
    let relay = TestRelay::builder()
        .policy("contoso", |p| p.require_end_to_end = false)
        .start()
        .await;
    let plain = Protection::PlaintextForMeasurement;
    let (helper, sharer, helper_start, sharer_start) =
        started_with(&relay, Mode::FullControl, plain.clone(), plain).await;
    let (h, s) = within(async {
        tokio::join!(
            secure::channels(&helper, &helper_start, Role::Helper),
            secure::channels(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    let (h, mut s) = (h.unwrap(), s.unwrap());
    assert!(matches!(h, SessionChannels::PlaintextForMeasurement(_)));
    input_round_trip(&h, &mut s).await;
    relay.stop().await;
}

#[tokio::test]
async fn chat_text_round_trips_both_ways() {
    let relay = TestRelay::start().await;
    let (_helper, mut h, _sharer, mut s) = secured(&relay, Mode::ViewOnly).await;
    let said = |text: &str| {
        Content::Chat(ChatMessage {
            text: text.into(),
            sent_at_ms: 1_700_000_000_000,
        })
    };
    let sender = within(h.open_channel(Channel::Chat)).await.unwrap();
    let mut to_sharer = within(ContentSender::start(sender, Channel::Chat, "test"))
        .await
        .unwrap();
    let sender = within(s.open_channel(Channel::Chat)).await.unwrap();
    let mut to_helper = within(ContentSender::start(sender, Channel::Chat, "test"))
        .await
        .unwrap();
    within(to_sharer.send(&said("Can you see my pointer? 👋")))
        .await
        .unwrap();
    // In view only the helper asks for a fresh frame on chat (it has no input channel).
    within(to_sharer.send(&Content::KeyFrameRequest))
        .await
        .unwrap();
    within(to_helper.send(&said("Oui, je la vois.")))
        .await
        .unwrap();
    let (channel, receiver) = within(s.accept_channel()).await.unwrap();
    let mut at_sharer = ContentReceiver::new(channel, receiver);
    assert_eq!(
        within(at_sharer.recv()).await.unwrap(),
        Some(said("Can you see my pointer? 👋"))
    );
    assert_eq!(
        within(at_sharer.recv()).await.unwrap(),
        Some(Content::KeyFrameRequest)
    );
    let (channel, receiver) = within(h.accept_channel()).await.unwrap();
    let mut at_helper = ContentReceiver::new(channel, receiver);
    assert_eq!(
        within(at_helper.recv()).await.unwrap(),
        Some(said("Oui, je la vois."))
    );
    relay.stop().await;
}

/// A peer that sends garbage, a member of another channel, an unknown member, an
/// out-of-range event and a second start: each is skipped with its reason and counted,
/// and the good events between and after them arrive.
#[tokio::test]
async fn malformed_content_is_counted_and_skipped() {
    let relay = TestRelay::start().await;
    let (_helper, h, _sharer, mut s) = secured(&relay, Mode::FullControl).await;
    use prost::Message;
    let mut raw = within(h.open_channel(Channel::Input)).await.unwrap();
    let encode = |msg: v1::content::Msg| v1::Content { msg: Some(msg) }.encode_to_vec();
    let start = encode(v1::content::Msg::Start(v1::ContentStart {
        profile: 1,
        software: "raw".into(),
    }));
    let good = encode(v1::content::Msg::Input(v1::InputEvent {
        event: Some(v1::input_event::Event::PointerMove(v1::PointerMove {
            x: 0.5,
            y: 0.5,
        })),
    }));
    let out_of_range = encode(v1::content::Msg::Input(v1::InputEvent {
        event: Some(v1::input_event::Event::PointerMove(v1::PointerMove {
            x: 2.0,
            y: 0.5,
        })),
    }));
    let chat = encode(v1::content::Msg::Chat(v1::ChatMessage {
        text: "wrong channel".into(),
        sent_at_ms: 0,
    }));
    for frame in [
        &start[..],
        &[0xFF, 0x00, 0x13][..],
        &good,
        &chat,
        &[0x78, 0x01][..],
        &out_of_range,
        &start,
        &good,
    ] {
        within(raw.send(frame)).await.unwrap();
    }
    let (channel, receiver) = within(s.accept_channel()).await.unwrap();
    let mut events = ContentReceiver::new(channel, receiver);
    let mut outcomes = Vec::new();
    for _ in 0..7 {
        outcomes.push(match within(events.recv()).await {
            Ok(Some(content)) => Ok(content),
            Err(ContentError::Malformed(why)) => Err(why),
            other => panic!("unexpected {other:?}"),
        });
    }
    let moved = Content::Input(InputEvent::PointerMove { x: 0.5, y: 0.5 });
    assert!(
        matches!(&outcomes[0], Err(Malformed::Undecodable(_))),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[1..],
        [
            Ok(moved.clone()),
            Err(Malformed::WrongChannel {
                what: "a chat message",
                channel: Channel::Input
            }),
            Err(Malformed::Unknown),
            Err(Malformed::Coordinate(2.0)),
            Err(Malformed::SecondStart),
            Ok(moved),
        ]
    );
    assert_eq!(events.skipped(), 5);
    relay.stop().await;
}

/// In view only the helper has no input channel: the relay refuses one (fatal
/// `PROTOCOL_VIOLATION` for the helper, as for any content), so the sharer's SDK never
/// hands an input event, nor even an input channel, to the application.
#[tokio::test]
async fn input_in_view_only_is_refused_and_never_reaches_the_sharer() {
    let relay = TestRelay::start().await;
    let (helper, h, mut sharer, mut s) = secured(&relay, Mode::ViewOnly).await;
    let h = SessionChannels::Protected(h);
    let sent = async {
        let mut input = ContentSender::open(&h, Channel::Input, "t").await?;
        input
            .send(&Content::Input(InputEvent::PointerMove { x: 0.1, y: 0.1 }))
            .await
    };
    // Whether the send itself fails depends on when the relay's refusal arrives; the
    // connection's end does not.
    let _ = within(sent).await;
    let closed = within(helper.connection().closed()).await;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(ErrorCode::ProtocolViolation.to_quic())),
        "{closed:?}"
    );
    within(async {
        tokio::select! {
            accepted = s.accept_channel() => {
                panic!("the sharer was handed {:?}", accepted.map(|(c, _)| c))
            }
            reason = sharer.wait_for_end() => assert_eq!(reason, ErrorCode::PeerLost),
        }
    })
    .await;
    relay.stop().await;
}

/// Lines from a child's stdout, as they come.
fn lines_of(stdout: std::process::ChildStdout) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The binaries as two people run them: `rhelp helper --script` drives input and chat,
/// `rhelp share --test-pattern` streams the card and prints what it receives; the helper
/// prints each frame and keeps the latest picture, whose counter is that frame's number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rhelp_share_test_pattern_and_rhelp_helper_end_to_end() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenant = relay.tenant("contoso");
    let helper_token = dir.path().join("helper.jwt");
    let sharer_token = dir.path().join("sharer.jwt");
    std::fs::write(&helper_token, tenant.token(Persona::Helper)).unwrap();
    std::fs::write(&sharer_token, tenant.token(Persona::Sharer)).unwrap();
    let script_events: Vec<InputEvent> = events()
        .into_iter()
        .filter_map(|c| match c {
            Content::Input(e) => Some(e),
            _ => None,
        })
        .collect();
    let script = dir.path().join("script.txt");
    let mut text = String::from("# what the helper does\n");
    for event in &script_events {
        text.push_str(&format!("{event}\n"));
    }
    text.push_str("chat \"thanks, I see it\"\nkey-frame-request\n");
    std::fs::write(&script, text).unwrap();
    let frames_dir = dir.path().join("frames");
    let addr = relay.addr().to_string();
    let pin = relay.handle.fingerprint().to_string();
    let rhelp = env!("CARGO_BIN_EXE_rhelp");

    let helper = Command::new(rhelp)
        .args([
            "helper",
            "--relay",
            &addr,
            "--pin",
            &pin,
            "--seconds",
            "600",
        ])
        .arg("--token")
        .arg(&helper_token)
        .arg("--script")
        .arg(&script)
        .arg("--save-frames")
        .arg(&frames_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut helper = Running(helper);
    let mut helper_out = lines_of(helper.0.stdout.take().unwrap());
    let code = loop {
        let line = within(helper_out.recv()).await.expect("helper exited");
        if let Some(rest) = line.strip_prefix("Session code: ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let share = Command::new(rhelp)
        .args([
            "share",
            "--relay",
            &addr,
            "--pin",
            &pin,
            "--yes",
            "--test-pattern",
        ])
        .args([
            "--fps", "20", "--width", "160", "--height", "90", "--code", &code,
        ])
        .arg("--token")
        .arg(&sharer_token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut share = Running(share);
    let mut share_out = lines_of(share.0.stdout.take().unwrap());

    // The sharer prints every input event, in order, in the script's own line format.
    let mut received = Vec::new();
    let mut chat = None;
    let mut refreshes = 0;
    while received.len() < script_events.len() || chat.is_none() || refreshes == 0 {
        let line = within(share_out.recv()).await.expect("rhelp share exited");
        if let Some(rest) = line.strip_prefix("input ") {
            let (index, event) = rest.split_once(' ').unwrap();
            assert_eq!(index.parse::<usize>().unwrap(), received.len(), "{line}");
            received.push(event.parse::<InputEvent>().unwrap());
        } else if let Some(text) = line.strip_prefix("chat ") {
            chat = Some(serde_json::from_str::<String>(text).unwrap());
        } else if line == "key-frame-request" {
            refreshes += 1;
        }
        assert!(!line.starts_with("skipped"), "{line}");
    }
    assert_eq!(received, script_events);
    assert_eq!(chat.as_deref(), Some("thanks, I see it"));

    // The helper prints frames with increasing numbers and keeps the latest picture.
    let mut numbers = Vec::new();
    while numbers.len() < 5 {
        let line = within(helper_out.recv()).await.expect("helper exited");
        if let Some(rest) = line.strip_prefix("frame ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(words[1..3], ["160x90", "png"], "{line}");
            numbers.push(words[0].parse::<u64>().unwrap());
        }
    }
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    // The sharer vanishes: the helper hears PEER_LOST and exits on its own, after its last
    // frame line. It saves each frame before printing its line, so the picture it kept is
    // exactly the last frame it printed.
    share.0.kill().unwrap();
    share.0.wait().unwrap();
    let mut last = *numbers.last().unwrap();
    while let Some(line) = within(helper_out.recv()).await {
        if let Some(rest) = line.strip_prefix("frame ") {
            last = rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
    let out = within(tokio::task::spawn_blocking(move || {
        let mut stderr = String::new();
        std::io::Read::read_to_string(helper.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (helper.0.wait().unwrap(), stderr)
    }))
    .await
    .unwrap();
    assert!(!out.0.success());
    assert!(out.1.contains("PEER_LOST"), "{}", out.1);
    let saved = std::fs::read(frames_dir.join("latest.png")).unwrap();
    let (w, h, rgb) = test_card::decode_png(&saved).unwrap();
    assert_eq!((w, h), (160, 90));
    let card = TestCard::new(160, 90).unwrap();
    assert_eq!(card.read_counter(&rgb), Some(last % 1_000_000));
    relay.stop().await;
}

/// A child process, killed and reaped if a failed assertion leaves it running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A script with a line that is not an event, and a test card of an impossible size, are
/// usage errors named before anything connects (the relay address here has no relay).
#[test]
fn rhelp_refuses_a_bad_script_line_and_a_bad_card_size_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.txt");
    std::fs::write(&script, "pointer-move 0.5 0.5\npointer-move 1.5 0.5\n").unwrap();
    let token = dir.path().join("token.jwt");
    std::fs::write(&token, "not used").unwrap();
    let pin = "00".repeat(32);
    let rhelp = env!("CARGO_BIN_EXE_rhelp");
    let out = Command::new(rhelp)
        .args([
            "helper",
            "--relay",
            "127.0.0.1:9",
            "--pin",
            &pin,
            "--script",
        ])
        .arg(&script)
        .arg("--token")
        .arg(&token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 2") && stderr.contains("1.5"),
        "{stderr}"
    );
    let out = Command::new(rhelp)
        .args([
            "share",
            "--relay",
            "127.0.0.1:9",
            "--pin",
            &pin,
            "--code",
            "X",
        ])
        .args([
            "--test-pattern",
            "--width",
            "10",
            "--height",
            "10",
            "--token",
        ])
        .arg(&token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("test card size 10x10"), "{stderr}");
}
