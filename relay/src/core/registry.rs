//! The session registry: the whole life of every session, as a pure state machine.
//!
//! ```text
//!   create ──► AwaitingSharer ──join──► [AwaitingCompliance ──confirm──►] AwaitingConsent ──accept──► Active ──end──► (gone)
//!                  │                           │ decline / timeout          │ decline / timeout   │ ▲
//!                  └─code expires──► (gone)    └──────► (gone)              └──────► (gone)       │ │ request_mode
//!                                                                                                 └─┘ (+ consent to go up)
//!   register_device ──► (agent waits) ──connect_unattended──► Active (Unattended, no consent)
//! ```
//!
//! No I/O, no clock reads: every call takes `now`, and code generation takes the caller's
//! RNG. The async shell (`server`) calls these methods under a lock it never holds across
//! an `.await`, and turns the returned outcomes into messages to the two connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use remote_help_proto::ErrorCode;

use super::cluster::NodeId;
use super::code::{CodeLocator, SessionCode};
use super::{ConnId, Mode, SessionId, TenantId};

/// How one side of a session is known to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// The connection that speaks for this party.
    pub conn: ConnId,
    /// The tenant whose token authenticated this party.
    pub tenant: TenantId,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Created by a helper; its code waits for a sharer.
    AwaitingSharer,
    /// A sharer with a non-compliant device joined; the helper must confirm first.
    AwaitingCompliance,
    /// A sharer joined and has been asked to consent.
    AwaitingConsent,
    /// The sharer consented; data flows.
    Active,
}

/// One session as the registry holds it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session's id.
    pub id: SessionId,
    /// The tenant of both parties.
    pub tenant: TenantId,
    /// The helper who created it.
    pub helper: Party,
    /// The sharer, once one has joined.
    pub sharer: Option<Party>,
    /// The current mode (the requested one until the session is active).
    pub mode: Mode,
    /// A raised mode the helper asked for, waiting for the sharer's consent.
    pub requested_mode: Option<Mode>,
    /// When the pending answer (compliance, consent, mode consent) is due.
    pub answer_deadline: Option<Instant>,
    /// Where the session is in its life.
    pub state: SessionState,
    /// The code that was issued for it (`None` for unattended sessions).
    pub code: Option<SessionCode>,
    /// When the helper created it.
    pub created_at: Instant,
    /// When the sharer joined.
    pub joined_at: Option<Instant>,
    /// The helper's reason or ticket reference.
    pub reason: String,
}

/// What a session code points at.
#[derive(Debug, Clone)]
enum CodeSlot {
    /// Waiting for a sharer until `expires_at`.
    Open {
        session: SessionId,
        expires_at: Instant,
        /// Wrong codes of the session's tenant that shared this code's locator.
        wrong_attempts: u32,
    },
    /// Used by a sharer; kept (until `forget_at`) so a second use says `CODE_USED`.
    /// The tenant is kept so another tenant's sharer learns only `CROSS_TENANT`.
    Used {
        tenant: TenantId,
        forget_at: Instant,
    },
    /// Expired unused; kept (until `forget_at`) so a late join says `CODE_EXPIRED`.
    Expired {
        tenant: TenantId,
        forget_at: Instant,
    },
    /// Burned by too many wrong attempts against it; kept (until `forget_at`) so its
    /// rightful sharer learns `CODE_BURNED` and asks the helper for a new one.
    Burned {
        tenant: TenantId,
        forget_at: Instant,
    },
}

/// Why a join was refused, and the session it burned, if the refused attempt was the
/// last wrong one its code could take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRefused {
    /// What the sharer is told.
    pub error: ErrorCode,
    /// The session whose code this attempt burned; its helper must be told `CODE_BURNED`.
    pub burned: Option<Ended>,
    /// For `CROSS_TENANT`: whose code it was, so the owning tenant's log records the
    /// attempt too (the sharer is told nothing of it).
    pub owner: Option<CodeOwner>,
}

/// The tenant that owns a code another tenant's sharer presented, and, while the code is
/// open, its session and helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeOwner {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The session the code opens, while it is open.
    pub session: Option<SessionId>,
    /// That session's helper.
    pub helper: Option<ConnId>,
}

impl From<ErrorCode> for JoinRefused {
    fn from(error: ErrorCode) -> JoinRefused {
        JoinRefused {
            error,
            burned: None,
            owner: None,
        }
    }
}

impl JoinRefused {
    fn cross_tenant(owner: CodeOwner) -> JoinRefused {
        JoinRefused {
            error: ErrorCode::CrossTenant,
            burned: None,
            owner: Some(owner),
        }
    }
}

/// A newly created session, as the helper is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The new session's id.
    pub session: SessionId,
    /// The code to give the sharer.
    pub code: SessionCode,
    /// When the code stops working.
    pub expires_at: Instant,
}

/// A successful join: the sharer must now be asked to consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The joined session.
    pub session: SessionId,
    /// The helper's connection, to be told a sharer joined.
    pub helper: ConnId,
    /// The mode the helper asked for, to show in the consent prompt.
    pub mode: Mode,
}

/// The sharer's answer, applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consented {
    /// Accepted: the session is active.
    Started {
        /// The two parties, to be told the session started.
        helper: ConnId,
        /// The sharer's connection.
        sharer: ConnId,
        /// The active mode.
        mode: Mode,
    },
    /// Declined: the session is gone.
    Declined(Ended),
    /// A raised mode was accepted: both parties move to it.
    ModeChanged {
        /// The helper's connection.
        helper: ConnId,
        /// The new mode.
        mode: Mode,
    },
    /// A raised mode was declined: the session goes on in its current mode.
    ModeDeclined {
        /// The helper's connection.
        helper: ConnId,
    },
}

