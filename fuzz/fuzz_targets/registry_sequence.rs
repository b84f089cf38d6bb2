//! The session registry (`relay/src/core/registry.rs`), driven by arbitrary sequences of
//! operations (create, join with an issued, guessed or random code, compliance, consent,
//! mode requests, device agents, unattended sessions, end, time passing and deadline
//! sweeps) with a seeded RNG and a fake clock.
//!
//! Each operation's outcome is checked against a small reference model of the documented
//! rules (written from the module's docs, not from its code), and after every step
//! everything the registry shows through its public API is compared with the model:
//! `len`, `tenant_sessions` per tenant, `remembered_codes`, every session ever created
//! (present or not, state, mode, pending mode, deadline, parties, code) and every device
//! slot. Ended sessions must be reported exactly once, with the right parties.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use remote_help_proto::ErrorCode;
use remote_help_relay::core::code::{CODE_LEN, SessionCode};
use remote_help_relay::core::registry::{
    CodeOwner, Consented, Ended, JoinRefused, Joined, ModeRequest, Party, Registry,
    RegistryLimits, SessionState,
};
use remote_help_relay::core::{ConnId, Mode, SessionId, TenantId};

const TTL: Duration = Duration::from_secs(600);
const MEMORY: Duration = Duration::from_secs(3600);
const CONSENT: Duration = Duration::from_secs(300);
const WRONG_ATTEMPTS: u32 = 3;
const TENANTS: [&str; 3] = ["contoso", "fabrikam", "woodgrove"];
const DEVICES: [&str; 3] = ["kiosk-1", "kiosk-2", "laptop"];
const MODES: [Mode; 4] = [
    Mode::ViewOnly,
    Mode::FullControl,
    Mode::Elevation,
    Mode::Unattended,
];
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    ops: Vec<Op>,
}

/// A connection: `conn % 8 + 1`, so that parties collide often.
type Conn = u8;

#[derive(Arbitrary, Debug)]
enum CodePick {
    /// The code of the n-th created session.
    Issued(u8),
    /// A wrong code sharing the n-th created session's locator.
    SameLocator(u8, [u8; CODE_LEN]),
    /// Any well-formed code.
    Random([u8; CODE_LEN]),
}

#[derive(Arbitrary, Debug)]
enum Who {
    /// The party the operation expects (the session's helper or sharer).
    Right,
    Conn(Conn),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Create {
        helper: Conn,
        tenant: u8,
        mode: u8,
    },
    Join {
        code: CodePick,
        sharer: Conn,
        tenant: u8,
    },
    RequireCompliance {
        session: u8,
    },
    ConfirmCompliance {
        session: u8,
        helper: Who,
        proceed: bool,
    },
    Consent {
        session: u8,
        sharer: Who,
        accept: bool,
    },
    RequestMode {
        session: u8,
        helper: Who,
        mode: u8,
    },
    RegisterDevice {
        agent: Conn,
        tenant: u8,
        device: u8,
    },
    UnregisterDevice {
        agent: Conn,
    },
    ConnectUnattended {
        helper: Conn,
        tenant: u8,
        device: u8,
    },
    End {
        session: u8,
    },
    SetReason {
        session: u8,
        reason: String,
    },
    Advance {
        secs: u16,
    },
    Expire,
}

#[derive(Debug, Clone)]
enum Slot {
    Open {
        session: SessionId,
        expires_at: Instant,
        wrong: u32,
    },
    Used {
        tenant: String,
        forget_at: Instant,
    },
    Expired {
        tenant: String,
        forget_at: Instant,
    },
    Burned {
        tenant: String,
        forget_at: Instant,
    },
}

#[derive(Debug, Clone)]
struct MSession {
    tenant: String,
    helper: ConnId,
    sharer: Option<ConnId>,
    mode: Mode,
    requested: Option<Mode>,
    deadline: Option<Instant>,
    state: SessionState,
    code: Option<SessionCode>,
    reason: String,
}

#[derive(Default)]
struct Model {
    sessions: HashMap<SessionId, MSession>,
    codes: HashMap<SessionCode, Slot>,
    devices: HashMap<(String, String), (ConnId, Option<SessionId>)>,
}

