use super::*;

fn party(subject: &str) -> Party {
    Party {
        tenant: "contoso".into(),
        subject: subject.into(),
    }
}

fn transcript(suite: Suite, helper_key: [u8; 32], sharer_key: [u8; 32]) -> Transcript {
    Transcript {
        session_id: "s1".into(),
        helper: party("ada"),
        sharer: party("grace"),
        helper_suites: vec![1, 2],
        sharer_suites: vec![1, 2],
        suite,
        helper_key,
        sharer_key,
    }
}

/// An honest exchange: both sides see the same transcript.
fn pair(suite: Suite) -> (SessionKeys, SessionKeys) {
    let (h, s) = (KeyExchange::start().unwrap(), KeyExchange::start().unwrap());
    let t = transcript(suite, h.public_key(), s.public_key());
    (
        h.finish(Role::Helper, &t).unwrap(),
        s.finish(Role::Sharer, &t).unwrap(),
    )
}

#[test]
fn the_helpers_order_picks_the_suite() {
    assert_eq!(choose_suite(&[2, 1], &[1, 2]), Some(2));
    assert_eq!(choose_suite(&[1, 2], &[2, 1]), Some(1));
    assert_eq!(choose_suite(&[7, 2], &[2]), Some(2));
    assert_eq!(choose_suite(&[1], &[2]), None);
    assert_eq!(choose_suite(&[], &[1, 2]), None);
    assert_eq!(choose_suite(&[1, 2], &[]), None);
    assert_eq!(choose_suite(&[0], &[0]), None);
    for suite in Suite::ALL {
        assert_eq!(Suite::from_id(suite.id()), Some(suite));
        assert_eq!(Suite::parse(suite.as_str()), Some(suite));
    }
    assert_eq!(Suite::from_id(0), None);
}

#[test]
fn both_sides_derive_the_same_code_and_can_talk_both_ways() {
    for suite in Suite::ALL {
        let (helper, sharer) = pair(suite);
        assert_eq!(helper.verification_code, sharer.verification_code);
        assert_eq!(helper.verification_code.len(), 7);
        let domain = stream_domain(Channel::Input);
        let frame = helper.sealer(domain).seal(b"click").unwrap();
        assert_eq!(
            sharer.stream_opener(domain).open(&frame).unwrap().unwrap(),
            b"click"
        );
        let back = sharer
            .sealer(stream_domain(Channel::Chat))
            .seal(b"hi")
            .unwrap();
        assert_eq!(
            helper
                .stream_opener(stream_domain(Channel::Chat))
                .open(&back)
                .unwrap()
                .unwrap(),
            b"hi"
        );
        // A frame sealed for one direction does not open in the other.
        assert_eq!(
            helper.stream_opener(domain).open(&frame),
            Err(E2eError::Tampered)
        );
    }
}

#[test]
fn suites_do_not_open_each_others_frames() {
    let (h, s) = (KeyExchange::start().unwrap(), KeyExchange::start().unwrap());
    let chacha = transcript(
        Suite::X25519ChaCha20Poly1305,
        h.public_key(),
        s.public_key(),
    );
    let aes = Transcript {
        suite: Suite::X25519Aes256Gcm,
        ..chacha.clone()
    };
    let helper = h.finish(Role::Helper, &chacha).unwrap();
    let sharer = s.finish(Role::Sharer, &aes).unwrap();
    assert_ne!(helper.verification_code, sharer.verification_code);
    let frame = helper.sealer(2).seal(b"x").unwrap();
    assert_eq!(
        sharer.stream_opener(2).open(&frame),
        Err(E2eError::Tampered)
    );
}

#[test]
fn a_key_substituting_relay_yields_different_codes() {
    for suite in Suite::ALL {
        // The relay runs one exchange with each party, substituting its own keys.
        let (helper, sharer) = (KeyExchange::start().unwrap(), KeyExchange::start().unwrap());
        let (mitm_to_helper, mitm_to_sharer) =
            (KeyExchange::start().unwrap(), KeyExchange::start().unwrap());
        let helper_view = transcript(suite, helper.public_key(), mitm_to_helper.public_key());
        let sharer_view = Transcript {
            helper_key: mitm_to_sharer.public_key(),
            sharer_key: sharer.public_key(),
            ..helper_view.clone()
        };
        let helper_keys = helper.finish(Role::Helper, &helper_view).unwrap();
        let sharer_keys = sharer.finish(Role::Sharer, &sharer_view).unwrap();
        let relay_with_helper = mitm_to_helper.finish(Role::Sharer, &helper_view).unwrap();
        let relay_with_sharer = mitm_to_sharer.finish(Role::Helper, &sharer_view).unwrap();
        // The relay can read each leg, but the users' codes differ: comparing them
        // reveals it.
        assert_eq!(
            helper_keys.verification_code,
            relay_with_helper.verification_code
        );
        assert_eq!(
            sharer_keys.verification_code,
            relay_with_sharer.verification_code
        );
        assert_ne!(helper_keys.verification_code, sharer_keys.verification_code);
    }
}

