//! One task per client connection: authenticate, then serve the control stream, hub
//! events, data streams and datagrams until the connection or the relay ends.
//!
//! Decisions are made by the hub and the pure core; this task only translates between
//! the wire and them. Data streams are forwarded by `forward`, in tasks this task owns,
//! so they end when the connection's session ends.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use remote_help_proto::framing::{ControlCodec, FrameError, channel_from_tag};
use remote_help_proto::v1::{self, client_to_relay::Msg as In, relay_to_client::Msg as Out};
use remote_help_proto::{ErrorCode, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{Instrument, debug, info, info_span, warn};

use super::forward::{self, ChannelCounters};
use super::hub::{ConnLink, ConsentOutcome, EVENT_QUEUE, Event, Hub};
use crate::auth::{Principal, PrincipalKind};
use crate::core::code::SessionCode;
use crate::core::{Channel, ConnId, Mode, Role, SessionId, may_send, session_channels};

/// Longest wait for a client to acknowledge the final control messages before closing.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

type Reader = FramedRead<quinn::RecvStream, ControlCodec<v1::ClientToRelay, v1::RelayToClient>>;
type Writer = FramedWrite<quinn::SendStream, ControlCodec<v1::ClientToRelay, v1::RelayToClient>>;

/// Why a connection's service ended.
#[derive(Debug)]
enum Close {
    /// The client went away (closed, reset, timed out); nothing more can be sent.
    Lost(String),
    /// The relay refuses to go on: send the code and close.
    Refuse(ErrorCode, String),
    /// The relay is shutting down.
    Shutdown,
}

impl From<FrameError> for Close {
    fn from(e: FrameError) -> Close {
        match e {
            FrameError::TooLarge { len, max } => Close::Refuse(
                ErrorCode::MessageTooLarge,
                format!("control message of {len} bytes exceeds {max}"),
            ),
            FrameError::Decode(e) => Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!("malformed control message: {e}"),
            ),
            FrameError::Truncated(n) => Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!("control stream ended inside a message ({n} bytes)"),
            ),
            FrameError::UnknownChannel(tag) => Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!("unknown data channel tag {tag}"),
            ),
            FrameError::Io(e) => Close::Lost(e.to_string()),
        }
    }
}

/// Serves one incoming connection to its end.
pub async fn serve(hub: Arc<Hub>, incoming: quinn::Incoming) {
    let _open = hub.connection_opened();
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "handshake failed");
            metrics::counter!("relay_handshake_failures_total").increment(1);
            return;
        }
    };
    let id = hub.next_conn_id();
    let span = info_span!("conn", id = id.0, %remote);
    async move {
        let (reader, writer, principal, role) =
            match tokio::time::timeout(hub.config.auth_timeout, authenticate(&hub, &connection))
                .await
            {
                Ok(Ok(authenticated)) => authenticated,
                Ok(Err(close)) => {
                    finish(&connection, None, close).await;
                    return;
                }
                Err(_) => {
                    metrics::counter!("relay_auth_failures_total", "reason" => "timeout")
                        .increment(1);
                    let close = Close::Refuse(
                        ErrorCode::AuthTimeout,
                        "no valid Hello within the authentication deadline".into(),
                    );
                    finish(&connection, None, close).await;
                    return;
                }
            };
        info!(
            tenant = %principal.tenant,
            subject = %principal.subject,
            role = role.as_str(),
            "authenticated"
        );
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        hub.register(
            id,
            ConnLink {
                events: events_tx,
                connection: connection.clone(),
                principal: principal.clone(),
                role,
            },
        );
        let mut conn = Conn {
            id,
            hub: hub.clone(),
            connection: connection.clone(),
            principal,
            role,
            writer,
            events,
            session: None,
            tag_readers: JoinSet::new(),
            forwarders: JoinSet::new(),
            failed_joins: 0,
        };
        let close = conn.run(reader).await;
        conn.leave_session(match close {
            Close::Shutdown => ErrorCode::RelayShutdown,
            _ => ErrorCode::PeerLost,
        });
        hub.unregister(id);
        let mut writer = conn.writer;
        finish(&connection, Some(&mut writer), close).await;
    }
    .instrument(span)
    .await;
}

