//! JSON between Python objects and native secret memory, with no Python copy in between.
//!
//! [`dumps`] walks the caller's objects and writes compact JSON straight into a
//! [`SecretBuf`]. ASCII strings are read in place; other strings are read in place one code
//! point at a time (`PyUnicode_ReadChar`), with no scratch copy and no UTF-8 copy cached on the
//! caller's objects, into output reserved at their exact escaped size, so the locked memory a
//! request takes is about its UTF-8 size whatever the script. [`loads`] parses decrypted bytes into new Python objects with jiter, string cache
//! off, so no decoded string outlives the objects handed to the caller.

use nomyo_core::secret::SecretBuf;
use pyo3::exceptions::{PyRecursionError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::{to_py, EnvelopeError};

const MAX_DEPTH: usize = 256;

struct Writer {
    out: SecretBuf,
}

fn mem(e: nomyo_core::Error) -> PyErr {
    to_py(e)
}

impl Writer {
    fn put(&mut self, bytes: &[u8]) -> PyResult<()> {
        self.out.extend_from_slice(bytes).map_err(mem)
    }

    fn value(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<()> {
        if depth > MAX_DEPTH {
            return Err(PyRecursionError::new_err(
                "JSON nesting too deep (or a circular reference)",
            ));
        }
        if let Ok(s) = obj.cast::<PyString>() {
            return self.string(s);
        }
        if obj.is_none() {
            return self.put(b"null");
        }
        if let Ok(b) = obj.cast::<PyBool>() {
            return self.put(if b.is_true() { b"true" } else { b"false" });
        }
        if let Ok(i) = obj.cast::<PyInt>() {
            return self.int(i);
        }
        if let Ok(f) = obj.cast::<PyFloat>() {
            return self.float(f.value());
        }
        if let Ok(d) = obj.cast::<PyDict>() {
            return self.dict(d, depth);
        }
        if let Ok(l) = obj.cast::<PyList>() {
            return self.seq(l.iter(), depth);
        }
        if let Ok(t) = obj.cast::<PyTuple>() {
            return self.seq(t.iter(), depth);
        }
        Err(PyTypeError::new_err(format!(
            "Object of type {} is not JSON serializable",
            obj.get_type().name()?
        )))
    }

    fn int(&mut self, i: &Bound<'_, PyInt>) -> PyResult<()> {
        let text = int_text(i)?;
        self.put(text.as_bytes())
    }

    fn float(&mut self, v: f64) -> PyResult<()> {
        self.put(float_text(v)?.as_bytes())
    }

    fn dict(&mut self, d: &Bound<'_, PyDict>, depth: usize) -> PyResult<()> {
        // Walk a snapshot (a new list of (key, value) tuples, holding references): PyO3's dict
        // iterator panics if the dict changes size, and a finalizer run by the garbage
        // collector could change it mid-walk. `PyDict_Items` is the C function, so a dict
        // subclass cannot hook it.
        let items = d.items();
        self.put(b"{")?;
        for (n, item) in items.iter().enumerate() {
            let item = item.cast_into::<PyTuple>()?;
            if n > 0 {
                self.put(b",")?;
            }
            self.key(&item.get_item(0)?)?;
            self.put(b":")?;
            self.value(&item.get_item(1)?, depth + 1)?;
        }
        self.put(b"}")
    }

    /// A dict key. Non-string keys are formatted natively (never through `repr()`, which a
    /// subclass could override): an int subclass such as IntEnum gives its integer value, as
    /// json.dumps does.
    fn key(&mut self, k: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(s) = k.cast::<PyString>() {
            return self.string(s);
        }
        let text = if k.is_none() {
            "null".to_owned()
        } else if let Ok(b) = k.cast::<PyBool>() {
            (if b.is_true() { "true" } else { "false" }).to_owned()
        } else if let Ok(f) = k.cast::<PyFloat>() {
            float_text(f.value())?
        } else if let Ok(i) = k.cast::<PyInt>() {
            int_text(i)?
        } else {
            return Err(PyTypeError::new_err(format!(
                "keys must be str, int, float, bool or None, not {}",
                k.get_type().name()?
            )));
        };
        self.put(b"\"")?;
        self.put(text.as_bytes())?;
        self.put(b"\"")
    }

    fn seq<'py>(
        &mut self,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
        depth: usize,
    ) -> PyResult<()> {
        self.put(b"[")?;
        for (n, item) in items.enumerate() {
            if n > 0 {
                self.put(b",")?;
            }
            self.value(&item, depth + 1)?;
        }
        self.put(b"]")
    }

    fn string(&mut self, s: &Bound<'_, PyString>) -> PyResult<()> {
        let py = s.py();
        self.put(b"\"")?;
        // Only an exact `str` may take the in-place path: on a subclass `isascii` could be
        // overridden to lie, and `PyUnicode_AsUTF8AndSize` would then cache a UTF-8 copy of
        // the text on the caller's object. On an exact str the call is `str.isascii` itself.
        if s.is_exact_instance_of::<PyString>()
            && s.call_method0(intern!(py, "isascii"))?.is_truthy()?
        {
            let mut size: ffi::Py_ssize_t = 0;
            // SAFETY: s is a str; for an ASCII str the UTF-8 form is the object's own data (no
            // copy is made), valid while s is alive, which it is for this call.
            let ptr = unsafe { ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut size) };
            if ptr.is_null() {
                return Err(PyErr::fetch(py));
            }
            // SAFETY: ptr/size as returned above.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size as usize) };
            escape_ascii(&mut self.out, bytes).map_err(mem)?;
        } else {
            self.non_ascii(s)?;
        }
        self.put(b"\"")
    }

    /// A string that is not (exactly) ASCII, read in place: one pass sizes its escaped
    /// UTF-8 (so the output grows once, to that size), a second writes it. The limited API
    /// has no view of a str's characters; `PyUnicode_ReadChar` reads one without a copy.
    fn non_ascii(&mut self, s: &Bound<'_, PyString>) -> PyResult<()> {
        let py = s.py();
        // SAFETY: s is a str.
        let len = unsafe { ffi::PyUnicode_GetLength(s.as_ptr()) };
        if len < 0 {
            return Err(PyErr::fetch(py));
        }
        let read = |i: ffi::Py_ssize_t| -> PyResult<u32> {
            // SAFETY: s is a str (immutable) and 0 <= i < its length.
            let c = unsafe { ffi::PyUnicode_ReadChar(s.as_ptr(), i) };
            if c == u32::MAX {
                return Err(PyErr::fetch(py));
            }
            Ok(c)
        };
        let mut size = 0usize;
        for i in 0..len {
            size = size.saturating_add(escaped_len(read(i)?));
        }
        self.out.reserve(size).map_err(mem)?;
        // Every read succeeded above, and a str does not change.
        let chars = (0..len).map(|i| read(i).unwrap_or(u32::MAX));
        escape_chars(&mut self.out, chars).map_err(mem)
    }
}

