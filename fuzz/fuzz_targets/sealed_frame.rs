//! End-to-end sealed frames, as the SDK opens them after `DataCodec` (streams) and from
//! QUIC datagrams: real frames sealed by the sharer, then dropped, duplicated, swapped,
//! bit-flipped, truncated, extended, reflected (sealed by the helper) or moved to another
//! channel's domain, and opened by the helper.
//!
//! Invariants, checked against a small model of what the opener must do:
//! - a stream opener accepts exactly the sender's frames in counter order, returns their
//!   plaintexts, and ends at the sealed end marker; anything else is refused with the
//!   precise error (`Short`, `Tampered`, `Replayed`, `OutOfOrder`, `AfterEnd`), and a
//!   refused frame leaves the opener as it was; `finish` succeeds only after the marker;
//! - a datagram opener accepts each authentic datagram once, in any order within the
//!   64-frame replay window, and nothing forged.
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use remote_help_fuzz::session_keys;
use remote_help_sdk::e2e::{self, DATAGRAM_DOMAIN, E2eError, OVERHEAD};

/// Most frames per stream, to keep an execution short.
const MAX_FRAMES: usize = 32;
/// Datagrams sealed per execution (over twice the replay window).
const DATAGRAMS: u64 = 160;
/// The opener's replay window, as documented.
const WINDOW: u64 = 64;

#[derive(Arbitrary, Debug)]
struct Input {
    domain: u8,
    plaintexts: Vec<Vec<u8>>,
    end: bool,
    edits: Vec<Edit>,
    datagrams: Vec<Datagram>,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Drop(u8),
    Duplicate(u8),
    Swap(u8, u8),
    FlipBit {
        frame: u8,
        bit: u16,
    },
    Truncate {
        frame: u8,
        len: u16,
    },
    Extend {
        frame: u8,
        bytes: Vec<u8>,
    },
    Insert {
        at: u8,
        bytes: Vec<u8>,
    },
    /// The same frame sealed by the helper (its own direction's key).
    Reflect(u8),
    /// The same frame sealed for another channel.
    OtherDomain(u8),
}

#[derive(Arbitrary, Debug)]
struct Datagram {
    index: u8,
    flip: Option<u16>,
}

fuzz_target!(|input: Input| {
    stream(&input);
    datagrams(&input.datagrams);
});

