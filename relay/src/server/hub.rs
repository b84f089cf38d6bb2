//! The hub: shared state of one relay node — the session [`Registry`], a link to every
//! authenticated connection, and the current [`Policies`] — and the only place that turns
//! registry outcomes into [`Event`]s for connection tasks.
//!
//! One `std::sync::Mutex` guards the state. It is never held across an `.await`: every
//! method locks, decides, collects what to send, unlocks, then sends with `try_send`.
//! Policy is a snapshot behind an `RwLock<Arc<_>>`, swapped whole on reload, so a request
//! is decided by one consistent policy and active sessions are never disturbed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use remote_help_proto::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::{Principal, Verifier};
use crate::config::Config;
use crate::core::code::SessionCode;
use crate::core::policy::{Refusal, TenantPolicy};
use crate::core::registry::{
    Consented, Created, Ended, ModeRequest, Party, Registry, RegistryLimits,
};
use crate::core::{ConnId, Mode, Role, SessionId, TenantId};

/// Events the hub delivers to a connection task about its session.
#[derive(Debug)]
pub enum Event {
    /// To the helper: a sharer joined; with `compliance_warning` the helper must confirm.
    PeerJoined {
        /// The session.
        session: SessionId,
        /// The sharer.
        sharer: Arc<Principal>,
        /// The sharer's device is not compliant.
        compliance_warning: bool,
    },
    /// To the sharer: a consent prompt (after a compliance confirmation, or for a raised mode).
    AskConsent {
        /// The session.
        session: SessionId,
        /// The helper asking.
        helper: Arc<Principal>,
        /// The mode asked for.
        mode: Mode,
        /// Whether this raises the mode of an active session.
        mode_change: bool,
        /// When the prompt expires.
        deadline: Instant,
    },
    /// The session started: data may flow to `peer`.
    Started {
        /// The session.
        session: SessionId,
        /// The active mode.
        mode: Mode,
        /// The other party's connection, where this side's data streams go.
        peer: quinn::Connection,
        /// The other party (sent to a device agent, which had no join step).
        peer_profile: Arc<Principal>,
        /// Whether the tenant allows chat.
        chat_allowed: bool,
    },
    /// The session's mode changed.
    ModeChanged {
        /// The session.
        session: SessionId,
        /// The new mode.
        mode: Mode,
    },
    /// A mode request did not go through (declined or timed out); the session goes on.
    ModeRefused {
        /// The session.
        session: SessionId,
        /// `MODE_DECLINED` or `CONSENT_TIMEOUT`.
        reason: ErrorCode,
    },
    /// The session is over.
    Ended {
        /// The session.
        session: SessionId,
        /// Why, as the party is told.
        reason: ErrorCode,
    },
}

/// Capacity of each connection's event queue. The protocol produces a handful of events
/// per session and a connection has one session at a time, so a full queue means the
/// task is stuck; events to it are then dropped (its own cleanup follows).
pub const EVENT_QUEUE: usize = 16;

/// What the hub keeps about one authenticated connection.
#[derive(Debug, Clone)]
pub struct ConnLink {
    /// Where to send this connection's events.
    pub events: mpsc::Sender<Event>,
    /// The QUIC connection, so its peer can open data streams on it.
    pub connection: quinn::Connection,
    /// Who authenticated on it.
    pub principal: Arc<Principal>,
    /// Which side it speaks for.
    pub role: Role,
}

/// Token verification and every tenant's policy, as one consistent snapshot.
#[derive(Debug)]
pub struct Policies {
    /// Verifies tokens of every configured tenant.
    pub verifier: Verifier,
    tenants: HashMap<TenantId, TenantPolicy>,
}

impl Policies {
    /// The snapshot for `config`.
    pub fn from_config(config: &Config) -> Policies {
        Policies {
            verifier: Verifier::new(
                config.audience.clone(),
                config.token_leeway,
                config.tenants.iter().map(|t| t.trust.clone()).collect(),
            ),
            tenants: config
                .tenants
                .iter()
                .map(|t| (t.trust.id.clone(), t.policy.clone()))
                .collect(),
        }
    }

