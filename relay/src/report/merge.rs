//! Cluster-wide reports from per-node answers, pure: the answering node asks every node
//! for its part (`server/reports/fanout.rs`) and merges here.
//!
//! - `sessions` pages: each node keeps its own keyset order; the answering node asks each
//!   for `limit` rows after that node's position and merge-sorts them, and the next page's
//!   [`ClusterCursor`] holds one position per node. A row among the first `limit` of the
//!   union is necessarily among the first `limit` of its own node, so the merged page is
//!   exactly the page a single index over every node would give: every row once, in order.
//! - `summary`: counts add; medians and percentiles do not, so each node sends the sorted
//!   durations of its ended sessions ([`NodeSummary`]) and the percentiles are computed over
//!   their union with the index's own rules ([`duration_percentiles`]).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::index::{Cursor, CursorValue, IndexedSession, SortKey, Summary, unix_ms};

/// What one node answers to a `summary` asked with `scope=node`: its summary and the raw
/// material that adds up across nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The node's own summary (its counts add; its percentiles are not used).
    #[serde(flatten)]
    pub summary: Summary,
    /// Durations of the node's ended sessions in the range, seconds, ascending.
    pub durations: Vec<f64>,
}

/// Median (the mean of the two middle values for an even count) and nearest-rank p90 of
/// `sorted` (ascending), as the index and `relay sessions` compute them; 0 when empty.
pub fn duration_percentiles(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    let p90 = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
    (median, sorted[p90 - 1])
}

/// The cluster's summary from every answering node's part.
pub fn merge_summaries(parts: Vec<NodeSummary>) -> Summary {
    let mut total = Summary::default();
    let mut durations = Vec::new();
    for part in parts {
        let s = part.summary;
        total.sessions += s.sessions;
        for (into, from) in [
            (&mut total.sessions_per_day, s.sessions_per_day),
            (&mut total.by_mode, s.by_mode),
            (&mut total.by_platform, s.by_platform),
            (&mut total.refusals_by_reason, s.refusals_by_reason),
        ] {
            for (key, count) in from {
                *into.entry(key).or_default() += count;
            }
        }
        durations.extend(part.durations);
    }
    durations.sort_by(f64::total_cmp);
    (total.median_duration_secs, total.p90_duration_secs) = duration_percentiles(&durations);
    total
}

/// Where one node stands in a cluster-wide listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePosition {
    /// Nothing of this node listed yet.
    Start,
    /// Its rows up to and including this one are listed.
    After(Cursor),
    /// Every row of this node is listed.
    Done,
}

/// The cursor of a cluster-wide `sessions` page: one position per node, by node id. Opaque
/// to clients (base64url JSON); valid for the same `sort` and `order`, and for a cluster of
/// the same size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterCursor {
    /// The sort it belongs to.
    pub sort: SortKey,
    /// Descending?
    pub desc: bool,
    /// Each node's position, by node id.
    pub nodes: Vec<NodePosition>,
}

impl ClusterCursor {
    /// The first page's positions for `nodes` nodes.
    pub fn start(sort: SortKey, desc: bool, nodes: usize) -> ClusterCursor {
        ClusterCursor {
            sort,
            desc,
            nodes: vec![NodePosition::Start; nodes],
        }
    }
}

/// One node's answer for a page: up to `limit` rows after its position, and whether it
/// has more after them.
#[derive(Debug, Clone, Default)]
pub struct NodePage {
    /// The rows, in the listing's order.
    pub rows: Vec<IndexedSession>,
    /// The node has rows after these.
    pub more: bool,
}

/// The value `sort` orders `row` by, exactly as the index computes it (`start_ms`,
/// `dur_key`: running sessions −1, the names).
pub fn sort_value(sort: SortKey, row: &IndexedSession) -> CursorValue {
    let r = &row.row;
    match sort {
        SortKey::StartTime => {
            CursorValue::Int(crate::audit::parse_time(&r.start_time).map_or(0, unix_ms))
        }
        SortKey::Duration => CursorValue::Real(r.duration_secs.unwrap_or(-1.0)),
        SortKey::Helper => CursorValue::Text(r.helper.clone()),
        SortKey::Recipient => CursorValue::Text(r.sharer.clone()),
        SortKey::Device => CursorValue::Text(r.device.clone()),
    }
}

