//! JSON between Python objects and native secret memory, with no Python copy in between.
//!
//! [`dumps`] hands the caller's objects to the core's walk (`nomyo_core::json::write`), which
//! writes compact JSON straight into a [`SecretBuf`]; this module says what each object is and
//! reads its strings in place: ASCII as the str's own bytes, others one code point at a time
//! (`PyUnicode_ReadChar`), with no scratch copy and no UTF-8 copy cached on the caller's
//! objects. [`loads`] parses decrypted bytes into new Python objects with jiter, string cache
//! off, so no decoded string outlives the objects handed to the caller.

use nomyo_core::json::{self, escaped_len, Node, Scalar, Writer};
use nomyo_core::secret::SecretBuf;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::{CoreError, EnvelopeError};

/// A Python object as the core's JSON walk sees it (`nomyo_core::json::write`).
struct Obj<'py>(Bound<'py, PyAny>);

impl json::Value for Obj<'_> {
    type Error = PyErr;

    fn node(&self) -> PyResult<Node<Self>> {
        let obj = &self.0;
        Ok(if obj.is_instance_of::<PyString>() {
            Node::Str
        } else if obj.is_none() {
            Node::Scalar(Scalar::Null)
        } else if let Ok(b) = obj.cast::<PyBool>() {
            Node::Scalar(Scalar::Bool(b.is_true()))
        } else if let Ok(i) = obj.cast::<PyInt>() {
            Node::Scalar(Scalar::Int(int_text(i)?))
        } else if let Ok(f) = obj.cast::<PyFloat>() {
            Node::Scalar(Scalar::Float(f.value()))
        } else if let Ok(d) = obj.cast::<PyDict>() {
            // A snapshot (a new list of (key, value) tuples, holding references): a finalizer
            // run by the garbage collector could change the dict mid-walk. `PyDict_Items` is
            // the C function, so a dict subclass cannot hook it.
            Node::Object(Obj(d.items().into_any()))
        } else if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
            Node::Array
        } else {
            Node::Other
        })
    }

    /// A list is read at its current length (a finalizer could shrink it mid-walk).
    fn item(&self, index: usize) -> PyResult<Option<Self>> {
        let item = match self.0.cast::<PyList>() {
            Ok(list) => (index < list.len()).then(|| list.get_item(index)),
            Err(_) => {
                let tuple = self.0.cast::<PyTuple>()?;
                (index < tuple.len()).then(|| tuple.get_item(index))
            }
        };
        Ok(item.transpose()?.map(Obj))
    }

    /// `self` is the snapshot [`Node::Object`] gave: a list of (key, value) tuples.
    fn pair(&self, index: usize) -> PyResult<Option<(Self, Self)>> {
        let items = self.0.cast::<PyList>()?;
        if index >= items.len() {
            return Ok(None);
        }
        let pair = items.get_item(index)?.cast_into::<PyTuple>()?;
        Ok(Some((Obj(pair.get_item(0)?), Obj(pair.get_item(1)?))))
    }

    fn write_str(&self, w: &mut Writer) -> PyResult<()> {
        let s = self.0.cast::<PyString>()?;
        // Only an exact `str` may take the in-place path: on a subclass `isascii` could be
        // overridden to lie, and `PyUnicode_AsUTF8AndSize` would then cache a UTF-8 copy of
        // the text on the caller's object. On an exact str the call is `str.isascii` itself,
        // and the UTF-8 form of an ASCII str is its own data (no copy is made).
        if s.is_exact_instance_of::<PyString>()
            && s.call_method0(intern!(s.py(), "isascii"))?.is_truthy()?
        {
            return w.ascii_str(s.to_str()?.as_bytes()).map_err(Self::error);
        }
        non_ascii(w, s)
    }

    fn type_name(&self) -> PyResult<String> {
        Ok(self.0.get_type().name()?.to_string())
    }

    fn error(err: nomyo_core::Error) -> PyErr {
        CoreError(err).into()
    }
}

/// A string that is not (exactly) ASCII, read in place: one pass sizes its escaped UTF-8 (so
/// the output grows once, to that size), a second writes it. The limited API has no view of
/// a str's characters; `PyUnicode_ReadChar` reads one without a copy.
fn non_ascii(w: &mut Writer, s: &Bound<'_, PyString>) -> PyResult<()> {
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
    Ok(w.chars_str(size, chars).map_err(CoreError)?)
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
    // SAFETY: i is a valid int object; the result is a new reference, or NULL with an error.
    let text =
        unsafe { Bound::from_owned_ptr_or_err(i.py(), ffi::PyNumber_ToBase(i.as_ptr(), 10)) }?;
    Ok(text.cast_into::<PyString>()?.to_str()?.to_owned())
}

/// Serialize `obj` as compact JSON into a new secret buffer.
pub fn dumps(obj: &Bound<'_, PyAny>) -> PyResult<SecretBuf> {
    let mut w = Writer::with_capacity(4096).map_err(CoreError)?;
    json::write(&mut w, Obj(obj.clone()))?;
    Ok(w.finish())
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
