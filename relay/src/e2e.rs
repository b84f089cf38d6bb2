//! End-to-end encryption between helper and sharer: the relay forwards only sealed bytes.
//!
//! Pure (no I/O). Primitives all come from `ring`; nothing here is hand-written crypto:
//!
//! 1. Each party makes an ephemeral X25519 key pair and sends the public half to the other
//!    through the relay (the `KEYS` channel).
//! 2. The **transcript** binds the session id, both identities (tenant and subject) and both
//!    public keys, in helper-then-sharer order: `SHA-256("remote-help e2e v1" ‖ fields)`, each
//!    field length-prefixed.
//! 3. HKDF-SHA256 with the transcript hash as salt, over the X25519 shared secret, yields the
//!    helper→sharer key, the sharer→helper key (ChaCha20-Poly1305) and the verification code.
//! 4. Both users see the same six-digit **verification code** (like Signal's safety numbers):
//!    a relay that substitutes keys ends up with two different transcripts, so the two codes
//!    differ, and reading the code aloud reveals it.
//!
//! Each sealed frame is `counter (8 bytes, big-endian) ‖ ciphertext ‖ tag (16)`, the plaintext being the payload then one type byte (data or end). The nonce is
//! a 4-byte channel domain then the counter, under a per-direction key, so no nonce repeats.
//! The associated data is the domain. Streams must arrive in exact counter order and end with
//! a sealed end marker, so tampering, replay, reordering and truncation are all errors;
//! datagrams (lossy screen frames) are accepted in any order within a replay window, so a lost
//! frame never breaks the next one.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf::{self, HKDF_SHA256, KeyType, Salt};
use ring::rand::SystemRandom;
use std::sync::Arc;

use crate::core::{Channel, Role};

/// Length of an X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes a sealed frame adds: the counter and the AEAD tag.
pub const OVERHEAD: usize = 8 + 16;
const LABEL: &[u8] = b"remote-help e2e v1";
/// Replay window for datagrams, in frames.
const WINDOW: u64 = 64;

/// Why end-to-end protection failed. Every variant means the frame must not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eError {
    /// The frame does not authenticate: modified, or sealed under another key.
    #[error("frame failed authentication (tampered, or keys differ)")]
    Tampered,
    /// A frame with this counter was already accepted.
    #[error("frame {0} replayed")]
    Replayed(u64),
    /// Stream frames must arrive in order.
    #[error("frame {got} arrived where frame {expected} was due (reordered or dropped)")]
    OutOfOrder {
        /// The counter that was due.
        expected: u64,
        /// The counter that came.
        got: u64,
    },
    /// The stream ended without the sealed end marker.
    #[error("stream ended before its sealed end marker (truncated)")]
    Truncated,
    /// A frame arrived after the sealed end marker.
    #[error("frame after the sealed end marker")]
    AfterEnd,
    /// The frame is too short to hold a counter and a tag.
    #[error("frame of {0} bytes is too short")]
    Short(usize),
    /// The key exchange failed (bad public key, randomness failure).
    #[error("key exchange failed: {0}")]
    KeyExchange(String),
}

/// The identity of one party, as bound into the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// Tenant id.
    pub tenant: String,
    /// Subject (user or device object id).
    pub subject: String,
}

/// What both parties must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The session id.
    pub session_id: String,
    /// The helper.
    pub helper: Party,
    /// The sharer.
    pub sharer: Party,
    /// The helper's X25519 public key.
    pub helper_key: [u8; PUBLIC_KEY_LEN],
    /// The sharer's X25519 public key.
    pub sharer_key: [u8; PUBLIC_KEY_LEN],
}

impl Transcript {
    /// SHA-256 over the label and every field, each length-prefixed.
    pub fn hash(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let fields: [&[u8]; 6] = [
            LABEL,
            self.session_id.as_bytes(),
            self.helper.tenant.as_bytes(),
            self.helper.subject.as_bytes(),
            self.sharer.tenant.as_bytes(),
            self.sharer.subject.as_bytes(),
        ];
        for field in fields {
            ctx.update(&(field.len() as u32).to_be_bytes());
            ctx.update(field);
        }
        ctx.update(&self.helper_key);
        ctx.update(&self.sharer_key);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// One side's ephemeral key pair, before the peer's key is known.
pub struct KeyExchange {
    private: EphemeralPrivateKey,
    public: [u8; PUBLIC_KEY_LEN],
}

impl std::fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyExchange").finish_non_exhaustive()
    }
}

