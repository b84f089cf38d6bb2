//! End-to-end encryption between helper and sharer: the relay forwards only sealed bytes.
//!
//! Pure (no I/O). Primitives all come from `ring`; nothing here is hand-written crypto.
//! PROTOCOL.md §8.7 specifies every byte, with test vectors this module is checked against.
//!
//! 1. Each party announces the [`Suite`]s it supports in `Hello`; the relay picks the first
//!    suite of the helper's list that the sharer also lists and tells both in
//!    `SessionStarted`, with the peer's list. Each party recomputes the choice.
//! 2. Each party makes an ephemeral X25519 key pair and sends the public half to the other
//!    through the relay (the `KEYS` channel).
//! 3. The **transcript** binds the session id, both identities (tenant and subject), both
//!    suite lists, the chosen suite and both public keys, in helper-then-sharer order:
//!    SHA-256 over `"remote-help e2e v2"` and the fields, each length-prefixed. A relay that
//!    rewrites an announcement therefore gives the two sides different transcripts.
//! 4. HKDF-SHA256 with the transcript hash as salt, over the X25519 shared secret, yields the
//!    helper→sharer key, the sharer→helper key (for the suite's AEAD) and the verification
//!    code.
//! 5. Both users see the same six-digit **verification code** (like Signal's safety numbers):
//!    a relay that substitutes keys or rewrites announcements ends up with two different
//!    transcripts, so the two codes differ, and reading the code aloud reveals it.
//!
//! Each sealed frame is `counter (8 bytes, big-endian) ‖ ciphertext ‖ tag (16)`, the
//! plaintext being the payload then one type byte (data or end). The nonce is a 4-byte
//! domain then the counter, under a per-direction key; the associated data is the domain.
//! A stream's counter is its stream number (high 32 bits: 0 for the first stream a side
//! opens on a channel, then 1, 2, …) and its frame number (low 32 bits, from 0), so no
//! nonce repeats, even when a channel is opened again. Streams must arrive in exact frame
//! order and end with a sealed end marker, so tampering, replay, reordering and truncation
//! are all errors; datagrams (lossy screen frames) are accepted in any order within a
//! replay window, so a lost frame never breaks the next one.

use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf::{self, HKDF_SHA256, KeyType};
use ring::rand::SystemRandom;
use std::sync::Arc;

use crate::core::{Channel, Role};

/// Length of an X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes a sealed frame adds: the counter and the AEAD tag.
pub const OVERHEAD: usize = 8 + 16;
const LABEL: &[u8] = b"remote-help e2e v2";
/// Replay window for datagrams, in frames.
const WINDOW: u64 = 64;
/// The most suites a party may announce (a longer `Hello.e2e_suites` is refused).
pub const MAX_SUITES: usize = 16;

/// A protection suite: key exchange, key derivation and AEAD, by its wire id
/// (`Hello.e2e_suites`, `SessionStarted.e2e_suite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// 1: X25519, HKDF-SHA256, ChaCha20-Poly1305 (fast without AES hardware).
    X25519ChaCha20Poly1305,
    /// 2: X25519, HKDF-SHA256, AES-256-GCM (what web browsers' built-in crypto offers).
    X25519Aes256Gcm,
}

impl Suite {
    /// Every suite this implementation supports, in the reference client's order of
    /// preference (what it announces by default).
    pub const ALL: [Suite; 2] = [Suite::X25519ChaCha20Poly1305, Suite::X25519Aes256Gcm];

    /// The wire id.
    pub fn id(self) -> u32 {
        match self {
            Suite::X25519ChaCha20Poly1305 => 1,
            Suite::X25519Aes256Gcm => 2,
        }
    }

    /// The suite with this wire id, if this implementation knows it.
    pub fn from_id(id: u32) -> Option<Suite> {
        match id {
            1 => Some(Suite::X25519ChaCha20Poly1305),
            2 => Some(Suite::X25519Aes256Gcm),
            _ => None,
        }
    }