    /// The policy of `tenant`; a tenant without one (removed by a reload) is disabled.
    pub fn tenant(&self, tenant: &TenantId) -> TenantPolicy {
        self.tenants.get(tenant).cloned().unwrap_or_default()
    }
}

/// A successful join, as the joining sharer's task needs it.
#[derive(Debug)]
pub enum JoinOutcome {
    /// Ask the sharer now.
    AskConsent {
        /// The session.
        session: SessionId,
        /// The helper to show in the consent prompt.
        helper: Arc<Principal>,
        /// The requested mode.
        mode: Mode,
        /// When the prompt expires.
        deadline: Instant,
    },
    /// The helper must first confirm a compliance warning; the sharer waits.
    AwaitingHelper {
        /// The session.
        session: SessionId,
    },
}

/// The sharer's consent, as the sharer's task needs it.
#[derive(Debug)]
pub enum ConsentOutcome {
    /// Accepted: data may flow to the helper's connection.
    Started {
        /// The active mode.
        mode: Mode,
        /// The helper's connection.
        helper: quinn::Connection,
        /// Whether the tenant allows chat.
        chat_allowed: bool,
    },
    /// Declined: the helper has been told.
    Declined,
    /// A raised mode was accepted: the helper has been told.
    ModeChanged(Mode),
    /// A raised mode was declined: the helper has been told.
    ModeDeclined,
}

/// An unattended session, as the helper's task needs it.
#[derive(Debug)]
pub struct UnattendedStart {
    /// The new, already active session.
    pub session: SessionId,
    /// The device agent's connection, where the helper's data streams go.
    pub agent: quinn::Connection,
    /// The device agent.
    pub agent_profile: Arc<Principal>,
    /// Whether the tenant allows chat.
    pub chat_allowed: bool,
}

/// A helper's mode request, applied.
#[derive(Debug)]
pub enum ModeOutcome {
    /// The sharer has been asked.
    AskedSharer,
    /// In effect now (lowered); the sharer has been told.
    Changed(Mode),
}

struct State {
    registry: Registry,
    links: HashMap<ConnId, ConnLink>,
}

/// Shared state of the relay node.
pub struct Hub {
    state: Mutex<State>,
    policies: RwLock<Arc<Policies>>,
    next_conn: AtomicU64,
    /// The relay's configuration as started (reloads change only `policies`).
    pub config: Config,
    /// Cancelled when the relay starts draining: no new sessions.
    pub draining: CancellationToken,
    /// Cancelled when every remaining connection must close now.
    pub stopping: CancellationToken,
    open_connections: AtomicU64,
    /// Woken whenever sessions or connections come or go (for tests and admin views).
    pub changed: tokio::sync::Notify,
}

impl Hub {
    /// A hub for `config`.
    pub fn new(config: Config) -> Hub {
        Hub {
            state: Mutex::new(State {
                registry: Registry::new(RegistryLimits {
                    code_ttl: config.code_ttl,
                    code_memory: config.code_ttl.max(std::time::Duration::from_secs(600)),
                    consent_timeout: config.consent_timeout,
                }),
                links: HashMap::new(),
            }),
            policies: RwLock::new(Arc::new(Policies::from_config(&config))),
            next_conn: AtomicU64::new(1),
            config,
            draining: CancellationToken::new(),
            stopping: CancellationToken::new(),
            open_connections: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The current policy snapshot.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces tenants, keys and policies with `config`'s. New requests use them; active
    /// sessions carry on as they are.
    pub fn reload(&self, config: &Config) {
        let fresh = Arc::new(Policies::from_config(config));
        *self
            .policies
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
    }

    /// Locks the state for a change; watchers are woken once the guard is dropped.
    fn lock(&self) -> Changing<'_> {
        Changing {
            guard: self.read(),
            changed: &self.changed,
        }
    }

    /// Locks the state to read it.
    fn read(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state itself stays
        // consistent per call, so keep serving rather than poisoning every connection.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Counts a connection as open; returns the guard that un-counts it.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("relay_connections_open").increment(1.0);
        OpenConnection(self.clone())
    }

    /// Connections currently open (handshaking, authenticating or authenticated).
    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// Registers an authenticated connection.
    pub fn register(&self, id: ConnId, link: ConnLink) {
        self.lock().links.insert(id, link);
    }

    /// Forgets a connection (its session must have been ended first), and its device
    /// registration if it had one.
    pub fn unregister(&self, id: ConnId) {
        let mut state = self.lock();
        state.links.remove(&id);
        state.registry.unregister_device(id);
    }

    /// Sessions in any state, remembered codes, and registered connections.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.read();
        (
            state.registry.len(),
            state.registry.remembered_codes(),
            state.links.len(),
        )
    }

