//! JSON between Python objects and native secret memory, with no Python copy in between.
//!
//! [`dumps`] walks the caller's objects and writes compact JSON straight into a
//! [`SecretBuf`]. ASCII strings are read in place; other strings are read through
//! `PyUnicode_AsUCS4` into a secret scratch buffer, so no UTF-8 copy is cached on the caller's
//! objects. [`loads`] parses decrypted bytes into new Python objects with jiter, string cache
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
    scratch: SecretBuf,
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
        if let Ok(v) = i.extract::<i64>() {
            return self.put(v.to_string().as_bytes());
        }
        // Arbitrary precision: int.__repr__ is plain decimal digits.
        let text = i.repr()?;
        self.put(text.to_str()?.as_bytes())
    }

    fn float(&mut self, v: f64) -> PyResult<()> {
        if !v.is_finite() {
            return Err(PyValueError::new_err(
                "Out of range float values are not JSON compliant",
            ));
        }
        self.put(format!("{v:?}").as_bytes())
    }

    fn dict(&mut self, d: &Bound<'_, PyDict>, depth: usize) -> PyResult<()> {
        self.put(b"{")?;
        for (n, (k, v)) in d.iter().enumerate() {
            if n > 0 {
                self.put(b",")?;
            }
            self.key(&k)?;
            self.put(b":")?;
            self.value(&v, depth + 1)?;
        }
        self.put(b"}")
    }

    fn key(&mut self, k: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(s) = k.cast::<PyString>() {
            return self.string(s);
        }
        let text = if k.is_none() {
            "null".to_owned()
        } else if let Ok(b) = k.cast::<PyBool>() {
            (if b.is_true() { "true" } else { "false" }).to_owned()
        } else if let Ok(f) = k.cast::<PyFloat>() {
            if !f.value().is_finite() {
                return Err(PyValueError::new_err(
                    "Out of range float values are not JSON compliant",
                ));
            }
            k.repr()?.to_str()?.to_owned()
        } else if k.cast::<PyInt>().is_ok() {
            k.repr()?.to_str()?.to_owned()
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
        if s.call_method0(intern!(py, "isascii"))?.is_truthy()? {
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
            self.ucs4(s)?;
        }
        self.put(b"\"")
    }

    fn ucs4(&mut self, s: &Bound<'_, PyString>) -> PyResult<()> {
        // SAFETY: s is a str.
        let len = unsafe { ffi::PyUnicode_GetLength(s.as_ptr()) };
        if len < 0 {
            return Err(PyErr::fetch(s.py()));
        }
        let len = len as usize;
        self.scratch.clear();
        self.scratch.resize_zeroed(len * 4).map_err(mem)?;
        // SAFETY: scratch is page-aligned (so u32-aligned) and holds len * 4 bytes.
        let rc = unsafe {
            ffi::PyUnicode_AsUCS4(
                s.as_ptr(),
                self.scratch
                    .as_mut_slice()
                    .as_mut_ptr()
                    .cast::<ffi::Py_UCS4>(),
                len as ffi::Py_ssize_t,
                0,
            )
        };
        if rc.is_null() {
            return Err(PyErr::fetch(s.py()));
        }
        let Writer { out, scratch } = self;
        let chars = scratch
            .as_slice()
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
        let result = escape_chars(out, chars).map_err(mem);
        scratch.clear();
        result
    }
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

fn escape_ascii(out: &mut SecretBuf, bytes: &[u8]) -> nomyo_core::Result<()> {
    out.reserve(bytes.len())?;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if needs_escape(b) {
            out.extend_from_slice(&bytes[start..i])?;
            escape_byte(out, b)?;
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..])
}

fn escape_chars(out: &mut SecretBuf, chars: impl Iterator<Item = u32>) -> nomyo_core::Result<()> {
    let mut utf8 = [0u8; 4];
    for c in chars {
        if c < 0x80 {
            let b = c as u8;
            if needs_escape(b) {
                escape_byte(out, b)?;
            } else {
                out.push(b)?;
            }
        } else if let Some(ch) = char::from_u32(c) {
            out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes())?;
        } else {
            utf8.fill(0);
            return Err(nomyo_core::Error::Value(
                "a string contains a lone surrogate, which is not valid Unicode".into(),
            ));
        }
    }
    utf8.fill(0);
    Ok(())
}

/// Serialize `obj` as compact JSON into a new secret buffer.
pub fn dumps(obj: &Bound<'_, PyAny>) -> PyResult<SecretBuf> {
    let mut w = Writer {
        out: SecretBuf::with_capacity(4096).map_err(mem)?,
        scratch: SecretBuf::with_capacity(0).map_err(mem)?,
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
