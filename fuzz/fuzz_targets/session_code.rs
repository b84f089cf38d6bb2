//! Session codes as a sharer types them (`JoinSession.code`): `SessionCode::parse` on
//! arbitrary text, written against the public API only (`CODE_LEN`, `parse`, `Display`),
//! not against a particular code length or grouping.
//!
//! Invariants:
//! - whatever parses displays as `CODE_LEN` canonical symbols (upper-case Crockford
//!   base32, without I, L, O, U) plus separators, and re-parses to the same code; so do
//!   its lower-case form and its symbols without separators;
//! - the input had exactly `CODE_LEN` symbols once separators are dropped, and the code
//!   is those symbols with the documented look-alike substitutions;
//! - a refusal is accurate: `WrongLength(n)` means every character was acceptable and
//!   there were `n != CODE_LEN` symbols; `BadSymbol(c)` names a character of the input
//!   that is not acceptable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remote_help_relay::core::code::{CODE_LEN, CodeParseError, SessionCode};

const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The canonical symbol a typed character stands for, if any (the documented rules:
/// case is ignored, O reads as 0, I and L read as 1).
fn canonical(c: char) -> Option<char> {
    let upper = c.to_ascii_uppercase();
    let symbol = match upper {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    ALPHABET.contains(symbol).then_some(symbol)
}

fn is_separator(c: char) -> bool {
    c == '-' || c.is_whitespace()
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let symbols: Vec<Option<char>> = input
        .chars()
        .filter(|c| !is_separator(*c))
        .map(canonical)
        .collect();
    match SessionCode::parse(input) {
        Ok(code) => {
            let expected: String = symbols.iter().map(|s| s.expect("a valid symbol")).collect();
            assert_eq!(expected.chars().count(), CODE_LEN);
            let shown = code.to_string();
            let shown_symbols: String = shown.chars().filter(|c| !is_separator(*c)).collect();
            assert_eq!(
                shown_symbols, expected,
                "display is not the canonical symbols"
            );
            assert!(
                shown.chars().all(|c| c == '-' || ALPHABET.contains(c)),
                "{shown:?}"
            );
            assert_eq!(
                SessionCode::parse(&shown),
                Ok(code),
                "display does not re-parse"
            );
            assert_eq!(SessionCode::parse(&shown.to_lowercase()), Ok(code));
            assert_eq!(SessionCode::parse(&shown_symbols), Ok(code));
            assert_eq!(format!("{code:?}"), format!("SessionCode({shown})"));
        }
        Err(CodeParseError::WrongLength(n)) => {
            assert!(
                symbols.iter().all(Option::is_some),
                "a bad symbol went unreported"
            );
            assert_eq!(n, symbols.len());
            assert_ne!(n, CODE_LEN);
        }
        Err(CodeParseError::BadSymbol(c)) => {
            assert!(input.contains(c), "{c:?} is not in the input");
            assert!(
                !is_separator(c) && canonical(c).is_none(),
                "{c:?} is acceptable"
            );
            // It is the first unacceptable character.
            let first = input
                .chars()
                .find(|c| !is_separator(*c) && canonical(*c).is_none());
            assert_eq!(first, Some(c));
        }
    }
});
