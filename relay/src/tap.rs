//! A tap on the forwarding path, compiled only into test builds (`--features tap`): it
//! records every byte the relay forwards while enabled, so tests can prove that end-to-end
//! protected content never appears at the relay. Never built into a release.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);
static BYTES: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Starts recording.
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// Records forwarded bytes (a no-op unless enabled).
pub fn record(bytes: &[u8]) {
    if ENABLED.load(Ordering::Relaxed) {
        BYTES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
    }
}

/// Everything recorded so far (and clears it).
pub fn take() -> Vec<u8> {
    std::mem::take(
        &mut *BYTES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

static SUBSTITUTE_KEYS: AtomicBool = AtomicBool::new(false);

/// Makes the relay behave like a malicious one: replace the public key in every key-exchange
/// frame it forwards with a fresh one of its own.
pub fn substitute_keys(on: bool) {
    SUBSTITUTE_KEYS.store(on, Ordering::SeqCst);
}

/// The chunk to forward on a `KEYS` stream: unchanged, or with the key substituted. A key
/// frame is a 4-byte length (32) and the 32-byte key.
pub fn keys_chunk(chunk: bytes::Bytes) -> bytes::Bytes {
    if !SUBSTITUTE_KEYS.load(Ordering::SeqCst) || chunk.len() != 36 || chunk[..4] != [0, 0, 0, 32] {
        return chunk;
    }
    match crate::e2e::KeyExchange::start() {
        Ok(ours) => {
            let mut forged = chunk.to_vec();
            forged[4..].copy_from_slice(&ours.public_key());
            bytes::Bytes::from(forged)
        }
        Err(_) => chunk,
    }
}

/// A rewrite of what the relay tells one side in `SessionStarted`: the suite, and the
/// suites it claims the other side announced.
type Rewrite = Option<(u32, Vec<u32>)>;

static TELL_HELPER: Mutex<Rewrite> = Mutex::new(None);
static TELL_SHARER: Mutex<Rewrite> = Mutex::new(None);

/// Makes the relay lie to `role` about the end-to-end announcements (a downgrade attempt):
/// from now on that side is told `suite` and that its peer announced `peer_suites`
/// (`None`: the truth again).
pub fn rewrite_announcement(role: crate::core::Role, rewrite: Option<(u32, Vec<u32>)>) {
    let slot = match role {
        crate::core::Role::Helper => &TELL_HELPER,
        crate::core::Role::Sharer => &TELL_SHARER,
    };
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = rewrite;
}

/// What the relay tells `role` in `SessionStarted`: the truth, or the rewrite.
pub fn announcement(
    role: crate::core::Role,
    truth: crate::server::hub::E2eAnnouncement,
) -> crate::server::hub::E2eAnnouncement {
    let slot = match role {
        crate::core::Role::Helper => &TELL_HELPER,
        crate::core::Role::Sharer => &TELL_SHARER,
    };
    match &*slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
        Some((suite, peer_suites)) => crate::server::hub::E2eAnnouncement {
            suite: *suite,
            peer_suites: peer_suites.as_slice().into(),
        },
        None => truth,
    }
}

static PEER_CERT_HELPER: Mutex<Option<[u8; 32]>> = Mutex::new(None);
static PEER_CERT_SHARER: Mutex<Option<[u8; 32]>> = Mutex::new(None);

/// Makes the relay lie to `role` about its peer's certificate on the packet path (a
/// man-in-the-middle attempt): from now on that side's `SessionStarted.packet_path` names
/// `hash` as the peer's certificate (`None`: the truth again).
pub fn substitute_peer_certificate(role: crate::core::Role, hash: Option<[u8; 32]>) {
    let slot = match role {
        crate::core::Role::Helper => &PEER_CERT_HELPER,
        crate::core::Role::Sharer => &PEER_CERT_SHARER,
    };
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = hash;
}

/// The peer certificate hash to tell `role` instead of the truth, if one is set.
pub fn peer_certificate(role: crate::core::Role) -> Option<[u8; 32]> {
    let slot = match role {
        crate::core::Role::Helper => &PEER_CERT_HELPER,
        crate::core::Role::Sharer => &PEER_CERT_SHARER,
    };
    *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