fn stream(input: &Input) {
    let keys = session_keys();
    let domain = e2e::stream_domain(match input.domain % 4 {
        0 => remote_help_sdk::session::Channel::Screen,
        1 => remote_help_sdk::session::Channel::Input,
        2 => remote_help_sdk::session::Channel::Chat,
        _ => remote_help_sdk::session::Channel::Keys,
    });
    let other_domain = domain % 4 + 1;
    let plaintexts: Vec<&[u8]> = input
        .plaintexts
        .iter()
        .take(MAX_FRAMES)
        .map(|p| &p[..])
        .collect();

    // What the sharer sends, and the same frames under the wrong key or domain.
    let seal_all = |mut sealer: e2e::Sealer| -> Vec<Vec<u8>> {
        let mut frames: Vec<Vec<u8>> = plaintexts
            .iter()
            .map(|p| sealer.seal(p).expect("seal"))
            .collect();
        if input.end {
            frames.push(sealer.seal_end().expect("seal end"));
        }
        frames
    };
    let sent = seal_all(keys.sharer.sealer(domain));
    let reflected = seal_all(keys.helper.sealer(domain));
    let elsewhere = seal_all(keys.sharer.sealer(other_domain));
    for (k, frame) in sent.iter().enumerate() {
        assert_eq!(frame[..8], (k as u64).to_be_bytes(), "counter prefix");
        let plain_len = plaintexts.get(k).map_or(0, |p| p.len());
        assert_eq!(frame.len(), OVERHEAD + plain_len + 1, "sealed length");
    }

    // What arrives.
    let mut received = sent.clone();
    for edit in &input.edits {
        if received.is_empty() && !matches!(edit, Edit::Insert { .. }) {
            continue;
        }
        let pick = |i: u8, len: usize| usize::from(i) % len;
        let count = received.len();
        match edit {
            Edit::Drop(i) => {
                received.remove(pick(*i, received.len()));
            }
            Edit::Duplicate(i) => {
                let i = pick(*i, received.len());
                received.insert(i, received[i].clone());
            }
            Edit::Swap(i, j) => {
                let (i, j) = (pick(*i, received.len()), pick(*j, received.len()));
                received.swap(i, j);
            }
            Edit::FlipBit { frame, bit } => {
                let frame = &mut received[pick(*frame, count)];
                if !frame.is_empty() {
                    let bit = usize::from(*bit) % (frame.len() * 8);
                    frame[bit / 8] ^= 1 << (bit % 8);
                }
            }
            Edit::Truncate { frame, len } => {
                let frame = &mut received[pick(*frame, count)];
                frame.truncate(usize::from(*len) % (frame.len() + 1));
            }
            Edit::Extend { frame, bytes } => {
                received[pick(*frame, count)].extend_from_slice(bytes);
            }
            Edit::Insert { at, bytes } => {
                let at = pick(*at, received.len() + 1);
                received.insert(at, bytes.clone());
            }
            Edit::Reflect(i) => {
                let i = pick(*i, received.len());
                if let Some(frame) = reflected.get(i) {
                    received[i] = frame.clone();
                }
            }
            Edit::OtherDomain(i) => {
                let i = pick(*i, received.len());
                if let Some(frame) = elsewhere.get(i) {
                    received[i] = frame.clone();
                }
            }
        }
        if received.len() > 4 * MAX_FRAMES {
            break;
        }
    }

    // The model: the next counter due, and whether the end marker was accepted.
    let mut opener = keys.helper.stream_opener(domain);
    let mut next = 0usize;
    let mut ended = false;
    for frame in &received {
        let got = opener.open(frame);
        let authentic = sent.iter().position(|s| s == frame);
        let expected = if ended {
            Err(E2eError::AfterEnd)
        } else if frame.len() < OVERHEAD + 1 {
            Err(E2eError::Short(frame.len()))
        } else {
            match authentic {
                None => Err(E2eError::Tampered),
                Some(k) if k < next => Err(E2eError::Replayed(k as u64)),
                Some(k) if k > next => Err(E2eError::OutOfOrder {
                    expected: next as u64,
                    got: k as u64,
                }),
                Some(k) => {
                    next += 1;
                    match plaintexts.get(k) {
                        Some(plain) => Ok(Some(plain.to_vec())),
                        None => {
                            ended = true;
                            Ok(None)
                        }
                    }
                }
            }
        };
        assert_eq!(got, expected, "frame {frame:02x?}");
    }
    let finished = opener.finish();
    if ended {
        assert_eq!(finished, Ok(()));
    } else {
        assert_eq!(finished, Err(E2eError::Truncated));
    }
}

fn datagrams(ops: &[Datagram]) {
    let keys = session_keys();
    let mut sealer = e2e::datagram_sealer(&keys.sharer);
    let sent: Vec<Vec<u8>> = (0..DATAGRAMS)
        .map(|c| {
            sealer
                .seal(&c.to_le_bytes()[..(c % 9) as usize])
                .expect("seal")
        })
        .collect();
    // A stream sealer must never produce a datagram that opens, and vice versa.
    let stream_frame = keys
        .sharer
        .sealer(DATAGRAM_DOMAIN ^ 1)
        .seal(b"x")
        .expect("seal");

    let mut opener = keys.helper.datagram_opener();
    let mut highest: Option<u64> = None;
    let mut accepted: HashSet<u64> = HashSet::new();
    for op in ops.iter().take(4 * DATAGRAMS as usize) {
        let counter = u64::from(op.index) % DATAGRAMS;
        let mut datagram = sent[counter as usize].clone();
        if let Some(bit) = op.flip {
            let bit = usize::from(bit) % (datagram.len() * 8);
            datagram[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(opener.open(&datagram), Err(E2eError::Tampered));
            continue;
        }
        let fresh = match highest {
            None => true,
            Some(high) if counter > high => true,
            Some(high) => high - counter < WINDOW && !accepted.contains(&counter),
        };
        let got = opener.open(&datagram);
        if fresh {
            let plain = &counter.to_le_bytes()[..(counter % 9) as usize];
            assert_eq!(got, Ok(plain.to_vec()), "datagram {counter} refused");
            accepted.insert(counter);
            highest = Some(highest.map_or(counter, |h| h.max(counter)));
        } else {
            assert_eq!(got, Err(E2eError::Replayed(counter)), "datagram {counter}");
        }
    }
    assert_eq!(opener.open(&stream_frame), Err(E2eError::Tampered));
}