#[test]
fn tampered_replayed_reordered_and_truncated_streams_are_refused() {
    for suite in Suite::ALL {
        let (helper, sharer) = pair(suite);
        let domain = stream_domain(Channel::Input);
        let mut sealer = helper.sealer(domain);
        let frames: Vec<Vec<u8>> = (0..3).map(|i| sealer.seal(&[i]).unwrap()).collect();

        let mut tampered = frames[0].clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            sharer.stream_opener(domain).open(&tampered),
            Err(E2eError::Tampered)
        );
        let mut counter_forged = frames[1].clone();
        counter_forged[7] = 0; // claims to be frame 0
        assert_eq!(
            sharer.stream_opener(domain).open(&counter_forged),
            Err(E2eError::Tampered)
        );

        let mut opener = sharer.stream_opener(domain);
        opener.open(&frames[0]).unwrap();
        assert_eq!(opener.open(&frames[0]), Err(E2eError::Replayed(0)));
        assert_eq!(
            opener.open(&frames[2]),
            Err(E2eError::OutOfOrder {
                expected: 1,
                got: 2
            })
        );
        opener.open(&frames[1]).unwrap();
        assert_eq!(opener.finish(), Err(E2eError::Truncated));
        opener.open(&frames[2]).unwrap();
        assert_eq!(opener.open(&sealer.seal_end().unwrap()), Ok(None));
        assert_eq!(opener.finish(), Ok(()));
        assert_eq!(opener.open(&frames[2]), Err(E2eError::AfterEnd));
        assert_eq!(opener.open(&[1, 2, 3]), Err(E2eError::AfterEnd));
        assert_eq!(
            sharer.stream_opener(domain).open(&[1, 2, 3]),
            Err(E2eError::Short(3))
        );
        // A stream must start at its frame 0.
        assert_eq!(
            sharer.stream_opener(domain).open(&frames[1]),
            Err(E2eError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
    }
}

#[test]
fn a_channels_second_stream_never_reuses_a_nonce_and_streams_do_not_mix() {
    let (helper, sharer) = pair(Suite::X25519ChaCha20Poly1305);
    let domain = stream_domain(Channel::Chat);
    let first = helper.stream_sealer(domain, 0).seal(b"same").unwrap();
    let second = helper.stream_sealer(domain, 1).seal(b"same").unwrap();
    // Same plaintext, same channel, both first frames: different counters, so
    // different nonces and different ciphertexts.
    assert_eq!(second[..8], (1u64 << 32).to_be_bytes());
    assert_ne!(first[8..], second[8..]);
    let mut opener = sharer.stream_opener(domain);
    assert_eq!(opener.open(&second).unwrap().unwrap(), b"same");
    assert_eq!(opener.stream(), Some(1));
    // A frame of another stream cannot be spliced in.
    let mut other = helper.stream_sealer(domain, 0);
    other.seal(b"a").unwrap();
    assert_eq!(
        opener.open(&other.seal(b"b").unwrap()),
        Err(E2eError::Replayed(1))
    );
    let mut later = helper.stream_sealer(domain, 2);
    later.seal(b"a").unwrap();
    assert_eq!(
        opener.open(&later.seal(b"b").unwrap()),
        Err(E2eError::OutOfOrder {
            expected: (1 << 32) | 1,
            got: (2 << 32) | 1
        })
    );
}

#[test]
fn a_sealer_stops_before_it_would_reach_the_next_streams_counters() {
    let (helper, _) = pair(Suite::X25519Aes256Gcm);
    let mut sealer = helper.stream_sealer(2, 0);
    sealer.counter = u64::from(u32::MAX);
    sealer.seal(b"last").unwrap();
    assert!(matches!(sealer.seal(b"x"), Err(E2eError::KeyExchange(_))));
    // The receiver takes the last frame number, and nothing after it.
    let mut sealer = helper.stream_sealer(2, 0);
    sealer.counter = u64::from(u32::MAX);
    let last = sealer.seal(b"last").unwrap();
    let peer = SessionKeys {
        send: helper.recv.clone(),
        recv: helper.send.clone(),
        ..helper.clone()
    };
    let mut opener_at_peer = peer.stream_opener(2);
    opener_at_peer.next = u32::MAX;
    opener_at_peer.stream = Some(0);
    assert_eq!(opener_at_peer.open(&last).unwrap().unwrap(), b"last");
    let next_stream = helper.stream_sealer(2, 1).seal(b"x").unwrap();
    assert_eq!(
        opener_at_peer.open(&next_stream),
        Err(E2eError::Replayed(1 << 32))
    );
    let mut datagrams = datagram_sealer(&helper);
    datagrams.counter = u64::MAX;
    datagrams.seal(b"last").unwrap();
    assert!(matches!(
        datagrams.seal(b"x"),
        Err(E2eError::KeyExchange(_))
    ));
}

#[test]
fn lost_datagrams_do_not_break_later_ones_but_replays_are_refused() {
    for suite in Suite::ALL {
        let (helper, sharer) = pair(suite);
        let mut sealer = datagram_sealer(&sharer);
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| sealer.seal(&[i]).unwrap()).collect();
        let mut opener = helper.datagram_opener();
        // Frames 0, 2, 5 arrive; 1, 3, 4 are lost; then 4 arrives late.
        for i in [0usize, 2, 5, 4] {
            assert_eq!(opener.open(&frames[i]).unwrap(), [i as u8]);
        }
        assert_eq!(opener.open(&frames[5]), Err(E2eError::Replayed(5)));
        assert_eq!(opener.open(&frames[99]).unwrap(), [99]);
        // 99 - 36 = 63: the oldest counter the window still holds; 35 is one too old.
        assert_eq!(opener.open(&frames[36]).unwrap(), [36]);
        assert_eq!(opener.open(&frames[35]), Err(E2eError::Replayed(35)));
        // Far older than the window: refused, since it can no longer be told from a replay.
        assert_eq!(opener.open(&frames[6]), Err(E2eError::Replayed(6)));
        // A stream frame is not a datagram.
        let stream_frame = sharer
            .sealer(stream_domain(Channel::Screen))
            .seal(b"x")
            .unwrap();
        assert_eq!(opener.open(&stream_frame), Err(E2eError::Tampered));
    }
}

