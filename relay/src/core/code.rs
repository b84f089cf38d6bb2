//! Session codes: short, random, read-aloud-friendly identifiers a helper gives a sharer.
//!
//! A code is 8 symbols of Crockford's base32 alphabet (digits and upper-case letters
//! without I, L, O and U), shown as `XXXX-XXXX`. Each symbol carries 5 bits, so a code has
//! 40 bits of entropy: 2^40 ≈ 1.1 × 10^12 possible codes. Symbols are drawn uniformly from
//! a CSPRNG supplied by the caller (the relay passes the OS generator; tests pass a seeded
//! one). Parsing is forgiving the way a person reading a code aloud expects: case, spaces
//! and dashes are ignored, and `O`, `I`, `L` are read as `0`, `1`, `1`.

use std::fmt;

use rand::Rng;

/// The 32 symbols codes are made of, in value order.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Number of symbols in a code.
pub const CODE_LEN: usize = 8;

/// Entropy of one code, in bits.
pub const CODE_ENTROPY_BITS: u32 = 5 * CODE_LEN as u32;

/// A well-formed session code in canonical form (eight symbols, no dash).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionCode([u8; CODE_LEN]);

/// Why a typed-in code is not a well-formed code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeParseError {
    /// The input has the wrong number of symbols.
    #[error("a session code has {CODE_LEN} symbols, this has {0}")]
    WrongLength(usize),
    /// The input has a character outside the code alphabet.
    #[error("{0:?} cannot appear in a session code")]
    BadSymbol(char),
}

impl SessionCode {
    /// A fresh uniformly random code.
    pub fn generate<R: Rng + ?Sized>(rng: &mut R) -> SessionCode {
        let mut symbols = [0u8; CODE_LEN];
        for symbol in &mut symbols {
            *symbol = ALPHABET[rng.random_range(0..ALPHABET.len())];
        }
        SessionCode(symbols)
    }

    /// Reads a code as a person typed it.
    pub fn parse(input: &str) -> Result<SessionCode, CodeParseError> {
        let mut symbols = [0u8; CODE_LEN];
        let mut count = 0usize;
        for c in input.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let canonical = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            };
            if !canonical.is_ascii() || !ALPHABET.contains(&(canonical as u8)) {
                return Err(CodeParseError::BadSymbol(c));
            }
            if count < CODE_LEN {
                symbols[count] = canonical as u8;
            }
            count += 1;
        }
        if count != CODE_LEN {
            return Err(CodeParseError::WrongLength(count));
        }
        Ok(SessionCode(symbols))
    }

    fn half(&self, range: std::ops::Range<usize>) -> &str {
        // Invariant: every byte is from ALPHABET, which is ASCII.
        std::str::from_utf8(&self.0[range]).unwrap_or("?")
    }
}

impl fmt::Display for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.half(0..4), self.half(4..CODE_LEN))
    }
}

impl fmt::Debug for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionCode({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn generated_codes_display_as_two_groups_of_four() {
        let mut rng = StdRng::seed_from_u64(7);
        let code = SessionCode::generate(&mut rng);
        let shown = code.to_string();
        assert_eq!(shown.len(), 9);
        assert_eq!(&shown[4..5], "-");
        assert_eq!(SessionCode::parse(&shown), Ok(code));
    }

    #[test]
    fn parsing_ignores_case_spaces_and_dashes_and_reads_lookalikes() {
        let code = SessionCode::parse("AB01-2345").unwrap();
        assert_eq!(SessionCode::parse("ab01 2345"), Ok(code));
        assert_eq!(SessionCode::parse("aBo1-2345"), Ok(code));
        assert_eq!(SessionCode::parse("ABOI2345"), Ok(code));
        assert_eq!(SessionCode::parse("AB0L2345"), Ok(code));
    }

    #[test]
    fn malformed_codes_are_refused_with_the_reason() {
        assert_eq!(
            SessionCode::parse("ABC"),
            Err(CodeParseError::WrongLength(3))
        );
        assert_eq!(
            SessionCode::parse("ABCD-EFGH-J"),
            Err(CodeParseError::WrongLength(9))
        );
        assert_eq!(
            SessionCode::parse("ABCD-EFGU"),
            Err(CodeParseError::BadSymbol('U'))
        );
        assert_eq!(
            SessionCode::parse("ABCD-EFG\u{e9}"),
            Err(CodeParseError::BadSymbol('\u{e9}'))
        );
    }

    #[test]
    fn every_alphabet_symbol_is_drawn() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = [false; 32];
        for _ in 0..1_000 {
            for s in SessionCode::generate(&mut rng).0 {
                let index = ALPHABET.iter().position(|&a| a == s).unwrap();
                seen[index] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "some symbol never drawn: {seen:?}");
    }

    #[test]
    fn entropy_is_forty_bits() {
        assert_eq!(CODE_ENTROPY_BITS, 40);
    }
}
