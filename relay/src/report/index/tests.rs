//! Unit tests of the reports index: catch-up, rebuilds, queries.

use super::*;

/// One audit line: `kind` of session `session` in tenant `contoso`.
fn line(kind: EventKind, session: &str, time: &str) -> String {
    let event = AuditEvent {
        schema: 1,
        event_id: format!("{session}-{kind:?}"),
        event: Some(kind),
        time: time.into(),
        tenant: "contoso".into(),
        session_id: session.into(),
        helper_name: Some("Ada".into()),
        sharer_name: Some("Grace".into()),
        device_name: Some("GRACE-LAPTOP".into()),
        platform: Some("windows".into()),
        control_type: Some("view_only".into()),
        modes: vec!["view_only".into()],
        ..AuditEvent::default()
    };
    let mut text = serde_json::to_string(&event).unwrap();
    text.push('\n');
    text
}

fn session_ids(index: &ReportIndex) -> Vec<String> {
    index
        .all_sessions(&SessionQuery::default())
        .unwrap()
        .into_iter()
        .map(|s| s.row.session_id)
        .collect()
}

#[test]
fn a_last_event_rewritten_with_the_same_length_replaces_the_phantom() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    let file = audit.join("audit-2026-11-24-000.jsonl");
    let first = line(EventKind::SessionStarted, "s-first", "2026-11-24T15:00:00Z");
    let cut = line(EventKind::SessionStarted, "s-aaaaa", "2026-11-24T15:01:00Z");
    let written = line(EventKind::SessionStarted, "s-bbbbb", "2026-11-24T15:01:00Z");
    assert_eq!(cut.len(), written.len(), "the test needs equal lengths");
    std::fs::write(&file, format!("{first}{cut}")).unwrap();
    let mut index = ReportIndex::open(&dir.path().join(INDEX_FILE), &audit).unwrap();
    assert_eq!(session_ids(&index), ["s-first", "s-aaaaa"]);

    // The writer cut `cut` back after a failed fsync and wrote another event of the
    // same byte length: the file's size is what the index recorded.
    std::fs::write(&file, format!("{first}{written}")).unwrap();
    index.catch_up().unwrap();
    assert_eq!(session_ids(&index), ["s-first", "s-bbbbb"]);
}

#[test]
fn an_unchanged_file_is_not_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    let file = audit.join("audit-2026-11-24-000.jsonl");
    std::fs::write(
        &file,
        line(EventKind::SessionStarted, "s-one", "2026-11-24T15:00:00Z"),
    )
    .unwrap();
    let mut index = ReportIndex::open(&dir.path().join(INDEX_FILE), &audit).unwrap();
    assert_eq!(index.catch_up().unwrap(), 0, "nothing new, no rebuild");
    assert_eq!(session_ids(&index), ["s-one"]);
}
