//! A new connection's first steps: read `Hello`, verify the token, answer `Welcome`.

use super::*;

/// Reads the `Hello`, verifies the token, answers `Welcome`.
/// What a client announced in its `Hello` for its data: its end-to-end suites, and its
/// peer certificate's hash when it can take the packet path.
pub(super) type Announced = (Arc<[u32]>, Option<[u8; 32]>);

pub(super) async fn authenticate(
    hub: &Hub,
    connection: &Party,
) -> Result<(Reader, Writer, Arc<Principal>, Role, SocketAddr, Announced), Close> {
    let max = hub.config.limits.max_control_message;
    let (send_stream, recv) = connection
        .accept_bi()
        .await
        .map_err(|e| Close::Lost(e.to_string()))?;
    // Small initial buffers: control messages are small and an idle connection should
    // not hold 2 × 8 KiB (tokio-util's default) for the session's life; they grow on need.
    let mut reader = FramedRead::with_capacity(recv, ControlCodec::new(max), CONTROL_BUFFER);
    let writer = FramedWrite::with_capacity(send_stream, ControlCodec::new(max), CONTROL_BUFFER);
    let hello = match reader.next().await {
        None => return Err(Close::Lost("control stream closed before Hello".into())),
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(v1::ClientToRelay {
            msg: Some(In::Hello(h)),
        })) => h,
        Some(Ok(_)) => {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "the first message must be Hello".into(),
            ));
        }
    };
    // The Hello (a token of a KiB or more) grew the read buffer's allocation, which the
    // empty remainder still holds (its `capacity()` counts only the space after it, so it
    // cannot tell); an idle connection should not keep that for its whole life. Only an
    // empty buffer is replaced: bytes a client sent right after its Hello stay.
    if reader.read_buffer().is_empty() {
        *reader.read_buffer_mut() = bytes::BytesMut::with_capacity(CONTROL_BUFFER);
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Close::Refuse(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported (this relay speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ),
        ));
    }
    if hello.e2e_suites.len() > crate::e2e::MAX_SUITES {
        return Err(Close::Refuse(
            ErrorCode::ProtocolViolation,
            format!(
                "Hello.e2e_suites lists {} suites (at most {})",
                hello.e2e_suites.len(),
                crate::e2e::MAX_SUITES
            ),
        ));
    }
    // The packet path needs the certificate the peer is to pin (PROTOCOL.md §8a). Only a
    // native client has the UDP socket it takes; a WebTransport client's announcement is
    // ignored (it gets the stream path).
    let packet_path = match (hello.packet_path, connection) {
        (false, _) | (true, Party::Web(_)) => None,
        (true, Party::Native(_)) => {
            match <[u8; 32]>::try_from(hello.peer_certificate_sha256.as_slice()) {
                Ok(hash) => Some(hash),
                Err(_) => {
                    return Err(Close::Refuse(
                        ErrorCode::ProtocolViolation,
                        format!(
                            "Hello.packet_path needs Hello.peer_certificate_sha256 of 32 bytes (got {})",
                            hello.peer_certificate_sha256.len()
                        ),
                    ));
                }
            }
        }
    };
    let Some(role) = Role::from_wire(hello.role) else {
        return Err(Close::Refuse(
            ErrorCode::ProtocolViolation,
            "Hello.role must be ROLE_HELPER or ROLE_SHARER".into(),
        ));
    };
    let policies = hub.policies();
    let principal = match hub
        .key_fetchers
        .verify(
            &policies.verifier,
            &hello.token,
            unix_now,
            crate::auth::Audience::Session,
        )
        .await
    {
        Ok(p) => p,
        Err(e) => {
            metrics::counter!("relay_auth_failures_total", "reason" => e.reason()).increment(1);
            warn!(reason = e.reason(), error = %e, "token refused");
            return Err(Close::Refuse(e.code(), e.to_string()));
        }
    };
    if role == Role::Helper && principal.kind == PrincipalKind::Device {
        return Err(Close::Refuse(
            ErrorCode::WrongRole,
            "a device token cannot act as a helper".into(),
        ));
    }
    let policy = policies.tenant(&principal.tenant);
    let admitted = match role {
        Role::Helper => policy.admit_helper(&principal),
        Role::Sharer => policy.admit_sharer(&principal),
    };
    if let Err(refusal) = admitted {
        metrics::counter!("relay_policy_refusals_total", "code" => refusal.code().as_str_name())
            .increment(1);
        warn!(tenant = %principal.tenant, code = refusal.code().as_str_name(), "policy refused the client");
        // Recorded as what it signed in as: a helper's refusal names the helper.
        hub.refused(Refused {
            code: refusal.code(),
            session: &SessionId::empty(),
            refused_role: role,
            helper: (role == Role::Helper).then_some(&principal),
            sharer: (role == Role::Sharer).then_some(&principal),
        });
        return Err(Close::Refuse(refusal.code(), refusal.message()));
    }
    let mut conn_writer = writer;
    let observed = crate::core::path::canonical(connection.remote_address());
    let welcome = Out::Welcome(v1::Welcome {
        you: Some(principal.to_wire()),
        observed_addr: observed.to_string(),
        max_message_size: u32::try_from(max).unwrap_or(u32::MAX),
        relay_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    send(&mut conn_writer, welcome).await?;
    let suites: Arc<[u32]> = hello.e2e_suites.into();
    Ok((
        reader,
        conn_writer,
        Arc::new(principal),
        role,
        observed,
        (suites, packet_path),
    ))
}
