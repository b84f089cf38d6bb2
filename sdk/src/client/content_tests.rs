use super::*;

fn started(channel: Channel) -> (ContentEncoder, ContentDecoder) {
    let mut encoder = ContentEncoder::new(channel);
    let mut decoder = ContentDecoder::new(channel);
    let start = encoder.start("test").unwrap();
    assert_eq!(decoder.decode(&start), Ok(None));
    (encoder, decoder)
}

fn events() -> Vec<InputEvent> {
    vec![
        InputEvent::PointerMove { x: 0.5, y: 0.25 },
        InputEvent::PointerMove { x: 0.0, y: 1.0 },
        InputEvent::PointerButton {
            button: 2,
            down: true,
            x: 0.1,
            y: 0.9,
        },
        InputEvent::PointerButton {
            button: 0,
            down: false,
            x: 1.0 / 3.0,
            y: 1e-9,
        },
        InputEvent::Wheel {
            dx: 0.0,
            dy: -120.5,
            mode: WheelMode::Pixel,
        },
        InputEvent::Wheel {
            dx: 3.0,
            dy: 0.0,
            mode: WheelMode::Page,
        },
        InputEvent::Key {
            code: "KeyA".into(),
            down: true,
            modifiers: Modifiers::SHIFT.with(Modifiers::META),
        },
        InputEvent::Key {
            code: "ShiftLeft".into(),
            down: false,
            modifiers: Modifiers::NONE,
        },
        InputEvent::Text("héllo \"wörld\"\n✓".into()),
    ]
}

fn png_frame(frame_number: u64, data_len: usize) -> ScreenFrame {
    let mut data = PNG_SIGNATURE.to_vec();
    data.resize(data_len, 0);
    ScreenFrame {
        frame_number,
        timestamp_us: 1_000_000,
        width: 1280,
        height: 720,
        format: ImageFormat::Png,
        data: Bytes::from(data),
    }
}

#[test]
fn every_input_event_survives_encoding_and_decoding_unchanged() {
    let (mut encoder, mut decoder) = started(Channel::Input);
    for event in events() {
        let frame = encoder.encode(&Content::Input(event.clone())).unwrap();
        assert_eq!(decoder.decode(&frame), Ok(Some(Content::Input(event))));
    }
    let frame = encoder.encode(&Content::KeyFrameRequest).unwrap();
    assert_eq!(decoder.decode(&frame), Ok(Some(Content::KeyFrameRequest)));
}

#[test]
fn every_input_event_survives_the_line_format_unchanged() {
    for event in events() {
        let line = event.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(line.parse::<InputEvent>(), Ok(event), "{line}");
    }
    assert_eq!(
        InputEvent::PointerMove { x: 0.5, y: 0.25 }.to_string(),
        "pointer-move 0.5 0.25"
    );
    assert_eq!(
        "key KeyA down shift+control".parse::<InputEvent>(),
        Ok(InputEvent::Key {
            code: "KeyA".into(),
            down: true,
            modifiers: Modifiers::SHIFT.with(Modifiers::CONTROL)
        })
    );
    for bad in [
        "pointer-move 1.5 0",
        "pointer-move NaN 0",
        "pointer-button 32 down 0 0",
        "wheel inf 0 pixel",
        "wheel 0 0 furlong",
        "key Key-A down none",
        "key KeyA sideways none",
        "key KeyA down hyper",
        "text \"\"",
        "text unquoted",
        "jump 1 2",
    ] {
        assert!(bad.parse::<InputEvent>().is_err(), "{bad}");
    }
}