#[test]
fn the_transcript_binds_every_field() {
    let base = Transcript {
        session_id: "s".into(),
        helper: party("a"),
        sharer: party("b"),
        helper_suites: vec![1, 2],
        sharer_suites: vec![2, 1],
        suite: Suite::X25519ChaCha20Poly1305,
        helper_key: [1; 32],
        sharer_key: [2; 32],
    };
    let variants = [
        Transcript {
            session_id: "t".into(),
            ..base.clone()
        },
        Transcript {
            helper: party("x"),
            ..base.clone()
        },
        Transcript {
            sharer: Party {
                tenant: "other".into(),
                subject: "b".into(),
            },
            ..base.clone()
        },
        Transcript {
            helper_suites: vec![1],
            ..base.clone()
        },
        Transcript {
            sharer_suites: vec![1, 2],
            ..base.clone()
        },
        Transcript {
            suite: Suite::X25519Aes256Gcm,
            ..base.clone()
        },
        Transcript {
            helper_key: [3; 32],
            ..base.clone()
        },
        Transcript {
            sharer_key: [3; 32],
            ..base.clone()
        },
        // Moving bytes between fields must not give the same hash (length prefixes).
        Transcript {
            helper_suites: vec![1, 2, 2],
            sharer_suites: vec![1],
            ..base.clone()
        },
        Transcript {
            helper: Party {
                tenant: "contos".into(),
                subject: "oa".into(),
            },
            ..Transcript {
                helper: Party {
                    tenant: "contoso".into(),
                    subject: "a".into(),
                },
                ..base.clone()
            }
        },
    ];
    for v in &variants {
        assert_ne!(v.hash(), base.hash(), "{v:?}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// The vector block of PROTOCOL.md §8.7, as this code computes it from the inputs
/// (RFC 7748 §6.1's X25519 keys for the helper and the sharer).
fn vector_block() -> String {
    use curve25519_dalek::montgomery::MontgomeryPoint;
    let helper_private =
        unhex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let sharer_private =
        unhex32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let helper_public = MontgomeryPoint::mul_base_clamped(helper_private).to_bytes();
    let sharer_public = MontgomeryPoint::mul_base_clamped(sharer_private).to_bytes();
    let shared = MontgomeryPoint(sharer_public)
        .mul_clamped(helper_private)
        .to_bytes();
    assert_eq!(
        shared,
        MontgomeryPoint(helper_public)
            .mul_clamped(sharer_private)
            .to_bytes()
    );
    let session_id = "0123456789abcdef0123456789abcdef";
    let mut out = String::new();
    let mut line = |name: &str, value: String| out.push_str(&format!("{name} = {value}\n"));
    line("helper_private_key", hex(&helper_private));
    line("helper_public_key", hex(&helper_public));
    line("sharer_private_key", hex(&sharer_private));
    line("sharer_public_key", hex(&sharer_public));
    line("shared_secret", hex(&shared));
    line("session_id", format!("\"{session_id}\""));
    line("helper_tenant", "\"contoso\"".into());
    line("helper_subject", "\"ada\"".into());
    line("sharer_tenant", "\"contoso\"".into());
    line("sharer_subject", "\"grace\"".into());
    for (suite, helper_suites, sharer_suites) in [
        (Suite::X25519ChaCha20Poly1305, vec![1, 2], vec![2, 1]),
        (Suite::X25519Aes256Gcm, vec![2, 1], vec![1, 2]),
    ] {
        let list = |ids: &Vec<u32>| {
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!("\n[suite {}]\n", suite.id()));
        let mut line = |name: &str, value: String| out.push_str(&format!("{name} = {value}\n"));
        line("helper_suites", list(&helper_suites));
        line("sharer_suites", list(&sharer_suites));
        assert_eq!(
            choose_suite(&helper_suites, &sharer_suites),
            Some(suite.id())
        );
        line("chosen_suite", suite.id().to_string());
        let t = Transcript {
            session_id: session_id.into(),
            helper: party("ada"),
            sharer: party("grace"),
            helper_suites,
            sharer_suites,
            suite,
            helper_key: helper_public,
            sharer_key: sharer_public,
        };
        let hash = t.hash();
        let schedule = Schedule::new(&hash, &shared).unwrap();
        line("transcript_hash", hex(&hash));
        line("prk", hex(&schedule.prk));
        line("helper_to_sharer_key", hex(&schedule.helper_to_sharer));
        line("sharer_to_helper_key", hex(&schedule.sharer_to_helper));
        line("verification_code", format!("\"{}\"", schedule.code));
        let helper = SessionKeys::derive(Role::Helper, &t, &shared).unwrap();
        let sharer = SessionKeys::derive(Role::Sharer, &t, &shared).unwrap();
        assert_eq!(helper.verification_code, schedule.code);
        let input = stream_domain(Channel::Input);
        let mut sealer = helper.stream_sealer(input, 0);
        let data = sealer.seal(b"click 10 20").unwrap();
        let end = sealer.seal_end().unwrap();
        let second = helper.stream_sealer(input, 1).seal(b"key a").unwrap();
        let datagram = datagram_sealer(&sharer).seal(b"frame 0").unwrap();
        // The vectors open at the other side, as a receiver would take them.
        let mut opener = sharer.stream_opener(input);
        assert_eq!(opener.open(&data).unwrap().unwrap(), b"click 10 20");
        assert_eq!(opener.open(&end), Ok(None));
        assert_eq!(
            sharer.stream_opener(input).open(&second).unwrap().unwrap(),
            b"key a"
        );
        assert_eq!(
            helper.datagram_opener().open(&datagram).unwrap(),
            b"frame 0"
        );
        line("data_frame", hex(&data));
        line("end_frame", hex(&end));
        line("second_stream_frame", hex(&second));
        line("datagram", hex(&datagram));
    }
    out
}

/// PROTOCOL.md's vector block, between its marker and the end of the fenced block.
fn published_block() -> String {
    let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md"));
    let start = doc
        .find("<!-- e2e-test-vectors -->")
        .expect("PROTOCOL.md has the e2e test vector marker");
    let body = &doc[start..];
    let open = body.find("```text\n").expect("a fenced block follows") + "```text\n".len();
    let close = body[open..].find("```").expect("the block ends");
    body[open..open + close].to_string()
}

#[test]
fn the_published_test_vectors_are_what_the_code_computes() {
    let computed = vector_block();
    assert!(
        published_block() == computed,
        "PROTOCOL.md §8.7's test vectors differ from the code; the code computes:\n{computed}"
    );
}

#[test]
fn rfc_7748_keys_give_rfc_7748_public_keys_and_secret() {
    // The vectors' X25519 inputs are RFC 7748 §6.1's, so an implementer can check that
    // step against the RFC too.
    let block = vector_block();
    for expected in [
        "helper_public_key = 8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        "sharer_public_key = de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
        "shared_secret = 4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
    ] {
        assert!(block.contains(expected), "{expected}");
    }
}
