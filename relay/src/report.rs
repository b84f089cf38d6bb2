//! Session reports from the audit log, like an admin console's monitor tab: who helped
//! whom, on which device, when, for how long, in which modes. Pure: it takes events and
//! returns rows; `relay sessions` does the reading and printing.

pub mod index;
pub mod merge;
pub mod synth;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{AuditEvent, EndedBy, EventKind, parse_time};

/// One session, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    /// The tenant.
    pub tenant: String,
    /// The session id.
    pub session_id: String,
    /// Helper name (id when nameless).
    pub helper: String,
    /// Sharer name, or `--`.
    pub sharer: String,
    /// Device name.
    pub device: String,
    /// Platform.
    pub platform: String,
    /// Start, RFC 3339.
    pub start_time: String,
    /// End, RFC 3339, if it ended.
    pub end_time: Option<String>,
    /// Duration in seconds, if it ended.
    pub duration_secs: Option<f64>,
    /// The mode it started in.
    pub control_type: String,
    /// Every mode used.
    pub modes: Vec<String>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Who ended it (`helper`, `sharer`, `relay`, `administrator`), if it ended and the
    /// log says (events written before the field existed do not).
    pub ended_by: Option<EndedBy>,
    /// The helper's reason or ticket.
    pub reason: Option<String>,
    /// In a cluster, the node that held the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_node: Option<u8>,
    /// Its data went peer to peer at some point (a `path_changed` to `direct`).
    pub went_direct: bool,
}

/// Totals over a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sessions reported.
    pub count: usize,
    /// Sum of durations of ended sessions, seconds.
    pub total_secs: f64,
    /// Median duration of ended sessions, seconds.
    pub median_secs: f64,
    /// Sessions that used each mode.
    pub by_mode: BTreeMap<String, usize>,
}

/// Which sessions to report.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this tenant's sessions (reports never mix tenants when given).
    pub tenant: Option<String>,
    /// Sessions that started at or after this.
    pub since: Option<OffsetDateTime>,
    /// Sessions that started before this.
    pub until: Option<OffsetDateTime>,
}