#[test]
fn screen_frames_and_chat_survive_unchanged() {
    let (mut encoder, mut decoder) = started(Channel::Screen);
    for n in [0, 1, 5] {
        let frame = png_frame(n, 100);
        let bytes = encoder.encode(&Content::Screen(frame.clone())).unwrap();
        assert_eq!(decoder.decode(&bytes), Ok(Some(Content::Screen(frame))));
    }
    let mut jpeg = png_frame(6, 0);
    jpeg.format = ImageFormat::Jpeg;
    jpeg.data = Bytes::from_static(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]);
    let bytes = encoder.encode(&Content::Screen(jpeg.clone())).unwrap();
    assert_eq!(decoder.decode(&bytes), Ok(Some(Content::Screen(jpeg))));

    let (mut encoder, mut decoder) = started(Channel::Chat);
    let chat = Content::Chat(ChatMessage {
        text: "bonjour, ça va ?".into(),
        sent_at_ms: 1_700_000_000_000,
    });
    let bytes = encoder.encode(&chat).unwrap();
    assert_eq!(decoder.decode(&bytes), Ok(Some(chat)));
}

/// Every rule a receiver applies, each refusal leaving the decoder able to take the next
/// frame; and the encoder refuses the same content rather than send it.
#[test]
fn malformed_frames_are_refused_with_their_reason_and_the_stream_goes_on() {
    let mut decoder = ContentDecoder::new(Channel::Input);
    let event = |e: InputEvent| {
        v1::Content {
            msg: Some(v1::content::Msg::Input(e.to_wire())),
        }
        .encode_to_vec()
    };
    let move_ = event(InputEvent::PointerMove { x: 0.5, y: 0.5 });
    assert_eq!(decoder.decode(&move_), Err(Malformed::NotStarted));
    let start = |profile| {
        v1::Content {
            msg: Some(v1::content::Msg::Start(v1::ContentStart {
                profile,
                software: String::new(),
            })),
        }
        .encode_to_vec()
    };
    assert_eq!(
        decoder.decode(&start(2)),
        Err(Malformed::UnsupportedProfile(2))
    );
    assert_eq!(decoder.decode(&move_), Err(Malformed::NotStarted));
    assert_eq!(decoder.decode(&start(1)), Ok(None));
    assert_eq!(decoder.decode(&start(1)), Err(Malformed::SecondStart));
    assert!(matches!(
        decoder.decode(&[0xFF, 0xFF, 0xFF]),
        Err(Malformed::Undecodable(_))
    ));
    // Field 15 (varint): a member a later profile might add.
    assert_eq!(decoder.decode(&[0x78, 0x01]), Err(Malformed::Unknown));
    assert_eq!(decoder.decode(&[]), Err(Malformed::Unknown));
    assert_eq!(decoder.decode(&[0x1A, 0x00]), Err(Malformed::UnknownInput));
    let chat = v1::Content {
        msg: Some(v1::content::Msg::Chat(v1::ChatMessage {
            text: "hi".into(),
            sent_at_ms: 0,
        })),
    }
    .encode_to_vec();
    assert_eq!(
        decoder.decode(&chat),
        Err(Malformed::WrongChannel {
            what: "a chat message",
            channel: Channel::Input
        })
    );
    let bad_events = [
        (
            InputEvent::PointerMove { x: -0.1, y: 0.5 },
            Malformed::Coordinate(-0.1),
        ),
        (
            InputEvent::PointerButton {
                button: 32,
                down: true,
                x: 0.0,
                y: 0.0,
            },
            Malformed::Button(32),
        ),
        (
            InputEvent::Wheel {
                dx: f64::INFINITY,
                dy: 0.0,
                mode: WheelMode::Line,
            },
            Malformed::WheelDelta(f64::INFINITY),
        ),
        (
            InputEvent::Key {
                code: "Key A".into(),
                down: true,
                modifiers: Modifiers::NONE,
            },
            Malformed::KeyCode("Key A".into()),
        ),
        (
            InputEvent::Key {
                code: "KeyA".into(),
                down: true,
                modifiers: Modifiers(16),
            },
            Malformed::Modifiers(16),
        ),
        (
            InputEvent::Text("x".repeat(MAX_TEXT_INPUT_BYTES + 1)),
            Malformed::TextLength {
                len: MAX_TEXT_INPUT_BYTES + 1,
                max: MAX_TEXT_INPUT_BYTES,
            },
        ),
    ];
    let mut encoder = ContentEncoder::new(Channel::Input);
    encoder.start("test").unwrap();
    for (bad, why) in bad_events {
        assert_eq!(decoder.decode(&event(bad.clone())), Err(why.clone()));
        assert_eq!(encoder.encode(&Content::Input(bad)), Err(why));
    }
    // A NaN coordinate (which equals nothing, so matched by kind).
    let nan = event(InputEvent::PointerMove {
        x: f64::NAN,
        y: 0.5,
    });
    assert!(matches!(
        decoder.decode(&nan),
        Err(Malformed::Coordinate(_))
    ));
    let wheel_mode = v1::Content {
        msg: Some(v1::content::Msg::Input(v1::InputEvent {
            event: Some(v1::input_event::Event::Wheel(v1::Wheel {
                dx: 0.0,
                dy: 1.0,
                delta_mode: 3,
            })),
        })),
    }
    .encode_to_vec();
    assert_eq!(decoder.decode(&wheel_mode), Err(Malformed::WheelMode(3)));
    let too_large = vec![0u8; MAX_CONTENT_BYTES + 1];
    assert_eq!(
        decoder.decode(&too_large),
        Err(Malformed::TooLarge(MAX_CONTENT_BYTES + 1))
    );
    // After all that, a good event still decodes.
    assert_eq!(
        decoder.decode(&move_),
        Ok(Some(Content::Input(InputEvent::PointerMove {
            x: 0.5,
            y: 0.5
        })))
    );
}

