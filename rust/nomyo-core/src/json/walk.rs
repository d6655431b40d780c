//! Writing a caller's values as JSON: the walk over containers, keys and nesting depth.
//!
//! The caller says what each of its values is ([`Value::node`]) and writes its own strings
//! ([`Value::write_str`], so text can be read in place); [`write`] does the rest the way
//! `json.dumps` does it: objects and arrays in order, non-string keys as their scalar text in
//! quotes, and a clear error for anything else.

use super::{Scalar, Writer};
use crate::error::Error;

/// Deepest nesting written; deeper (or a circular reference) is [`Error::TooDeep`].
pub const MAX_DEPTH: usize = 256;

/// What one value is.
pub enum Node {
    Scalar(Scalar),
    /// A string: the walk asks the value to write itself ([`Value::write_str`]).
    Str,
    /// An object: the walk asks for its pairs ([`Value::pairs`]).
    Object,
    /// An array: the walk asks for its items ([`Value::items`]).
    Array,
    /// Anything else, which JSON cannot hold.
    Other,
}

/// The callback [`Value::items`] calls with each item.
pub type EachItem<'a, V, E> = dyn FnMut(&V) -> Result<(), E> + 'a;

/// The callback [`Value::pairs`] calls with each (key, value) pair.
pub type EachPair<'a, V, E> = dyn FnMut(&V, &V) -> Result<(), E> + 'a;

/// A value the walk can write (the binding implements it for Python objects). Containers
/// hand their contents to a callback, so the walk allocates nothing of its own.
pub trait Value: Sized {
    type Error;

    /// What this value is.
    fn node(&self) -> Result<Node, Self::Error>;

    /// Write this value, a string, through [`Writer::ascii_str`] or [`Writer::chars_str`].
    fn write_str(&self, w: &mut Writer) -> Result<(), Self::Error>;

    /// Call `each` with this array's items, in order, until it fails.
    fn items(
        &self,
        each: &mut dyn FnMut(&Self) -> Result<(), Self::Error>,
    ) -> Result<(), Self::Error>;

    /// Call `each` with this object's (key, value) pairs, in order, until it fails.
    fn pairs(&self, each: &mut EachPair<'_, Self, Self::Error>) -> Result<(), Self::Error>;

    /// The name of this value's type, for the error saying it cannot be written.
    fn type_name(&self) -> Result<String, Self::Error>;

    /// A core error as this value's error type.
    fn error(err: Error) -> Self::Error;
}

/// Write `value` (and everything in it) to `w`.
pub fn write<V: Value>(w: &mut Writer, value: &V) -> Result<(), V::Error> {
    write_value(w, value, 0)
}

fn write_value<V: Value>(w: &mut Writer, value: &V, depth: usize) -> Result<(), V::Error> {
    if depth > MAX_DEPTH {
        return Err(V::error(Error::TooDeep(MAX_DEPTH)));
    }
    match value.node()? {
        Node::Scalar(scalar) => w.scalar(&scalar).map_err(V::error),
        Node::Str => value.write_str(w),
        Node::Object => {
            w.begin_object().map_err(V::error)?;
            value.pairs(&mut |key, item| {
                write_key(w, key)?;
                write_value(w, item, depth + 1)
            })?;
            w.end_object().map_err(V::error)
        }
        Node::Array => {
            w.begin_array().map_err(V::error)?;
            value.items(&mut |item| write_value(w, item, depth + 1))?;
            w.end_array().map_err(V::error)
        }
        Node::Other => {
            let name = value.type_name()?;
            let message = format!("Object of type {name} is not JSON serializable");
            Err(V::error(Error::Type(message)))
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
        _ => {
            let name = key.type_name()?;
            let message = format!("keys must be str, int, float, bool or None, not {name}");
            Err(V::error(Error::Type(message)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// serde_json's values, plus a value JSON cannot hold.
    #[derive(Debug)]
    enum Test {
        Json(serde_json::Value),
        Opaque,
        List(Vec<Test>),
        Keyed(Vec<(Test, Test)>),
    }

    impl Value for Test {
        type Error = Error;

        fn node(&self) -> Result<Node, Error> {
            use serde_json::Value as J;
            Ok(match self {
                Test::Opaque => Node::Other,
                Test::List(_) | Test::Json(J::Array(_)) => Node::Array,
                Test::Keyed(_) | Test::Json(J::Object(_)) => Node::Object,
                Test::Json(J::Null) => Node::Scalar(Scalar::Null),
                Test::Json(J::Bool(b)) => Node::Scalar(Scalar::Bool(*b)),
                Test::Json(J::Number(n)) if n.is_f64() => {
                    Node::Scalar(Scalar::Float(n.as_f64().unwrap()))
                }
                Test::Json(J::Number(n)) => Node::Scalar(Scalar::Int(n.to_string())),
                Test::Json(J::String(_)) => Node::Str,
            })
        }

        fn items(&self, each: &mut EachItem<'_, Self, Error>) -> Result<(), Error> {
            match self {
                Test::List(items) => items.iter().try_for_each(each),
                Test::Json(serde_json::Value::Array(items)) => items
                    .iter()
                    .try_for_each(|item| each(&Test::Json(item.clone()))),
                _ => unreachable!("only arrays have items"),
            }
        }

        fn pairs(&self, each: &mut EachPair<'_, Self, Error>) -> Result<(), Error> {
            match self {
                Test::Keyed(pairs) => pairs.iter().try_for_each(|(k, v)| each(k, v)),
                Test::Json(serde_json::Value::Object(map)) => map.iter().try_for_each(|(k, v)| {
                    each(&Test::Json(k.clone().into()), &Test::Json(v.clone()))
                }),
                _ => unreachable!("only objects have pairs"),
            }
        }

        fn write_str(&self, w: &mut Writer) -> Result<(), Error> {
            let Test::Json(serde_json::Value::String(s)) = self else {
                unreachable!("only strings are written as strings")
            };
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

    fn written(value: &Test) -> Result<String, Error> {
        let mut w = Writer::with_capacity(64)?;
        write(&mut w, value)?;
        Ok(String::from_utf8(w.finish().as_slice().to_vec()).unwrap())
    }

    #[test]
    fn writes_what_serde_json_writes_compactly() {
        let value = json!({
            "model": "m", "n": [1, -2, 3.5, 0.0, null, true, false, []],
            "messages": [{"role": "user", "content": "h\u{e9}llo \"\u{1F600}\"\n\t\u{1}\u{7f}"}],
            "empty": {}, "nested": {"a": {"b": [[{}]]}}
        });
        let ours = written(&Test::Json(value.clone())).unwrap();
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
            written(&keyed).unwrap(),
            r#"{"7":"seven","null":0,"true":1.5,"s":[]}"#
        );
        let bad_key = Test::Keyed(vec![(Test::List(vec![]), Test::Json(json!(1)))]);
        match written(&bad_key) {
            Err(Error::Type(m)) => assert!(m.ends_with("not container"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_json_cannot_hold_are_a_type_error_naming_the_type() {
        let value = Test::List(vec![Test::Json(json!(1)), Test::Opaque]);
        match written(&value) {
            Err(Error::Type(m)) => {
                assert_eq!(m, "Object of type Opaque is not JSON serializable")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut value = Test::Json(json!(0));
        for _ in 0..MAX_DEPTH {
            value = Test::List(vec![value]);
        }
        let ok = written(&value).unwrap();
        assert_eq!(ok.len(), 2 * MAX_DEPTH + 1);
        let deeper = Test::List(vec![value]);
        assert!(matches!(written(&deeper), Err(Error::TooDeep(MAX_DEPTH))));
    }
}