/// The outcome of a helper's mode request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeRequest {
    /// Moving up: the sharer (on this connection) must consent.
    NeedsConsent {
        /// The sharer's connection.
        sharer: ConnId,
        /// When the prompt expires.
        deadline: Instant,
    },
    /// Moving down (or staying): in effect now.
    Changed {
        /// The sharer's connection.
        sharer: ConnId,
    },
}

/// What a sweep of deadlines found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expired {
    /// Sessions that ended, with the reason both parties are told.
    pub ended: Vec<(Ended, ErrorCode)>,
    /// Mode requests that timed out: (session, helper). The session goes on.
    pub mode_requests: Vec<(SessionId, ConnId)>,
}

/// A session that is over, with the connections to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The ended session.
    pub session: SessionId,
    /// The helper's connection.
    pub helper: ConnId,
    /// The sharer's connection, if one had joined.
    pub sharer: Option<ConnId>,
    /// Whether the sharer had consented (data may have flowed).
    pub was_active: bool,
}

/// Tunables of the registry.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    /// How long a code waits for a sharer.
    pub code_ttl: Duration,
    /// How long a used or expired code is remembered so that a late attempt gets the
    /// precise `CODE_USED` / `CODE_EXPIRED` instead of `CODE_INVALID`.
    pub code_memory: Duration,
    /// How long a consent prompt (or compliance confirmation) waits for its answer.
    pub consent_timeout: Duration,
    /// Wrong attempts against one open code (same locator, same tenant) that burn it.
    pub wrong_attempts_per_code: u32,
}

/// A registered device agent waiting for unattended sessions.
#[derive(Debug, Clone)]
struct DeviceSlot {
    conn: ConnId,
    session: Option<SessionId>,
}