#[test]
fn screen_frames_are_checked_for_size_format_signature_and_order() {
    let (mut encoder, mut decoder) = started(Channel::Screen);
    let raw = |f: &ScreenFrame, format: i32| {
        v1::Content {
            msg: Some(v1::content::Msg::ScreenFrame(v1::ScreenFrame {
                frame_number: f.frame_number,
                timestamp_us: f.timestamp_us,
                width: f.width,
                height: f.height,
                format,
                data: f.data.to_vec(),
            })),
        }
        .encode_to_vec()
    };
    let good = png_frame(3, 64);
    let mut wide = good.clone();
    wide.width = MAX_SCREEN_SIDE + 1;
    assert_eq!(
        decoder.decode(&raw(&wide, 1)),
        Err(Malformed::ScreenSize {
            width: MAX_SCREEN_SIDE + 1,
            height: 720
        })
    );
    assert_eq!(
        encoder.encode(&Content::Screen(wide)).map(|_| ()),
        Err(Malformed::ScreenSize {
            width: MAX_SCREEN_SIDE + 1,
            height: 720
        })
    );
    assert_eq!(
        decoder.decode(&raw(&good, 0)),
        Err(Malformed::ImageFormat(0))
    );
    assert_eq!(
        decoder.decode(&raw(&good, 9)),
        Err(Malformed::ImageFormat(9))
    );
    assert_eq!(
        decoder.decode(&raw(&good, 2)),
        Err(Malformed::NotAnImage(ImageFormat::Jpeg))
    );
    assert!(decoder.decode(&raw(&good, 1)).unwrap().is_some());
    for repeated in [3, 2] {
        let old = png_frame(repeated, 64);
        assert_eq!(
            decoder.decode(&raw(&old, 1)),
            Err(Malformed::FrameNumber {
                previous: 3,
                got: repeated
            })
        );
    }
    assert!(
        decoder
            .decode(&raw(&png_frame(10, 64), 1))
            .unwrap()
            .is_some()
    );
    let input = v1::Content {
        msg: Some(v1::content::Msg::KeyFrameRequest(v1::KeyFrameRequest {})),
    }
    .encode_to_vec();
    assert_eq!(
        decoder.decode(&input),
        Err(Malformed::WrongChannel {
            what: "a key-frame request",
            channel: Channel::Screen
        })
    );
}

