//! remote-help-relay: a QUIC relay that pairs a helper and a sharer of the same tenant by
//! a short session code and forwards their screen, input and chat streams.
//!
//! A tour, from the wire inwards:
//!
//! - [`server`]: the async shell. [`server::spawn`] binds the QUIC endpoint and returns a
//!   [`server::ServerHandle`] owning every task. One task per connection authenticates the
//!   client ([`auth`]), serves its control stream and forwards its data streams.
//! - [`core`]: the pure, I/O-free core — session codes, the session state machine
//!   ([`core::registry::Registry`]) and which channel may flow which way.
//! - [`auth`]: tenant-issued JWT verification; [`issuer`] mints tokens (dev tenant, tests).
//! - [`config`]: the TOML config, parsed into a typed [`config::Config`] in one step.
//! - [`tls`] and [`transport`]: TLS 1.3 identity and trust, QUIC windows and timeouts.
//! - [`client`]: the reference client SDK (the `remote-help-sdk` crate, re-exported), used
//!   by the `rhelp` CLI, the tests and `loadtest`.
//! - [`dev`]: the development tenant used when `relay` runs without a config.
//! - [`e2e`]: end-to-end encryption between the parties (the relay sees only sealed bytes),
//!   from the SDK; [`client::secure`] runs it.
//! - [`probe`]: a whole measured session in one process (`rhelp probe`, `relay demo`).
//! - [`hostile`]: the hostile-client campaign (`rhelp hostile`, the hostile tests).
//!
//! Wire types come from the `remote-help-proto` crate and stop at the edge: the server and
//! client convert them into the domain types of [`core`] and [`auth`].
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod audit;
pub mod auth;
pub mod claim_map;
/// The client SDK (the `remote-help-sdk` crate), re-exported: the `rhelp` CLI, the tests and
/// `loadtest` reach it here as before.
pub use remote_help_sdk::client;
pub mod config;
pub mod core;
pub mod dev;
/// End-to-end protection, from the client SDK: the relay only ever sees its sealed bytes.
pub use remote_help_sdk::e2e;
pub mod hostile;
pub mod issuer;
pub mod logging;
pub mod preflight;
pub mod probe;
pub mod report;
pub mod server;
#[cfg(feature = "tap")]
pub mod tap;
pub mod tenant_keys;
pub mod tls;
pub mod transport;
