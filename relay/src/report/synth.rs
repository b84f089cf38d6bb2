//! Generated audit histories for the reports benchmark and tests: realistic sessions
//! (helpers, recipients, devices on the supported platforms, mode raises, direct paths,
//! the usual end reasons, refusals) spread over days, as [`crate::audit::write_history`]
//! writes them. Deterministic for a seed.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::audit::{AuditEvent, EndedBy, EventKind, NO_USER, rfc3339};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Tenants and their relative weights (a large tenant has most of the sessions).
    pub tenants: Vec<(String, u32)>,
    /// Days of history, ending at `end`.
    pub days: u32,
    /// Stop after about this many events.
    pub events: u64,
    /// The end of the history (no event after it).
    pub end: SystemTime,
    /// RNG seed.
    pub seed: u64,
    /// Events per written batch (one fsync each).
    pub batch: usize,
}

const PLATFORMS: [&str; 4] = ["windows", "windows365", "macos", "android"];
const REFUSALS: [&str; 6] = [
    "PERMISSION_DENIED",
    "NOT_IN_SCOPE",
    "LICENSE_REQUIRED",
    "CROSS_TENANT",
    "E2E_REQUIRED",
    "CONSENT_TIMEOUT",
];

/// The history as batches of events in time order, each with the time it is written at,
/// generated a day at a time (a million events never sit in memory at once). Batches never
/// span a UTC day, so each day's events land in that day's files.
pub fn history(spec: &Spec) -> impl Iterator<Item = (SystemTime, Vec<AuditEvent>)> + use<> {
    let spec = spec.clone();
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let day = Duration::from_secs(86_400);
    let first = spec.end - day * spec.days;
    let total_weight: u32 = spec.tenants.iter().map(|t| t.1).sum::<u32>().max(1);
    // About 3.2 events per session (start, end, a raise in 30 % of view-only sessions, a
    // path change in half, a refusal per 20 sessions).
    let sessions = (spec.events as f64 / 3.2) as u64;
    let per_day = sessions / u64::from(spec.days.max(1));
    let mut pending: Vec<(SystemTime, AuditEvent)> = Vec::new();
    let mut emitted = 0u64;
    let mut n = 0u64;
    (0..spec.days).flat_map(move |d| {
        let day_start = first + day * d;
        let day_end = (day_start + day).min(spec.end);
        let span = day_end
            .duration_since(day_start)
            .unwrap_or_default()
            .as_millis() as u64;
        for _ in 0..per_day {
            let mut pick = rng.random_range(0..total_weight);
            let tenant = spec
                .tenants
                .iter()
                .find(|t| {
                    if pick < t.1 {
                        true
                    } else {
                        pick -= t.1;
                        false
                    }
                })
                .map(|t| t.0.clone())
                .unwrap_or_default();
            let start = day_start + Duration::from_millis(rng.random_range(0..span.max(1)));
            if rng.random_range(0..20) == 0 {
                pending.push((start, refusal(&mut rng, &tenant)));
            }
            session(&mut rng, &tenant, n, start, spec.end, &mut pending);
            n += 1;
        }
        // Nothing after the end of the history (raises and path changes of sessions still
        // running then).
        pending.retain(|(at, _)| *at < spec.end);
        pending.sort_by_key(|(at, _)| *at);
        let last_day = d + 1 == spec.days;
        let today = if last_day {
            pending.len()
        } else {
            pending.partition_point(|(at, _)| *at < day_end)
        };
        let mut events: Vec<(SystemTime, AuditEvent)> = pending.drain(..today).collect();
        events.truncate(spec.events.saturating_sub(emitted) as usize);
        emitted += events.len() as u64;
        let mut batches: Vec<(SystemTime, Vec<AuditEvent>)> = Vec::new();
        let day_of = |at: SystemTime| time::OffsetDateTime::from(at).date();
        for (at, mut event) in events {
            event.time = rfc3339(at);
            match batches.last_mut() {
                Some((last, batch)) if batch.len() < spec.batch && day_of(*last) == day_of(at) => {
                    *last = at;
                    batch.push(event);
                }
                _ => batches.push((at, vec![event])),
            }
        }
        batches
    })
}