/// Every session on this relay node, and the codes that lead to them.
#[derive(Debug)]
pub struct Registry {
    limits: RegistryLimits,
    sessions: HashMap<SessionId, Session>,
    codes: HashMap<SessionCode, CodeSlot>,
    /// The open code holding each locator (invariant: exactly the `Open` slots of `codes`).
    open_locators: HashMap<CodeLocator, SessionCode>,
    devices: HashMap<(TenantId, String), DeviceSlot>,
    per_tenant: HashMap<TenantId, usize>,
    /// In a cluster, the node every code names.
    node: Option<NodeId>,
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: RegistryLimits) -> Registry {
        Registry {
            limits,
            sessions: HashMap::new(),
            codes: HashMap::new(),
            open_locators: HashMap::new(),
            devices: HashMap::new(),
            per_tenant: HashMap::new(),
            node: None,
        }
    }

    /// The registry of `node` of a cluster: every code it makes names that node.
    pub fn on_node(mut self, node: NodeId) -> Registry {
        self.node = Some(node);
        self
    }

    /// A helper opens a session: a fresh code that no live or remembered code shares, whose
    /// locator no open code shares.
    pub fn create<R: Rng + ?Sized>(
        &mut self,
        helper: Party,
        mode: Mode,
        now: Instant,
        rng: &mut R,
    ) -> Created {
        let code = loop {
            let candidate = match self.node {
                Some(node) => SessionCode::generate_on(node, rng),
                None => SessionCode::generate(rng),
            };
            if !self.codes.contains_key(&candidate)
                && !self.open_locators.contains_key(&candidate.locator())
            {
                break candidate;
            }
        };
        let session = SessionId::generate(rng);
        let expires_at = now + self.limits.code_ttl;
        self.codes.insert(
            code,
            CodeSlot::Open {
                session: session.clone(),
                expires_at,
                wrong_attempts: 0,
            },
        );
        self.open_locators.insert(code.locator(), code);
        *self.per_tenant.entry(helper.tenant.clone()).or_insert(0) += 1;
        self.sessions.insert(
            session.clone(),
            Session {
                id: session.clone(),
                tenant: helper.tenant.clone(),
                helper,
                sharer: None,
                mode,
                requested_mode: None,
                answer_deadline: None,
                state: SessionState::AwaitingSharer,
                code: Some(code),
                created_at: now,
                joined_at: None,
                reason: String::new(),
            },
        );
        Created {
            session,
            code,
            expires_at,
        }
    }

    /// A sharer presents a code. On success the code is spent: it never works again.
    ///
    /// A sharer of another tenant gets `CROSS_TENANT` and learns nothing else; the code
    /// stays valid for its rightful sharer. A wrong code whose locator matches an open code
    /// of the sharer's tenant counts against that code, and the last attempt it may take
    /// burns it: its session ends (`JoinRefused::burned`) and the code answers
    /// `CODE_BURNED` from then on.
    pub fn join(
        &mut self,
        code: SessionCode,
        sharer: Party,
        now: Instant,
    ) -> Result<Joined, JoinRefused> {
        let session_id = match self.codes.get(&code) {
            None => return Err(self.wrong_attempt(code, &sharer.tenant, now)),
            Some(
                CodeSlot::Used { tenant, .. }
                | CodeSlot::Expired { tenant, .. }
                | CodeSlot::Burned { tenant, .. },
            ) if *tenant != sharer.tenant => {
                return Err(JoinRefused::cross_tenant(CodeOwner {
                    tenant: tenant.clone(),
                    session: None,
                    helper: None,
                }));
            }
            Some(CodeSlot::Used { .. }) => return Err(ErrorCode::CodeUsed.into()),
            Some(CodeSlot::Expired { .. }) => return Err(ErrorCode::CodeExpired.into()),
            Some(CodeSlot::Burned { .. }) => return Err(ErrorCode::CodeBurned.into()),
            Some(CodeSlot::Open { expires_at, .. }) if *expires_at <= now => {
                return Err(ErrorCode::CodeExpired.into());
            }
            Some(CodeSlot::Open { session, .. }) => session.clone(),
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            // An open code always points at a live session (see `remove`); treat a
            // broken link as an unknown code rather than panicking.
            return Err(ErrorCode::CodeInvalid.into());
        };
        if session.tenant != sharer.tenant {
            return Err(JoinRefused::cross_tenant(CodeOwner {
                tenant: session.tenant.clone(),
                session: Some(session_id),
                helper: Some(session.helper.conn),
            }));
        }
        if session.helper.conn == sharer.conn {
            return Err(ErrorCode::WrongRole.into());
        }
        session.sharer = Some(sharer);
        session.joined_at = Some(now);
        session.state = SessionState::AwaitingConsent;
        session.answer_deadline = Some(now + self.limits.consent_timeout);
        self.open_locators.remove(&code.locator());
        self.codes.insert(
            code,
            CodeSlot::Used {
                tenant: session.tenant.clone(),
                forget_at: now + self.limits.code_memory,
            },
        );
        Ok(Joined {
            session: session_id,
            helper: session.helper.conn,
            mode: session.mode,
        })
    }

    /// A code nobody was given. If its locator is that of an open code of the same tenant,
    /// it counts against that code, and may burn it. Another tenant's attempts never count:
    /// they cannot join anyway, and must not be able to burn this tenant's codes.
    fn wrong_attempt(&mut self, code: SessionCode, tenant: &TenantId, now: Instant) -> JoinRefused {
        let Some(&target) = self.open_locators.get(&code.locator()) else {
            return ErrorCode::CodeInvalid.into();
        };
        let Some(CodeSlot::Open {
            session,
            wrong_attempts,
            expires_at,
        }) = self.codes.get_mut(&target)
        else {
            return ErrorCode::CodeInvalid.into();
        };
        // A code past its lifetime that the sweep has not reached yet is expired, not
        // burnable: its helper must hear CODE_EXPIRED, as `join` would say.
        if *expires_at <= now {
            return ErrorCode::CodeInvalid.into();
        }
        let session = session.clone();
        if self.sessions.get(&session).map(|s| &s.tenant) != Some(tenant) {
            return ErrorCode::CodeInvalid.into();
        }
        *wrong_attempts += 1;
        if *wrong_attempts < self.limits.wrong_attempts_per_code {
            return ErrorCode::CodeInvalid.into();
        }
        let burned = self.remove(&session);
        self.codes.insert(
            target,
            CodeSlot::Burned {
                tenant: tenant.clone(),
                forget_at: now + self.limits.code_memory,
            },
        );
        JoinRefused {
            error: ErrorCode::CodeInvalid,
            burned,
            owner: None,
        }
    }

    /// The sharer's device is not compliant: the helper must confirm before the sharer
    /// is asked to consent.
    pub fn require_compliance(&mut self, session: &SessionId) -> Result<(), ErrorCode> {
        let entry = self
            .sessions
            .get_mut(session)
            .ok_or(ErrorCode::ProtocolViolation)?;
        if entry.state != SessionState::AwaitingConsent {
            return Err(ErrorCode::ProtocolViolation);
        }
        entry.state = SessionState::AwaitingCompliance;
        Ok(())
    }

    /// The helper answers the compliance warning. `Ok(Some(sharer))`: go on and ask the
    /// sharer; `Ok(None)`: the helper declined and the session is gone.
    pub fn confirm_compliance(
        &mut self,
        session: &SessionId,
        helper: ConnId,
        proceed: bool,
        now: Instant,
    ) -> Result<Option<ConnId>, ErrorCode> {
        let entry = self
            .sessions
            .get_mut(session)
            .ok_or(ErrorCode::ProtocolViolation)?;
        if entry.helper.conn != helper || entry.state != SessionState::AwaitingCompliance {
            return Err(ErrorCode::ProtocolViolation);
        }
        if !proceed {
            self.remove(session);
            return Ok(None);
        }
        entry.state = SessionState::AwaitingConsent;
        entry.answer_deadline = Some(now + self.limits.consent_timeout);
        Ok(entry.sharer.as_ref().map(|s| s.conn))
    }

    /// The sharer on connection `sharer` answers a consent prompt of `session`: the
    /// initial one, or one for a raised mode.
    pub fn consent(
        &mut self,
        session: &SessionId,
        sharer: ConnId,
        accept: bool,
    ) -> Result<Consented, ErrorCode> {
        let entry = self
            .sessions
            .get_mut(session)
            .ok_or(ErrorCode::ProtocolViolation)?;
        let is_sharer = entry.sharer.as_ref().is_some_and(|s| s.conn == sharer);
        if !is_sharer {
            return Err(ErrorCode::ProtocolViolation);
        }
        match (entry.state, entry.requested_mode) {
            (SessionState::AwaitingConsent, _) => {
                entry.answer_deadline = None;
                if accept {
                    entry.state = SessionState::Active;
                    Ok(Consented::Started {
                        helper: entry.helper.conn,
                        sharer,
                        mode: entry.mode,
                    })
                } else {
                    // Present: looked up just above.
                    let ended = self.remove(session).ok_or(ErrorCode::ProtocolViolation)?;
                    Ok(Consented::Declined(ended))
                }
            }
            (SessionState::Active, Some(raised)) => {
                entry.requested_mode = None;
                entry.answer_deadline = None;
                if accept {
                    entry.mode = raised;
                    Ok(Consented::ModeChanged {
                        helper: entry.helper.conn,
                        mode: raised,
                    })
                } else {
                    Ok(Consented::ModeDeclined {
                        helper: entry.helper.conn,
                    })
                }
            }
            _ => Err(ErrorCode::ProtocolViolation),
        }
    }

    /// The helper asks for another mode in an active session. Permission is the
    /// caller's (policy's) business; this only sequences the change.
    pub fn request_mode(
        &mut self,
        session: &SessionId,
        helper: ConnId,
        mode: Mode,
        now: Instant,
    ) -> Result<ModeRequest, ErrorCode> {
        let entry = self
            .sessions
            .get_mut(session)
            .ok_or(ErrorCode::ProtocolViolation)?;
        let sharer = entry.sharer.as_ref().map(|s| s.conn);
        let (Some(sharer), true, true) = (
            sharer,
            entry.helper.conn == helper,
            entry.state == SessionState::Active,
        ) else {
            return Err(ErrorCode::ProtocolViolation);
        };
        if entry.requested_mode.is_some() {
            return Err(ErrorCode::SessionBusy);
        }
        // Unattended is entered only through connect_unattended, and never left.
        if mode == Mode::Unattended || entry.mode == Mode::Unattended {
            return Err(ErrorCode::ProtocolViolation);
        }
        if mode > entry.mode {
            let deadline = now + self.limits.consent_timeout;
            entry.requested_mode = Some(mode);
            entry.answer_deadline = Some(deadline);
            Ok(ModeRequest::NeedsConsent { sharer, deadline })
        } else {
            entry.mode = mode;
            Ok(ModeRequest::Changed { sharer })
        }
    }

    /// A device agent registers to wait for unattended sessions.
    pub fn register_device(&mut self, agent: Party, device_id: &str) -> Result<(), ErrorCode> {
        let key = (agent.tenant, device_id.to_string());
        if self.devices.contains_key(&key) {
            return Err(ErrorCode::SessionBusy);
        }
        self.devices.insert(
            key,
            DeviceSlot {
                conn: agent.conn,
                session: None,
            },
        );
        Ok(())
    }

    /// A device agent's connection went away.
    pub fn unregister_device(&mut self, conn: ConnId) {
        self.devices.retain(|_, slot| slot.conn != conn);
    }

    /// The agent connection registered for `device_id` in `tenant`, if any.
    pub fn device_agent(&self, tenant: &TenantId, device_id: &str) -> Option<ConnId> {
        self.devices
            .get(&(tenant.clone(), device_id.to_string()))
            .map(|slot| slot.conn)
    }

    /// The tenant and agent connection of `device_id` registered in any tenant other than
    /// `except`: whom a `CROSS_TENANT` unattended connect aimed at.
    pub fn device_elsewhere(
        &self,
        except: &TenantId,
        device_id: &str,
    ) -> Option<(TenantId, ConnId)> {
        self.devices
            .iter()
            .find(|((tenant, id), _)| tenant != except && id == device_id)
            .map(|((tenant, _), slot)| (tenant.clone(), slot.conn))
    }

    /// A helper connects to a registered device agent: the session is active at once
    /// (no code, no consent). Another tenant's device is `CROSS_TENANT`.
    pub fn connect_unattended<R: Rng + ?Sized>(
        &mut self,
        helper: Party,
        device_id: &str,
        now: Instant,
        rng: &mut R,
    ) -> Result<(SessionId, ConnId), ErrorCode> {
        let key = (helper.tenant.clone(), device_id.to_string());
        let Some(slot) = self.devices.get(&key) else {
            let elsewhere = self.devices.keys().any(|(_, id)| id == device_id);
            return Err(if elsewhere {
                ErrorCode::CrossTenant
            } else {
                ErrorCode::DeviceUnavailable
            });
        };
        let agent = slot.conn;
        // Busy with an unattended session, or with an attended one it joined by code.
        let in_session = self
            .sessions
            .values()
            .any(|s| s.helper.conn == agent || s.sharer.as_ref().is_some_and(|p| p.conn == agent));
        if slot.session.is_some() || in_session {
            return Err(ErrorCode::SessionBusy);
        }
        let session = SessionId::generate(rng);
        *self.per_tenant.entry(helper.tenant.clone()).or_insert(0) += 1;
        self.sessions.insert(
            session.clone(),
            Session {
                id: session.clone(),
                tenant: helper.tenant.clone(),
                sharer: Some(Party {
                    conn: agent,
                    tenant: helper.tenant.clone(),
                }),
                helper,
                mode: Mode::Unattended,
                requested_mode: None,
                answer_deadline: None,
                state: SessionState::Active,
                code: None,
                created_at: now,
                joined_at: Some(now),
                reason: String::new(),
            },
        );
        if let Some(slot) = self.devices.get_mut(&key) {
            slot.session = Some(session.clone());
        }
        Ok((session, agent))
    }

    /// Ends a session for any reason; `None` if it had already ended.
    pub fn end(&mut self, session: &SessionId) -> Option<Ended> {
        self.remove(session)
    }

    /// Applies every deadline that has passed: unused codes expire (their helpers get
    /// `CODE_EXPIRED`), unanswered consent prompts and compliance warnings end their
    /// sessions, unanswered mode requests lapse; old remembered codes are forgotten.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut found = Expired::default();
        let mut code_expired = Vec::new();
        let memory = self.limits.code_memory;
        let sessions = &self.sessions;
        let open_locators = &mut self.open_locators;
        self.codes.retain(|code, slot| match slot {
            CodeSlot::Open {
                session,
                expires_at,
                ..
            } if *expires_at <= now => {
                let tenant = sessions
                    .get(session)
                    .map(|s| s.tenant.clone())
                    .unwrap_or_else(|| TenantId::new(""));
                code_expired.push(session.clone());
                open_locators.remove(&code.locator());
                *slot = CodeSlot::Expired {
                    tenant,
                    forget_at: now + memory,
                };
                true
            }
            CodeSlot::Used { forget_at, .. }
            | CodeSlot::Expired { forget_at, .. }
            | CodeSlot::Burned { forget_at, .. } => *forget_at > now,
            CodeSlot::Open { .. } => true,
        });
        for id in code_expired {
            if let Some(ended) = self.remove(&id) {
                found.ended.push((ended, ErrorCode::CodeExpired));
            }
        }
        let due: Vec<(SessionId, SessionState, Option<Mode>, ConnId)> = self
            .sessions
            .values()
            .filter(|s| s.answer_deadline.is_some_and(|d| d <= now))
            .map(|s| (s.id.clone(), s.state, s.requested_mode, s.helper.conn))
            .collect();
        for (id, state, requested, helper) in due {
            match (state, requested) {
                (SessionState::Active, Some(_)) => {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.requested_mode = None;
                        s.answer_deadline = None;
                    }
                    found.mode_requests.push((id, helper));
                }
                (SessionState::AwaitingCompliance, _) => {
                    if let Some(ended) = self.remove(&id) {
                        found.ended.push((ended, ErrorCode::ComplianceNotConfirmed));
                    }
                }
                _ => {
                    if let Some(ended) = self.remove(&id) {
                        found.ended.push((ended, ErrorCode::ConsentTimeout));
                    }
                }
            }
        }
        found
    }

    /// Keeps the helper's reason or ticket reference with the session (for audit).
    pub fn set_reason(&mut self, session: &SessionId, reason: &str) {
        if let Some(s) = self.sessions.get_mut(session) {
            s.reason = reason.to_string();
        }
    }

    /// The session with this id, if it exists.
    pub fn get(&self, session: &SessionId) -> Option<&Session> {
        self.sessions.get(session)
    }

    /// Sessions of `tenant` in any state.
    pub fn tenant_sessions(&self, tenant: &TenantId) -> usize {
        self.per_tenant.get(tenant).copied().unwrap_or(0)
    }

    /// Number of sessions in any state.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there are no sessions at all.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of remembered codes (open, used or expired), for leak checks.
    pub fn remembered_codes(&self) -> usize {
        self.codes.len()
    }

    fn remove(&mut self, session: &SessionId) -> Option<Ended> {
        let s = self.sessions.remove(session)?;
        if let Some(count) = self.per_tenant.get_mut(&s.tenant) {
            *count -= 1;
            if *count == 0 {
                self.per_tenant.remove(&s.tenant);
            }
        }
        // An unused code dies with its session, so an open code always has a session.
        if let Some(code) = s.code
            && let Some(CodeSlot::Open { .. }) = self.codes.get(&code)
        {
            self.codes.remove(&code);
            self.open_locators.remove(&code.locator());
        }
        // A device agent becomes free for the next unattended session.
        for slot in self.devices.values_mut() {
            if slot.session.as_ref() == Some(&s.id) {
                slot.session = None;
            }
        }
        Some(Ended {
            session: s.id,
            helper: s.helper.conn,
            sharer: s.sharer.map(|p| p.conn),
            was_active: s.state == SessionState::Active,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const TTL: Duration = Duration::from_secs(600);
    const CONSENT: Duration = Duration::from_secs(300);

    fn registry() -> Registry {
        Registry::new(RegistryLimits {
            code_ttl: TTL,
            code_memory: Duration::from_secs(3600),
            consent_timeout: CONSENT,
            wrong_attempts_per_code: 3,
        })
    }

    fn party(conn: u64, tenant: &str) -> Party {
        Party {
            conn: ConnId(conn),
            tenant: TenantId::new(tenant),
        }
    }

    fn setup() -> (Registry, StdRng, Instant) {
        (registry(), StdRng::seed_from_u64(42), Instant::now())
    }

    #[test]
    fn a_full_session_goes_through_every_state() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::FullControl, now, &mut rng);
        assert_eq!(created.expires_at, now + TTL);
        assert_eq!(
            reg.get(&created.session).unwrap().state,
            SessionState::AwaitingSharer
        );

        let joined = reg.join(created.code, party(2, "t"), now).unwrap();
        assert_eq!(joined.helper, ConnId(1));
        assert_eq!(joined.mode, Mode::FullControl);
        assert_eq!(
            reg.get(&created.session).unwrap().state,
            SessionState::AwaitingConsent
        );

        let started = reg.consent(&created.session, ConnId(2), true).unwrap();
        assert_eq!(
            started,
            Consented::Started {
                helper: ConnId(1),
                sharer: ConnId(2),
                mode: Mode::FullControl
            }
        );

        let ended = reg.end(&created.session).unwrap();
        assert!(ended.was_active);
        assert_eq!(ended.sharer, Some(ConnId(2)));
        assert!(reg.is_empty());
        assert_eq!(reg.end(&created.session), None);
    }

    #[test]
    fn a_sharer_of_another_tenant_is_refused_and_the_code_stays_valid() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "contoso"), Mode::ViewOnly, now, &mut rng);
        assert_eq!(
            reg.join(created.code, party(2, "fabrikam"), now),
            Err(JoinRefused::cross_tenant(CodeOwner {
                tenant: TenantId::new("contoso"),
                session: Some(created.session.clone()),
                helper: Some(ConnId(1)),
            }))
        );
        assert!(reg.join(created.code, party(3, "contoso"), now).is_ok());
    }

    /// A code with the same locator as `code` and a different secret.
    fn same_locator(code: SessionCode, n: usize) -> SessionCode {
        let shown = code.to_string();
        let (locator, secret) = shown.split_once('-').unwrap();
        let mut candidate;
        let mut i = n;
        loop {
            candidate = SessionCode::parse(&format!("{locator}-{:0>5}", i)).unwrap();
            if candidate != code {
                break;
            }
            i += 100;
        }
        assert_ne!(secret, candidate.to_string().split_once('-').unwrap().1);
        candidate
    }

    #[test]
    fn an_expired_code_not_yet_swept_cannot_be_burned() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        let late = now + TTL;
        for n in 1..=5 {
            let refused = reg
                .join(same_locator(created.code, n), party(2, "t"), late)
                .unwrap_err();
            assert_eq!(refused, ErrorCode::CodeInvalid.into(), "attempt {n}");
        }
        // The sweep then ends it as expired, not burned.
        let expired = reg.expire(late);
        assert!(
            expired
                .ended
                .iter()
                .any(|(_, reason)| *reason == ErrorCode::CodeExpired),
            "{expired:?}"
        );
    }

    #[test]
    fn wrong_attempts_against_a_code_burn_it_and_end_its_session() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        for n in 1..3 {
            let refused = reg
                .join(same_locator(created.code, n), party(2, "t"), now)
                .unwrap_err();
            assert_eq!(refused, ErrorCode::CodeInvalid.into(), "attempt {n}");
        }
        let refused = reg
            .join(same_locator(created.code, 3), party(2, "t"), now)
            .unwrap_err();
        assert_eq!(refused.error, ErrorCode::CodeInvalid);
        let burned = refused
            .burned
            .expect("the third wrong attempt burns the code");
        assert_eq!(burned.session, created.session);
        assert_eq!(burned.helper, ConnId(1));
        assert!(reg.is_empty());
        assert_eq!(reg.tenant_sessions(&TenantId::new("t")), 0);
        // The rightful sharer now learns the code is burned; another tenant learns nothing.
        assert_eq!(
            reg.join(created.code, party(3, "t"), now),
            Err(ErrorCode::CodeBurned.into())
        );
        assert_eq!(
            reg.join(created.code, party(4, "other"), now)
                .map_err(|r| r.error),
            Err(ErrorCode::CrossTenant)
        );
        // Remembered like used codes, then forgotten.
        reg.expire(now + Duration::from_secs(3600));
        assert_eq!(reg.remembered_codes(), 0);
    }

    #[test]
    fn wrong_attempts_from_another_tenant_or_another_locator_do_not_count() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        for n in 1..20 {
            let refused = reg
                .join(same_locator(created.code, n), party(9, "other"), now)
                .unwrap_err();
            assert_eq!(refused, ErrorCode::CodeInvalid.into());
        }
        for n in 0..20 {
            let other_locator = SessionCode::parse(&format!("ZZZZ{}-00000", n % 10)).unwrap();
            if other_locator.locator() == created.code.locator() {
                continue;
            }
            assert_eq!(
                reg.join(other_locator, party(2, "t"), now),
                Err(ErrorCode::CodeInvalid.into())
            );
        }
        assert!(reg.join(created.code, party(2, "t"), now).is_ok());
    }

    #[test]
    fn a_cluster_node_only_makes_codes_that_name_it() {
        let (reg, mut rng, now) = setup();
        let node = NodeId::new(5).unwrap();
        let mut reg = reg.on_node(node);
        let mut locators = std::collections::HashSet::new();
        for i in 0..2_000 {
            let created = reg.create(party(i, "t"), Mode::ViewOnly, now, &mut rng);
            assert_eq!(created.code.node(), node);
            assert!(locators.insert(created.code.locator()));
        }
    }

    #[test]
    fn open_codes_never_share_a_locator_and_free_it_when_they_close() {
        let (mut reg, mut rng, now) = setup();
        let mut locators = std::collections::HashSet::new();
        let mut sessions = Vec::new();
        for i in 0..2_000 {
            let created = reg.create(party(i, "t"), Mode::ViewOnly, now, &mut rng);
            assert!(locators.insert(created.code.locator()));
            sessions.push(created);
        }
        // A used code frees its locator: wrong attempts there no longer count against it.
        let first = &sessions[0];
        reg.join(first.code, party(10_000, "t"), now).unwrap();
        for n in 1..10 {
            assert_eq!(
                reg.join(same_locator(first.code, n), party(10_001, "t"), now),
                Err(ErrorCode::CodeInvalid.into())
            );
        }
        assert_eq!(reg.len(), 2_000);
        // Expired codes free theirs too.
        let expired = reg.expire(now + TTL);
        let code_expired = expired
            .ended
            .iter()
            .filter(|(_, reason)| *reason == ErrorCode::CodeExpired)
            .count();
        assert_eq!(code_expired, 1_999);
        assert_eq!(reg.open_locators.len(), 0);
    }

    #[test]
    fn another_tenant_learns_only_cross_tenant_even_for_used_and_expired_codes() {
        let (mut reg, mut rng, now) = setup();
        let used = reg.create(party(1, "contoso"), Mode::ViewOnly, now, &mut rng);
        reg.join(used.code, party(2, "contoso"), now).unwrap();
        let expired = reg.create(party(3, "contoso"), Mode::ViewOnly, now, &mut rng);
        reg.expire(now + TTL);
        for code in [used.code, expired.code] {
            // The owner's log learns the attempt; its closed session is not named.
            assert_eq!(
                reg.join(code, party(9, "fabrikam"), now + TTL),
                Err(JoinRefused::cross_tenant(CodeOwner {
                    tenant: TenantId::new("contoso"),
                    session: None,
                    helper: None,
                }))
            );
        }
        assert_eq!(
            reg.join(used.code, party(4, "contoso"), now + TTL),
            Err(ErrorCode::CodeUsed.into())
        );
        assert_eq!(
            reg.join(expired.code, party(4, "contoso"), now + TTL),
            Err(ErrorCode::CodeExpired.into())
        );
    }

    #[test]
    fn a_device_agent_in_an_attended_session_is_busy_for_unattended_ones() {
        let (mut reg, mut rng, now) = setup();
        reg.register_device(party(5, "t"), "kiosk").unwrap();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        reg.join(created.code, party(5, "t"), now).unwrap();
        assert_eq!(
            reg.connect_unattended(party(2, "t"), "kiosk", now, &mut rng),
            Err(ErrorCode::SessionBusy)
        );
    }

    #[test]
    fn codes_are_single_use() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        assert_eq!(
            reg.join(created.code, party(3, "t"), now),
            Err(ErrorCode::CodeUsed.into())
        );
        // Still used after the session has ended.
        reg.end(&created.session);
        assert_eq!(
            reg.join(created.code, party(3, "t"), now),
            Err(ErrorCode::CodeUsed.into())
        );
    }

    #[test]
    fn unknown_codes_are_invalid() {
        let (mut reg, _, now) = setup();
        let code = SessionCode::parse("AAAAA-AAAAA").unwrap();
        assert_eq!(
            reg.join(code, party(2, "t"), now),
            Err(ErrorCode::CodeInvalid.into())
        );
    }

    #[test]
    fn a_code_expires_at_its_ttl_and_its_helper_is_told() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        assert_eq!(
            reg.expire(now + TTL - Duration::from_millis(1)),
            Expired::default()
        );
        // A join exactly at expiry is too late, even before the sweep ran.
        assert_eq!(
            reg.join(created.code, party(2, "t"), now + TTL),
            Err(ErrorCode::CodeExpired.into())
        );
        let expired = reg.expire(now + TTL).ended;
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0.helper, ConnId(1));
        assert_eq!(expired[0].1, ErrorCode::CodeExpired);
        assert!(reg.is_empty());
        // After the sweep the code is remembered as expired...
        assert_eq!(
            reg.join(created.code, party(2, "t"), now + TTL),
            Err(ErrorCode::CodeExpired.into())
        );
        // ...and eventually forgotten, so memory does not grow forever.
        reg.expire(now + TTL + Duration::from_secs(3601));
        assert_eq!(reg.remembered_codes(), 0);
    }

    #[test]
    fn used_codes_are_forgotten_after_the_memory_time() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        reg.end(&created.session);
        reg.expire(now + Duration::from_secs(3601));
        assert_eq!(reg.remembered_codes(), 0);
    }

    #[test]
    fn declining_removes_the_session() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        match reg.consent(&created.session, ConnId(2), false).unwrap() {
            Consented::Declined(ended) => {
                assert!(!ended.was_active);
                assert_eq!(ended.sharer, Some(ConnId(2)));
            }
            other => panic!("expected a decline, got {other:?}"),
        }
        assert!(reg.is_empty());
    }

    #[test]
    fn only_the_joined_sharer_may_consent_and_only_once() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        assert_eq!(
            reg.consent(&created.session, ConnId(2), true),
            Err(ErrorCode::ProtocolViolation),
            "consent before any join"
        );
        reg.join(created.code, party(2, "t"), now).unwrap();
        assert_eq!(
            reg.consent(&created.session, ConnId(1), true),
            Err(ErrorCode::ProtocolViolation),
            "the helper cannot consent for the sharer"
        );
        reg.consent(&created.session, ConnId(2), true).unwrap();
        assert_eq!(
            reg.consent(&created.session, ConnId(2), true),
            Err(ErrorCode::ProtocolViolation),
            "consent twice"
        );
    }

    #[test]
    fn a_helper_cannot_join_its_own_session() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        assert_eq!(
            reg.join(created.code, party(1, "t"), now),
            Err(ErrorCode::WrongRole.into())
        );
    }

    #[test]
    fn ending_an_unjoined_session_frees_its_code() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        let ended = reg.end(&created.session).unwrap();
        assert_eq!(ended.sharer, None);
        assert_eq!(reg.remembered_codes(), 0);
        assert_eq!(
            reg.join(created.code, party(2, "t"), now),
            Err(ErrorCode::CodeInvalid.into())
        );
    }

    #[test]
    fn many_sessions_get_distinct_codes_and_ids() {
        let (mut reg, mut rng, now) = setup();
        let mut codes = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for conn in 0..2_000 {
            let created = reg.create(party(conn, "t"), Mode::ViewOnly, now, &mut rng);
            assert!(codes.insert(created.code));
            assert!(ids.insert(created.session));
        }
        assert_eq!(reg.len(), 2_000);
    }

    fn active(reg: &mut Registry, rng: &mut StdRng, now: Instant, mode: Mode) -> SessionId {
        let created = reg.create(party(1, "t"), mode, now, rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        reg.consent(&created.session, ConnId(2), true).unwrap();
        created.session
    }

    #[test]
    fn an_unanswered_consent_prompt_times_out() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        assert_eq!(
            reg.expire(now + CONSENT - Duration::from_millis(1)),
            Expired::default()
        );
        let expired = reg.expire(now + CONSENT).ended;
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].1, ErrorCode::ConsentTimeout);
        assert_eq!(expired[0].0.sharer, Some(ConnId(2)));
        assert!(reg.is_empty());
    }

    #[test]
    fn a_compliance_warning_must_be_confirmed_before_consent() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::FullControl, now, &mut rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        reg.require_compliance(&created.session).unwrap();
        assert_eq!(
            reg.consent(&created.session, ConnId(2), true),
            Err(ErrorCode::ProtocolViolation),
            "no consent before the helper confirms"
        );
        assert_eq!(
            reg.confirm_compliance(&created.session, ConnId(2), true, now),
            Err(ErrorCode::ProtocolViolation),
            "only the helper confirms"
        );
        let later = now + Duration::from_secs(10);
        assert_eq!(
            reg.confirm_compliance(&created.session, ConnId(1), true, later),
            Ok(Some(ConnId(2)))
        );
        // The consent prompt gets its full time from the confirmation on.
        assert!(
            reg.expire(later + CONSENT - Duration::from_millis(1))
                .ended
                .is_empty()
        );
        assert!(matches!(
            reg.consent(&created.session, ConnId(2), true),
            Ok(Consented::Started { .. })
        ));
    }

    #[test]
    fn declining_or_ignoring_the_compliance_warning_ends_the_session() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        reg.require_compliance(&created.session).unwrap();
        assert_eq!(
            reg.confirm_compliance(&created.session, ConnId(1), false, now),
            Ok(None)
        );
        assert!(reg.is_empty());

        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        reg.require_compliance(&created.session).unwrap();
        let expired = reg.expire(now + CONSENT).ended;
        assert_eq!(expired[0].1, ErrorCode::ComplianceNotConfirmed);
    }

    #[test]
    fn raising_the_mode_needs_consent_and_lowering_it_does_not() {
        let (mut reg, mut rng, now) = setup();
        let session = active(&mut reg, &mut rng, now, Mode::ViewOnly);
        assert_eq!(
            reg.request_mode(&session, ConnId(2), Mode::FullControl, now),
            Err(ErrorCode::ProtocolViolation),
            "only the helper asks"
        );
        let asked = reg
            .request_mode(&session, ConnId(1), Mode::FullControl, now)
            .unwrap();
        assert_eq!(
            asked,
            ModeRequest::NeedsConsent {
                sharer: ConnId(2),
                deadline: now + CONSENT
            }
        );
        assert_eq!(
            reg.get(&session).unwrap().mode,
            Mode::ViewOnly,
            "not before consent"
        );
        assert_eq!(
            reg.request_mode(&session, ConnId(1), Mode::Elevation, now),
            Err(ErrorCode::SessionBusy),
            "one request at a time"
        );
        assert_eq!(
            reg.consent(&session, ConnId(2), true),
            Ok(Consented::ModeChanged {
                helper: ConnId(1),
                mode: Mode::FullControl
            })
        );
        // Up again to elevation, declined: the session stays in full control.
        reg.request_mode(&session, ConnId(1), Mode::Elevation, now)
            .unwrap();
        assert_eq!(
            reg.consent(&session, ConnId(2), false),
            Ok(Consented::ModeDeclined { helper: ConnId(1) })
        );
        assert_eq!(reg.get(&session).unwrap().mode, Mode::FullControl);
        // Down needs nothing.
        assert_eq!(
            reg.request_mode(&session, ConnId(1), Mode::ViewOnly, now),
            Ok(ModeRequest::Changed { sharer: ConnId(2) })
        );
        assert_eq!(reg.get(&session).unwrap().mode, Mode::ViewOnly);
        assert_eq!(
            reg.request_mode(&session, ConnId(1), Mode::Unattended, now),
            Err(ErrorCode::ProtocolViolation)
        );
    }

    #[test]
    fn an_unanswered_mode_request_lapses_and_the_session_goes_on() {
        let (mut reg, mut rng, now) = setup();
        let session = active(&mut reg, &mut rng, now, Mode::ViewOnly);
        reg.request_mode(&session, ConnId(1), Mode::FullControl, now)
            .unwrap();
        let expired = reg.expire(now + CONSENT);
        assert!(expired.ended.is_empty());
        assert_eq!(expired.mode_requests, vec![(session.clone(), ConnId(1))]);
        assert_eq!(reg.get(&session).unwrap().mode, Mode::ViewOnly);
        assert_eq!(
            reg.consent(&session, ConnId(2), true),
            Err(ErrorCode::ProtocolViolation)
        );
    }

    #[test]
    fn unattended_sessions_start_without_consent_and_never_cross_tenants() {
        let (mut reg, mut rng, now) = setup();
        reg.register_device(party(5, "contoso"), "kiosk-1").unwrap();
        assert_eq!(
            reg.register_device(party(6, "contoso"), "kiosk-1"),
            Err(ErrorCode::SessionBusy)
        );
        // The same device id in another tenant is a different device.
        reg.register_device(party(7, "fabrikam"), "kiosk-2")
            .unwrap();

        assert_eq!(
            reg.connect_unattended(party(1, "contoso"), "kiosk-2", now, &mut rng),
            Err(ErrorCode::CrossTenant)
        );
        assert_eq!(
            reg.connect_unattended(party(1, "contoso"), "nowhere", now, &mut rng),
            Err(ErrorCode::DeviceUnavailable)
        );
        let (session, agent) = reg
            .connect_unattended(party(1, "contoso"), "kiosk-1", now, &mut rng)
            .unwrap();
        assert_eq!(agent, ConnId(5));
        let s = reg.get(&session).unwrap();
        assert_eq!((s.state, s.mode), (SessionState::Active, Mode::Unattended));
        assert_eq!(
            reg.connect_unattended(party(3, "contoso"), "kiosk-1", now, &mut rng),
            Err(ErrorCode::SessionBusy),
            "one session per agent"
        );
        reg.end(&session).unwrap();
        assert!(
            reg.connect_unattended(party(3, "contoso"), "kiosk-1", now, &mut rng)
                .is_ok()
        );
        reg.unregister_device(ConnId(5));
        assert_eq!(reg.device_agent(&TenantId::new("contoso"), "kiosk-1"), None);
    }
}
