//! The audit side of the hub: what it keeps about an active session
//! ([`SessionRecord`]) and how it fills an audit event's parties, for starts, ends and
//! refusals ([`Refused`]), so every event names helper, sharer and device the same way.

use super::*;

/// What the relay keeps about an active session, for audit, metrics and the admin view.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// The session.
    pub session: SessionId,
    /// The tenant.
    pub tenant: TenantId,
    /// The helper.
    pub helper: Arc<Principal>,
    /// The sharer.
    pub sharer: Arc<Principal>,
    /// When it started.
    pub started_at: SystemTime,
    /// The mode it started in.
    pub control_type: Mode,
    /// Its current mode.
    pub mode: Mode,
    /// Every mode used, and `chat` once chat flowed.
    pub modes: BTreeSet<&'static str>,
    /// The helper's reason or ticket reference.
    pub reason: String,
    /// The reason given with the latest mode request.
    pub mode_reason: String,
    /// Bytes from the helper's side (index 0) and the sharer's side (index 1).
    pub counters: [Arc<ChannelCounters>; 2],
    /// Which way its data goes.
    pub path: PathTracker,
    /// Its packet-path routing key, while its route is in the forwarder's table.
    pub routing_key: Option<u64>,
}

impl SessionRecord {
    pub(super) fn bytes(&self, side: usize) -> u64 {
        self.counters[side].total()
    }

    /// The audit event for this session, of `kind`, with everything known so far.
    pub(super) fn event(&self, kind: EventKind) -> AuditEvent {
        let mut event = AuditEvent {
            event: Some(kind),
            tenant: self.tenant.to_string(),
            session_id: self.session.to_string(),
            control_type: Some(self.control_type.as_str().into()),
            modes: self.modes.iter().map(|m| m.to_string()).collect(),
            reason: (!self.reason.is_empty()).then(|| self.reason.clone()),
            start_time: Some(rfc3339(self.started_at)),
            path: Some(self.path.path().as_str().into()),
            ..AuditEvent::default()
        };
        set_helper(&mut event, &self.helper);
        set_sharer(&mut event, &self.sharer);
        event
    }
}

/// Fills in an event's helper fields from `helper`.
pub(super) fn set_helper(event: &mut AuditEvent, helper: &Principal) {
    event.helper_id = Some(helper.subject.clone());
    event.helper_name = Some(helper.display_name());
}

/// Fills in an event's sharer and device fields from `sharer`; a device agent (no
/// signed-in user) is recorded as `--`, never by its token's subject.
pub(super) fn set_sharer(event: &mut AuditEvent, sharer: &Principal) {
    let agent = sharer.kind == PrincipalKind::Device;
    event.sharer_id = Some(if agent {
        NO_USER.into()
    } else {
        sharer.subject.clone()
    });
    event.sharer_name = Some(if agent {
        NO_USER.into()
    } else {
        sharer.display_name()
    });
    set_device(event, sharer);
}

/// Fills in an event's device fields from the sharer's (or agent's) device, if it has one.
fn set_device(event: &mut AuditEvent, sharer: &Principal) {
    let device = sharer.device.as_ref();
    event.device_id = device.map(|d| d.device_id.clone());
    event.device_name = device
        .map(|d| d.device_name.clone())
        .filter(|n| !n.is_empty());
    event.platform = device.map(|d| d.platform.clone());
}

/// Whom a refusal concerns, as far as the relay knows them.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    /// The refusal's code.
    pub code: ErrorCode,
    /// The session, or the empty id for a refusal before a session existed.
    pub session: &'a SessionId,
    /// The role whose request was refused; its tenant is the event's tenant.
    pub refused_role: Role,
    /// The helper, if known.
    pub helper: Option<&'a Principal>,
    /// The sharer or device agent, if known.
    pub sharer: Option<&'a Principal>,
}

impl Refused<'_> {
    /// The `session_refused` event, in the refused party's tenant.
    pub(super) fn event(&self) -> AuditEvent {
        // Both parties of a session share its tenant; a party that vanished before its
        // refusal was recorded is then placed by the other.
        let refused = match self.refused_role {
            Role::Helper => self.helper.or(self.sharer),
            Role::Sharer => self.sharer.or(self.helper),
        };
        let mut event = AuditEvent {
            event: Some(EventKind::SessionRefused),
            tenant: refused.map(|p| p.tenant.to_string()).unwrap_or_default(),
            session_id: self.session.to_string(),
            refusal: Some(self.code.as_str_name().into()),
            refused_role: Some(self.refused_role.as_str().into()),
            ..AuditEvent::default()
        };
        if let Some(helper) = self.helper {
            set_helper(&mut event, helper);
        }
        if let Some(sharer) = self.sharer {
            set_sharer(&mut event, sharer);
        }
        event
    }
}
