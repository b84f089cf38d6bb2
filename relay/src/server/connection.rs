//! One task per client connection: authenticate, then serve the control stream, hub
//! events, data streams and datagrams until the connection or the relay ends.
//!
//! Decisions are made by the hub and the pure core; this task only translates between
//! the wire and them. Data streams are forwarded by `forward`, in tasks this task owns,
//! so they end when the connection's session ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use remote_help_proto::framing::{CONTINUATION, ControlCodec, FrameError, channel_from_tag};
use remote_help_proto::v1::{self, client_to_relay::Msg as In, relay_to_client::Msg as Out};
use remote_help_proto::{ErrorCode, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{Instrument, debug, info, info_span, warn};

use super::forward::{self, ChannelCounters};
use super::hub::{
    Begun, ConnLink, ConsentOutcome, EVENT_QUEUE, Event, Hub, JoinOutcome, ModeOutcome, Refused,
};
use super::party::{self, Party, PartyRecv, PartySend};
use crate::audit::EndedBy;
use crate::auth::{Principal, PrincipalKind};
use crate::core::cluster::{NodeId, device_home};
use crate::core::code::SessionCode;
use crate::core::path::Candidates;
use crate::core::{Channel, ConnId, Mode, Role, SessionId, may_send, session_channels};

mod authenticate;
mod close;
mod data;
mod paths;
mod unattended;
use authenticate::authenticate;
use close::{Close, finish};

/// Longest wait for a client to acknowledge the final control messages before closing.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

type Reader = FramedRead<PartyRecv, ControlCodec<v1::ClientToRelay, v1::RelayToClient>>;
type Writer = FramedWrite<PartySend, ControlCodec<v1::ClientToRelay, v1::RelayToClient>>;

/// Initial capacity of a connection's control-stream read and write buffers, bytes.
const CONTROL_BUFFER: usize = 512;

/// Serves one incoming connection to its end. The handshake comes boxed: an async task is
/// as large as its largest state for its whole life, and an unfinished `quinn::Incoming`
/// (with its Initial keys) is several KiB — as are the phases before and after the idle
/// loop, which are boxed for the same reason (memory per idle session).
pub async fn serve(
    hub: Arc<Hub>,
    incoming: Box<quinn::Incoming>,
    open: super::hub::OpenConnection,
) {
    let remote = incoming.remote_address();
    let connection = match Box::pin((*incoming).into_future()).await {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "handshake failed");
            metrics::counter!("relay_handshake_failures_total").increment(1);
            return;
        }
    };
    // One deadline for everything before `Welcome`: a WebTransport client's HTTP/3
    // exchange and CONNECT count against the same authentication deadline as its Hello.
    let deadline = tokio::time::Instant::now() + hub.config.auth_timeout;
    // By ALPN: native as it is, WebTransport once its CONNECT is answered. From here on
    // both are a `Party` and take the same path.
    let (connection, transport) =
        match Box::pin(party::open(connection, hub.config.auth_timeout)).await {
            Ok(opened) => opened,
            Err(e) => {
                debug!(%remote, error = %e, "handshake failed");
                e.count();
                return;
            }
        };
    let id = hub.next_conn_id();
    let span = info_span!("conn", id = id.0, %remote, transport = transport.as_str());
    async move {
        // Declared after `open`, so dropped before it: the connection is closed, however
        // this task ends, before its limit slot is given back.
        let mut open = open;
        let _closer = connection.close_on_drop();
        let (reader, writer, principal, role, welcomed, (e2e_suites, packet_path)) =
            // Boxed: the handshake phase's state would otherwise stay inline in every
            // connection task for its whole life.
            match tokio::time::timeout_at(
                deadline,
                Box::pin(authenticate(&hub, &connection)),
            )
            .await
            {
                Ok(Ok(authenticated)) => authenticated,
                Ok(Err(close)) => {
                    if matches!(close, Close::Lost(_)) {
                        // Closed or reset its control stream, or left, before a Hello.
                        metrics::counter!("relay_auth_failures_total", "reason" => "lost")
                            .increment(1);
                    }
                    Box::pin(finish(&connection, None, close)).await;
                    return;
                }
                Err(_) => {
                    metrics::counter!("relay_auth_failures_total", "reason" => "timeout")
                        .increment(1);
                    let close = Close::Refuse(
                        ErrorCode::AuthTimeout,
                        "no valid Hello within the authentication deadline".into(),
                    );
                    Box::pin(finish(&connection, None, close)).await;
                    return;
                }
            };
        open.authenticated();
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
                candidates: None,
                e2e_suites: e2e_suites.clone(),
                packet_path: packet_path.map(Arc::new),
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
            data_streams: party::DataStreams::default(),
            failed_joins: 0,
            device_registered: false,
            prompt_lapsed: false,
            told_addr: welcomed,
            observed: None,
            e2e_suites,
            packet_path_datagram_logged: false,
        };
        let close = conn.run(reader).await;
        let (reason, ended_by) = match close {
            Close::Shutdown => (ErrorCode::RelayShutdown, EndedBy::Relay),
            // Lost, closed, or closed for what it sent: this party ended it.
            _ => (ErrorCode::PeerLost, EndedBy::party(conn.role)),
        };
        Box::pin(conn.leave_session(reason, ended_by)).await;
        hub.unregister(id);
        let mut writer = conn.writer;
        Box::pin(finish(&connection, Some(&mut writer), close)).await;
    }
    .instrument(span)
    .await;
}

