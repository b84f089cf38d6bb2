//! Wire protocol of remote-help-relay.
//!
//! This crate is the one place that defines what travels between clients and the relay:
//!
//! - [`v1`]: the protobuf control messages and the [`v1::ErrorCode`] list, generated from
//!   `proto/remote_help.proto` at build time by prost (compiled with protox, no system `protoc`);
//! - [`forwarded`]: the packet forwarder's datagram header (the packet path);
//! - [`framing`]: how control messages are framed on the QUIC control stream (a 4-byte
//!   big-endian length prefix, then the protobuf bytes) and how data streams are tagged;
//! - [`ALPN`] and [`PROTOCOL_VERSION`]: what a client must announce.
//!
//! Everything here is plain data and codecs: no sockets, no clocks.
#![deny(missing_docs)]

pub mod forwarded;
pub mod framing;

/// Generated protobuf types of protocol version 1.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/remotehelp.v1.rs"));
}

pub use v1::ErrorCode;

/// The TLS ALPN identifier of protocol version 1. Connections without it are refused.
pub const ALPN: &[u8] = b"remote-help/1";

/// The protocol version a client puts in `Hello.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 1;

impl ErrorCode {
    /// The human-readable sentence a client shows its user for this code.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::Unspecified => "unspecified error",
            ErrorCode::TokenInvalid => "your sign-in token could not be verified",
            ErrorCode::TokenExpired => "your sign-in token has expired or is not yet valid",
            ErrorCode::TenantUnknown => "your organisation is not served by this relay",
            ErrorCode::CrossTenant => "this session belongs to another organisation",
            ErrorCode::CodeInvalid => "no session has this code",
            ErrorCode::CodeExpired => "this session code has expired",
            ErrorCode::CodeUsed => "this session code has already been used",
            ErrorCode::Declined => "the user declined the session",
            ErrorCode::ProtocolViolation => "the client broke the protocol",
            ErrorCode::MessageTooLarge => "a message was larger than the relay accepts",
            ErrorCode::RelayShutdown => "the relay is shutting down",
            ErrorCode::PeerEnded => "the other party ended the session",
            ErrorCode::PeerLost => "the connection to the other party was lost",
            ErrorCode::UnsupportedVersion => "this client's protocol version is not supported",
            ErrorCode::WrongRole => "this request is not allowed for your role",
            ErrorCode::AuthTimeout => "the client did not sign in in time",
            ErrorCode::Internal => "the relay hit an internal error",
            ErrorCode::EndedByClient => "you ended the session",
            ErrorCode::SessionBusy => {
                "busy: a mode change is already pending, or the device is already registered or in a session"
            }
            ErrorCode::LimitExceeded => "a relay limit was reached",
            ErrorCode::TenantDisabled => "Remote Help is not enabled for your organisation",
            ErrorCode::UnenrolledDeviceNotAllowed => {
                "this device is not enrolled, and your organisation requires enrolment"
            }
            ErrorCode::LicenseRequired => "a Remote Help licence is required",
            ErrorCode::PlatformNotSupported => "this device's platform is not supported",
            ErrorCode::NotInScope => "this user or device is outside the helper's scope",
            ErrorCode::PermissionDenied => "the helper's role does not allow this",
            ErrorCode::ConsentTimeout => "the consent prompt was not answered in time",
            ErrorCode::ChatDisabled => "chat is disabled by your organisation",
            ErrorCode::ComplianceNotConfirmed => {
                "the helper did not continue past the compliance warning"
            }
            ErrorCode::DeviceUnavailable => "no such device is waiting for help",
            ErrorCode::ModeDeclined => "the user declined the mode change",
            ErrorCode::CannotEnd => "only the helper can end an unattended session",
            ErrorCode::AdminEnded => "an administrator ended the session",
            ErrorCode::AuditUnavailable => {
                "the relay cannot record sessions right now; try again later"
            }
            ErrorCode::RelayRestarted => "the relay restarted during the session",
            ErrorCode::RateLimited => "too many attempts; try again in a minute",
            ErrorCode::CodeBurned => {
                "too many wrong codes were tried against this code; ask the helper for a new one"
            }
            ErrorCode::Redirect => "the session is held by another relay node",
            ErrorCode::RelayLost => "the connection to the relay was lost",
            ErrorCode::E2eRequired => {
                "your organisation requires end-to-end protection, and the two apps have no protection method in common; update the app that lacks it"
            }
            ErrorCode::TenantKeysUnavailable => {
                "the relay cannot reach your organisation's sign-in service to check your token; try again in a few minutes"
            }
        }
    }

    /// The code as a QUIC application error code (its protobuf number).
    pub fn to_quic(self) -> u32 {
        self as u32
    }

    /// The code carried by a QUIC application close, if it is one of ours.
    pub fn from_quic(code: u64) -> Option<ErrorCode> {
        i32::try_from(code)
            .ok()
            .and_then(|c| ErrorCode::try_from(c).ok())
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_names_are_the_stable_wire_names() {
        assert_eq!(ErrorCode::TokenInvalid.as_str_name(), "TOKEN_INVALID");
        assert_eq!(ErrorCode::CrossTenant.to_string(), "CROSS_TENANT");
        assert_eq!(
            ErrorCode::from_str_name("RELAY_SHUTDOWN"),
            Some(ErrorCode::RelayShutdown)
        );
    }

    #[test]
    fn error_codes_round_trip_through_quic_close_codes() {
        for code in [
            ErrorCode::TokenInvalid,
            ErrorCode::PeerLost,
            ErrorCode::LimitExceeded,
        ] {
            assert_eq!(ErrorCode::from_quic(u64::from(code.to_quic())), Some(code));
        }
        assert_eq!(ErrorCode::from_quic(u64::MAX), None);
        assert_eq!(ErrorCode::from_quic(9_999), None);
    }

    #[test]
    fn every_error_code_has_a_description() {
        for value in 0..=40 {
            if let Ok(code) = ErrorCode::try_from(value) {
                assert!(!code.describe().is_empty());
            }
        }
    }
}