fn refusal(rng: &mut StdRng, tenant: &str) -> AuditEvent {
    AuditEvent {
        event: Some(EventKind::SessionRefused),
        tenant: tenant.into(),
        helper_id: Some(format!("helper-{:03}", rng.random_range(0..200))),
        refused_role: Some("helper".into()),
        refusal: Some(REFUSALS[rng.random_range(0..REFUSALS.len())].into()),
        ..AuditEvent::default()
    }
}

fn session(
    rng: &mut StdRng,
    tenant: &str,
    n: u64,
    start: SystemTime,
    end_of_history: SystemTime,
    out: &mut Vec<(SystemTime, AuditEvent)>,
) {
    let helper = rng.random_range(0..200u32);
    let unattended = rng.random_range(0..10) == 0;
    let user = rng.random_range(0..5000u32);
    let device = rng.random_range(0..8000u32);
    let mode = if unattended {
        "unattended"
    } else {
        ["view_only", "view_only", "full_control", "elevation"][rng.random_range(0..4)]
    };
    let (sharer_id, sharer_name) = if unattended {
        (NO_USER.to_string(), NO_USER.to_string())
    } else {
        (format!("user-{user:05}"), format!("User {user}"))
    };
    let started = AuditEvent {
        event: Some(EventKind::SessionStarted),
        tenant: tenant.into(),
        session_id: format!("{n:08x}{:08x}", rng.random::<u32>()),
        helper_id: Some(format!("helper-{helper:03}")),
        helper_name: Some(format!("Helper {helper}")),
        sharer_id: Some(sharer_id),
        sharer_name: Some(sharer_name),
        device_id: Some(format!("device-{device:05}")),
        device_name: Some(format!("PC-{device:05}")),
        platform: Some(PLATFORMS[rng.random_range(0..PLATFORMS.len())].into()),
        control_type: Some(mode.into()),
        modes: vec![mode.into()],
        reason: rng
            .random_bool(0.5)
            .then(|| format!("INC{:06}", rng.random_range(0..1_000_000))),
        start_time: Some(rfc3339(start)),
        ..AuditEvent::default()
    };
    // Durations: most a few minutes, a long tail to two hours.
    let secs = (rng.random_range(30.0f64..600.0) * rng.random_range(1.0f64..12.0)).min(7200.0);
    let end = start + Duration::from_secs_f64(secs);
    let mut modes = started.modes.clone();
    if mode == "view_only" && rng.random_bool(0.3) {
        let at = start + Duration::from_secs_f64(secs * 0.3);
        modes.push("full_control".into());
        out.push((
            at,
            AuditEvent {
                event: Some(EventKind::ModeChanged),
                mode: Some("full_control".into()),
                modes: modes.clone(),
                ..started.clone()
            },
        ));
    }
    if rng.random_bool(0.5) {
        let at = start + Duration::from_secs_f64(secs * 0.1);
        let path = if rng.random_bool(0.9) {
            "direct"
        } else {
            "relayed"
        };
        out.push((
            at,
            AuditEvent {
                event: Some(EventKind::PathChanged),
                path: Some(path.into()),
                ..started.clone()
            },
        ));
    }
    if !unattended && rng.random_bool(0.2) {
        modes.push("chat".into());
    }
    if end < end_of_history {
        let (reason, by) = match rng.random_range(0..20) {
            0 => ("ADMIN_ENDED", EndedBy::Administrator),
            1 => ("PEER_LOST", EndedBy::Sharer),
            2 => ("RELAY_SHUTDOWN", EndedBy::Relay),
            3..=10 => ("ENDED_BY_CLIENT", EndedBy::Helper),
            _ => ("PEER_ENDED", EndedBy::Sharer),
        };
        out.push((
            end,
            AuditEvent {
                event: Some(EventKind::SessionEnded),
                end_time: Some(rfc3339(end)),
                duration_secs: Some((secs * 1000.0).round() / 1000.0),
                end_reason: Some(reason.into()),
                ended_by: Some(by),
                administrator: (by == EndedBy::Administrator).then(|| "operator".into()),
                modes,
                bytes_helper_to_sharer: Some(rng.random_range(10_000..5_000_000)),
                bytes_sharer_to_helper: Some(rng.random_range(100_000..500_000_000)),
                ..started.clone()
            },
        ));
    }
    out.push((start, started));
}