fn compare_values(a: &CursorValue, b: &CursorValue) -> Ordering {
    match (a, b) {
        (CursorValue::Int(a), CursorValue::Int(b)) => a.cmp(b),
        (CursorValue::Real(a), CursorValue::Real(b)) => a.total_cmp(b),
        // SQLite's BINARY collation compares bytes, as `str`'s `Ord` does.
        (CursorValue::Text(a), CursorValue::Text(b)) => a.cmp(b),
        // One sort has one kind of value; mixed kinds never meet.
        _ => Ordering::Equal,
    }
}

/// The index's order for `sort`: the value, then tenant, then session id (ascending; the
/// caller reverses it for `desc`).
fn compare_rows(sort: SortKey, a: &IndexedSession, b: &IndexedSession) -> Ordering {
    compare_values(&sort_value(sort, a), &sort_value(sort, b))
        .then_with(|| a.row.tenant.cmp(&b.row.tenant))
        .then_with(|| a.row.session_id.cmp(&b.row.session_id))
}

/// Merges every node's rows in the listing's order (oldest first for `start_time`
/// ascending): the CSV export's order across nodes.
pub fn merge_sorted(
    sort: SortKey,
    desc: bool,
    parts: Vec<Vec<IndexedSession>>,
) -> Vec<IndexedSession> {
    let mut all: Vec<IndexedSession> = parts.into_iter().flatten().collect();
    all.sort_by(|a, b| {
        let order = compare_rows(sort, a, b);
        if desc { order.reverse() } else { order }
    });
    all
}