/// The state of one authenticated connection.
struct Conn {
    id: ConnId,
    hub: Arc<Hub>,
    connection: Party,
    principal: Arc<Principal>,
    role: Role,
    writer: Writer,
    events: mpsc::Receiver<Box<Event>>,
    session: Option<LocalSession>,
    /// Data streams whose channel tag is still being read.
    tag_readers: JoinSet<TaggedStream>,
    /// Data streams being forwarded to the peer.
    forwarders: JoinSet<()>,
    /// The party's data streams in the relay's hands, held to the native limit.
    data_streams: party::DataStreams,
    failed_joins: u32,
    /// This device agent is registered for unattended sessions.
    device_registered: bool,
    /// A consent prompt to this sharer lapsed; an answer racing the timeout is not fatal.
    prompt_lapsed: bool,
    /// The address the client was last told it has (in `Welcome`, then `ObservedAddress`).
    told_addr: SocketAddr,
    /// Once the client offered direct-path candidates, its address is checked against
    /// `told_addr` on every message and on this timer, and `ObservedAddress` sent on change.
    observed: Option<Box<tokio::time::Interval>>,
    /// The end-to-end protection suites the client announced in its `Hello`.
    e2e_suites: Arc<[u32]>,
    /// A datagram on this relay connection in a packet-path session was logged.
    packet_path_datagram_logged: bool,
}

/// How often a client that offered candidates has its observed address checked (besides
/// every message it sends): quinn migrates a connection silently when the client's address
/// changes, so the relay looks.
const OBSERVED_CHECK: Duration = Duration::from_secs(1);

/// This connection's view of its current session.
struct LocalSession {
    id: SessionId,
    active: Option<Active>,
}

/// An active session: where data goes, and which channels this side has opened.
struct Active {
    mode: Mode,
    peer: Party,
    chat_allowed: bool,
    /// The forwarder of each channel this side opened, to stop it on a mode change.
    forwarders: [Option<tokio::task::AbortHandle>; 4],
    /// A channel's previous forwarder, still draining when a continuation of the channel
    /// (moved back from a direct path) was admitted; at most one per channel.
    moved_from: [Option<tokio::task::AbortHandle>; 4],
    /// The parties were offered a direct path: continuation streams are expected.
    direct_offered: bool,
    counters: Arc<ChannelCounters>,
    /// The session's data takes the packet path: no data streams or datagrams here.
    packet_path: bool,
}