/// Reads the `Hello`, verifies the token, answers `Welcome`.
async fn authenticate(
    hub: &Hub,
    connection: &quinn::Connection,
) -> Result<(Reader, Writer, Arc<Principal>, Role), Close> {
    let max = hub.config.limits.max_control_message;
    let (send_stream, recv) = connection
        .accept_bi()
        .await
        .map_err(|e| Close::Lost(e.to_string()))?;
    let mut reader = FramedRead::new(recv, ControlCodec::new(max));
    let writer = FramedWrite::new(send_stream, ControlCodec::new(max));
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
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Close::Refuse(
            ErrorCode::UnsupportedVersion,
            format!(
                "protocol version {} is not supported (this relay speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ),
        ));
    }
    let Some(role) = Role::from_wire(hello.role) else {
        return Err(Close::Refuse(
            ErrorCode::ProtocolViolation,
            "Hello.role must be ROLE_HELPER or ROLE_SHARER".into(),
        ));
    };
    let principal = match hub.verifier.verify(&hello.token, unix_now()) {
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
    let mut conn_writer = writer;
    let welcome = Out::Welcome(v1::Welcome {
        you: Some(principal.to_wire()),
        observed_addr: connection.remote_address().to_string(),
        max_message_size: u32::try_from(max).unwrap_or(u32::MAX),
        relay_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    send(&mut conn_writer, welcome).await?;
    Ok((reader, conn_writer, Arc::new(principal), role))
}

/// The state of one authenticated connection.
struct Conn {
    id: ConnId,
    hub: Arc<Hub>,
    connection: quinn::Connection,
    principal: Arc<Principal>,
    role: Role,
    writer: Writer,
    events: mpsc::Receiver<Event>,
    session: Option<LocalSession>,
    /// Data streams whose channel tag is still being read.
    tag_readers: JoinSet<TaggedStream>,
    /// Data streams being forwarded to the peer.
    forwarders: JoinSet<()>,
    failed_joins: u32,
}

/// This connection's view of its current session.
struct LocalSession {
    id: SessionId,
    active: Option<Active>,
}

/// An active session: where data goes, and which channels this side has opened.
struct Active {
    mode: Mode,
    peer: quinn::Connection,
    opened: [bool; 3],
    counters: Arc<ChannelCounters>,
}

/// A data stream with its first byte read.
struct TaggedStream {
    session: SessionId,
    tag: Result<u8, String>,
    stream: quinn::RecvStream,
}

impl Conn {
    async fn run(&mut self, mut reader: Reader) -> Close {
        let hub = self.hub.clone();
        let mut drain_seen = false;
        loop {
            let step = tokio::select! {
                biased;
                _ = hub.stopping.cancelled() => Err(Close::Shutdown),
                _ = hub.draining.cancelled(), if !drain_seen => {
                    drain_seen = true;
                    // Sessions with data flowing may finish within the drain deadline;
                    // everything else ends now.
                    if self.is_active() { Ok(()) } else { Err(Close::Shutdown) }
                }
                Some(event) = self.events.recv() => self.on_event(event).await,
                message = reader.next() => match message {
                    None => Err(Close::Lost("client closed its control stream".into())),
                    Some(Err(e)) => Err(e.into()),
                    Some(Ok(m)) => self.on_message(m).await,
                },
                stream = self.connection.accept_uni() => match stream {
                    Ok(stream) => { self.on_data_stream(stream); Ok(()) }
                    Err(e) => Err(Close::Lost(e.to_string())),
                },
                datagram = self.connection.read_datagram() => match datagram {
                    Ok(datagram) => { self.on_datagram(datagram); Ok(()) }
                    Err(e) => Err(Close::Lost(e.to_string())),
                },
                bi = self.connection.accept_bi() => match bi {
                    Ok(_) => Err(Close::Refuse(
                        ErrorCode::ProtocolViolation,
                        "only one bidirectional (control) stream is allowed".into(),
                    )),
                    Err(e) => Err(Close::Lost(e.to_string())),
                },
                Some(tagged) = self.tag_readers.join_next() => match tagged {
                    Ok(tagged) => self.on_tagged_stream(tagged),
                    Err(_) => Ok(()),
                },
                Some(_) = self.forwarders.join_next() => Ok(()),
            };
            if let Err(close) = step {
                return close;
            }
            if drain_seen && self.session.is_none() {
                return Close::Shutdown;
            }
        }
    }

    fn is_active(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.active.is_some())
    }

    async fn reply(&mut self, message: Out) -> Result<(), Close> {
        send(&mut self.writer, message).await
    }

    /// A refusal the client can recover from (it may send another request).
    async fn refuse(&mut self, code: ErrorCode, message: String) -> Result<(), Close> {
        metrics::counter!("relay_refusals_total", "code" => code.as_str_name()).increment(1);
        info!(code = code.as_str_name(), %message, "request refused");
        self.reply(Out::Error(v1::Error {
            code: code as i32,
            message,
            fatal: false,
        }))
        .await
    }

    async fn on_message(&mut self, message: v1::ClientToRelay) -> Result<(), Close> {
        let violation = |what: &str| {
            Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                what.to_string(),
            ))
        };
        match (message.msg, self.role) {
            (None, _) => violation("empty ClientToRelay message"),
            (Some(In::Hello(_)), _) => violation("Hello was already received"),
            (Some(In::Ping(p)), _) => self.reply(Out::Pong(v1::Pong { nonce: p.nonce })).await,
            (Some(In::CreateSession(c)), Role::Helper) => self.on_create(c).await,
            (Some(In::JoinSession(j)), Role::Sharer) => self.on_join(j).await,
            (Some(In::ConsentAnswer(a)), Role::Sharer) => self.on_consent(a.accept).await,
            (Some(In::EndSession(_)), _) => self.on_end().await,
            (Some(In::CreateSession(_)), Role::Sharer) => Err(Close::Refuse(
                ErrorCode::WrongRole,
                "only a helper can create a session".into(),
            )),
            (Some(In::JoinSession(_) | In::ConsentAnswer(_)), Role::Helper) => Err(Close::Refuse(
                ErrorCode::WrongRole,
                "only a sharer can join or consent".into(),
            )),
        }
    }

    async fn on_create(&mut self, create: v1::CreateSession) -> Result<(), Close> {
        if self.session.is_some() {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "CreateSession while already in a session".into(),
            ));
        }
        if self.hub.draining.is_cancelled() {
            return Err(Close::Shutdown);
        }
        let Some(mode) = Mode::from_wire(create.mode) else {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "CreateSession.mode must be VIEW_ONLY or FULL_CONTROL".into(),
            ));
        };
        let created = self.hub.create(self.id, &self.principal, mode);
        let ttl_left = created.expires_at.saturating_duration_since(Instant::now());
        info!(session = %created.session, mode = mode.as_str(), "session created");
        metrics::counter!("relay_sessions_created_total", "tenant" => self.principal.tenant.to_string())
            .increment(1);
        self.session = Some(LocalSession {
            id: created.session.clone(),
            active: None,
        });
        self.reply(Out::SessionCreated(v1::SessionCreated {
            session_id: created.session.to_string(),
            code: created.code.to_string(),
            code_expires_at_unix_ms: unix_now_ms().saturating_add(ttl_left.as_millis() as u64),
        }))
        .await
    }

    async fn on_join(&mut self, join: v1::JoinSession) -> Result<(), Close> {
        if self.session.is_some() {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "JoinSession while already in a session".into(),
            ));
        }
        if self.hub.draining.is_cancelled() {
            return Err(Close::Shutdown);
        }
        let outcome = SessionCode::parse(&join.code)
            .map_err(|_| ErrorCode::CodeInvalid)
            .and_then(|code| self.hub.join(self.id, &self.principal, code));
        match outcome {
            Ok(joined) => {
                info!(session = %joined.session, helper = %joined.helper.subject, "sharer joined");
                self.session = Some(LocalSession {
                    id: joined.session.clone(),
                    active: None,
                });
                self.reply(Out::ConsentRequest(v1::ConsentRequest {
                    session_id: joined.session.to_string(),
                    helper: Some(joined.helper.to_wire()),
                    mode: joined.mode.to_wire() as i32,
                }))
                .await
            }
            Err(code) => {
                if code == ErrorCode::CrossTenant {
                    warn!(tenant = %self.principal.tenant, "cross-tenant join refused");
                    metrics::counter!("relay_cross_tenant_attempts_total").increment(1);
                }
                self.failed_joins += 1;
                if self.failed_joins >= self.hub.config.limits.max_failed_joins_per_connection {
                    metrics::counter!("relay_refusals_total", "code" => ErrorCode::LimitExceeded.as_str_name())
                        .increment(1);
                    return Err(Close::Refuse(
                        ErrorCode::LimitExceeded,
                        format!("{} failed joins on one connection", self.failed_joins),
                    ));
                }
                self.refuse(code, code.describe().to_string()).await
            }
        }
    }

    async fn on_consent(&mut self, accept: bool) -> Result<(), Close> {
        let Some(session) = self.session.as_ref().map(|s| s.id.clone()) else {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "ConsentAnswer without a joined session".into(),
            ));
        };
        match self.hub.consent(self.id, &session, accept) {
            Ok(ConsentOutcome::Started { mode, helper }) => {
                info!(session = %session, mode = mode.as_str(), "consent given; session started");
                metrics::counter!("relay_sessions_started_total", "tenant" => self.principal.tenant.to_string())
                    .increment(1);
                self.activate(&session, mode, helper).await
            }
            Ok(ConsentOutcome::Declined) => {
                info!(session = %session, "sharer declined");
                self.session = None;
                self.reply(ended(&session, ErrorCode::Declined)).await
            }
            Err(ErrorCode::PeerLost) => {
                self.session = None;
                self.reply(ended(&session, ErrorCode::PeerLost)).await
            }
            Err(code) => Err(Close::Refuse(code, "ConsentAnswer not expected now".into())),
        }
    }

    async fn on_end(&mut self) -> Result<(), Close> {
        let Some(session) = self.session.as_ref().map(|s| s.id.clone()) else {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "EndSession without a session".into(),
            ));
        };
        self.leave_session(ErrorCode::PeerEnded);
        info!(session = %session, "session ended by client");
        self.reply(ended(&session, ErrorCode::EndedByClient)).await
    }

    async fn activate(
        &mut self,
        session: &SessionId,
        mode: Mode,
        peer: quinn::Connection,
    ) -> Result<(), Close> {
        let Some(local) = self.session.as_mut().filter(|s| &s.id == session) else {
            return Ok(());
        };
        local.active = Some(Active {
            mode,
            peer,
            opened: [false; 3],
            counters: Arc::new(ChannelCounters::default()),
        });
        let max_datagram = self.connection.max_datagram_size().unwrap_or(0);
        self.reply(Out::SessionStarted(v1::SessionStarted {
            session_id: session.to_string(),
            mode: mode.to_wire() as i32,
            channels: session_channels(mode)
                .iter()
                .map(|c| c.to_wire() as i32)
                .collect(),
            max_datagram_size: u32::try_from(max_datagram).unwrap_or(u32::MAX),
        }))
        .await
    }

    async fn on_event(&mut self, event: Event) -> Result<(), Close> {
        let current = self.session.as_ref().map(|s| s.id.clone());
        match event {
            Event::PeerJoined { session, sharer } if current.as_ref() == Some(&session) => {
                self.reply(Out::PeerJoined(v1::PeerJoined {
                    sharer: Some(sharer.to_wire()),
                }))
                .await
            }
            Event::Started {
                session,
                mode,
                peer,
            } if current.as_ref() == Some(&session) => self.activate(&session, mode, peer).await,
            Event::Ended { session, reason } if current.as_ref() == Some(&session) => {
                info!(session = %session, reason = reason.as_str_name(), "session ended");
                self.stop_forwarding();
                self.session = None;
                self.reply(ended(&session, reason)).await
            }
            stale => {
                debug!(?stale, "event for a session this connection no longer has");
                Ok(())
            }
        }
    }

    /// Ends this connection's session (if any) in the hub, telling the peer `reason`.
    fn leave_session(&mut self, reason: ErrorCode) {
        self.stop_forwarding();
        if let Some(session) = self.session.take()
            && let Some(ended) = self.hub.end(&session.id, reason, Some(self.id))
        {
            let label = if ended.was_active {
                "active"
            } else {
                "pending"
            };
            metrics::counter!("relay_sessions_ended_total", "reason" => reason.as_str_name(), "state" => label)
                .increment(1);
        }
    }

    fn stop_forwarding(&mut self) {
        self.tag_readers.abort_all();
        self.forwarders.abort_all();
    }

    fn on_data_stream(&mut self, mut stream: quinn::RecvStream) {
        let Some(session) = self.session.as_ref().filter(|s| s.active.is_some()) else {
            // Not fatal: the client may have opened it just before learning the
            // session ended. The stream alone is refused.
            metrics::counter!("relay_refusals_total", "code" => ErrorCode::ProtocolViolation.as_str_name())
                .increment(1);
            debug!("data stream outside an active session refused");
            let _ = stream.stop(ErrorCode::ProtocolViolation.to_quic().into());
            return;
        };
        let session = session.id.clone();
        self.tag_readers.spawn(async move {
            let mut tag = [0u8; 1];
            let tag = match stream.read_exact(&mut tag).await {
                Ok(()) => Ok(tag[0]),
                Err(e) => Err(e.to_string()),
            };
            TaggedStream {
                session,
                tag,
                stream,
            }
        });
    }

    fn on_tagged_stream(&mut self, tagged: TaggedStream) -> Result<(), Close> {
        let role = self.role;
        let Some(active) = self
            .session
            .as_mut()
            .filter(|s| s.id == tagged.session)
            .and_then(|s| s.active.as_mut())
        else {
            return Ok(());
        };
        let tag = match tagged.tag {
            Ok(tag) => tag,
            Err(e) => {
                debug!(error = %e, "data stream ended before its channel tag");
                return Ok(());
            }
        };
        let channel = channel_from_tag(tag)
            .ok()
            .and_then(Channel::from_wire)
            .ok_or_else(|| {
                Close::Refuse(
                    ErrorCode::ProtocolViolation,
                    format!("unknown data channel tag {tag}"),
                )
            })?;
        if !may_send(role, channel, active.mode) {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!(
                    "a {} may not send on the {} channel in {} mode",
                    role.as_str(),
                    channel.as_str(),
                    active.mode.as_str()
                ),
            ));
        }
        if std::mem::replace(&mut active.opened[channel.index()], true) {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!("the {} channel was already opened", channel.as_str()),
            ));
        }
        let peer = active.peer.clone();
        let counters = active.counters.clone();
        self.forwarders
            .spawn(forward::stream(tagged.stream, tag, channel, peer, counters));
        Ok(())
    }

    fn on_datagram(&mut self, datagram: Bytes) {
        // Datagrams are lossy screen frames, sharer to helper only.
        let Some(active) = self.session.as_ref().and_then(|s| s.active.as_ref()) else {
            metrics::counter!("relay_datagrams_dropped_total", "reason" => "no_session")
                .increment(1);
            return;
        };
        if self.role != Role::Sharer {
            metrics::counter!("relay_datagrams_dropped_total", "reason" => "wrong_direction")
                .increment(1);
            return;
        }
        forward::datagram(&active.peer, datagram, &active.counters);
    }
}

