//! Writing a caller's values as JSON: the walk over containers, keys and nesting depth.
//!
//! The caller says what each of its values is ([`Value::node`]), hands out the items of its
//! containers one at a time, and writes its own strings ([`Value::write_str`], so text can be
//! read in place); [`write`] does the rest the way `json.dumps` does it: objects and arrays in
//! order, non-string keys as their scalar text in quotes, and a clear error for anything else.
//! The walk keeps the containers it is inside on a heap stack of its own, not on the thread's
//! stack: a deep value cannot overflow a small thread stack (a worker thread, musl's 128 KiB).

use super::{Scalar, Writer};
use crate::error::Error;

/// Most containers a value may sit inside; deeper (or a circular reference) is
/// [`Error::TooDeep`].
pub const MAX_DEPTH: usize = 256;

/// What one value is.
pub enum Node<V> {
    Scalar(Scalar),
    /// A string: the walk asks the value to write itself ([`Value::write_str`]).
    Str,
    /// An object, as the value the walk reads its pairs from ([`Value::pair`]): the object
    /// itself or a snapshot of it.
    Object(V),
    /// An array: the walk reads its items ([`Value::item`]).
    Array,
    /// Anything else, which JSON cannot hold.
    Other,
}

/// A value the walk can write (the binding implements it for Python objects).
pub trait Value: Sized {
    type Error;

    /// What this value is.
    fn node(&self) -> Result<Node<Self>, Self::Error>;

    /// Write this value, a string, through [`Writer::ascii_str`] or [`Writer::chars_str`].
    fn write_str(&self, w: &mut Writer) -> Result<(), Self::Error>;

    /// Item `index` of this array, or `None` past its end.
    fn item(&self, index: usize) -> Result<Option<Self>, Self::Error>;

    /// Pair `index` (key, value) of this object (as [`Node::Object`] gave it), or `None` past
    /// its end.
    fn pair(&self, index: usize) -> Result<Option<(Self, Self)>, Self::Error>;

    /// The name of this value's type, for the error saying it cannot be written.
    fn type_name(&self) -> Result<String, Self::Error>;

    /// A core error as this value's error type.
    fn error(err: Error) -> Self::Error;
}

/// A container being written, and the index of its next item.
enum Open<V> {
    Array(V, usize),
    Object(V, usize),
}

/// Write `value` (and everything in it) to `w`.
pub fn write<V: Value>(w: &mut Writer, value: V) -> Result<(), V::Error> {
    let mut open: Vec<Open<V>> = Vec::new();
    let mut next = Some(value);
    loop {
        if let Some(value) = next.take() {
            if open.len() > MAX_DEPTH {
                return Err(V::error(Error::TooDeep(MAX_DEPTH)));
            }
            match value.node()? {
                Node::Scalar(scalar) => w.scalar(&scalar).map_err(V::error)?,
                Node::Str => value.write_str(w)?,
                Node::Object(pairs) => {
                    w.begin_object().map_err(V::error)?;
                    open.push(Open::Object(pairs, 0));
                }
                Node::Array => {
                    w.begin_array().map_err(V::error)?;
                    open.push(Open::Array(value, 0));
                }
                Node::Other => {
                    return Err(cannot_write(
                        &value,
                        "Object of type {} is not JSON serializable",
                    ))
                }
            }
        }
        match open.last_mut() {
            None => return Ok(()),
            Some(Open::Array(array, index)) => match array.item(*index)? {
                Some(item) => {
                    *index += 1;
                    next = Some(item);
                }
                None => {
                    open.pop();
                    w.end_array().map_err(V::error)?;
                }
            },
            Some(Open::Object(object, index)) => match object.pair(*index)? {
                Some((key, item)) => {
                    *index += 1;
                    write_key(w, &key)?;
                    next = Some(item);
                }
                None => {
                    open.pop();
                    w.end_object().map_err(V::error)?;
                }
            },
        }
    }
}

/// A key: a string as itself, a scalar as its text in quotes (as `json.dumps` writes them).
fn write_key<V: Value>(w: &mut Writer, key: &V) -> Result<(), V::Error> {
    match key.node()? {
        Node::Str => {
            key.write_str(w)?;
            w.colon().map_err(V::error)
        }
        Node::Scalar(scalar) => w.scalar_key(&scalar).map_err(V::error),
        _ => Err(cannot_write(
            key,
            "keys must be str, int, float, bool or None, not {}",
        )),
    }
}