impl KeyExchange {
    /// A fresh ephemeral X25519 key pair from the OS generator.
    pub fn start() -> Result<KeyExchange, E2eError> {
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng)
            .map_err(|_| E2eError::KeyExchange("random generator failed".into()))?;
        let public_key = private
            .compute_public_key()
            .map_err(|_| E2eError::KeyExchange("public key".into()))?;
        let mut public = [0u8; PUBLIC_KEY_LEN];
        public.copy_from_slice(public_key.as_ref());
        Ok(KeyExchange { private, public })
    }

    /// This side's public key, to send to the peer.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public
    }

    /// Completes the exchange as `role`, given the transcript (which holds both keys).
    pub fn finish(self, role: Role, transcript: &Transcript) -> Result<SessionKeys, E2eError> {
        let ours = match role {
            Role::Helper => transcript.helper_key,
            Role::Sharer => transcript.sharer_key,
        };
        if ours != self.public {
            return Err(E2eError::KeyExchange(
                "the transcript does not hold our key".into(),
            ));
        }
        let theirs = match role {
            Role::Helper => transcript.sharer_key,
            Role::Sharer => transcript.helper_key,
        };
        let salt = Salt::new(HKDF_SHA256, &transcript.hash());
        let prk = agreement::agree_ephemeral(
            self.private,
            &UnparsedPublicKey::new(&X25519, theirs),
            |secret| salt.extract(secret),
        )
        .map_err(|_| E2eError::KeyExchange("the peer's public key is invalid".into()))?;
        let helper_to_sharer = expand_key(&prk, b"helper to sharer")?;
        let sharer_to_helper = expand_key(&prk, b"sharer to helper")?;
        let code_bytes = expand::<4>(&prk, b"verification code")?;
        let code = u32::from_be_bytes(code_bytes) % 1_000_000;
        let (send, recv) = match role {
            Role::Helper => (helper_to_sharer, sharer_to_helper),
            Role::Sharer => (sharer_to_helper, helper_to_sharer),
        };
        Ok(SessionKeys {
            send: Arc::new(send),
            recv: Arc::new(recv),
            verification_code: format!("{:03} {:03}", code / 1000, code % 1000),
        })
    }
}

struct Len<const N: usize>;

impl<const N: usize> KeyType for Len<N> {
    fn len(&self) -> usize {
        N
    }
}

fn expand<const N: usize>(prk: &hkdf::Prk, info: &[u8]) -> Result<[u8; N], E2eError> {
    let mut out = [0u8; N];
    let infos = [info];
    prk.expand(&infos, Len::<N>)
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| E2eError::KeyExchange("key derivation".into()))?;
    Ok(out)
}

fn expand_key(prk: &hkdf::Prk, info: &[u8]) -> Result<LessSafeKey, E2eError> {
    let bytes = expand::<32>(prk, info)?;
    let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
        .map_err(|_| E2eError::KeyExchange("aead key".into()))?;
    Ok(LessSafeKey::new(key))
}

/// The keys of one side of a session, and the code both users compare.
#[derive(Clone)]
pub struct SessionKeys {
    send: Arc<LessSafeKey>,
    recv: Arc<LessSafeKey>,
    /// Six digits, shown as `123 456`; equal on both sides unless keys were substituted.
    pub verification_code: String,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("verification_code", &self.verification_code)
            .finish_non_exhaustive()
    }
}

/// The nonce domain of a channel's stream.
pub fn stream_domain(channel: Channel) -> u32 {
    channel.to_wire() as u32
}

/// The nonce domain of lossy screen datagrams (distinct from every stream's).
pub const DATAGRAM_DOMAIN: u32 = 0x8000_0001;

/// Plaintext type byte: data, or the end marker.
const DATA: u8 = 0;
const END: u8 = 1;

impl SessionKeys {
    /// A sealer for frames this side sends in `domain`.
    pub fn sealer(&self, domain: u32) -> Sealer {
        Sealer {
            key: self.send.clone(),
            domain,
            counter: 0,
        }
    }

    /// An opener for a stream the peer sends in `domain`.
    pub fn stream_opener(&self, domain: u32) -> StreamOpener {
        StreamOpener {
            key: self.recv.clone(),
            domain,
            next: 0,
            ended: false,
        }
    }