/// The page of `limit` rows that follows `cursor`, from each node's page after its own
/// position (`pages[i]`: node `i`'s answer, `None` when it did not answer or was not
/// asked because it is done). Returns the rows and the next page's cursor (`None` when
/// every node is done). A node that did not answer keeps its position, so a later page
/// asks it again from there.
pub fn merge_page(
    cursor: &ClusterCursor,
    pages: Vec<Option<NodePage>>,
    limit: usize,
) -> (Vec<IndexedSession>, Option<ClusterCursor>) {
    let (sort, desc) = (cursor.sort, cursor.desc);
    let mut tagged: Vec<(usize, IndexedSession)> = Vec::new();
    for (node, page) in pages.iter().enumerate() {
        if let Some(page) = page {
            tagged.extend(page.rows.iter().cloned().map(|row| (node, row)));
        }
    }
    // Each node's rows are already in order; a stable sort of the union keeps them so.
    tagged.sort_by(|(_, a), (_, b)| {
        let order = compare_rows(sort, a, b);
        if desc { order.reverse() } else { order }
    });
    tagged.truncate(limit);
    let mut next = cursor.clone();
    for (node, page) in pages.iter().enumerate() {
        let Some(page) = page else { continue };
        let taken: Vec<&IndexedSession> = tagged
            .iter()
            .filter(|(n, _)| *n == node)
            .map(|(_, row)| row)
            .collect();
        let position = &mut next.nodes[node];
        if taken.len() == page.rows.len() && !page.more {
            *position = NodePosition::Done;
        } else if let Some(last) = taken.last() {
            *position = NodePosition::After(Cursor {
                sort,
                desc,
                value: sort_value(sort, last),
                tenant: last.row.tenant.clone(),
                session: last.row.session_id.clone(),
            });
        }
    }
    let rows = tagged.into_iter().map(|(_, row)| row).collect();
    let finished = next.nodes.iter().all(|p| *p == NodePosition::Done);
    (rows, (!finished).then_some(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SessionRow;

    fn row(id: &str, start: &str, duration: Option<f64>) -> IndexedSession {
        IndexedSession {
            row: SessionRow {
                tenant: "t".into(),
                session_id: id.into(),
                helper: format!("helper-{id}"),
                sharer: "s".into(),
                device: "d".into(),
                platform: "windows".into(),
                start_time: start.into(),
                end_time: None,
                duration_secs: duration,
                control_type: "view_only".into(),
                modes: vec!["view_only".into()],
                end_reason: None,
                ended_by: None,
                reason: None,
                relay_node: None,
                went_direct: false,
            },
            helper_id: None,
            sharer_id: None,
            device_id: None,
            bytes_helper_to_sharer: None,
            bytes_sharer_to_helper: None,
            administrator: None,
        }
    }

    /// Node `n`'s rows after `position`, `limit` at most, as its index would answer.
    fn page_of(
        all: &[IndexedSession],
        sort: SortKey,
        desc: bool,
        position: &NodePosition,
        limit: usize,
    ) -> Option<NodePage> {
        let after: Vec<IndexedSession> = match position {
            NodePosition::Done => return None,
            NodePosition::Start => all.to_vec(),
            NodePosition::After(c) => all
                .iter()
                .filter(|r| {
                    let order = compare_values(&sort_value(sort, r), &c.value)
                        .then_with(|| r.row.tenant.cmp(&c.tenant))
                        .then_with(|| r.row.session_id.cmp(&c.session));
                    if desc {
                        order == Ordering::Less
                    } else {
                        order == Ordering::Greater
                    }
                })
                .cloned()
                .collect(),
        };
        Some(NodePage {
            more: after.len() > limit,
            rows: after.into_iter().take(limit).collect(),
        })
    }

    #[test]
    fn pages_across_nodes_list_every_row_once_in_order_for_every_sort_and_limit() {
        let times = [
            "2026-11-01T10:00:00Z",
            "2026-11-01T10:00:00Z",
            "2026-11-02T08:00:00.5Z",
        ];
        let nodes: Vec<Vec<IndexedSession>> = (0..3)
            .map(|n| {
                (0..7 + n * 3)
                    .map(|i| {
                        let duration = (i % 3 != 0).then_some(f64::from((i * 7 % 5) as u8));
                        row(&format!("{n}{i:02}"), times[(i + n) % 3], duration)
                    })
                    .collect()
            })
            .collect();
        for sort in [SortKey::StartTime, SortKey::Duration, SortKey::Helper] {
            for desc in [false, true] {
                let expected = merge_sorted(sort, desc, nodes.clone());
                let ordered: Vec<Vec<IndexedSession>> = nodes
                    .iter()
                    .map(|n| merge_sorted(sort, desc, vec![n.clone()]))
                    .collect();
                for limit in [1, 2, 5, 100] {
                    let mut cursor = ClusterCursor::start(sort, desc, 3);
                    let mut listed = Vec::new();
                    loop {
                        let pages = (0..3)
                            .map(|n| page_of(&ordered[n], sort, desc, &cursor.nodes[n], limit))
                            .collect();
                        let (rows, next) = merge_page(&cursor, pages, limit);
                        assert!(rows.len() <= limit);
                        listed.extend(rows);
                        match next {
                            Some(next) => cursor = next,
                            None => break,
                        }
                    }
                    assert_eq!(listed, expected, "{sort:?} desc={desc} limit={limit}");
                }
            }
        }
    }

    #[test]
    fn a_node_that_did_not_answer_keeps_its_position() {
        let cursor = ClusterCursor::start(SortKey::StartTime, false, 2);
        let page = NodePage {
            rows: vec![row("a", "2026-11-01T10:00:00Z", Some(1.0))],
            more: false,
        };
        let (rows, next) = merge_page(&cursor, vec![Some(page), None], 10);
        assert_eq!(rows.len(), 1);
        let next = next.expect("node 1 is not done");
        assert_eq!(next.nodes, [NodePosition::Done, NodePosition::Start]);
    }

    #[test]
    fn summaries_add_up_and_percentiles_come_from_the_union() {
        let part = |durations: Vec<f64>, day: &str| NodeSummary {
            summary: Summary {
                sessions: durations.len() as u64 + 1,
                sessions_per_day: [(day.to_string(), durations.len() as u64 + 1)].into(),
                median_duration_secs: 999.0,
                p90_duration_secs: 999.0,
                by_mode: [("chat".to_string(), 1)].into(),
                by_platform: [("macos".to_string(), 2)].into(),
                refusals_by_reason: [("NOT_IN_SCOPE".to_string(), 3)].into(),
            },
            durations,
        };
        let merged = merge_summaries(vec![
            part(vec![1.0, 2.0, 10.0], "2026-11-01"),
            part(vec![3.0, 4.0], "2026-11-02"),
            part(vec![], "2026-11-01"),
        ]);
        assert_eq!(merged.sessions, 8);
        assert_eq!(merged.sessions_per_day["2026-11-01"], 5);
        assert_eq!(merged.sessions_per_day["2026-11-02"], 3);
        assert_eq!(merged.by_mode["chat"], 3);
        assert_eq!(merged.by_platform["macos"], 6);
        assert_eq!(merged.refusals_by_reason["NOT_IN_SCOPE"], 9);
        assert_eq!(merged.median_duration_secs, 3.0);
        assert_eq!(merged.p90_duration_secs, 10.0);
        assert_eq!(duration_percentiles(&[1.0, 2.0]), (1.5, 2.0));
        assert_eq!(duration_percentiles(&[]), (0.0, 0.0));
    }
}
