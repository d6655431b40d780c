//! JSON between Python objects and native secret memory, with no Python copy in between.
//!
//! [`dumps`] walks the caller's objects and writes compact JSON straight into a
//! [`SecretBuf`]. ASCII strings are read in place; other strings are read in place one code
//! point at a time (`PyUnicode_ReadChar`), with no scratch copy and no UTF-8 copy cached on the
//! caller's objects, into output reserved at their exact escaped size, so the locked memory a
//! request takes is about its UTF-8 size whatever the script. [`loads`] parses decrypted
//! bytes into new Python objects with jiter, string cache off, so no decoded string outlives
//! the objects handed to the caller.

use nomyo_core::json::{escaped_len, Scalar, Writer};
use nomyo_core::secret::SecretBuf;
use pyo3::exceptions::{PyRecursionError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::{CoreError, EnvelopeError};

const MAX_DEPTH: usize = 256;

/// The walk over the caller's objects, writing through the core's JSON [`Writer`].
struct Walk {
    w: Writer,
}

fn mem(e: nomyo_core::Error) -> PyErr {
    CoreError(e).into()
}

/// `obj` as a JSON scalar, or None when it is a string or a container.
fn scalar(obj: &Bound<'_, PyAny>) -> PyResult<Option<Scalar>> {
    Ok(Some(if obj.is_none() {
        Scalar::Null
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Scalar::Bool(b.is_true())
    } else if let Ok(i) = obj.cast::<PyInt>() {
        Scalar::Int(int_text(i)?)
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        Scalar::Float(f.value())
    } else {
        return Ok(None);
    }))
}

impl Walk {
    fn value(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<()> {
        if depth > MAX_DEPTH {
            return Err(PyRecursionError::new_err(
                "JSON nesting too deep (or a circular reference)",
            ));
        }
        if let Ok(s) = obj.cast::<PyString>() {
            return self.string(s);
        }
        if let Some(value) = scalar(obj)? {
            return self.w.scalar(&value).map_err(mem);
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

    fn dict(&mut self, d: &Bound<'_, PyDict>, depth: usize) -> PyResult<()> {
        // Walk a snapshot (a new list of (key, value) tuples, holding references): PyO3's dict
        // iterator panics if the dict changes size, and a finalizer run by the garbage
        // collector could change it mid-walk. `PyDict_Items` is the C function, so a dict
        // subclass cannot hook it.
        let items = d.items();
        self.w.begin_object().map_err(mem)?;
        for item in items.iter() {
            let item = item.cast_into::<PyTuple>()?;
            self.key(&item.get_item(0)?)?;
            self.value(&item.get_item(1)?, depth + 1)?;
        }
        self.w.end_object().map_err(mem)
    }

    /// A dict key. Non-string keys are formatted natively (never through `repr()`, which a
    /// subclass could override): an int subclass such as IntEnum gives its integer value, as
    /// json.dumps does.
    fn key(&mut self, k: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(s) = k.cast::<PyString>() {
            self.string(s)?;
            return self.w.colon().map_err(mem);
        }
        match scalar(k)? {
            Some(key) => self.w.scalar_key(&key).map_err(mem),
            None => Err(PyTypeError::new_err(format!(
                "keys must be str, int, float, bool or None, not {}",
                k.get_type().name()?
            ))),
        }
    }

    fn seq<'py>(
        &mut self,
        items: impl Iterator<Item = Bound<'py, PyAny>>,
        depth: usize,
    ) -> PyResult<()> {
        self.w.begin_array().map_err(mem)?;
        for item in items {
            self.value(&item, depth + 1)?;
        }
        self.w.end_array().map_err(mem)
    }

    fn string(&mut self, s: &Bound<'_, PyString>) -> PyResult<()> {
        let py = s.py();
        // Only an exact `str` may take the in-place path: on a subclass `isascii` could be
        // overridden to lie, and `PyUnicode_AsUTF8AndSize` would then cache a UTF-8 copy of
        // the text on the caller's object. On an exact str the call is `str.isascii` itself.
        if !(s.is_exact_instance_of::<PyString>()
            && s.call_method0(intern!(py, "isascii"))?.is_truthy()?)
        {
            return self.non_ascii(s);
        }
        let mut size: ffi::Py_ssize_t = 0;
        // SAFETY: s is a str; for an ASCII str the UTF-8 form is the object's own data (no
        // copy is made), valid while s is alive, which it is for this call.
        let ptr = unsafe { ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut size) };
        if ptr.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: ptr/size as returned above.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size as usize) };
        self.w.ascii_str(bytes).map_err(mem)
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
        // Every read succeeded above, and a str does not change.
        let chars = (0..len).map(|i| read(i).unwrap_or(u32::MAX));
        self.w.chars_str(size, chars).map_err(mem)
    }
}

/// Decimal digits of an int (or int subclass) from its exact integer value, without running
/// any Python code: `PyNumber_ToBase` takes the value through `PyNumber_Index` (which, for an
/// int subclass, copies the value into an exact int without calling `__index__`) and formats
/// it with int's own formatter, so an overridden `__repr__`/`__str__` is never used.
/// (The core's writer checks that only an optional sign and digits reach the plaintext.)
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
    Ok(text.cast_into::<PyString>()?.to_str()?.to_owned())
}

/// Serialize `obj` as compact JSON into a new secret buffer.
pub fn dumps(obj: &Bound<'_, PyAny>) -> PyResult<SecretBuf> {
    let mut walk = Walk {
        w: Writer::with_capacity(4096).map_err(mem)?,
    };
    walk.value(obj, 0)?;
    Ok(walk.w.finish())
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