    /// A short name (`chacha20`, `aes256gcm`), as command lines take it.
    pub fn as_str(self) -> &'static str {
        match self {
            Suite::X25519ChaCha20Poly1305 => "chacha20",
            Suite::X25519Aes256Gcm => "aes256gcm",
        }
    }

    /// The suite with this short name.
    pub fn parse(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn aead(self) -> &'static ring::aead::Algorithm {
        match self {
            Suite::X25519ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Suite::X25519Aes256Gcm => &AES_256_GCM,
        }
    }
}

pub use crate::core::choose_suite;

/// Why end-to-end protection failed. Every variant means the frame (or the session) must
/// not be used.
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
    /// The frame authenticated but its type byte is unknown, or an end frame carries a
    /// payload.
    #[error("sealed frame of unknown type {0}")]
    BadType(u8),
    /// The key exchange failed (bad public key, randomness failure).
    #[error("key exchange failed: {0}")]
    KeyExchange(String),
    /// The peer announced no protection suite: nothing may be sent to it.
    #[error("the peer announced no end-to-end protection; nothing is sent to it")]
    PeerUnprotected,
    /// An unsealed data-plane call ([`Client::unsealed_data`](crate::client::Client::unsealed_data)
    /// and the calls built on it) from a client that protects: its content goes only
    /// sealed. Plaintext needs the explicit opt-out,
    /// [`ClientOptions::insecure_plaintext_for_measurement`](crate::client::ClientOptions::insecure_plaintext_for_measurement).
    #[error(
        "this client protects end to end: unsealed channels and datagrams are refused (use secure::channels, or opt out for a measurement)"
    )]
    UnsealedWhileProtected,
    /// The two parties' announcements share no suite this side supports.
    #[error("no end-to-end protection suite in common with the peer")]
    NoCommonSuite,
    /// The relay named a suite other than the one both announcements give.
    #[error("the relay chose suite {announced}, but the announcements give {computed}")]
    SuiteMismatch {
        /// What `SessionStarted.e2e_suite` said.
        announced: u32,
        /// What this side computes from both lists.
        computed: u32,
    },
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
    /// The session id: the ASCII string of `SessionStarted.session_id` (32 lower-case hex
    /// digits from this relay), bound as those bytes.
    pub session_id: String,
    /// The helper.
    pub helper: Party,
    /// The sharer.
    pub sharer: Party,
    /// The suite ids the helper announced, in its order.
    pub helper_suites: Vec<u32>,
    /// The suite ids the sharer announced, in its order.
    pub sharer_suites: Vec<u32>,
    /// The suite in use.
    pub suite: Suite,
    /// The helper's X25519 public key.
    pub helper_key: [u8; PUBLIC_KEY_LEN],
    /// The sharer's X25519 public key.
    pub sharer_key: [u8; PUBLIC_KEY_LEN],
}

fn suite_list(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_be_bytes()).collect()
}

impl Transcript {
    /// SHA-256 over the label and every field, each as a 4-byte big-endian length and the
    /// bytes; suite lists as their ids, 4 bytes big-endian each.
    pub fn hash(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let (helper_suites, sharer_suites) = (
            suite_list(&self.helper_suites),
            suite_list(&self.sharer_suites),
        );
        let suite = self.suite.id().to_be_bytes();
        let fields: [&[u8]; 11] = [
            LABEL,
            self.session_id.as_bytes(),
            self.helper.tenant.as_bytes(),
            self.helper.subject.as_bytes(),
            self.sharer.tenant.as_bytes(),
            self.sharer.subject.as_bytes(),
            &helper_suites,
            &sharer_suites,
            &suite,
            &self.helper_key,
            &self.sharer_key,
        ];
        for field in fields {
            ctx.update(&(field.len() as u32).to_be_bytes());
            ctx.update(field);
        }
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
        let shared = agreement::agree_ephemeral(
            self.private,
            &UnparsedPublicKey::new(&X25519, theirs),
            |secret| {
                let mut out = [0u8; 32];
                out.copy_from_slice(secret);
                out
            },
        )
        .map_err(|_| E2eError::KeyExchange("the peer's public key is invalid".into()))?;
        SessionKeys::derive(role, transcript, &shared)
    }
}