/// A data stream with its first byte read.
struct TaggedStream {
    session: SessionId,
    tag: Result<u8, String>,
    stream: PartyRecv,
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
                // Handlers are boxed: their state lives only while a message is handled,
                // not inline in every idle connection task (memory per idle session).
                Some(event) = self.events.recv() => Box::pin(self.on_event(*event)).await,
                message = reader.next() => match message {
                    None => Err(Close::Lost("client closed its control stream".into())),
                    Some(Err(e)) => Err(e.into()),
                    Some(Ok(m)) => Box::pin(self.on_message(m)).await,
                },
                stream = self.connection.accept_uni() => match stream {
                    Ok(stream) => { self.on_data_stream(stream); Ok(()) }
                    Err(e) => Err(Close::Lost(e.to_string())),
                },
                datagram = self.connection.read_datagram() => match datagram {
                    Ok(datagram) => { self.on_datagram(datagram); Ok(()) }
                    // WebTransport only: a datagram too short to name a session, or naming
                    // another one, is dropped like any datagram the relay cannot use.
                    Err(e) if e.is_unknown_session() => {
                        metrics::counter!("relay_datagrams_dropped_total", "reason" => "unknown_session")
                            .increment(1);
                        Ok(())
                    }
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
                _ = async { self.observed.as_mut().expect("guarded").tick().await }, if self.observed.is_some() => {
                    self.tell_observed().await
                }
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
            ..Default::default()
        }))
        .await
    }

    /// In a cluster, when `node` is another node: tells the client to take `request` there
    /// (`REDIRECT`, never fatal) and returns `true`. `false` when the request is this node's
    /// to answer (not clustered, this node, or a node id the cluster does not have, which
    /// then fails here as an unknown code or device would).
    async fn redirect_elsewhere(
        &mut self,
        node: NodeId,
        request: &'static str,
    ) -> Result<bool, Close> {
        let Some(cluster) = &self.hub.config.cluster else {
            return Ok(false);
        };
        if node == cluster.node {
            return Ok(false);
        }
        let Some(address) = cluster.address_of(node).map(str::to_string) else {
            return Ok(false);
        };
        metrics::counter!("relay_redirects_total", "request" => request).increment(1);
        info!(request, node = %node, %address, "redirected to the node that holds it");
        self.reply(Out::Error(v1::Error {
            code: ErrorCode::Redirect as i32,
            message: format!("{request}: held by relay node {node} at {address}"),
            fatal: false,
            redirect_address: address,
            redirect_node: u32::from(node.get()),
        }))
        .await
        .map(|()| true)
    }

    async fn on_message(&mut self, message: v1::ClientToRelay) -> Result<(), Close> {
        let violation = |what: &str| {
            Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                what.to_string(),
            ))
        };
        if self.observed.is_some() {
            self.tell_observed().await?;
        }
        match (message.msg, self.role) {
            (None, _) => violation("empty ClientToRelay message"),
            (Some(In::OfferCandidates(offer)), _) => self.on_offer_candidates(offer).await,
            (Some(In::DirectPathResult(result)), _) => self.on_direct_path_result(result).await,
            (Some(In::Hello(_)), _) => violation("Hello was already received"),
            (Some(In::Ping(p)), _) => self.reply(Out::Pong(v1::Pong { nonce: p.nonce })).await,
            (Some(In::CreateSession(c)), Role::Helper) => self.on_create(c).await,
            (Some(In::JoinSession(j)), Role::Sharer) => self.on_join(j).await,
            (Some(In::ConsentAnswer(a)), Role::Sharer) => self.on_consent(a.accept).await,
            (Some(In::EndSession(_)), _) => self.on_end().await,
            (Some(In::RequestMode(r)), Role::Helper) => self.on_request_mode(r).await,
            (Some(In::ConfirmCompliance(c)), Role::Helper) => {
                self.on_confirm_compliance(c.proceed).await
            }
            (Some(In::ConnectUnattended(c)), Role::Helper) => self.on_connect_unattended(c).await,
            (Some(In::RegisterDevice(_)), Role::Sharer) => self.on_register_device().await,
            (
                Some(In::RequestMode(_) | In::ConfirmCompliance(_) | In::ConnectUnattended(_)),
                Role::Sharer,
            ) => Err(Close::Refuse(
                ErrorCode::WrongRole,
                "only a helper can do that".into(),
            )),
            (Some(In::RegisterDevice(_)), Role::Helper) => Err(Close::Refuse(
                ErrorCode::WrongRole,
                "only a device agent can register".into(),
            )),
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

    /// The checks every request to start a session passes first: not already in a session,
    /// the relay not draining, the audit log writable, the tenant (still) enabled. `Ok(false)`:
    /// a non-fatal refusal was sent and the request is over.
    async fn admit_new_session(&mut self, request: &str) -> Result<bool, Close> {
        if self.session.is_some() {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!("{request} while already in a session"),
            ));
        }
        if self.hub.draining.is_cancelled() {
            return Err(Close::Shutdown);
        }
        let refusal = if !self.hub.audit.is_available() {
            Some(ErrorCode::AuditUnavailable)
        } else if !self.hub.policies().tenant(&self.principal.tenant).enabled {
            // A reload disabled the tenant after this client signed in: a policy refusal.
            metrics::counter!("relay_policy_refusals_total", "code" => ErrorCode::TenantDisabled.as_str_name())
                .increment(1);
            Some(ErrorCode::TenantDisabled)
        } else {
            None
        };
        match refusal {
            Some(code) => self
                .refuse(code, code.describe().into())
                .await
                .map(|()| false),
            None => Ok(true),
        }
    }

    async fn on_create(&mut self, create: v1::CreateSession) -> Result<(), Close> {
        if !self.admit_new_session("CreateSession").await? {
            return Ok(());
        }
        if let Err(code) = self.hub.allow_setup(&self.principal.tenant) {
            return self.refuse(code, code.describe().into()).await;
        }
        let Some(mode) = Mode::from_wire(create.mode).filter(|m| *m <= Mode::FullControl) else {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "CreateSession.mode must be VIEW_ONLY or FULL_CONTROL".into(),
            ));
        };
        let policy = self.hub.policies().tenant(&self.principal.tenant);
        if let Err(refusal) = policy
            .may_offer(&self.principal, mode)
            .and_then(|()| policy.admit_announcement(&self.e2e_suites))
        {
            metrics::counter!("relay_policy_refusals_total", "code" => refusal.code().as_str_name()).increment(1);
            return self.refuse(refusal.code(), refusal.message()).await;
        }
        let created = self
            .hub
            .create(self.id, &self.principal, mode, &create.reason);
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
        if !self.admit_new_session("JoinSession").await? {
            return Ok(());
        }
        let source = self.connection.remote_address().ip();
        if let Err(code) = self.hub.allow_join(source, &self.principal.tenant) {
            return self.refuse(code, code.describe().into()).await;
        }
        let parsed = SessionCode::parse(&join.code);
        if let Ok(code) = &parsed
            && self.redirect_elsewhere(code.node(), "join").await?
        {
            return Ok(());
        }
        let outcome = parsed
            .map_err(|_| {
                (
                    ErrorCode::CodeInvalid,
                    ErrorCode::CodeInvalid.describe().to_string(),
                )
            })
            .and_then(|code| self.hub.join(self.id, &self.principal, code));
        match outcome {
            Ok(JoinOutcome::AskConsent {
                session,
                helper,
                mode,
                deadline,
            }) => {
                info!(session = %session, helper = %helper.subject, "sharer joined");
                self.session = Some(LocalSession {
                    id: session.clone(),
                    active: None,
                });
                self.reply(consent_request(&session, &helper, mode, false, deadline))
                    .await
            }
            Ok(JoinOutcome::AwaitingHelper { session }) => {
                info!(session = %session, "sharer joined; helper must confirm a compliance warning");
                self.session = Some(LocalSession {
                    id: session,
                    active: None,
                });
                Ok(())
            }
            Err((code, message)) => {
                let guess = matches!(
                    code,
                    ErrorCode::CodeInvalid
                        | ErrorCode::CodeExpired
                        | ErrorCode::CodeUsed
                        | ErrorCode::CodeBurned
                        | ErrorCode::CrossTenant
                );
                if code == ErrorCode::CrossTenant {
                    // The hub has recorded it in both tenants' logs.
                    warn!(tenant = %self.principal.tenant, "cross-tenant join refused");
                    metrics::counter!("relay_cross_tenant_attempts_total").increment(1);
                }
                if guess {
                    self.failed_joins += 1;
                }
                if self.failed_joins >= self.hub.config.limits.max_failed_joins_per_connection {
                    return Err(Close::Refuse(
                        ErrorCode::LimitExceeded,
                        format!("{} failed joins on one connection", self.failed_joins),
                    ));
                }
                self.refuse(code, message).await
            }
        }
    }

    async fn on_confirm_compliance(&mut self, proceed: bool) -> Result<(), Close> {
        let Some(session) = self.session.as_ref().map(|s| s.id.clone()) else {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "ConfirmCompliance without a session".into(),
            ));
        };
        match self.hub.confirm_compliance(self.id, &session, proceed) {
            Ok(true) => Ok(()),
            Ok(false) => {
                info!(session = %session, "helper did not continue past the compliance warning");
                self.session = None;
                self.reply(ended(&session, ErrorCode::ComplianceNotConfirmed))
                    .await
            }
            Err(code) => Err(Close::Refuse(
                code,
                "ConfirmCompliance not expected now".into(),
            )),
        }
    }

    async fn on_request_mode(&mut self, request: v1::RequestMode) -> Result<(), Close> {
        let Some(session) = self
            .session
            .as_ref()
            .filter(|s| s.active.is_some())
            .map(|s| s.id.clone())
        else {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "RequestMode without an active session".into(),
            ));
        };
        let Some(mode) = Mode::from_wire(request.mode).filter(|m| *m != Mode::Unattended) else {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "RequestMode.mode must be VIEW_ONLY, FULL_CONTROL or ELEVATION".into(),
            ));
        };
        self.hub.note_mode_reason(&session, &request.reason);
        match self
            .hub
            .request_mode(self.id, &self.principal, &session, mode)
        {
            Ok(ModeOutcome::AskedSharer) => {
                info!(session = %session, mode = mode.as_str(), "mode raise asked of the sharer");
                Ok(())
            }
            Ok(ModeOutcome::Changed(mode)) => {
                self.hub.change_mode(&session, mode, self.id).await;
                self.apply_mode(&session, mode).await
            }
            Err((ErrorCode::ProtocolViolation, message)) => {
                Err(Close::Refuse(ErrorCode::ProtocolViolation, message))
            }
            Err((code, message)) => self.refuse(code, message).await,
        }
    }

    async fn on_consent(&mut self, accept: bool) -> Result<(), Close> {
        let Some(session) = self.session.as_ref().map(|s| s.id.clone()) else {
            if std::mem::take(&mut self.prompt_lapsed) {
                return self
                    .refuse(
                        ErrorCode::ConsentTimeout,
                        "the consent prompt had already expired".into(),
                    )
                    .await;
            }
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "ConsentAnswer without a joined session".into(),
            ));
        };
        match self.hub.consent(self.id, &session, accept) {
            Ok(ConsentOutcome::Started(pending)) => match self.hub.begin(&pending).await {
                Ok(begun) => {
                    info!(session = %session, mode = pending.mode.as_str(), "consent given; session started");
                    metrics::counter!("relay_sessions_started_total", "tenant" => self.principal.tenant.to_string())
                        .increment(1);
                    self.activate(
                        &session,
                        pending.mode,
                        pending.helper.connection,
                        pending.chat_allowed,
                        None,
                        begun,
                    )
                    .await
                }
                Err(code) => {
                    self.session = None;
                    self.reply(ended(&session, code)).await
                }
            },
            Ok(ConsentOutcome::Declined) => {
                info!(session = %session, "sharer declined");
                self.session = None;
                self.reply(ended(&session, ErrorCode::Declined)).await
            }
            Ok(ConsentOutcome::ModeChanged(mode)) => {
                info!(session = %session, mode = mode.as_str(), "sharer consented to a raised mode");
                self.hub.change_mode(&session, mode, self.id).await;
                self.apply_mode(&session, mode).await
            }
            Ok(ConsentOutcome::ModeDeclined) => {
                info!(session = %session, "sharer declined a raised mode");
                Ok(())
            }
            Ok(ConsentOutcome::ModeWithdrawn(refusal)) => {
                self.refuse(refusal.code(), refusal.message()).await
            }
            Err(ErrorCode::PeerLost) => {
                self.session = None;
                self.reply(ended(&session, ErrorCode::PeerLost)).await
            }
            Err(ErrorCode::ProtocolViolation) if std::mem::take(&mut self.prompt_lapsed) => {
                self.refuse(
                    ErrorCode::ConsentTimeout,
                    "the consent prompt had already expired".into(),
                )
                .await
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
        let unattended = self
            .session
            .as_ref()
            .and_then(|s| s.active.as_ref())
            .is_some_and(|a| a.mode == Mode::Unattended);
        if unattended && self.role == Role::Sharer {
            return self
                .refuse(ErrorCode::CannotEnd, ErrorCode::CannotEnd.describe().into())
                .await;
        }
        self.leave_session(ErrorCode::PeerEnded, EndedBy::party(self.role))
            .await;
        info!(session = %session, "session ended by client");
        self.reply(ended(&session, ErrorCode::EndedByClient)).await
    }

    async fn activate(
        &mut self,
        session: &SessionId,
        mode: Mode,
        peer: Party,
        chat_allowed: bool,
        peer_profile: Option<Arc<Principal>>,
        begun: Begun,
    ) -> Result<(), Close> {
        let Begun {
            counters,
            direct,
            e2e,
            packet_path,
        } = begun;
        let Some(local) = self.session.as_mut().filter(|s| &s.id == session) else {
            return Ok(());
        };
        local.active = Some(Active {
            mode,
            peer,
            chat_allowed,
            forwarders: [None, None, None, None],
            moved_from: [None, None, None, None],
            direct_offered: direct.is_some(),
            counters,
            packet_path: packet_path.is_some(),
        });
        let max_datagram = self.connection.max_datagram_size();
        // Test builds only: a relay that rewrites the announcements (e2e_downgrade.rs).
        #[cfg(feature = "tap")]
        let e2e = crate::tap::announcement(self.role, e2e);
        // Test builds only: a relay that tells a party another peer certificate (e2e_mitm).
        #[cfg(feature = "tap")]
        let packet_path = packet_path.map(|mut path| {
            if let Some(hash) = crate::tap::peer_certificate(self.role) {
                path.peer_certificate_sha256 = hash.to_vec();
            }
            path
        });
        self.reply(Out::SessionStarted(v1::SessionStarted {
            session_id: session.to_string(),
            mode: mode.to_wire() as i32,
            channels: wire_channels(mode, chat_allowed),
            max_datagram_size: u32::try_from(max_datagram).unwrap_or(u32::MAX),
            chat_disabled: !chat_allowed,
            peer: peer_profile.map(|p| p.to_wire()),
            direct_path_offered: direct.is_some(),
            e2e_suite: e2e.suite,
            peer_e2e_suites: e2e.peer_suites.to_vec(),
            packet_path,
        }))
        .await?;
        match direct {
            Some(offer) => self.reply(Out::DirectPathOffer(offer)).await,
            None => Ok(()),
        }
    }

    /// Moves the active session to `mode`; input stops at once when the mode no longer
    /// allows it (the helper may open it again after raising the mode).
    async fn apply_mode(&mut self, session: &SessionId, mode: Mode) -> Result<(), Close> {
        let Some(active) = self
            .session
            .as_mut()
            .filter(|s| &s.id == session)
            .and_then(|s| s.active.as_mut())
        else {
            return Ok(());
        };
        active.mode = mode;
        if !mode.allows_input() {
            let i = Channel::Input.index();
            for input in [active.forwarders[i].take(), active.moved_from[i].take()]
                .into_iter()
                .flatten()
            {
                input.abort();
            }
        }
        let chat_allowed = active.chat_allowed;
        info!(session = %session, mode = mode.as_str(), "mode changed");
        self.reply(Out::ModeChanged(v1::ModeChanged {
            session_id: session.to_string(),
            mode: mode.to_wire() as i32,
            channels: wire_channels(mode, chat_allowed),
        }))
        .await
    }

    async fn on_event(&mut self, event: Event) -> Result<(), Close> {
        let current = self.session.as_ref().map(|s| s.id.clone());
        match event {
            Event::PeerJoined {
                session,
                sharer,
                compliance_warning,
            } if current.as_ref() == Some(&session) => {
                self.reply(Out::PeerJoined(v1::PeerJoined {
                    sharer: Some(sharer.to_wire()),
                    compliance_warning,
                }))
                .await
            }
            Event::AskConsent {
                session,
                helper,
                mode,
                mode_change,
                deadline,
            } if current.as_ref() == Some(&session) => {
                self.prompt_lapsed = false;
                self.reply(consent_request(
                    &session,
                    &helper,
                    mode,
                    mode_change,
                    deadline,
                ))
                .await
            }
            Event::Started {
                session,
                mode,
                peer,
                peer_profile,
                chat_allowed,
                counters,
                direct,
                e2e,
                packet_path,
            } => {
                if current.is_none() && self.device_registered {
                    // An unattended session: the agent had no join step.
                    self.session = Some(LocalSession {
                        id: session.clone(),
                        active: None,
                    });
                    return self
                        .activate(
                            &session,
                            mode,
                            peer,
                            chat_allowed,
                            Some(peer_profile),
                            Begun {
                                counters,
                                direct,
                                e2e: e2e.clone(),
                                packet_path,
                            },
                        )
                        .await;
                }
                if current.as_ref() == Some(&session) {
                    return self
                        .activate(
                            &session,
                            mode,
                            peer,
                            chat_allowed,
                            None,
                            Begun {
                                counters,
                                direct,
                                e2e: e2e.clone(),
                                packet_path,
                            },
                        )
                        .await;
                }
                debug!(%session, "start of a session this connection no longer has");
                Ok(())
            }
            Event::ModeChanged { session, mode } if current.as_ref() == Some(&session) => {
                self.apply_mode(&session, mode).await
            }
            Event::ModeRefused { session, reason } if current.as_ref() == Some(&session) => {
                if reason == ErrorCode::ConsentTimeout && self.role == Role::Sharer {
                    self.prompt_lapsed = true;
                }
                self.refuse(reason, reason.describe().to_string()).await
            }
            Event::Ended { session, reason } if current.as_ref() == Some(&session) => {
                if reason == ErrorCode::ConsentTimeout && self.role == Role::Sharer {
                    self.prompt_lapsed = true;
                }
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

    /// Ends this connection's session (if any) in the hub, telling the peer `reason`;
    /// an active session's end event is on disk when this returns.
    async fn leave_session(&mut self, reason: ErrorCode, ended_by: EndedBy) {
        self.stop_forwarding();
        if let Some(session) = self.session.take()
            && let Some(ended) = self
                .hub
                .end(&session.id, reason, Some(self.id), ended_by)
                .await
        {
            let label = if ended.was_active {
                "active"
            } else {
                "pending"
            };
            debug!(session = %session.id, reason = reason.as_str_name(), state = label, "left session");
        }
    }
}

/// Sends one control message.
async fn send(writer: &mut Writer, message: Out) -> Result<(), Close> {
    writer
        .send(v1::RelayToClient { msg: Some(message) })
        .await
        .map_err(Close::from)
}

fn wire_channels(mode: Mode, chat_allowed: bool) -> Vec<i32> {
    session_channels(mode, chat_allowed)
        .into_iter()
        .map(|c| c.to_wire() as i32)
        .collect()
}

fn consent_request(
    session: &SessionId,
    helper: &Principal,
    mode: Mode,
    mode_change: bool,
    deadline: Instant,
) -> Out {
    let left = deadline.saturating_duration_since(Instant::now());
    Out::ConsentRequest(v1::ConsentRequest {
        session_id: session.to_string(),
        helper: Some(helper.to_wire()),
        mode: mode.to_wire() as i32,
        mode_change,
        expires_at_unix_ms: unix_now_ms().saturating_add(left.as_millis() as u64),
    })
}

fn ended(session: &SessionId, reason: ErrorCode) -> Out {
    Out::SessionEnded(v1::SessionEnded {
        session_id: session.to_string(),
        reason: reason as i32,
        message: reason.describe().to_string(),
    })
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
