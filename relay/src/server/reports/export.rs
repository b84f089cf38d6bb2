//! `GET /api/v1/reports/sessions.csv`: the CSV export (docs/reports.md), streamed a page at
//! a time, and the CSV encoding the cluster export shares.

use super::*;

/// The CSV columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "tenant",
    "session_id",
    "helper",
    "helper_id",
    "recipient",
    "recipient_id",
    "device",
    "device_id",
    "platform",
    "start_time",
    "end_time",
    "duration_secs",
    "control_type",
    "modes",
    "end_reason",
    "ended_by",
    "administrator",
    "reason",
    "went_direct",
    "bytes_helper_to_sharer",
    "bytes_sharer_to_helper",
];

/// One CSV cell (RFC 4180), always quoted: a spreadsheet in a locale whose list separator
/// is `;` (German, French…) splits an unquoted cell at every `;`, so a name like
/// `x;=HYPERLINK(…)` would start a new cell with a formula; inside quotes it cannot. A
/// leading `=`, `+`, `@`, tab or carriage return (or `-` other than the `--` recipient) is
/// also prefixed with `'`, so the cell itself is never run as a formula.
pub fn csv_cell(text: &str) -> String {
    let risky = text.starts_with(['=', '+', '@', '\t', '\r'])
        || (text.starts_with('-') && text != crate::audit::NO_USER);
    let prefix = if risky { "'" } else { "" };
    format!("\"{prefix}{}\"", text.replace('"', "\"\""))
}

pub(super) fn csv_row(s: &IndexedSession) -> String {
    let r = &s.row;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    let cells = [
        r.tenant.clone(),
        r.session_id.clone(),
        r.helper.clone(),
        opt(&s.helper_id),
        r.sharer.clone(),
        opt(&s.sharer_id),
        r.device.clone(),
        opt(&s.device_id),
        r.platform.clone(),
        r.start_time.clone(),
        opt(&r.end_time),
        r.duration_secs.map(|d| d.to_string()).unwrap_or_default(),
        r.control_type.clone(),
        r.modes.join(";"),
        opt(&r.end_reason),
        r.ended_by
            .map(|e| e.as_str().to_string())
            .unwrap_or_default(),
        opt(&s.administrator),
        opt(&r.reason),
        r.went_direct.to_string(),
        num(s.bytes_helper_to_sharer),
        num(s.bytes_sharer_to_helper),
    ];
    let mut text = cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",");
    text.push_str("\r\n");
    text
}

/// Rows per page of a CSV export: the index is locked for one page at a time, so other
/// queries (other tenants') are answered between pages, and memory holds one page.
pub const EXPORT_PAGE_ROWS: usize = 1000;

/// One page of an export: its CSV lines, and where the next starts (`None`: the last).
struct ExportPage {
    csv: String,
    next: Option<Cursor>,
}

/// The export's page after `after`, oldest first (start, tenant, session id: the order
/// of [`ReportIndex::all_sessions`]), formatted on the blocking thread: a large tenant's
/// month is a quarter of a million rows, CPU the runtime's workers (which forward session
/// data) must not spend.
async fn export_page(
    reports: &Reports,
    query: &SessionQuery,
    after: Option<Cursor>,
) -> Result<ExportPage, ApiError> {
    let query = query.clone();
    run(reports, "export", move |index| {
        let (rows, next) = index.sessions(
            &query,
            SortKey::StartTime,
            false,
            after.as_ref(),
            EXPORT_PAGE_ROWS,
        )?;
        let mut csv = String::new();
        for row in &rows {
            csv.push_str(&csv_row(row));
        }
        Ok(ExportPage { csv, next })
    })
    .await
}

/// Where a streamed export stands.
enum ExportStep {
    /// A page read, to send; then the next, if any.
    Send(ExportPage),
    /// The page after this cursor is to be read.
    Read(Cursor),
    /// Sent completely, or failed.
    Done,
}

pub(super) async fn export(
    State(reports): State<Reports>,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&reports.hub, &headers).await?;
    let mut allowed = FILTERS.to_vec();
    allowed.push(SCOPE);
    let params = Params::checked(raw, &allowed)?;
    let slot = reports.admit(&caller).await?;
    if let Some(peers) = fan_out(&reports, &params)? {
        return cluster_export(&reports, peers, &headers, &caller, &params).await;
    }
    let mut header_line = CSV_COLUMNS.join(",");
    header_line.push_str("\r\n");
    let first = match session_query(&reports.hub, &caller, &params)? {
        // The first page before answering: an index that cannot answer is still a 503.
        Some(query) => {
            let mut page = export_page(&reports, &query, None).await?;
            page.csv.insert_str(0, &header_line);
            Some((page, query))
        }
        None => None,
    };
    let attachment = [
        (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
        (
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"sessions.csv\"",
        ),
    ];
    let Some((first, query)) = first else {
        return Ok((attachment, header_line).into_response());
    };
    // The rest page by page as the client reads: the slot is held until the last page
    // is sent (or the client goes away). An index failure after the first page ends the
    // response without its last chunk, so the client sees an incomplete transfer, never a
    // shorter file that looks complete.
    let body = futures_util::stream::unfold(
        (ExportStep::Send(first), reports, query, slot),
        |(step, reports, query, slot)| async move {
            match step {
                ExportStep::Done => None,
                ExportStep::Send(page) => {
                    let following = page.next.map_or(ExportStep::Done, ExportStep::Read);
                    let chunk = axum::body::Bytes::from(page.csv);
                    Some((Ok(chunk), (following, reports, query, slot)))
                }
                ExportStep::Read(after) => match export_page(&reports, &query, Some(after)).await {
                    Ok(page) => {
                        let following = page.next.map_or(ExportStep::Done, ExportStep::Read);
                        let chunk = axum::body::Bytes::from(page.csv);
                        Some((Ok(chunk), (following, reports, query, slot)))
                    }
                    Err(e) => {
                        metrics::counter!("relay_report_errors_total", "code" => "export_interrupted")
                                .increment(1);
                        warn!(
                            code = e.code,
                            "CSV export interrupted after its first page; the response ends incomplete"
                        );
                        let error = std::io::Error::other(e.message);
                        Some((Err(error), (ExportStep::Done, reports, query, slot)))
                    }
                },
            }
        },
    );
    Ok((attachment, axum::body::Body::from_stream(body)).into_response())
}