/// The key schedule's outputs, as bytes (PROTOCOL.md §8.7 publishes them as test vectors).
#[derive(Clone, PartialEq, Eq)]
struct Schedule {
    prk: [u8; 32],
    helper_to_sharer: [u8; 32],
    sharer_to_helper: [u8; 32],
    code: String,
}

impl Schedule {
    /// `PRK = HKDF-Extract(salt = transcript hash, IKM = shared secret)`, then the three
    /// HKDF-Expand outputs.
    fn new(transcript_hash: &[u8; 32], shared_secret: &[u8; 32]) -> Result<Schedule, E2eError> {
        // HKDF-Extract is HMAC(salt, IKM) (RFC 5869 §2.2); computed as such so that the
        // PRK itself can be published and checked.
        let extract = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, transcript_hash);
        let mut prk = [0u8; 32];
        prk.copy_from_slice(ring::hmac::sign(&extract, shared_secret).as_ref());
        let expander = hkdf::Prk::new_less_safe(HKDF_SHA256, &prk);
        let code = u32::from_be_bytes(expand::<4>(&expander, b"verification code")?) % 1_000_000;
        Ok(Schedule {
            prk,
            helper_to_sharer: expand::<32>(&expander, b"helper to sharer")?,
            sharer_to_helper: expand::<32>(&expander, b"sharer to helper")?,
            // Zero-padded: 7042 is shown as "007 042".
            code: format!("{:03} {:03}", code / 1000, code % 1000),
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

fn aead_key(suite: Suite, bytes: &[u8; 32]) -> Result<LessSafeKey, E2eError> {
    let key = UnboundKey::new(suite.aead(), bytes)
        .map_err(|_| E2eError::KeyExchange("aead key".into()))?;
    Ok(LessSafeKey::new(key))
}

/// The keys of one side of a session, and the code both users compare.
#[derive(Clone)]
pub struct SessionKeys {
    send: Arc<LessSafeKey>,
    recv: Arc<LessSafeKey>,
    suite: Suite,
    /// Six digits, zero-padded, shown as `123 456` (`007 042`); equal on both sides unless
    /// keys or announcements were substituted.
    pub verification_code: String,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("suite", &self.suite)
            .field("verification_code", &self.verification_code)
            .finish_non_exhaustive()
    }
}

/// The nonce domain of a channel's streams: the channel number (1 screen, 2 input, 3 chat),
/// also on continuation streams (the tag's `0x80` bit is not part of it).
pub fn stream_domain(channel: Channel) -> u32 {
    channel.to_wire() as u32
}

/// The nonce domain of lossy screen datagrams (distinct from every stream's).
pub const DATAGRAM_DOMAIN: u32 = 0x8000_0001;

/// Plaintext type byte: data, or the end marker.
const DATA: u8 = 0;
const END: u8 = 1;

impl SessionKeys {
    /// The keys of `role` from the transcript and the X25519 shared secret.
    fn derive(
        role: Role,
        transcript: &Transcript,
        shared_secret: &[u8; 32],
    ) -> Result<SessionKeys, E2eError> {
        let schedule = Schedule::new(&transcript.hash(), shared_secret)?;
        let suite = transcript.suite;
        let helper_to_sharer = aead_key(suite, &schedule.helper_to_sharer)?;
        let sharer_to_helper = aead_key(suite, &schedule.sharer_to_helper)?;
        let (send, recv) = match role {
            Role::Helper => (helper_to_sharer, sharer_to_helper),
            Role::Sharer => (sharer_to_helper, helper_to_sharer),
        };
        Ok(SessionKeys {
            send: Arc::new(send),
            recv: Arc::new(recv),
            suite,
            verification_code: schedule.code,
        })
    }

    /// The suite these keys are for.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// A sealer for the first stream this side opens in `domain` (stream number 0), or for
    /// raw use in tests and tools.
    pub fn sealer(&self, domain: u32) -> Sealer {
        self.stream_sealer(domain, 0)
    }

    /// A sealer for this side's stream number `stream` in `domain`: its counters run from
    /// `stream << 32`, so no two streams of a channel share a nonce.
    pub fn stream_sealer(&self, domain: u32, stream: u32) -> Sealer {
        let first = u64::from(stream) << 32;
        Sealer {
            key: self.send.clone(),
            domain,
            counter: first,
            last: first | u64::from(u32::MAX),
            exhausted: false,
        }
    }

    /// An opener for one stream the peer sends in `domain`; the stream number comes from
    /// its first frame (see [`StreamOpener::stream`]).
    pub fn stream_opener(&self, domain: u32) -> StreamOpener {
        StreamOpener {
            key: self.recv.clone(),
            domain,
            stream: None,
            next: 0,
            full: false,
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

/// Seals frames for one stream (or the datagrams) of one direction.
pub struct Sealer {
    key: Arc<LessSafeKey>,
    domain: u32,
    counter: u64,
    /// The last counter this sealer may use.
    last: u64,
    /// `last` was used.
    exhausted: bool,
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
        // 2^32 frames on one stream never happen; refuse rather than ever reuse a nonce
        // (past `last` come the next stream's counters).
        if self.exhausted {
            return Err(E2eError::KeyExchange("counter exhausted".into()));
        }
        if counter == self.last {
            self.exhausted = true;
        } else {
            self.counter = counter + 1;
        }
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
    match kind {
        DATA => {}
        END if body.is_empty() => {}
        other => return Err(E2eError::BadType(other)),
    }
    Ok((counter, kind, body))
}

/// Opens one reliable stream's frames: one stream number, frame numbers 0, 1, 2, … in
/// exact order, no replay, and a sealed end.
pub struct StreamOpener {
    key: Arc<LessSafeKey>,
    domain: u32,
    /// The stream number, from the first frame.
    stream: Option<u32>,
    /// The next frame number due.
    next: u32,
    /// Frame number `2^32 - 1` was accepted: nothing may follow on this stream.
    full: bool,
    ended: bool,
}

impl StreamOpener {
    /// The next frame's plaintext; `Ok(None)` for the sealed end marker.
    pub fn open(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, E2eError> {
        if self.ended {
            return Err(E2eError::AfterEnd);
        }
        let (counter, kind, plain) = open_frame(&self.key, self.domain, frame)?;
        if self.full {
            // The sender cannot seal past frame 2^32 - 1, and the next counter would be the
            // next stream's.
            return Err(E2eError::Replayed(counter));
        }
        // The first frame names the stream; every later one must carry the same number.
        let stream = self.stream.unwrap_or((counter >> 32) as u32);
        let expected = (u64::from(stream) << 32) | u64::from(self.next);
        if counter < expected {
            return Err(E2eError::Replayed(counter));
        }
        if counter > expected {
            return Err(E2eError::OutOfOrder {
                expected,
                got: counter,
            });
        }
        self.stream = Some(stream);
        match self.next.checked_add(1) {
            Some(next) => self.next = next,
            None => self.full = true,
        }
        if kind == END {
            self.ended = true;
            return Ok(None);
        }
        Ok(Some(plain))
    }

    /// The stream number, once the first frame opened. A receiver must refuse a stream
    /// number it already accepted on the same channel (a replayed stream).
    pub fn stream(&self) -> Option<u32> {
        self.stream
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
    /// The datagram's plaintext, unless it is forged, replayed or too old: with `H` the
    /// highest counter accepted so far, counter `c` is accepted if none was accepted yet,
    /// if `c > H`, or if `H - c < 64` and `c` was not accepted before.
    pub fn open(&mut self, datagram: &[u8]) -> Result<Vec<u8>, E2eError> {
        let (counter, kind, plain) = open_frame(&self.key, DATAGRAM_DOMAIN, datagram)?;
        if kind != DATA {
            return Err(E2eError::BadType(kind));
        }
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

/// Seals datagrams this side sends: counters 0, 1, 2, … in the datagram domain.
pub fn datagram_sealer(keys: &SessionKeys) -> Sealer {
    Sealer {
        key: keys.send.clone(),
        domain: DATAGRAM_DOMAIN,
        counter: 0,
        last: u64::MAX,
        exhausted: false,
    }
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
}
