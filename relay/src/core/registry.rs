//! The session registry: the whole life of every session, as a pure state machine.
//!
//! ```text
//!   create ──► AwaitingSharer ──join──► AwaitingConsent ──accept──► Active ──end──► (gone)
//!                  │                         │ decline                 │
//!                  └─code expires──► (gone)  └────────► (gone)         └─peer lost/shutdown─► (gone)
//! ```
//!
//! No I/O, no clock reads: every call takes `now`, and code generation takes the caller's
//! RNG. The async shell (`server`) calls these methods under a lock it never holds across
//! an `.await`, and turns the returned outcomes into messages to the two connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use remote_help_proto::ErrorCode;

use super::code::SessionCode;
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
    /// The mode the helper asked for.
    pub mode: Mode,
    /// Where the session is in its life.
    pub state: SessionState,
    /// The code that was issued for it.
    pub code: SessionCode,
    /// When the helper created it.
    pub created_at: Instant,
}

/// What a session code points at.
#[derive(Debug, Clone)]
enum CodeSlot {
    /// Waiting for a sharer until `expires_at`.
    Open {
        session: SessionId,
        expires_at: Instant,
    },
    /// Used by a sharer; kept (until `forget_at`) so a second use says `CODE_USED`.
    Used { forget_at: Instant },
    /// Expired unused; kept (until `forget_at`) so a late join says `CODE_EXPIRED`.
    Expired { forget_at: Instant },
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
}

/// Every session on this relay node, and the codes that lead to them.
#[derive(Debug)]
pub struct Registry {
    limits: RegistryLimits,
    sessions: HashMap<SessionId, Session>,
    codes: HashMap<SessionCode, CodeSlot>,
}

impl Registry {
    /// An empty registry.
    pub fn new(limits: RegistryLimits) -> Registry {
        Registry {
            limits,
            sessions: HashMap::new(),
            codes: HashMap::new(),
        }
    }

    /// A helper opens a session: a fresh code that no live or remembered code shares.
    pub fn create<R: Rng + ?Sized>(
        &mut self,
        helper: Party,
        mode: Mode,
        now: Instant,
        rng: &mut R,
    ) -> Created {
        let code = loop {
            let candidate = SessionCode::generate(rng);
            if !self.codes.contains_key(&candidate) {
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
            },
        );
        self.sessions.insert(
            session.clone(),
            Session {
                id: session.clone(),
                tenant: helper.tenant.clone(),
                helper,
                sharer: None,
                mode,
                state: SessionState::AwaitingSharer,
                code,
                created_at: now,
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
    /// stays valid for its rightful sharer.
    pub fn join(
        &mut self,
        code: SessionCode,
        sharer: Party,
        now: Instant,
    ) -> Result<Joined, ErrorCode> {
        let session_id = match self.codes.get(&code) {
            None => return Err(ErrorCode::CodeInvalid),
            Some(CodeSlot::Used { .. }) => return Err(ErrorCode::CodeUsed),
            Some(CodeSlot::Expired { .. }) => return Err(ErrorCode::CodeExpired),
            Some(CodeSlot::Open { expires_at, .. }) if *expires_at <= now => {
                return Err(ErrorCode::CodeExpired);
            }
            Some(CodeSlot::Open { session, .. }) => session.clone(),
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            // An open code always points at a live session (see `remove`); treat a
            // broken link as an unknown code rather than panicking.
            return Err(ErrorCode::CodeInvalid);
        };
        if session.tenant != sharer.tenant {
            return Err(ErrorCode::CrossTenant);
        }
        if session.helper.conn == sharer.conn {
            return Err(ErrorCode::WrongRole);
        }
        session.sharer = Some(sharer);
        session.state = SessionState::AwaitingConsent;
        self.codes.insert(
            code,
            CodeSlot::Used {
                forget_at: now + self.limits.code_memory,
            },
        );
        Ok(Joined {
            session: session_id,
            helper: session.helper.conn,
            mode: session.mode,
        })
    }

    /// The sharer on connection `sharer` answers the consent request of `session`.
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
        if !is_sharer || entry.state != SessionState::AwaitingConsent {
            return Err(ErrorCode::ProtocolViolation);
        }
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

    /// Ends a session for any reason; `None` if it had already ended.
    pub fn end(&mut self, session: &SessionId) -> Option<Ended> {
        self.remove(session)
    }

    /// Expires codes whose time has passed and forgets old remembered codes. Returns the
    /// sessions that ended because nobody joined in time (their helpers get `CODE_EXPIRED`).
    pub fn expire(&mut self, now: Instant) -> Vec<Ended> {
        let mut expired_sessions = Vec::new();
        let memory = self.limits.code_memory;
        self.codes.retain(|_, slot| match slot {
            CodeSlot::Open {
                session,
                expires_at,
            } if *expires_at <= now => {
                expired_sessions.push(session.clone());
                *slot = CodeSlot::Expired {
                    forget_at: now + memory,
                };
                true
            }
            CodeSlot::Used { forget_at } | CodeSlot::Expired { forget_at } => *forget_at > now,
            CodeSlot::Open { .. } => true,
        });
        expired_sessions
            .iter()
            .filter_map(|id| self.sessions.remove(id))
            .map(|s| Ended {
                session: s.id,
                helper: s.helper.conn,
                sharer: None,
                was_active: false,
            })
            .collect()
    }

    /// The session with this id, if it exists.
    pub fn get(&self, session: &SessionId) -> Option<&Session> {
        self.sessions.get(session)
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
        // An unused code dies with its session, so an open code always has a session.
        if let Some(CodeSlot::Open { .. }) = self.codes.get(&s.code) {
            self.codes.remove(&s.code);
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

    fn registry() -> Registry {
        Registry::new(RegistryLimits {
            code_ttl: TTL,
            code_memory: Duration::from_secs(3600),
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
            Err(ErrorCode::CrossTenant)
        );
        assert!(reg.join(created.code, party(3, "contoso"), now).is_ok());
    }

    #[test]
    fn codes_are_single_use() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        reg.join(created.code, party(2, "t"), now).unwrap();
        assert_eq!(
            reg.join(created.code, party(3, "t"), now),
            Err(ErrorCode::CodeUsed)
        );
        // Still used after the session has ended.
        reg.end(&created.session);
        assert_eq!(
            reg.join(created.code, party(3, "t"), now),
            Err(ErrorCode::CodeUsed)
        );
    }

    #[test]
    fn unknown_codes_are_invalid() {
        let (mut reg, _, now) = setup();
        let code = SessionCode::parse("AAAA-AAAA").unwrap();
        assert_eq!(
            reg.join(code, party(2, "t"), now),
            Err(ErrorCode::CodeInvalid)
        );
    }

    #[test]
    fn a_code_expires_at_its_ttl_and_its_helper_is_told() {
        let (mut reg, mut rng, now) = setup();
        let created = reg.create(party(1, "t"), Mode::ViewOnly, now, &mut rng);
        assert!(reg.expire(now + TTL - Duration::from_millis(1)).is_empty());
        // A join exactly at expiry is too late, even before the sweep ran.
        assert_eq!(
            reg.join(created.code, party(2, "t"), now + TTL),
            Err(ErrorCode::CodeExpired)
        );
        let expired = reg.expire(now + TTL);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].helper, ConnId(1));
        assert!(reg.is_empty());
        // After the sweep the code is remembered as expired...
        assert_eq!(
            reg.join(created.code, party(2, "t"), now + TTL),
            Err(ErrorCode::CodeExpired)
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
            Err(ErrorCode::WrongRole)
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
            Err(ErrorCode::CodeInvalid)
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
}
