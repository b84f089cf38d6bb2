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

use crate::session::{Channel, Role};

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

pub use crate::session::choose_suite;

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
mod tests;