impl Model {
    fn remove(&mut self, id: &SessionId) -> Option<Ended> {
        let s = self.sessions.remove(id)?;
        if let Some(code) = s.code
            && matches!(self.codes.get(&code), Some(Slot::Open { .. }))
        {
            self.codes.remove(&code);
        }
        for slot in self.devices.values_mut() {
            if slot.1.as_ref() == Some(id) {
                slot.1 = None;
            }
        }
        Some(Ended {
            session: id.clone(),
            helper: s.helper,
            sharer: s.sharer,
            was_active: s.state == SessionState::Active,
        })
    }

    fn open_with_locator(&self, code: &SessionCode) -> Option<SessionCode> {
        let mut found = self
            .codes
            .iter()
            .filter(|(c, slot)| c.locator() == code.locator() && matches!(slot, Slot::Open { .. }));
        let first = found.next().map(|(c, _)| *c);
        assert!(found.next().is_none(), "two open codes share a locator");
        first
    }

    fn join(
        &mut self,
        code: SessionCode,
        sharer: &Party,
        now: Instant,
    ) -> Result<Joined, JoinRefused> {
        let tenant = sharer.tenant.as_str().to_string();
        let refuse = |error: ErrorCode| JoinRefused {
            error,
            burned: None,
            owner: None,
        };
        // A cross-tenant attempt names the owning tenant (for its own log), and the
        // session and its helper only while the code is open.
        let cross_tenant = |owner: &str, open: Option<(SessionId, ConnId)>| JoinRefused {
            error: ErrorCode::CrossTenant,
            burned: None,
            owner: Some(CodeOwner {
                tenant: TenantId::new(owner),
                session: open.as_ref().map(|(session, _)| session.clone()),
                helper: open.map(|(_, helper)| helper),
            }),
        };
        let session_id = match self.codes.get(&code) {
            None => return Err(self.wrong_attempt(code, &tenant, now)),
            Some(
                Slot::Used { tenant: t, .. }
                | Slot::Expired { tenant: t, .. }
                | Slot::Burned { tenant: t, .. },
            ) if *t != tenant => return Err(cross_tenant(t, None)),
            Some(Slot::Used { .. }) => return Err(refuse(ErrorCode::CodeUsed)),
            Some(Slot::Expired { .. }) => return Err(refuse(ErrorCode::CodeExpired)),
            Some(Slot::Burned { .. }) => return Err(refuse(ErrorCode::CodeBurned)),
            Some(Slot::Open { expires_at, .. }) if *expires_at <= now => {
                return Err(refuse(ErrorCode::CodeExpired));
            }
            Some(Slot::Open { session, .. }) => session.clone(),
        };
        let s = self
            .sessions
            .get_mut(&session_id)
            .expect("an open code has a live session");
        if s.tenant != tenant {
            return Err(cross_tenant(&s.tenant, Some((session_id, s.helper))));
        }
        if s.helper == sharer.conn {
            return Err(refuse(ErrorCode::WrongRole));
        }
        s.sharer = Some(sharer.conn);
        s.state = SessionState::AwaitingConsent;
        s.deadline = Some(now + CONSENT);
        let joined = Joined {
            session: session_id,
            helper: s.helper,
            mode: s.mode,
        };
        self.codes.insert(
            code,
            Slot::Used {
                tenant,
                forget_at: now + MEMORY,
            },
        );
        Ok(joined)
    }

    fn wrong_attempt(&mut self, code: SessionCode, tenant: &str, now: Instant) -> JoinRefused {
        let invalid = JoinRefused {
            error: ErrorCode::CodeInvalid,
            burned: None,
            owner: None,
        };
        let Some(target) = self.open_with_locator(&code) else {
            return invalid;
        };
        let Some(Slot::Open {
            session,
            wrong,
            expires_at,
        }) = self.codes.get_mut(&target)
        else {
            unreachable!()
        };
        // Past its lifetime (not yet swept): expired, never burnable.
        if *expires_at <= now {
            return invalid;
        }
        let session = session.clone();
        if self.sessions[&session].tenant != tenant {
            return invalid;
        }
        *wrong += 1;
        if *wrong < WRONG_ATTEMPTS {
            return invalid;
        }
        let burned = self.remove(&session);
        assert!(burned.is_some());
        self.codes.insert(
            target,
            Slot::Burned {
                tenant: tenant.to_string(),
                forget_at: now + MEMORY,
            },
        );
        JoinRefused {
            error: ErrorCode::CodeInvalid,
            burned,
            owner: None,
        }
    }
}