/// The bytes `c` takes in the JSON output (escaped, or as UTF-8).
fn escaped_len(c: u32) -> usize {
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

/// Decimal digits of an int (or int subclass) from its exact integer value, without running
/// any Python code: `PyNumber_ToBase` takes the value through `PyNumber_Index` (which, for an
/// int subclass, copies the value into an exact int without calling `__index__`) and formats
/// it with int's own formatter, so an overridden `__repr__`/`__str__` is never used.
fn int_text(i: &Bound<'_, PyInt>) -> PyResult<String> {
    if let Ok(v) = i.extract::<i64>() {
        return Ok(v.to_string());
    }
    // SAFETY: i is a valid int object; the result is a new reference or NULL with an error.
    let text = unsafe { ffi::PyNumber_ToBase(i.as_ptr(), 10) };
    if text.is_null() {
        return Err(PyErr::fetch(i.py()));
    }
    // SAFETY: a new, owned reference.
    let text = unsafe { Bound::from_owned_ptr(i.py(), text) };
    let text = text.cast_into::<PyString>()?;
    let text = text.to_str()?;
    // Defence in depth: only an optional sign and digits may reach the plaintext.
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PyValueError::new_err(
            "int formatting produced unexpected text",
        ));
    }
    Ok(text.to_owned())
}

/// A finite float as JSON, written exactly as Python's `float.__repr__` (and so json.dumps)
/// writes it: shortest round-trip digits, positional for exponents -4..16 (with ".0" when
/// integral), otherwise `d.ddde+XX`. NaN and infinities are refused.
fn float_text(v: f64) -> PyResult<String> {
    if !v.is_finite() {
        return Err(PyValueError::new_err(
            "Out of range float values are not JSON compliant",
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

fn escape_byte(out: &mut SecretBuf, b: u8) -> nomyo_core::Result<()> {
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

fn unicode_escape(out: &mut SecretBuf, c: u32) -> nomyo_core::Result<()> {
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

/// Escape ASCII `bytes` into `out`, copying runs that need no escaping in one piece (runs are
/// found 8 bytes at a time).
fn escape_ascii(out: &mut SecretBuf, bytes: &[u8]) -> nomyo_core::Result<()> {
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
fn escape_chars(out: &mut SecretBuf, chars: impl Iterator<Item = u32>) -> nomyo_core::Result<()> {
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
                return Err(nomyo_core::Error::Value(
                    "a string contains a lone surrogate, which is not valid Unicode".into(),
                ));
            }
        }
        out.extend_from_slice(&block[..n])
    })();
    // `block` is wiped on drop (Zeroizing).
    result
}

/// Serialize `obj` as compact JSON into a new secret buffer.
pub fn dumps(obj: &Bound<'_, PyAny>) -> PyResult<SecretBuf> {
    let mut w = Writer {
        out: SecretBuf::with_capacity(4096).map_err(mem)?,
    };
    w.value(obj, 0)?;
    Ok(w.out)
}

/// Parse decrypted JSON into Python objects (no string cache, floats as float).
pub fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let parser = jiter::PythonParse {
        // Python servers' json.dumps writes NaN and Infinity by default.
        allow_inf_nan: true,
        cache_mode: jiter::StringCacheMode::None,
        partial_mode: jiter::PartialMode::Off,
        catch_duplicate_keys: false,
        float_mode: jiter::FloatMode::Float,
    };
    parser.python_parse(py, data).map_err(|e| {
        EnvelopeError::new_err(format!(
            "decrypted payload is not valid JSON: {} at byte {}",
            e.error_type, e.index
        ))
    })
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
