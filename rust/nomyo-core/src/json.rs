//! JSON text written straight into secret buffers: a [`Writer`] that puts separators and
//! quotes where they belong, string escaping (ASCII runs found eight bytes at a time, code
//! points encoded as UTF-8 through a wiped block) and numbers formatted as Python's
//! `json.dumps` formats them. [`write`] walks a caller's values (the binding's Python objects)
//! into a writer, so the plaintext of a request never passes through an ordinary allocation.

mod walk;

pub use walk::{write, Node, Value, MAX_DEPTH};

use crate::error::{Error, Result};
use crate::secret::SecretBuf;

/// A JSON scalar as a caller hands it to a [`Writer`]: an integer as its decimal text.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    /// An optional `-` and digits (anything else is refused: it would not be JSON).
    Int(String),
    Float(f64),
}

/// Compact JSON (`json.dumps(separators=(",", ":"))`) written into a [`SecretBuf`] as the
/// caller walks its values: it opens and closes containers, writes keys and values, and the
/// writer puts the commas and colons in. Nesting is the caller's to bound.
pub struct Writer {
    out: SecretBuf,
    /// A value or a closed container was just written: the next item needs a comma.
    after_item: bool,
}

impl Writer {
    /// A writer whose buffer starts with `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Result<Self> {
        Ok(Writer {
            out: SecretBuf::with_capacity(capacity)?,
            after_item: false,
        })
    }

    /// The JSON written.
    pub fn finish(self) -> SecretBuf {
        self.out
    }

    fn item(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.after_item, true) {
            self.out.extend_from_slice(b",")?;
        }
        Ok(())
    }

    fn open(&mut self, bracket: &[u8]) -> Result<()> {
        self.item()?;
        self.after_item = false;
        self.out.extend_from_slice(bracket)
    }

    fn close(&mut self, bracket: &[u8]) -> Result<()> {
        self.after_item = true;
        self.out.extend_from_slice(bracket)
    }

    pub fn begin_object(&mut self) -> Result<()> {
        self.open(b"{")
    }

    pub fn end_object(&mut self) -> Result<()> {
        self.close(b"}")
    }

    pub fn begin_array(&mut self) -> Result<()> {
        self.open(b"[")
    }

    pub fn end_array(&mut self) -> Result<()> {
        self.close(b"]")
    }

    /// After a key written as a string: the colon before its value.
    pub fn colon(&mut self) -> Result<()> {
        self.after_item = false;
        self.out.extend_from_slice(b":")
    }

    /// A scalar value.
    pub fn scalar(&mut self, value: &Scalar) -> Result<()> {
        self.item()?;
        let text = match value {
            Scalar::Null => "null",
            Scalar::Bool(true) => "true",
            Scalar::Bool(false) => "false",
            Scalar::Int(digits) => {
                let unsigned = digits.strip_prefix('-').unwrap_or(digits);
                if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::Value(
                        "int formatting produced unexpected text".into(),
                    ));
                }
                digits
            }
            Scalar::Float(v) => return self.out.extend_from_slice(float_text(*v)?.as_bytes()),
        };
        self.out.extend_from_slice(text.as_bytes())
    }

    /// A key that is not a string, as `json.dumps` writes one: the scalar's text in quotes.
    pub fn scalar_key(&mut self, key: &Scalar) -> Result<()> {
        self.item()?;
        self.out.extend_from_slice(b"\"")?;
        self.after_item = false;
        self.scalar(key)?;
        self.out.extend_from_slice(b"\"")?;
        self.colon()
    }

    /// A string (value or key) given as ASCII bytes.
    pub fn ascii_str(&mut self, bytes: &[u8]) -> Result<()> {
        self.item()?;
        self.out.extend_from_slice(b"\"")?;
        escape_ascii(&mut self.out, bytes)?;
        self.out.extend_from_slice(b"\"")
    }

    /// A string (value or key) given as code points, whose escaped UTF-8 takes `size` bytes
    /// (see [`escaped_len`]): the buffer grows once, to that size.
    pub fn chars_str(&mut self, size: usize, chars: impl Iterator<Item = u32>) -> Result<()> {
        self.item()?;
        self.out.reserve(size.saturating_add(2))?;
        self.out.extend_from_slice(b"\"")?;
        escape_chars(&mut self.out, chars)?;
        self.out.extend_from_slice(b"\"")
    }
}