    /// A helper opens a session.
    pub fn create(&self, helper: ConnId, principal: &Principal, mode: Mode) -> Created {
        let mut rng = rand::rng();
        let party = Party {
            conn: helper,
            tenant: principal.tenant.clone(),
        };
        self.lock()
            .registry
            .create(party, mode, Instant::now(), &mut rng)
    }

    /// A sharer joins by code. Policy decides before the sharer sees anything of the
    /// helper: a refusal ends the session for both.
    pub fn join(
        &self,
        sharer: ConnId,
        principal: &Arc<Principal>,
        code: SessionCode,
    ) -> Result<JoinOutcome, (ErrorCode, String)> {
        let party = Party {
            conn: sharer,
            tenant: principal.tenant.clone(),
        };
        let now = Instant::now();
        let (joined, helper) = {
            let mut state = self.lock();
            let joined = state
                .registry
                .join(code, party, now)
                .map_err(|code| (code, code.describe().to_string()))?;
            let helper = state.links.get(&joined.helper).cloned();
            (joined, helper)
        };
        let Some(helper) = helper else {
            // The helper vanished between creating and this join; its cleanup ends
            // the session too, but make sure the sharer is not left waiting.
            self.lock().registry.end(&joined.session);
            return Err((ErrorCode::PeerLost, ErrorCode::PeerLost.describe().into()));
        };
        let policy = self.policies().tenant(&principal.tenant);
        if let Err(refusal) = policy.may_help(&helper.principal, principal, joined.mode) {
            self.refuse_joined(&joined.session, &helper, &refusal);
            return Err((refusal.code(), refusal.message()));
        }
        let non_compliant = principal.device.as_ref().is_some_and(|d| !d.compliant);
        if non_compliant {
            self.lock()
                .registry
                .require_compliance(&joined.session)
                .map_err(|code| (code, code.describe().to_string()))?;
        }
        deliver(
            &helper,
            Event::PeerJoined {
                session: joined.session.clone(),
                sharer: principal.clone(),
                compliance_warning: non_compliant,
            },
        );
        if non_compliant {
            return Ok(JoinOutcome::AwaitingHelper {
                session: joined.session,
            });
        }
        Ok(JoinOutcome::AskConsent {
            session: joined.session,
            helper: helper.principal,
            mode: joined.mode,
            deadline: now + self.config.consent_timeout,
        })
    }

    fn refuse_joined(&self, session: &SessionId, helper: &ConnLink, refusal: &Refusal) {
        self.lock().registry.end(session);
        metrics::counter!("relay_policy_refusals_total", "code" => refusal.code().as_str_name())
            .increment(1);
        deliver(
            helper,
            Event::Ended {
                session: session.clone(),
                reason: refusal.code(),
            },
        );
    }