/// With `FUZZ_TRACE` set, names the interesting outcomes an input reached (to check what
/// a corpus covers: `FUZZ_TRACE=1 ./registry_sequence -runs=0 corpus/ 2>&1 | sort | uniq -c`).
fn trace(what: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some()) {
        eprintln!("reached: {what}");
    }
}

fn party(conn: Conn, tenant: u8) -> Party {
    Party {
        conn: ConnId(u64::from(conn % 8) + 1),
        tenant: TenantId::new(TENANTS[usize::from(tenant) % TENANTS.len()]),
    }
}

fn code_from(symbols: &[u8; CODE_LEN]) -> SessionCode {
    let text: String = symbols
        .iter()
        .map(|s| char::from(ALPHABET[usize::from(*s) % 32]))
        .collect();
    SessionCode::parse(&text).expect("alphabet symbols parse")
}

/// A code with `of`'s locator and another secret: `of`'s leading symbols, the rest from
/// `symbols`. The locator length is found through the public API, not assumed.
fn same_locator(of: SessionCode, symbols: &[u8; CODE_LEN]) -> SessionCode {
    let canonical: Vec<u8> = of.to_string().bytes().filter(|b| *b != b'-').collect();
    let locator_len = (0..=CODE_LEN)
        .find(|&n| {
            let mut probe = canonical.clone();
            for b in &mut probe[n..] {
                *b = if *b == b'0' { b'1' } else { b'0' };
            }
            let probe = SessionCode::parse(std::str::from_utf8(&probe).unwrap()).unwrap();
            probe.locator() == of.locator()
        })
        .expect("a code shares its locator with itself");
    let mut out = canonical;
    for (b, s) in out[locator_len..].iter_mut().zip(symbols) {
        *b = ALPHABET[usize::from(*s) % 32];
    }
    SessionCode::parse(std::str::from_utf8(&out).unwrap()).unwrap()
}