/// A finite float as JSON, written exactly as Python's `float.__repr__` (and so json.dumps)
/// writes it: shortest round-trip digits, positional for exponents -4..16 (with ".0" when
/// integral), otherwise `d.ddde+XX`. NaN and infinities are refused.
pub fn float_text(v: f64) -> Result<String> {
    if !v.is_finite() {
        return Err(Error::Value(
            "Out of range float values are not JSON compliant".into(),
        ));
    }
    // `{:e}` gives the shortest round-trip digits: "-1.25e-7", "0e0".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let point = exp as usize + 1;
            if digits.len() <= point {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
    Ok(out)
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn escape_byte(out: &mut SecretBuf, b: u8) -> Result<()> {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => unicode_escape(out, u32::from(b)),
    }
}

fn unicode_escape(out: &mut SecretBuf, c: u32) -> Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = [
        HEX[(c >> 12) as usize & 15],
        HEX[(c >> 8) as usize & 15],
        HEX[(c >> 4) as usize & 15],
        HEX[c as usize & 15],
    ];
    out.extend_from_slice(b"\\u")?;
    out.extend_from_slice(&digits)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// True if any of the 8 bytes of `w` needs escaping (below 0x20, a quote or a backslash). Exact for bytes
/// below 0x80 (the only ones this is used on: ASCII strings and ASCII runs of code points).
#[inline]
fn word_needs_escape(w: u64) -> bool {
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) & HIGHS != 0
}

/// The bytes `c` takes in the JSON output (escaped, or as UTF-8).
pub fn escaped_len(c: u32) -> usize {
    match c {
        0..=0x7f => match c as u8 {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            b if needs_escape(b) => 6,
            _ => 1,
        },
        0x80..=0x7ff => 2,
        0x800..=0xffff => 3,
        _ => 4,
    }
}

/// Escape ASCII `bytes` into `out`, copying runs that need no escaping in one piece (runs are
/// found 8 bytes at a time).
pub fn escape_ascii(out: &mut SecretBuf, bytes: &[u8]) -> Result<()> {
    out.reserve(bytes.len())?;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        while let Some(chunk) = bytes.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if word_needs_escape(w) {
                break;
            }
            i += 8;
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            if needs_escape(b) {
                out.extend_from_slice(&bytes[start..i])?;
                escape_byte(out, b)?;
                start = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&bytes[start..])
}

