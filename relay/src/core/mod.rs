//! The relay's pure core: session codes, the session state machine, and the rules for
//! which data may flow where.
//!
//! Nothing in this module does I/O or reads a clock: callers pass `now` and an RNG.
//! That keeps every decision testable with a fake clock and a seeded generator, and
//! keeps the async shell (`server`) thin.

pub mod cluster;
pub mod code;
pub mod forwarding;
pub mod limits;
pub mod policy;
pub mod registry;

/// NAT-traversal path logic, shared with the client SDK (which dials the candidates).
pub use remote_help_sdk::path;

use std::fmt;
use std::sync::Arc;

use rand::Rng;

/// The session vocabulary lives in the client SDK, which follows the same rules the relay
/// enforces; re-exported here so the relay's code reads `core::Role` as before.
pub use remote_help_sdk::session::{Channel, Mode, Role, choose_suite, may_send, session_channels};

/// Identifies one client connection on this relay node (assigned by the shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A tenant (organisation) id, as configured and as carried in tokens' `tid` claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Wraps a tenant id string.
    pub fn new(id: &str) -> TenantId {
        TenantId(Arc::from(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A session id: 128 random bits, shown as 32 lower-case hex digits. Unlike the code,
/// it is never typed by a person and appears in logs and (later) audit events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// A fresh random id.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> SessionId {
        let bits: u128 = rng.random();
        SessionId(Arc::from(format!("{bits:032x}")))
    }

    /// An id as received from outside (the admin API); it may name no session.
    pub fn from_wire(id: &str) -> SessionId {
        SessionId(Arc::from(id))
    }

    /// The id of no session (for events about a refused request).
    pub fn empty() -> SessionId {
        SessionId(Arc::from(""))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_32_hex_digits() {
        let mut rng = rand::rng();
        let id = SessionId::generate(&mut rng);
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().chars().all(|c| c.is_ascii_hexdigit()));
    }
}
