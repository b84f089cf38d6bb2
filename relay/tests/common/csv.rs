//! A small RFC 4180 reader for the reports export: quoted cells (`""` inside for a quote),
//! `,` between cells, CRLF between records. The tests read the CSV the way a spreadsheet
//! does, so a cell holding `,` `;` or a line break stays one cell.

/// The records of `text`, each a list of cells as a spreadsheet shows them (quotes
/// removed, the `'` formula guard kept).
pub fn parse(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                record.push(std::mem::take(&mut cell));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(!quoted, "the CSV ends inside a quoted cell");
    if !cell.is_empty() || !record.is_empty() {
        record.push(cell);
        records.push(record);
    }
    records
}

/// The cells of `records` under the header column `name` (the first record is the header).
pub fn column(records: &[Vec<String>], name: &str) -> Vec<String> {
    let index = records[0]
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name:?} in {:?}", records[0]));
    records[1..].iter().map(|r| r[index].clone()).collect()
}
