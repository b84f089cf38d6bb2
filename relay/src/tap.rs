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