/// Escape a string given as code points into `out` as UTF-8, through a small stack buffer
/// (wiped afterwards) so that output is appended in blocks rather than byte by byte.
pub fn escape_chars(out: &mut SecretBuf, chars: impl Iterator<Item = u32>) -> Result<()> {
    const BLOCK: usize = 512;
    // Room for the longest item (a six-byte \u escape) past the flush threshold.
    let mut block = zeroize::Zeroizing::new([0u8; BLOCK + 8]);
    let mut n = 0;
    let result = (|| {
        for c in chars {
            if n >= BLOCK {
                out.extend_from_slice(&block[..n])?;
                n = 0;
            }
            if c < 0x80 {
                let b = c as u8;
                if needs_escape(b) {
                    out.extend_from_slice(&block[..n])?;
                    n = 0;
                    escape_byte(out, b)?;
                } else {
                    block[n] = b;
                    n += 1;
                }
            } else if let Some(ch) = char::from_u32(c) {
                n += ch.encode_utf8(&mut block[n..]).len();
            } else {
                return Err(Error::Value(
                    "a string contains a lone surrogate, which is not valid Unicode".into(),
                ));
            }
        }
        out.extend_from_slice(&block[..n])
    })();
    // `block` is wiped on drop (Zeroizing).
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0..0x20 => out.extend_from_slice(format!("\\u{:04x}", b).as_bytes()),
                _ => out.push(b),
            }
        }
        out
    }

    #[test]
    fn ascii_escaping_matches_bytewise_reference() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for len in 0..300usize {
            for density in [0u64, 2, 16, 64] {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if density > 0 && x.is_multiple_of(density) {
                            [b'"', b'\\', b'\n', 0x01, 0x1f, 0x00][(x >> 8) as usize % 6]
                        } else {
                            0x20 + ((x >> 16) % 0x60) as u8
                        }
                    })
                    .collect();
                let mut out = SecretBuf::with_capacity(0).unwrap();
                escape_ascii(&mut out, &bytes).unwrap();
                assert_eq!(out.as_slice(), &reference(&bytes)[..], "len {len}");
                let mut out2 = SecretBuf::with_capacity(0).unwrap();
                escape_chars(&mut out2, bytes.iter().map(|&b| u32::from(b))).unwrap();
                assert_eq!(out2.as_slice(), &reference(&bytes)[..], "len {len}");
            }
        }
    }

    #[test]
    fn writer_puts_separators_where_json_dumps_does() {
        let mut w = Writer::with_capacity(0).unwrap();
        w.begin_object().unwrap();
        w.ascii_str(b"a").unwrap();
        w.colon().unwrap();
        w.begin_array().unwrap();
        for v in [
            Scalar::Null,
            Scalar::Bool(true),
            Scalar::Int("-12".into()),
            Scalar::Float(0.5),
        ] {
            w.scalar(&v).unwrap();
        }
        w.begin_object().unwrap();
        w.end_object().unwrap();
        w.begin_array().unwrap();
        w.end_array().unwrap();
        w.end_array().unwrap();
        w.scalar_key(&Scalar::Int("7".into())).unwrap();
        w.chars_str(4, "\u{e9}t\u{e9}".chars().map(u32::from))
            .unwrap();
        w.scalar_key(&Scalar::Bool(false)).unwrap();
        w.scalar(&Scalar::Float(1e16)).unwrap();
        w.end_object().unwrap();
        let want = r#"{"a":[null,true,-12,0.5,{},[]],"7":"été","false":1e+16}"#;
        assert_eq!(w.finish().as_slice(), want.as_bytes());
    }

    #[test]
    fn writer_refuses_what_is_not_json() {
        let mut w = Writer::with_capacity(0).unwrap();
        for text in ["", "-", "1e3", "0x10", "1 ", "--1", "NaN"] {
            assert!(w.scalar(&Scalar::Int(text.into())).is_err(), "{text:?}");
        }
        assert!(w.scalar(&Scalar::Float(f64::NAN)).is_err());
        assert!(w.scalar(&Scalar::Float(f64::INFINITY)).is_err());
    }

    #[test]
    fn floats_format_like_python_repr() {
        for (v, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (123456789.125, "123456789.125"),
            (1e300, "1e+300"),
            (-1e-300, "-1e-300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
        ] {
            assert_eq!(float_text(v).unwrap(), want, "{v:e}");
        }
    }

    #[test]
    fn word_test_has_no_false_negatives() {
        for b in 0u8..0x80 {
            for pos in 0..8 {
                let mut w = [b'a'; 8];
                w[pos] = b;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(w)),
                    needs_escape(b),
                    "{b}"
                );
            }
        }
    }

    #[test]
    fn code_points_encode_as_utf8_in_blocks() {
        let text: String = "h\u{e9}llo \u{1F600} \u{4e2d}\"\n".repeat(200);
        let mut out = SecretBuf::with_capacity(0).unwrap();
        escape_chars(&mut out, text.chars().map(u32::from)).unwrap();
        let want = serde_json::to_string(&text).unwrap();
        assert_eq!(out.as_slice(), &want.as_bytes()[1..want.len() - 1]);
        let mut out = SecretBuf::with_capacity(0).unwrap();
        assert!(escape_chars(&mut out, [0x41, 0xD800].into_iter()).is_err());
    }

    #[test]
    fn escaped_len_is_the_size_escape_chars_writes() {
        let points = (0..0x800u32).chain([
            0xfff, 0x1000, 0x4e2d, 0xd7ff, 0xe000, 0xffff, 0x10000, 0x1f600, 0x10ffff,
        ]);
        for c in points {
            let mut out = SecretBuf::with_capacity(0).unwrap();
            escape_chars(&mut out, std::iter::once(c)).unwrap();
            assert_eq!(escaped_len(c), out.len(), "U+{c:04X}");
        }
    }
}