/// PROTOCOL.md §8.8.6's examples, as this code encodes them.
fn published_vectors() -> Vec<(&'static str, String)> {
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut input = ContentEncoder::new(Channel::Input);
    let start = input.start("rhelp/1").unwrap();
    let click = input
        .encode(&Content::Input(InputEvent::PointerButton {
            button: 0,
            down: true,
            x: 0.5,
            y: 0.25,
        }))
        .unwrap();
    let key = input
        .encode(&Content::Input(InputEvent::Key {
            code: "KeyA".into(),
            down: true,
            modifiers: Modifiers::SHIFT,
        }))
        .unwrap();
    let mut screen = ContentEncoder::new(Channel::Screen);
    screen.start("rhelp/1").unwrap();
    let frame = png_frame(7, 1234);
    let encoded = screen.encode(&Content::Screen(frame.clone())).unwrap();
    assert_eq!(&encoded[encoded.len() - 1234..], &frame.data[..]);
    let header = &encoded[..encoded.len() - 1234];
    let mut chat = ContentEncoder::new(Channel::Chat);
    chat.start("rhelp/1").unwrap();
    let hello = chat
        .encode(&Content::Chat(ChatMessage {
            text: "hi".into(),
            sent_at_ms: 0,
        }))
        .unwrap();
    vec![
        ("start", hex(&start)),
        ("pointer_button", hex(&click)),
        ("key", hex(&key)),
        ("screen_frame_header", hex(header)),
        ("chat", hex(&hello)),
    ]
}

#[test]
fn the_published_content_examples_are_what_the_code_encodes() {
    let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md"));
    let block = doc
        .split("<!-- content-test-vectors -->")
        .nth(1)
        .and_then(|rest| rest.split("```text").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("PROTOCOL.md has the content example block");
    let published: Vec<(String, String)> = block
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let computed: Vec<(String, String)> = published_vectors()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(
        published,
        computed,
        "\nexpected block:\n{}",
        computed
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn normalised_coordinates_map_to_pixels_edge_to_edge() {
    assert_eq!(to_pixel(0.0, 1280), 0);
    assert_eq!(to_pixel(0.5, 1280), 640);
    assert_eq!(to_pixel(639.9 / 1280.0, 1280), 639);
    assert_eq!(to_pixel(1.0, 1280), 1279);
    assert_eq!(to_pixel(1.0, 1), 0);
    assert_eq!(to_pixel(0.999_999_999, 720), 719);
}

/// Whatever bytes arrive, decoding returns a result and never panics: valid frames cut
/// short, with bytes flipped or inserted, and plain noise (a seeded generator, so a
/// failure repeats).
#[test]
fn damaged_and_random_frames_never_panic_the_decoder() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut samples = Vec::new();
    for channel in [Channel::Input, Channel::Screen, Channel::Chat] {
        let mut encoder = ContentEncoder::new(channel);
        samples.push((channel, encoder.start("fuzz").unwrap()));
    }
    let mut input = ContentEncoder::new(Channel::Input);
    input.start("fuzz").unwrap();
    for event in events() {
        samples.push((
            Channel::Input,
            input.encode(&Content::Input(event)).unwrap(),
        ));
    }
    let mut screen = ContentEncoder::new(Channel::Screen);
    screen.start("fuzz").unwrap();
    samples.push((
        Channel::Screen,
        screen.encode(&Content::Screen(png_frame(1, 40))).unwrap(),
    ));
    let mut decoders: Vec<ContentDecoder> = [Channel::Input, Channel::Screen, Channel::Chat]
        .into_iter()
        .map(|c| {
            let mut d = ContentDecoder::new(c);
            d.decode(&ContentEncoder::new(c).start("x").unwrap())
                .unwrap();
            d
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let (channel, sample) = &samples[rng.random_range(0..samples.len())];
        let mut frame = sample.clone();
        match rng.random_range(0..4) {
            0 => frame.truncate(rng.random_range(0..=frame.len())),
            1 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..frame.len());
                    frame[i] ^= rng.random::<u8>() | 1;
                }
            }
            2 => {
                let i = rng.random_range(0..=frame.len());
                frame.insert(i, rng.random());
            }
            _ => frame = (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        }
        let decoder = match channel {
            Channel::Input => &mut decoders[0],
            Channel::Screen => &mut decoders[1],
            _ => &mut decoders[2],
        };
        match decoder.decode(&frame) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    // Both outcomes occur, so the damage reaches the checks rather than only the parser.
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}