fuzz_target!(|input: Input| {
    let limits = RegistryLimits {
        code_ttl: TTL,
        code_memory: MEMORY,
        consent_timeout: CONSENT,
        wrong_attempts_per_code: WRONG_ATTEMPTS,
    };
    let mut reg = Registry::new(limits);
    let mut model = Model::default();
    let mut rng = StdRng::seed_from_u64(input.seed);
    let start = Instant::now();
    let mut now = start;
    // Every session ever created, in order, with its code (if it had one).
    let mut created: Vec<(SessionId, Option<SessionCode>)> = Vec::new();
    let pick = |created: &Vec<(SessionId, Option<SessionCode>)>, i: u8| {
        (!created.is_empty()).then(|| created[usize::from(i) % created.len()].clone())
    };

    for op in input.ops.iter().take(200) {
        match op {
            Op::Create {
                helper,
                tenant,
                mode,
            } => {
                let helper = party(*helper, *tenant);
                let mode = MODES[usize::from(*mode) % 4];
                let out = reg.create(helper.clone(), mode, now, &mut rng);
                assert_eq!(out.expires_at, now + TTL);
                assert!(
                    !model.codes.contains_key(&out.code),
                    "a remembered code reissued"
                );
                assert!(
                    model.open_with_locator(&out.code).is_none(),
                    "open locator reused"
                );
                assert!(
                    !created.iter().any(|(id, _)| *id == out.session),
                    "id reused"
                );
                model.codes.insert(
                    out.code,
                    Slot::Open {
                        session: out.session.clone(),
                        expires_at: now + TTL,
                        wrong: 0,
                    },
                );
                model.sessions.insert(
                    out.session.clone(),
                    MSession {
                        tenant: helper.tenant.as_str().into(),
                        helper: helper.conn,
                        sharer: None,
                        mode,
                        requested: None,
                        deadline: None,
                        state: SessionState::AwaitingSharer,
                        code: Some(out.code),
                        reason: String::new(),
                    },
                );
                created.push((out.session, Some(out.code)));
            }
            Op::Join {
                code,
                sharer,
                tenant,
            } => {
                let code = match code {
                    CodePick::Issued(i) => match pick(&created, *i) {
                        Some((_, Some(code))) => code,
                        _ => continue,
                    },
                    CodePick::SameLocator(i, symbols) => match pick(&created, *i) {
                        Some((_, Some(code))) => same_locator(code, symbols),
                        _ => continue,
                    },
                    CodePick::Random(symbols) => code_from(symbols),
                };
                let sharer = party(*sharer, *tenant);
                let expected = model.join(code, &sharer, now);
                let got = reg.join(code, sharer, now);
                assert_eq!(got, expected, "join {code}");
                match &got {
                    Ok(_) => trace("join"),
                    Err(JoinRefused {
                        burned: Some(_), ..
                    }) => trace("join burned a code"),
                    Err(JoinRefused { error, .. }) => trace(error.as_str_name()),
                }
            }
            Op::RequireCompliance { session } => {
                let Some((id, _)) = pick(&created, *session) else {
                    continue;
                };
                let expected = match model.sessions.get_mut(&id) {
                    Some(s) if s.state == SessionState::AwaitingConsent => {
                        s.state = SessionState::AwaitingCompliance;
                        Ok(())
                    }
                    _ => Err(ErrorCode::ProtocolViolation),
                };
                assert_eq!(reg.require_compliance(&id), expected);
            }
            Op::ConfirmCompliance {
                session,
                helper,
                proceed,
            } => {
                let Some((id, _)) = pick(&created, *session) else {
                    continue;
                };
                let conn = match (helper, model.sessions.get(&id)) {
                    (Who::Right, Some(s)) => s.helper,
                    (Who::Conn(c), _) => party(*c, 0).conn,
                    (Who::Right, None) => ConnId(1),
                };
                let expected = match model.sessions.get_mut(&id) {
                    Some(s) if s.helper == conn && s.state == SessionState::AwaitingCompliance => {
                        if *proceed {
                            s.state = SessionState::AwaitingConsent;
                            s.deadline = Some(now + CONSENT);
                            Ok(s.sharer)
                        } else {
                            model.remove(&id);
                            Ok(None)
                        }
                    }
                    _ => Err(ErrorCode::ProtocolViolation),
                };
                let got = reg.confirm_compliance(&id, conn, *proceed, now);
                assert_eq!(got, expected);
                if got.is_ok() {
                    trace("compliance answered");
                }
            }
            Op::Consent {
                session,
                sharer,
                accept,
            } => {
                let Some((id, _)) = pick(&created, *session) else {
                    continue;
                };
                let conn = match (sharer, model.sessions.get(&id)) {
                    (Who::Right, Some(s)) => s.sharer.unwrap_or(ConnId(1)),
                    (Who::Conn(c), _) => party(*c, 0).conn,
                    (Who::Right, None) => ConnId(1),
                };
                let expected = match model.sessions.get_mut(&id) {
                    Some(s) if s.sharer == Some(conn) => match (s.state, s.requested) {
                        (SessionState::AwaitingConsent, _) => {
                            s.deadline = None;
                            if *accept {
                                s.state = SessionState::Active;
                                Ok(Consented::Started {
                                    helper: s.helper,
                                    sharer: conn,
                                    mode: s.mode,
                                })
                            } else {
                                Ok(Consented::Declined(model.remove(&id).unwrap()))
                            }
                        }
                        (SessionState::Active, Some(raised)) => {
                            s.requested = None;
                            s.deadline = None;
                            if *accept {
                                s.mode = raised;
                                Ok(Consented::ModeChanged {
                                    helper: s.helper,
                                    mode: raised,
                                })
                            } else {
                                Ok(Consented::ModeDeclined { helper: s.helper })
                            }
                        }
                        _ => Err(ErrorCode::ProtocolViolation),
                    },
                    _ => Err(ErrorCode::ProtocolViolation),
                };
                let got = reg.consent(&id, conn, *accept);
                assert_eq!(got, expected);
                match got {
                    Ok(Consented::Started { .. }) => trace("started"),
                    Ok(Consented::Declined(_)) => trace("declined"),
                    Ok(Consented::ModeChanged { .. }) => trace("mode changed"),
                    Ok(Consented::ModeDeclined { .. }) => trace("mode declined"),
                    Err(_) => {}
                }
            }
            Op::RequestMode {
                session,
                helper,
                mode,
            } => {
                let Some((id, _)) = pick(&created, *session) else {
                    continue;
                };
                let mode = MODES[usize::from(*mode) % 4];
                let conn = match (helper, model.sessions.get(&id)) {
                    (Who::Right, Some(s)) => s.helper,
                    (Who::Conn(c), _) => party(*c, 0).conn,
                    (Who::Right, None) => ConnId(1),
                };
                let expected = match model.sessions.get_mut(&id) {
                    Some(s)
                        if s.sharer.is_some()
                            && s.helper == conn
                            && s.state == SessionState::Active =>
                    {
                        let sharer = s.sharer.unwrap();
                        if s.requested.is_some() {
                            Err(ErrorCode::SessionBusy)
                        } else if mode == Mode::Unattended || s.mode == Mode::Unattended {
                            Err(ErrorCode::ProtocolViolation)
                        } else if mode > s.mode {
                            s.requested = Some(mode);
                            s.deadline = Some(now + CONSENT);
                            Ok(ModeRequest::NeedsConsent {
                                sharer,
                                deadline: now + CONSENT,
                            })
                        } else {
                            s.mode = mode;
                            Ok(ModeRequest::Changed { sharer })
                        }
                    }
                    _ => Err(ErrorCode::ProtocolViolation),
                };
                assert_eq!(reg.request_mode(&id, conn, mode, now), expected);
            }
            Op::RegisterDevice {
                agent,
                tenant,
                device,
            } => {
                let agent = party(*agent, *tenant);
                let device = DEVICES[usize::from(*device) % DEVICES.len()];
                let key = (agent.tenant.as_str().to_string(), device.to_string());
                let expected = match model.devices.entry(key) {
                    std::collections::hash_map::Entry::Occupied(_) => Err(ErrorCode::SessionBusy),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert((agent.conn, None));
                        Ok(())
                    }
                };
                assert_eq!(reg.register_device(agent, device), expected);
            }
            Op::UnregisterDevice { agent } => {
                let conn = party(*agent, 0).conn;
                model.devices.retain(|_, slot| slot.0 != conn);
                reg.unregister_device(conn);
            }
            Op::ConnectUnattended {
                helper,
                tenant,
                device,
            } => {
                let helper = party(*helper, *tenant);
                let device = DEVICES[usize::from(*device) % DEVICES.len()];
                let key = (helper.tenant.as_str().to_string(), device.to_string());
                let got = reg.connect_unattended(helper.clone(), device, now, &mut rng);
                match model.devices.get(&key).cloned() {
                    None => {
                        let elsewhere = model.devices.keys().any(|(_, d)| d == device);
                        let code = if elsewhere {
                            ErrorCode::CrossTenant
                        } else {
                            ErrorCode::DeviceUnavailable
                        };
                        assert_eq!(got, Err(code));
                    }
                    Some((agent, busy)) => {
                        let in_session = model
                            .sessions
                            .values()
                            .any(|s| s.helper == agent || s.sharer == Some(agent));
                        if busy.is_some() || in_session {
                            assert_eq!(got, Err(ErrorCode::SessionBusy));
                        } else {
                            let (id, got_agent) = got.expect("an idle agent accepts");
                            trace("unattended");
                            assert_eq!(got_agent, agent);
                            assert!(!created.iter().any(|(c, _)| *c == id), "id reused");
                            model.sessions.insert(
                                id.clone(),
                                MSession {
                                    tenant: key.0.clone(),
                                    helper: helper.conn,
                                    sharer: Some(agent),
                                    mode: Mode::Unattended,
                                    requested: None,
                                    deadline: None,
                                    state: SessionState::Active,
                                    code: None,
                                    reason: String::new(),
                                },
                            );
                            model.devices.get_mut(&key).unwrap().1 = Some(id.clone());
                            created.push((id, None));
                        }
                    }
                }
            }
            Op::End { session } => {
                let Some((id, _)) = pick(&created, *session) else {
                    continue;
                };
                assert_eq!(reg.end(&id), model.remove(&id));
            }
            Op::SetReason { session, reason } => {
                let Some((id, _)) = pick(&created, *session) else {
                    continue;
                };
                if let Some(s) = model.sessions.get_mut(&id) {
                    s.reason = reason.clone();
                }
                reg.set_reason(&id, reason);
            }
            Op::Advance { secs } => {
                now += Duration::from_secs(u64::from(*secs % 1200));
            }
            Op::Expire => {
                let got = reg.expire(now);
                let mut ended = Vec::new();
                let mut expired_sessions = Vec::new();
                for slot in model.codes.values_mut() {
                    if let Slot::Open {
                        session,
                        expires_at,
                        ..
                    } = slot
                        && *expires_at <= now
                    {
                        let session = session.clone();
                        *slot = Slot::Expired {
                            tenant: model.sessions[&session].tenant.clone(),
                            forget_at: now + MEMORY,
                        };
                        expired_sessions.push(session);
                    }
                }
                model.codes.retain(|_, slot| match slot {
                    Slot::Used { forget_at, .. }
                    | Slot::Expired { forget_at, .. }
                    | Slot::Burned { forget_at, .. } => *forget_at > now,
                    Slot::Open { .. } => true,
                });
                for id in expired_sessions {
                    ended.push((model.remove(&id).unwrap(), ErrorCode::CodeExpired));
                }
                let mut mode_requests = Vec::new();
                let due: Vec<SessionId> = model
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.deadline.is_some_and(|d| d <= now))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in due {
                    let s = model.sessions.get_mut(&id).unwrap();
                    match (s.state, s.requested) {
                        (SessionState::Active, Some(_)) => {
                            s.requested = None;
                            s.deadline = None;
                            mode_requests.push((id, s.helper));
                        }
                        (SessionState::AwaitingCompliance, _) => {
                            let e = model.remove(&id).unwrap();
                            ended.push((e, ErrorCode::ComplianceNotConfirmed));
                        }
                        _ => {
                            let e = model.remove(&id).unwrap();
                            ended.push((e, ErrorCode::ConsentTimeout));
                        }
                    }
                }
                let mut got_ended = got.ended.clone();
                let mut got_modes = got.mode_requests.clone();
                let key = |e: &(Ended, ErrorCode)| e.0.session.as_str().to_string();
                got_ended.sort_by_key(key);
                ended.sort_by_key(key);
                got_modes.sort_by_key(|m| m.0.as_str().to_string());
                mode_requests.sort_by_key(|m| m.0.as_str().to_string());
                assert_eq!(got_ended, ended, "expired sessions");
                for (_, why) in &got_ended {
                    trace(&format!("expired: {}", why.as_str_name()));
                }
                if !got_modes.is_empty() {
                    trace("mode request lapsed");
                }
                assert_eq!(got_modes, mode_requests, "lapsed mode requests");
            }
        }
        check(&reg, &model, &created);
    }
    let _ = start;
});