    /// The helper answers a compliance warning. On `proceed` the sharer is asked to
    /// consent; otherwise the session ends for both with `COMPLIANCE_NOT_CONFIRMED`.
    pub fn confirm_compliance(
        &self,
        helper: ConnId,
        session: &SessionId,
        proceed: bool,
    ) -> Result<bool, ErrorCode> {
        let now = Instant::now();
        let (sharer, helper_principal, mode) = {
            let mut state = self.lock();
            let mode = state.registry.get(session).map(|s| s.mode);
            let sharer_conn = state
                .registry
                .get(session)
                .and_then(|s| s.sharer.as_ref().map(|p| p.conn));
            let outcome = state
                .registry
                .confirm_compliance(session, helper, proceed, now)?;
            let sharer = sharer_conn.and_then(|c| state.links.get(&c).cloned());
            let helper_principal = state.links.get(&helper).map(|l| l.principal.clone());
            if outcome.is_none() {
                drop(state);
                if let Some(sharer) = sharer {
                    deliver(
                        &sharer,
                        Event::Ended {
                            session: session.clone(),
                            reason: ErrorCode::ComplianceNotConfirmed,
                        },
                    );
                }
                return Ok(false);
            }
            (sharer, helper_principal, mode)
        };
        if let (Some(sharer), Some(helper_principal), Some(mode)) = (sharer, helper_principal, mode)
        {
            deliver(
                &sharer,
                Event::AskConsent {
                    session: session.clone(),
                    helper: helper_principal,
                    mode,
                    mode_change: false,
                    deadline: now + self.config.consent_timeout,
                },
            );
        }
        Ok(true)
    }

    /// The sharer answers a consent prompt; the helper is told either way.
    pub fn consent(
        &self,
        sharer: ConnId,
        session: &SessionId,
        accept: bool,
    ) -> Result<ConsentOutcome, ErrorCode> {
        let (outcome, helper_link, sharer_link) = {
            let mut state = self.lock();
            let outcome = state.registry.consent(session, sharer, accept)?;
            let helper = match &outcome {
                Consented::Started { helper, .. }
                | Consented::ModeChanged { helper, .. }
                | Consented::ModeDeclined { helper } => *helper,
                Consented::Declined(ended) => ended.helper,
            };
            let helper_link = state.links.get(&helper).cloned();
            let sharer_link = state.links.get(&sharer).cloned();
            (outcome, helper_link, sharer_link)
        };
        let Some(helper) = helper_link else {
            self.end(session, ErrorCode::PeerLost, None);
            return Err(ErrorCode::PeerLost);
        };
        match outcome {
            Consented::Started { mode, .. } => {
                let Some(sharer_link) = sharer_link else {
                    self.end(session, ErrorCode::PeerLost, None);
                    return Err(ErrorCode::PeerLost);
                };
                let chat_allowed = !self
                    .policies()
                    .tenant(&sharer_link.principal.tenant)
                    .disable_chat;
                deliver(
                    &helper,
                    Event::Started {
                        session: session.clone(),
                        mode,
                        peer: sharer_link.connection,
                        peer_profile: sharer_link.principal,
                        chat_allowed,
                    },
                );
                Ok(ConsentOutcome::Started {
                    mode,
                    helper: helper.connection,
                    chat_allowed,
                })
            }
            Consented::Declined(_) => {
                deliver(
                    &helper,
                    Event::Ended {
                        session: session.clone(),
                        reason: ErrorCode::Declined,
                    },
                );
                Ok(ConsentOutcome::Declined)
            }
            Consented::ModeChanged { mode, .. } => {
                deliver(
                    &helper,
                    Event::ModeChanged {
                        session: session.clone(),
                        mode,
                    },
                );
                Ok(ConsentOutcome::ModeChanged(mode))
            }
            Consented::ModeDeclined { .. } => {
                deliver(
                    &helper,
                    Event::ModeRefused {
                        session: session.clone(),
                        reason: ErrorCode::ModeDeclined,
                    },
                );
                Ok(ConsentOutcome::ModeDeclined)
            }
        }
    }