/// Sends one control message.
async fn send(writer: &mut Writer, message: Out) -> Result<(), Close> {
    writer
        .send(v1::RelayToClient { msg: Some(message) })
        .await
        .map_err(Close::from)
}

fn ended(session: &SessionId, reason: ErrorCode) -> Out {
    Out::SessionEnded(v1::SessionEnded {
        session_id: session.to_string(),
        reason: reason as i32,
        message: reason.describe().to_string(),
    })
}

/// Closes the connection the way `close` says, telling the client why where it can.
async fn finish(connection: &quinn::Connection, writer: Option<&mut Writer>, close: Close) {
    let (code, message) = match close {
        Close::Lost(reason) => {
            debug!(%reason, "connection lost");
            return;
        }
        Close::Refuse(code, message) => {
            warn!(code = code.as_str_name(), %message, "closing connection");
            metrics::counter!("relay_refusals_total", "code" => code.as_str_name()).increment(1);
            (code, message)
        }
        Close::Shutdown => (
            ErrorCode::RelayShutdown,
            ErrorCode::RelayShutdown.describe().to_string(),
        ),
    };
    if let Some(writer) = writer {
        // Closing a QUIC connection discards unsent stream data, so the last messages
        // (a SessionEnded, this Error) could be lost. Finish the stream and wait, briefly
        // and boundedly, for the client to acknowledge everything on it; the close frame
        // below carries the same code and reason either way.
        let _ = writer
            .send(v1::RelayToClient {
                msg: Some(Out::Error(v1::Error {
                    code: code as i32,
                    message: message.clone(),
                    fatal: true,
                })),
            })
            .await;
        let stream = writer.get_mut();
        if stream.finish().is_ok() {
            let _ = tokio::time::timeout(LINGER, stream.stopped()).await;
        }
    }
    let mut reason = message.into_bytes();
    reason.truncate(256);
    connection.close(code.to_quic().into(), &reason);
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