/// Everything the registry shows matches the model.
fn check(reg: &Registry, model: &Model, created: &[(SessionId, Option<SessionCode>)]) {
    assert_eq!(reg.len(), model.sessions.len(), "len");
    assert_eq!(reg.is_empty(), model.sessions.is_empty());
    for tenant in TENANTS {
        let expected = model
            .sessions
            .values()
            .filter(|s| s.tenant == tenant)
            .count();
        assert_eq!(
            reg.tenant_sessions(&TenantId::new(tenant)),
            expected,
            "{tenant}"
        );
    }
    assert_eq!(
        reg.remembered_codes(),
        model.codes.len(),
        "remembered codes"
    );
    for (id, code) in created {
        match (reg.get(id), model.sessions.get(id)) {
            (None, None) => {}
            (Some(s), Some(m)) => {
                assert_eq!(&s.id, id);
                assert_eq!(s.tenant.as_str(), m.tenant);
                assert_eq!(s.helper.conn, m.helper);
                assert_eq!(s.helper.tenant.as_str(), m.tenant);
                assert_eq!(s.sharer.as_ref().map(|p| p.conn), m.sharer);
                if let Some(sharer) = &s.sharer {
                    assert_eq!(sharer.tenant.as_str(), m.tenant, "a cross-tenant session");
                }
                assert_eq!(s.mode, m.mode);
                assert_eq!(s.requested_mode, m.requested);
                assert_eq!(s.answer_deadline, m.deadline);
                assert_eq!(s.state, m.state);
                assert_eq!(s.code, *code);
                assert_eq!(s.reason, m.reason);
            }
            (got, expected) => panic!("session {id}: registry {got:?}, model {expected:?}"),
        }
    }
    for tenant in TENANTS {
        for device in DEVICES {
            let expected = model
                .devices
                .get(&(tenant.to_string(), device.to_string()))
                .map(|slot| slot.0);
            assert_eq!(reg.device_agent(&TenantId::new(tenant), device), expected);
        }
    }
}