/// The sessions in `events` that pass `filter`, oldest first.
pub fn sessions(events: &[AuditEvent], filter: &Filter) -> Vec<SessionRow> {
    let mut rows: BTreeMap<(String, String), SessionRow> = BTreeMap::new();
    for e in events {
        if filter.tenant.as_deref().is_some_and(|t| t != e.tenant) {
            continue;
        }
        let key = (e.tenant.clone(), e.session_id.clone());
        match e.event {
            Some(EventKind::SessionStarted) => {
                rows.insert(
                    key,
                    SessionRow {
                        tenant: e.tenant.clone(),
                        session_id: e.session_id.clone(),
                        helper: e
                            .helper_name
                            .clone()
                            .or(e.helper_id.clone())
                            .unwrap_or_default(),
                        sharer: e
                            .sharer_name
                            .clone()
                            .or(e.sharer_id.clone())
                            .unwrap_or_default(),
                        device: e.device_name.clone().unwrap_or_default(),
                        platform: e.platform.clone().unwrap_or_default(),
                        start_time: e.start_time.clone().unwrap_or_else(|| e.time.clone()),
                        end_time: None,
                        duration_secs: None,
                        control_type: e.control_type.clone().unwrap_or_default(),
                        modes: e.modes.clone(),
                        end_reason: None,
                        ended_by: None,
                        reason: e.reason.clone(),
                        relay_node: e.relay_node,
                        went_direct: false,
                    },
                );
            }
            Some(EventKind::ModeChanged) => {
                if let (Some(row), Some(mode)) = (rows.get_mut(&key), &e.mode)
                    && !row.modes.contains(mode)
                {
                    row.modes.push(mode.clone());
                }
            }
            Some(EventKind::PathChanged) => {
                if let Some(row) = rows.get_mut(&key)
                    && e.path.as_deref() == Some("direct")
                {
                    row.went_direct = true;
                }
            }
            Some(EventKind::SessionEnded) => {
                if let Some(row) = rows.get_mut(&key) {
                    row.end_time = e.end_time.clone();
                    row.duration_secs = e.duration_secs;
                    row.end_reason = e.end_reason.clone();
                    row.ended_by = e.ended_by;
                    for mode in &e.modes {
                        if !row.modes.contains(mode) {
                            row.modes.push(mode.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut rows: Vec<SessionRow> = rows
        .into_values()
        .filter(|r| {
            let start = parse_time(&r.start_time);
            filter.since.is_none_or(|s| start.is_some_and(|t| t >= s))
                && filter.until.is_none_or(|u| start.is_some_and(|t| t < u))
        })
        .collect();
    rows.sort_by(|a, b| a.start_time.cmp(&b.start_time));
    rows
}

/// Count, total and median duration, and sessions per mode.
pub fn summarize(rows: &[SessionRow]) -> Summary {
    let mut durations: Vec<f64> = rows.iter().filter_map(|r| r.duration_secs).collect();
    durations.sort_by(f64::total_cmp);
    let median = match durations.len() {
        0 => 0.0,
        n if n % 2 == 1 => durations[n / 2],
        n => (durations[n / 2 - 1] + durations[n / 2]) / 2.0,
    };
    let mut by_mode = BTreeMap::new();
    for row in rows {
        for mode in &row.modes {
            *by_mode.entry(mode.clone()).or_insert(0) += 1;
        }
    }
    Summary {
        count: rows.len(),
        total_secs: durations.iter().sum(),
        median_secs: median,
        by_mode,
    }
}

/// A fixed-width table with a summary line.
pub fn render(rows: &[SessionRow], summary: &Summary) -> String {
    let mut out = format!(
        "{:<20} {:<20} {:<16} {:<24} {:<24} {:>9}  {:<13}  {}\n",
        "HELPER", "SHARER", "DEVICE", "START", "END", "DURATION", "ENDED BY", "CONTROL / MODES"
    );
    for r in rows {
        let duration = r
            .duration_secs
            .map(|d| format!("{:.0}s", d))
            .unwrap_or_else(|| "active".into());
        out.push_str(&format!(
            "{:<20} {:<20} {:<16} {:<24} {:<24} {:>9}  {:<13}  {} / {}\n",
            clip(&r.helper, 20),
            clip(&r.sharer, 20),
            clip(&r.device, 16),
            clip(&r.start_time, 24),
            clip(r.end_time.as_deref().unwrap_or("-"), 24),
            duration,
            r.ended_by.map_or("-", EndedBy::as_str),
            r.control_type,
            r.modes.join(",")
        ));
    }
    let modes: Vec<String> = summary
        .by_mode
        .iter()
        .map(|(m, n)| format!("{m} {n}"))
        .collect();
    out.push_str(&format!(
        "{} session(s), total {:.0}s, median {:.0}s; by mode: {}\n",
        summary.count,
        summary.total_secs,
        summary.median_secs,
        if modes.is_empty() {
            "-".into()
        } else {
            modes.join(", ")
        }
    ));
    out
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut clipped: String = text.chars().take(width - 1).collect();
        clipped.push('~');
        clipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        kind: EventKind,
        tenant: &str,
        session: &str,
        f: impl FnOnce(&mut AuditEvent),
    ) -> AuditEvent {
        let mut e = AuditEvent {
            event: Some(kind),
            tenant: tenant.into(),
            session_id: session.into(),
            ..AuditEvent::default()
        };
        f(&mut e);
        e
    }

    fn sample() -> Vec<AuditEvent> {
        vec![
            event(EventKind::SessionStarted, "contoso", "a", |e| {
                e.start_time = Some("2026-11-24T10:00:00Z".into());
                e.control_type = Some("view_only".into());
                e.modes = vec!["view_only".into()];
                e.helper_name = Some("Ada".into());
            }),
            event(EventKind::SessionStarted, "fabrikam", "b", |e| {
                e.start_time = Some("2026-11-24T11:00:00Z".into());
                e.modes = vec!["full_control".into()];
            }),
            event(EventKind::ModeChanged, "contoso", "a", |e| {
                e.mode = Some("full_control".into())
            }),
            event(EventKind::SessionEnded, "contoso", "a", |e| {
                e.duration_secs = Some(30.0);
                e.end_reason = Some("PEER_ENDED".into());
                e.ended_by = Some(EndedBy::Sharer);
                e.modes = vec!["view_only".into(), "full_control".into(), "chat".into()];
            }),
            event(EventKind::SessionStarted, "contoso", "c", |e| {
                e.start_time = Some("2026-11-25T09:00:00Z".into());
                e.modes = vec!["unattended".into()];
            }),
            event(EventKind::SessionEnded, "contoso", "c", |e| {
                e.duration_secs = Some(90.0)
            }),
        ]
    }

    #[test]
    fn a_tenants_report_never_contains_another_tenants_sessions() {
        let rows = sessions(
            &sample(),
            &Filter {
                tenant: Some("contoso".into()),
                ..Filter::default()
            },
        );
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.tenant == "contoso"));
        let rows = sessions(
            &sample(),
            &Filter {
                tenant: Some("fabrikam".into()),
                ..Filter::default()
            },
        );
        assert_eq!(
            rows.iter()
                .map(|r| r.session_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[test]
    fn rows_pair_starts_with_mode_changes_and_ends() {
        let rows = sessions(&sample(), &Filter::default());
        let a = rows.iter().find(|r| r.session_id == "a").unwrap();
        assert_eq!(a.modes, ["view_only", "full_control", "chat"]);
        assert_eq!(a.duration_secs, Some(30.0));
        assert_eq!(a.end_reason.as_deref(), Some("PEER_ENDED"));
        assert_eq!(a.ended_by, Some(EndedBy::Sharer));
        let b = rows.iter().find(|r| r.session_id == "b").unwrap();
        assert_eq!(b.end_time, None, "still active");
    }

    #[test]
    fn time_ranges_select_by_start() {
        let filter = Filter {
            since: parse_time("2026-11-25T00:00:00Z"),
            ..Filter::default()
        };
        let rows = sessions(&sample(), &filter);
        assert_eq!(
            rows.iter()
                .map(|r| r.session_id.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
        let filter = Filter {
            until: parse_time("2026-11-24T10:30:00Z"),
            ..Filter::default()
        };
        assert_eq!(sessions(&sample(), &filter).len(), 1);
    }

    #[test]
    fn the_summary_counts_totals_medians_and_modes() {
        let rows = sessions(
            &sample(),
            &Filter {
                tenant: Some("contoso".into()),
                ..Filter::default()
            },
        );
        let summary = summarize(&rows);
        assert_eq!(summary.count, 2);
        assert_eq!(summary.total_secs, 120.0);
        assert_eq!(summary.median_secs, 60.0);
        assert_eq!(summary.by_mode.get("chat"), Some(&1));
        assert_eq!(summary.by_mode.get("unattended"), Some(&1));
        let table = render(&rows, &summary);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.contains(" sharer ")),
            "who ended it is shown: {table}"
        );
        assert!(
            table.contains("2 session(s), total 120s, median 60s"),
            "{table}"
        );
    }
}
