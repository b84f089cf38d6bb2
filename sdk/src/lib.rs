//! remote-help-sdk: the Rust client of remote-help-relay. A helper connects with a token
//! from its tenant, creates a session and reads its code to the person it helps; that
//! person's sharer joins with the code, consents, and the two exchange screen frames, input
//! events and chat, sealed end to end so the relay forwards only ciphertext.
//!
//! A tour:
//!
//! - [`client`]: the [`client::Client`] (one QUIC connection to a relay and its control
//!   stream), [`client::secure`] (the key exchange and sealed channels applications use),
//!   [`client::content`] (content profile v1: typed screen frames, input events, chat) and
//!   [`client::test_card`] (a moving test picture to share without a screen grabber).
//! - [`e2e`]: the end-to-end protection itself (X25519, HKDF-SHA256, AES-256-GCM or
//!   ChaCha20-Poly1305), pure and synchronous.
//! - [`session`]: the vocabulary both ends share: [`session::Role`], [`session::Mode`],
//!   [`session::Channel`] and the rules for which channel flows which way.
//! - [`path`]: the NAT-traversal candidates a client offers and dials for a direct path.
//! - [`tls`]: the client's trust in the relay (a CA file or a pinned certificate
//!   fingerprint) and the pinned mutual TLS of direct paths.
//! - [`transport`]: the client's QUIC windows, idle timeout and keep-alive.
//!
//! The SDK does not depend on the relay daemon (its configuration, audit, admin API or
//! reports): an application embeds it with the wire protocol (`remote-help-proto`), quinn,
//! rustls and ring, nothing more. The relay crate builds on the SDK and re-exports these
//! modules, so `remote_help_relay::client` is this crate's [`client`].
//!
//! `examples/helper.rs` and `examples/share_test_card.rs` are two small programs, one per
//! side of a session (see the crate's README.md).
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod client;
pub mod e2e;
pub mod path;
pub mod session;
pub mod tls;
pub mod transport;