    /// The helper asks for another mode. Raising it needs the permission for this sharer
    /// and the sharer's consent; lowering it takes effect at once.
    pub fn request_mode(
        &self,
        helper: ConnId,
        principal: &Principal,
        session: &SessionId,
        mode: Mode,
    ) -> Result<ModeOutcome, (ErrorCode, String)> {
        let sharer = {
            let state = self.read();
            state
                .registry
                .get(session)
                .and_then(|s| s.sharer.as_ref())
                .and_then(|p| state.links.get(&p.conn).cloned())
        };
        let Some(sharer) = sharer else {
            return Err((ErrorCode::ProtocolViolation, "no active session".into()));
        };
        let current = self.read().registry.get(session).map(|s| s.mode);
        if current.is_some_and(|c| mode > c) {
            let policy = self.policies().tenant(&principal.tenant);
            policy
                .may_help(principal, &sharer.principal, mode)
                .map_err(|r| (r.code(), r.message()))?;
        }
        let outcome = self
            .lock()
            .registry
            .request_mode(session, helper, mode, Instant::now())
            .map_err(|code| {
                (
                    code,
                    format!("mode change not possible now: {}", code.describe()),
                )
            })?;
        match outcome {
            ModeRequest::NeedsConsent { deadline, .. } => {
                deliver(
                    &sharer,
                    Event::AskConsent {
                        session: session.clone(),
                        helper: Arc::new(principal.clone()),
                        mode,
                        mode_change: true,
                        deadline,
                    },
                );
                Ok(ModeOutcome::AskedSharer)
            }
            ModeRequest::Changed { .. } => {
                deliver(
                    &sharer,
                    Event::ModeChanged {
                        session: session.clone(),
                        mode,
                    },
                );
                Ok(ModeOutcome::Changed(mode))
            }
        }
    }

    /// A device agent registers to wait for unattended sessions.
    pub fn register_device(
        &self,
        agent: ConnId,
        principal: &Principal,
    ) -> Result<String, ErrorCode> {
        let device_id = principal
            .device
            .as_ref()
            .map(|d| d.device_id.clone())
            .filter(|id| !id.is_empty())
            .ok_or(ErrorCode::WrongRole)?;
        self.lock().registry.register_device(
            Party {
                conn: agent,
                tenant: principal.tenant.clone(),
            },
            &device_id,
        )?;
        Ok(device_id)
    }

    /// A helper connects to a registered device agent: no code, no consent. Returns the
    /// session and the agent's connection and profile; the agent is told.
    pub fn connect_unattended(
        &self,
        helper: ConnId,
        principal: &Arc<Principal>,
        device_id: &str,
    ) -> Result<UnattendedStart, (ErrorCode, String)> {
        let agent = {
            let state = self.read();
            state
                .registry
                .device_agent(&principal.tenant, device_id)
                .and_then(|c| state.links.get(&c).cloned())
        };
        let policy = self.policies().tenant(&principal.tenant);
        if let Some(agent) = &agent {
            policy
                .may_help(principal, &agent.principal, Mode::Unattended)
                .map_err(|r| {
                    metrics::counter!("relay_policy_refusals_total", "code" => r.code().as_str_name()).increment(1);
                    (r.code(), r.message())
                })?;
        }
        let mut rng = rand::rng();
        let party = Party {
            conn: helper,
            tenant: principal.tenant.clone(),
        };
        let (session, _) = self
            .lock()
            .registry
            .connect_unattended(party, device_id, Instant::now(), &mut rng)
            .map_err(|code| (code, code.describe().to_string()))?;
        let Some(agent) = agent else {
            // Registered in the registry but its link is gone: it is disconnecting.
            self.lock().registry.end(&session);
            return Err((
                ErrorCode::DeviceUnavailable,
                ErrorCode::DeviceUnavailable.describe().into(),
            ));
        };
        let helper_connection = self.read().links.get(&helper).map(|l| l.connection.clone());
        let Some(helper_connection) = helper_connection else {
            self.lock().registry.end(&session);
            return Err((ErrorCode::PeerLost, "helper connection gone".into()));
        };
        let chat_allowed = !policy.disable_chat;
        deliver(
            &agent,
            Event::Started {
                session: session.clone(),
                mode: Mode::Unattended,
                peer: helper_connection,
                peer_profile: principal.clone(),
                chat_allowed,
            },
        );
        Ok(UnattendedStart {
            session,
            agent: agent.connection,
            agent_profile: agent.principal,
            chat_allowed,
        })
    }