    /// An opener for the peer's datagrams.
    pub fn datagram_opener(&self) -> DatagramOpener {
        DatagramOpener {
            key: self.recv.clone(),
            highest: None,
            seen: 0,
        }
    }
}

fn nonce(domain: u32, counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&domain.to_be_bytes());
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Seals frames for one channel of one direction.
pub struct Sealer {
    key: Arc<LessSafeKey>,
    domain: u32,
    counter: u64,
}

impl Sealer {
    /// Seals `plaintext` as the next data frame.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, E2eError> {
        self.seal_typed(DATA, plaintext)
    }

    /// Seals the end marker; the receiver treats a stream without it as truncated.
    pub fn seal_end(&mut self) -> Result<Vec<u8>, E2eError> {
        self.seal_typed(END, &[])
    }

    fn seal_typed(&mut self, kind: u8, plaintext: &[u8]) -> Result<Vec<u8>, E2eError> {
        let counter = self.counter;
        // 2^64 frames per channel never happens; refuse rather than ever reuse a nonce.
        self.counter = counter
            .checked_add(1)
            .ok_or(E2eError::KeyExchange("counter exhausted".into()))?;
        // One buffer, one copy of the plaintext: counter ‖ plaintext ‖ type, sealed in
        // place after the counter, then the tag appended into the reserved room.
        let mut frame = Vec::with_capacity(OVERHEAD + plaintext.len() + 1);
        frame.extend_from_slice(&counter.to_be_bytes());
        frame.extend_from_slice(plaintext);
        frame.push(kind);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.domain, counter),
                Aad::from(self.domain.to_be_bytes()),
                &mut frame[8..],
            )
            .map_err(|_| E2eError::Tampered)?;
        frame.extend_from_slice(tag.as_ref());
        Ok(frame)
    }
}

fn open_frame(
    key: &LessSafeKey,
    domain: u32,
    frame: &[u8],
) -> Result<(u64, u8, Vec<u8>), E2eError> {
    if frame.len() < OVERHEAD + 1 {
        return Err(E2eError::Short(frame.len()));
    }
    let mut counter_bytes = [0u8; 8];
    counter_bytes.copy_from_slice(&frame[..8]);
    let counter = u64::from_be_bytes(counter_bytes);
    let mut body = frame[8..].to_vec();
    let len = key
        .open_in_place(
            nonce(domain, counter),
            Aad::from(domain.to_be_bytes()),
            &mut body,
        )
        .map_err(|_| E2eError::Tampered)?
        .len();
    // The type byte is last, so dropping it and the tag is a truncation, not a shift.
    let kind = body[len - 1];
    body.truncate(len - 1);
    Ok((counter, kind, body))
}

/// Opens a reliable stream's frames: exact order, no replay, and a sealed end.
pub struct StreamOpener {
    key: Arc<LessSafeKey>,
    domain: u32,
    next: u64,
    ended: bool,
}

