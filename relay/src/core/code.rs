//! Session codes: short, random, read-aloud-friendly identifiers a helper gives a sharer.
//!
//! A code is 10 symbols of Crockford's base32 alphabet (digits and upper-case letters
//! without I, L, O and U), shown as `XXXXX-XXXXX`. Each symbol carries 5 bits, so a code has
//! 50 bits of entropy. The first group is the code's *locator*: no two open codes share one,
//! so a wrong code whose locator matches an open code is an attempt *against that code*.
//! The second group is its *secret* (25 bits). The registry burns a code after a few wrong
//! attempts against it, which bounds the odds of guessing any one code over its lifetime by
//! `attempts / 2^25` whatever the attacker's rate (3 attempts: about 9 in 100 million).
//!
//! Symbols are drawn uniformly from a CSPRNG supplied by the caller (the relay passes the
//! OS generator; tests pass a seeded one). Parsing is forgiving the way a person reading a
//! code aloud expects: case, spaces and dashes are ignored, and `O`, `I`, `L` are read as
//! `0`, `1`, `1`.

use std::fmt;

use rand::Rng;

use super::cluster::NodeId;

/// The 32 symbols codes are made of, in value order.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Number of symbols in a code.
pub const CODE_LEN: usize = 10;

/// Number of leading symbols that form the code's locator.
pub const LOCATOR_LEN: usize = 5;

/// Entropy of one code, in bits.
pub const CODE_ENTROPY_BITS: u32 = 5 * CODE_LEN as u32;

/// Entropy of a code's secret part (what a guess against a known locator must hit), bits.
pub const SECRET_ENTROPY_BITS: u32 = 5 * (CODE_LEN - LOCATOR_LEN) as u32;

/// A well-formed session code in canonical form (ten symbols, no dash).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionCode([u8; CODE_LEN]);

/// The first group of a code; unique among open codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeLocator([u8; LOCATOR_LEN]);

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

    /// A fresh random code held by `node` of a cluster: its first symbol is the node id
    /// (so any node can tell where the session lives), the other 45 bits are random. The
    /// secret half is untouched, so the guessing bound is the same as for [`Self::generate`].
    pub fn generate_on<R: Rng + ?Sized>(node: NodeId, rng: &mut R) -> SessionCode {
        let mut code = SessionCode::generate(rng);
        code.0[0] = ALPHABET[usize::from(node.get())];
        code
    }

    /// The node a clustered relay put in this code (the value of its first symbol).
    pub fn node(&self) -> NodeId {
        let value = ALPHABET.iter().position(|&a| a == self.0[0]).unwrap_or(0);
        // Invariant: the alphabet has 32 symbols, so `value` < 32 = MAX_NODES.
        NodeId::new(value as u8).unwrap_or(NodeId::FIRST)
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

    /// The locator part, which the registry keeps unique among open codes.
    pub fn locator(&self) -> CodeLocator {
        let mut locator = [0u8; LOCATOR_LEN];
        locator.copy_from_slice(&self.0[..LOCATOR_LEN]);
        CodeLocator(locator)
    }

    fn half(&self, range: std::ops::Range<usize>) -> &str {
        // Invariant: every byte is from ALPHABET, which is ASCII.
        std::str::from_utf8(&self.0[range]).unwrap_or("?")
    }
}

impl fmt::Display for SessionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.half(0..LOCATOR_LEN),
            self.half(LOCATOR_LEN..CODE_LEN)
        )
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
    fn generated_codes_display_as_two_groups_of_five() {
        let mut rng = StdRng::seed_from_u64(7);
        let code = SessionCode::generate(&mut rng);
        let shown = code.to_string();
        assert_eq!(shown.len(), 11);
        assert_eq!(&shown[5..6], "-");
        assert_eq!(SessionCode::parse(&shown), Ok(code));
    }

    #[test]
    fn the_locator_is_the_first_group() {
        let a = SessionCode::parse("AB012-34567").unwrap();
        let b = SessionCode::parse("AB012-ZZZZZ").unwrap();
        let c = SessionCode::parse("AB013-34567").unwrap();
        assert_eq!(a.locator(), b.locator());
        assert_ne!(a.locator(), c.locator());
    }

    #[test]
    fn parsing_ignores_case_spaces_and_dashes_and_reads_lookalikes() {
        let code = SessionCode::parse("AB012-34567").unwrap();
        assert_eq!(SessionCode::parse("ab012 34567"), Ok(code));
        assert_eq!(SessionCode::parse("aBo12-34567"), Ok(code));
        assert_eq!(SessionCode::parse("ABO1234567"), Ok(code));
        assert_eq!(SessionCode::parse("AB0I2-3456-7"), Ok(code));
    }

    #[test]
    fn malformed_codes_are_refused_with_the_reason() {
        assert_eq!(
            SessionCode::parse("ABC"),
            Err(CodeParseError::WrongLength(3))
        );
        assert_eq!(
            SessionCode::parse("ABCDE-FGHJK-M"),
            Err(CodeParseError::WrongLength(11))
        );
        assert_eq!(
            SessionCode::parse("ABCDE-FGHJU"),
            Err(CodeParseError::BadSymbol('U'))
        );
        assert_eq!(
            SessionCode::parse("ABCDE-FGHJ\u{e9}"),
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
    fn a_clustered_code_names_its_node_in_its_first_symbol() {
        let mut rng = StdRng::seed_from_u64(3);
        for id in 0..32u8 {
            let node = NodeId::new(id).unwrap();
            let code = SessionCode::generate_on(node, &mut rng);
            assert_eq!(code.node(), node);
            assert_eq!(SessionCode::parse(&code.to_string()).unwrap().node(), node);
        }
        assert_eq!(SessionCode::parse("2BCDE-FGHJK").unwrap().node().get(), 2);
        assert_eq!(SessionCode::parse("ZBCDE-FGHJK").unwrap().node().get(), 31);
    }

    #[test]
    fn entropy_is_fifty_bits_of_which_twenty_five_are_secret() {
        assert_eq!(CODE_ENTROPY_BITS, 50);
        assert_eq!(SECRET_ENTROPY_BITS, 25);
    }
}