/// [`Error::Type`] for `value`, its type name in place of `{}` in `message`.
fn cannot_write<V: Value>(value: &V, message: &str) -> V::Error {
    match value.type_name() {
        Ok(name) => V::error(Error::Type(message.replacen("{}", &name, 1))),
        Err(err) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as J};

    /// serde_json's values, plus a value JSON cannot hold, containers of test values, and
    /// `Nest(n)`: `n` arrays around a 0, made one level at a time as the walk reads them.
    #[derive(Debug, Clone)]
    enum Test {
        Json(J),
        Opaque,
        List(Vec<Test>),
        Keyed(Vec<(Test, Test)>),
        Nest(usize),
    }

    impl Value for Test {
        type Error = Error;

        fn node(&self) -> Result<Node<Self>, Error> {
            Ok(match self {
                Test::Opaque => Node::Other,
                Test::List(_) | Test::Nest(_) | Test::Json(J::Array(_)) => Node::Array,
                Test::Keyed(_) | Test::Json(J::Object(_)) => Node::Object(self.clone()),
                Test::Json(J::Null) => Node::Scalar(Scalar::Null),
                Test::Json(J::Bool(b)) => Node::Scalar(Scalar::Bool(*b)),
                Test::Json(J::Number(n)) if n.is_f64() => {
                    Node::Scalar(Scalar::Float(n.as_f64().unwrap()))
                }
                Test::Json(J::Number(n)) => Node::Scalar(Scalar::Int(n.to_string())),
                Test::Json(J::String(_)) => Node::Str,
            })
        }

        fn item(&self, index: usize) -> Result<Option<Self>, Error> {
            Ok(match self {
                Test::List(items) => items.get(index).cloned(),
                Test::Json(J::Array(items)) => items.get(index).cloned().map(Test::Json),
                Test::Nest(1) => (index == 0).then(|| Test::Json(json!(0))),
                Test::Nest(n) => (index == 0).then(|| Test::Nest(n - 1)),
                _ => unreachable!("only arrays have items"),
            })
        }

        fn pair(&self, index: usize) -> Result<Option<(Self, Self)>, Error> {
            Ok(match self {
                Test::Keyed(pairs) => pairs.get(index).cloned(),
                Test::Json(J::Object(map)) => map
                    .iter()
                    .nth(index)
                    .map(|(k, v)| (Test::Json(k.clone().into()), Test::Json(v.clone()))),
                _ => unreachable!("only objects have pairs"),
            })
        }

        /// ASCII strings as bytes, others as code points (the binding's two paths).
        fn write_str(&self, w: &mut Writer) -> Result<(), Error> {
            let Test::Json(J::String(s)) = self else {
                unreachable!("only strings are written as strings")
            };
            if s.is_ascii() {
                return w.ascii_str(s.as_bytes());
            }
            let size = s.chars().map(|c| super::super::escaped_len(c as u32)).sum();
            w.chars_str(size, s.chars().map(|c| c as u32))
        }

        fn type_name(&self) -> Result<String, Error> {
            Ok(match self {
                Test::Opaque => "Opaque".into(),
                _ => "container".into(),
            })
        }

        fn error(err: Error) -> Error {
            err
        }
    }

    fn written(value: Test) -> Result<String, Error> {
        let mut w = Writer::with_capacity(64)?;
        write(&mut w, value)?;
        Ok(String::from_utf8(w.finish().as_slice().to_vec()).unwrap())
    }

    #[test]
    fn writes_what_serde_json_writes_compactly() {
        // Floats only where Python's repr and serde_json agree (no exponent form).
        let value = json!({
            "model": "m", "n": [1, -2, 3.5, 0.0, null, true, false, []],
            "messages": [{"role": "user", "content": "h\u{e9}llo \"\u{1F600}\"\n\t\u{1}\u{7f}"},
                         {"role": "assistant", "content": "plain \"ascii\"\\ text\r\n"}],
            "empty": {}, "nested": {"a": {"b": [[{}], {"c": [null]}]}}
        });
        let ours = written(Test::Json(value.clone())).unwrap();
        assert_eq!(ours, serde_json::to_string(&value).unwrap());
    }

    #[test]
    fn non_string_keys_are_written_as_their_text_in_quotes() {
        let keyed = Test::Keyed(vec![
            (Test::Json(json!(7)), Test::Json(json!("seven"))),
            (Test::Json(json!(null)), Test::Json(json!(0))),
            (Test::Json(json!(true)), Test::Json(json!(1.5))),
            (Test::Json(json!("s")), Test::List(vec![])),
        ]);
        assert_eq!(
            written(keyed).unwrap(),
            r#"{"7":"seven","null":0,"true":1.5,"s":[]}"#
        );
        let bad_key = Test::Keyed(vec![(Test::List(vec![]), Test::Json(json!(1)))]);
        match written(bad_key) {
            Err(Error::Type(m)) => {
                assert_eq!(
                    m,
                    "keys must be str, int, float, bool or None, not container"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_json_cannot_hold_are_a_type_error_naming_the_type() {
        let value = Test::List(vec![Test::Json(json!(1)), Test::Opaque]);
        match written(value) {
            Err(Error::Type(m)) => {
                assert_eq!(m, "Object of type Opaque is not JSON serializable")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nesting_is_bounded_in_arrays_and_objects() {
        let ok = written(Test::Nest(MAX_DEPTH)).unwrap();
        assert_eq!(ok.len(), 2 * MAX_DEPTH + 1);
        assert!(matches!(
            written(Test::Nest(MAX_DEPTH + 1)),
            Err(Error::TooDeep(MAX_DEPTH))
        ));
        let mut object = Test::Json(json!(0));
        for _ in 0..MAX_DEPTH {
            object = Test::Keyed(vec![(Test::Json(json!("k")), object)]);
        }
        assert!(written(object.clone()).is_ok());
        let deeper = Test::Keyed(vec![(Test::Json(json!("k")), object)]);
        assert!(matches!(written(deeper), Err(Error::TooDeep(MAX_DEPTH))));
    }

    #[test]
    fn deep_values_take_no_thread_stack() {
        // A walk that recursed would take stack for every level (the binding's took about
        // 1 KiB): 256 levels would not fit this 48 KiB thread. This one keeps its containers
        // on the heap.
        let walked = std::thread::Builder::new()
            .stack_size(48 * 1024)
            .spawn(|| {
                let at_limit = written(Test::Nest(MAX_DEPTH)).map(|s| s.len());
                (at_limit, written(Test::Nest(100_000)))
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(walked.0.unwrap(), 2 * MAX_DEPTH + 1);
        assert!(matches!(walked.1, Err(Error::TooDeep(MAX_DEPTH))));
    }
}