impl StreamOpener {
    /// The next frame's plaintext; `Ok(None)` for the sealed end marker.
    pub fn open(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, E2eError> {
        if self.ended {
            return Err(E2eError::AfterEnd);
        }
        let (counter, kind, plain) = open_frame(&self.key, self.domain, frame)?;
        if counter < self.next {
            return Err(E2eError::Replayed(counter));
        }
        if counter > self.next {
            return Err(E2eError::OutOfOrder {
                expected: self.next,
                got: counter,
            });
        }
        self.next += 1;
        if kind == END {
            self.ended = true;
            return Ok(None);
        }
        Ok(Some(plain))
    }

    /// The stream ended: an error unless the sealed end marker came.
    pub fn finish(&self) -> Result<(), E2eError> {
        if self.ended {
            Ok(())
        } else {
            Err(E2eError::Truncated)
        }
    }
}

/// Opens datagrams: any order within a window, never the same counter twice.
pub struct DatagramOpener {
    key: Arc<LessSafeKey>,
    highest: Option<u64>,
    /// Bit i set: counter `highest - i` was accepted.
    seen: u64,
}

impl DatagramOpener {
    /// The datagram's plaintext, unless it is forged, replayed or too old.
    pub fn open(&mut self, datagram: &[u8]) -> Result<Vec<u8>, E2eError> {
        let (counter, _, plain) = open_frame(&self.key, DATAGRAM_DOMAIN, datagram)?;
        match self.highest {
            None => {
                self.highest = Some(counter);
                self.seen = 1;
            }
            Some(high) if counter > high => {
                let shift = counter - high;
                self.seen = if shift >= WINDOW {
                    1
                } else {
                    (self.seen << shift) | 1
                };
                self.highest = Some(counter);
            }
            Some(high) => {
                let age = high - counter;
                if age >= WINDOW || self.seen & (1 << age) != 0 {
                    return Err(E2eError::Replayed(counter));
                }
                self.seen |= 1 << age;
            }
        }
        Ok(plain)
    }
}

/// Seals datagrams this side sends.
pub fn datagram_sealer(keys: &SessionKeys) -> Sealer {
    keys.sealer(DATAGRAM_DOMAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(subject: &str) -> Party {
        Party {
            tenant: "contoso".into(),
            subject: subject.into(),
        }
    }

    /// An honest exchange: both sides see the same transcript.
    fn pair() -> (SessionKeys, SessionKeys) {
        let (h, s) = (KeyExchange::start().unwrap(), KeyExchange::start().unwrap());
        let t = Transcript {
            session_id: "s1".into(),
            helper: party("ada"),
            sharer: party("grace"),
            helper_key: h.public_key(),
            sharer_key: s.public_key(),
        };
        (
            h.finish(Role::Helper, &t).unwrap(),
            s.finish(Role::Sharer, &t).unwrap(),
        )
    }

    #[test]
    fn both_sides_derive_the_same_code_and_can_talk_both_ways() {
        let (helper, sharer) = pair();
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

    #[test]
    fn a_key_substituting_relay_yields_different_codes() {
        // The relay runs one exchange with each party, substituting its own keys.
        let (helper, sharer) = (KeyExchange::start().unwrap(), KeyExchange::start().unwrap());
        let (mitm_to_helper, mitm_to_sharer) =
            (KeyExchange::start().unwrap(), KeyExchange::start().unwrap());
        let helper_view = Transcript {
            session_id: "s1".into(),
            helper: party("ada"),
            sharer: party("grace"),
            helper_key: helper.public_key(),
            sharer_key: mitm_to_helper.public_key(),
        };
        let sharer_view = Transcript {
            helper_key: mitm_to_sharer.public_key(),
            sharer_key: sharer.public_key(),
            ..helper_view.clone()
        };
        let helper_keys = helper.finish(Role::Helper, &helper_view).unwrap();
        let sharer_keys = sharer.finish(Role::Sharer, &sharer_view).unwrap();
        let relay_with_helper = mitm_to_helper.finish(Role::Sharer, &helper_view).unwrap();
        let relay_with_sharer = mitm_to_sharer.finish(Role::Helper, &sharer_view).unwrap();
        // The relay can read each leg, but the users' codes differ: comparing them reveals it.
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

    #[test]
    fn tampered_replayed_reordered_and_truncated_streams_are_refused() {
        let (helper, sharer) = pair();
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
    }

    #[test]
    fn lost_datagrams_do_not_break_later_ones_but_replays_are_refused() {
        let (helper, sharer) = pair();
        let mut sealer = datagram_sealer(&sharer);
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| sealer.seal(&[i]).unwrap()).collect();
        let mut opener = helper.datagram_opener();
        // Frames 0, 2, 5 arrive; 1, 3, 4 are lost; then 4 arrives late.
        for i in [0usize, 2, 5, 4] {
            assert_eq!(opener.open(&frames[i]).unwrap(), [i as u8]);
        }
        assert_eq!(opener.open(&frames[5]), Err(E2eError::Replayed(5)));
        assert_eq!(opener.open(&frames[99]).unwrap(), [99]);
        // Far older than the window: refused, since it can no longer be told from a replay.
        assert_eq!(opener.open(&frames[6]), Err(E2eError::Replayed(6)));
        // A stream frame is not a datagram.
        let stream_frame = sharer
            .sealer(stream_domain(Channel::Screen))
            .seal(b"x")
            .unwrap();
        assert_eq!(opener.open(&stream_frame), Err(E2eError::Tampered));
    }

    #[test]
    fn the_transcript_binds_every_field() {
        let base = Transcript {
            session_id: "s".into(),
            helper: party("a"),
            sharer: party("b"),
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
                helper_key: [3; 32],
                ..base.clone()
            },
            Transcript {
                sharer_key: [3; 32],
                ..base.clone()
            },
            // Moving bytes between fields must not give the same hash (length prefixes).
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
}