    /// Ends `session`, telling every party except `except` (the one that caused the end,
    /// which tells its own client). Returns the ended session if it was still live.
    pub fn end(
        &self,
        session: &SessionId,
        reason: ErrorCode,
        except: Option<ConnId>,
    ) -> Option<Ended> {
        let (ended, links) = {
            let mut state = self.lock();
            let ended = state.registry.end(session)?;
            let links: Vec<ConnLink> = std::iter::once(ended.helper)
                .chain(ended.sharer)
                .filter(|c| Some(*c) != except)
                .filter_map(|c| state.links.get(&c).cloned())
                .collect();
            (ended, links)
        };
        for link in links {
            deliver(
                &link,
                Event::Ended {
                    session: session.clone(),
                    reason,
                },
            );
        }
        Some(ended)
    }

    /// Applies every passed deadline: expired codes, unanswered consent prompts and
    /// compliance warnings end their sessions; unanswered mode requests lapse.
    pub fn expire(&self, now: Instant) {
        let (ended, lapsed) = {
            let mut state = self.lock();
            let expired = state.registry.expire(now);
            let ended: Vec<(ConnLink, SessionId, ErrorCode)> = expired
                .ended
                .into_iter()
                .flat_map(|(e, reason)| {
                    std::iter::once(e.helper)
                        .chain(e.sharer)
                        .filter_map(|c| state.links.get(&c).cloned())
                        .map(|l| (l, e.session.clone(), reason))
                        .collect::<Vec<_>>()
                })
                .collect();
            let lapsed: Vec<(ConnLink, SessionId)> = expired
                .mode_requests
                .into_iter()
                .flat_map(|(session, helper)| {
                    let sharer = state
                        .registry
                        .get(&session)
                        .and_then(|s| s.sharer.as_ref().map(|p| p.conn));
                    std::iter::once(helper)
                        .chain(sharer)
                        .filter_map(|c| state.links.get(&c).cloned())
                        .map(|l| (l, session.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            (ended, lapsed)
        };
        for (link, session, reason) in ended {
            metrics::counter!("relay_deadlines_expired_total", "reason" => reason.as_str_name())
                .increment(1);
            deliver(&link, Event::Ended { session, reason });
        }
        for (link, session) in lapsed {
            deliver(
                &link,
                Event::ModeRefused {
                    session,
                    reason: ErrorCode::ConsentTimeout,
                },
            );
        }
    }
}

/// A locked state that wakes watchers after the change, when dropped.
struct Changing<'a> {
    guard: MutexGuard<'a, State>,
    changed: &'a tokio::sync::Notify,
}

impl std::ops::Deref for Changing<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        // Runs before the guard field is dropped, i.e. before the unlock; a woken
        // watcher then waits on the mutex and sees the finished change.
        self.changed.notify_waiters();
    }
}

fn deliver(link: &ConnLink, event: Event) {
    if let Err(e) = link.events.try_send(event) {
        // Full: the task is wedged; closed: it is already cleaning up. Either way its
        // own cleanup ends its session; nothing else can be done from here.
        match e {
            mpsc::error::TrySendError::Full(ev) => {
                warn!(?ev, "connection event queue full; dropping event")
            }
            mpsc::error::TrySendError::Closed(ev) => debug!(?ev, "connection already gone"),
        }
    }
}

/// Un-counts an open connection when dropped.
pub struct OpenConnection(Arc<Hub>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
        metrics::gauge!("relay_connections_open").decrement(1.0);
    }
}
