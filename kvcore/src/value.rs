//! Typed values: what a client stores, validated against its encoding and kept in a compact form.
//!
//! A [`Value`] is an [`Encoding`] plus the value's bytes in that encoding's canonical form:
//!
//! | encoding  | JSON in and out                  | stored as                      |
//! |-----------|----------------------------------|--------------------------------|
//! | `string`  | string                           | UTF-8                          |
//! | `integer` | number (or string `"42"` in)     | 8 bytes, big-endian `i64`      |
//! | `float`   | number (or string `"1.5"` in)    | 8 bytes, big-endian IEEE 754   |
//! | `boolean` | `true`/`false` (or `"true"` in)  | 1 byte                         |
//! | `binary`  | standard base64 string           | the raw bytes                  |
//! | `json`    | any JSON value                   | compact JSON text              |
//!
//! Values come back in the JSON shape they were given: an integer is returned as a JSON number even
//! when it was sent as the string `"42"`, which is how the original seed sends every value.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text. The default when a request names no encoding.
    #[default]
    String,
    /// A signed 64-bit integer.
    Integer,
    /// A finite 64-bit float.
    Float,
    /// `true` or `false`.
    Boolean,
    /// Arbitrary bytes, base64 in JSON.
    Binary,
    /// Any JSON document.
    Json,
}

impl Encoding {
    /// Every encoding, in a fixed order.
    pub const ALL: [Encoding; 6] = [
        Encoding::String,
        Encoding::Integer,
        Encoding::Float,
        Encoding::Boolean,
        Encoding::Binary,
        Encoding::Json,
    ];

    /// The encoding's number, 1 + its index in [`Encoding::ALL`]: how the store's records and
    /// [digests](crate::Register::digest) name it, the same in every release.
    pub fn tag(self) -> u8 {
        match self {
            Encoding::String => 1,
            Encoding::Integer => 2,
            Encoding::Float => 3,
            Encoding::Boolean => 4,
            Encoding::Binary => 5,
            Encoding::Json => 6,
        }
    }

    /// The encoding's name as used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::String => "string",
            Encoding::Integer => "integer",
            Encoding::Float => "float",
            Encoding::Boolean => "boolean",
            Encoding::Binary => "binary",
            Encoding::Json => "json",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encoding {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.as_str() == name)
            .ok_or_else(|| Error::UnknownEncoding {
                name: name.to_owned(),
            })
    }
}

/// A validated value in its canonical encoded form. Cloning is cheap (the bytes are shared).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Value {
    encoding: Encoding,
    bytes: Bytes,
}

impl Value {
    /// A `string` value.
    pub fn string(s: impl Into<String>) -> Self {
        Self::raw(Encoding::String, Bytes::from(s.into()))
    }

    /// An `integer` value.
    pub fn integer(i: i64) -> Self {
        Self::raw(Encoding::Integer, Bytes::copy_from_slice(&i.to_be_bytes()))
    }

    /// A `float` value; `None` when `f` is NaN or infinite.
    pub fn float(f: f64) -> Option<Self> {
        f.is_finite()
            .then(|| Self::raw(Encoding::Float, Bytes::copy_from_slice(&f.to_be_bytes())))
    }

    /// A `boolean` value.
    pub fn boolean(b: bool) -> Self {
        Self::raw(
            Encoding::Boolean,
            Bytes::from_static(if b { &[1] } else { &[0] }),
        )
    }

    /// A `binary` value.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Self::raw(Encoding::Binary, b.into())
    }

    /// A `json` value.
    pub fn json(v: &serde_json::Value) -> Self {
        Self::raw(Encoding::Json, Bytes::from(v.to_string()))
    }

    fn raw(encoding: Encoding, bytes: Bytes) -> Self {
        Value { encoding, bytes }
    }

    /// Validates `json` against `encoding` and encodes it.
    ///
    /// Integers, floats and booleans are also accepted as JSON strings (`"42"`, `"1.5"`, `"true"`).
    ///
    /// ```
    /// use kvcore::{Encoding, Value};
    /// use serde_json::json;
    ///
    /// let v = Value::from_json(Encoding::Integer, &json!("42")).unwrap();
    /// assert_eq!(v.to_json(), json!(42));
    /// assert!(Value::from_json(Encoding::Integer, &json!("forty-two")).is_err());
    /// ```
    pub fn from_json(encoding: Encoding, json: &serde_json::Value) -> Result<Self> {
        use serde_json::Value as J;
        let fail = |reason: String| Err(Error::invalid_value(encoding, reason));
        match encoding {
            Encoding::String => match json {
                J::String(s) => Ok(Value::string(s.as_str())),
                other => fail(format!("expected a JSON string, got {}", kind(other))),
            },
            Encoding::Integer => match json {
                // JSON has one kind of number: `5.0` and `5e0` are the integer 5.
                J::Number(n) => match n.as_i64().or_else(|| n.as_f64().and_then(whole_number)) {
                    Some(i) => Ok(Value::integer(i)),
                    None => fail(format!("{n} is not an integer in the signed 64-bit range")),
                },
                J::String(s) => match s.parse::<i64>() {
                    Ok(i) => Ok(Value::integer(i)),
                    Err(_) => fail(format!(
                        "{s:?} is not an integer in the signed 64-bit range"
                    )),
                },
                other => fail(format!(
                    "expected a number or numeric string, got {}",
                    kind(other)
                )),
            },
            Encoding::Float => {
                let f = match json {
                    J::Number(n) => n.as_f64(),
                    J::String(s) => s.trim().parse::<f64>().ok(),
                    other => {
                        return fail(format!(
                            "expected a number or numeric string, got {}",
                            kind(other)
                        ))
                    }
                };
                match f.and_then(Value::float) {
                    Some(v) => Ok(v),
                    None => fail(format!("{json} is not a finite number")),
                }
            }
            Encoding::Boolean => match json {
                J::Bool(b) => Ok(Value::boolean(*b)),
                J::String(s) if s == "true" => Ok(Value::boolean(true)),
                J::String(s) if s == "false" => Ok(Value::boolean(false)),
                other => fail(format!("expected true or false, got {other}")),
            },
            Encoding::Binary => match json {
                J::String(s) => match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(bytes) => Ok(Value::binary(bytes)),
                    Err(e) => fail(format!("not valid standard base64: {e}")),
                },
                other => fail(format!("expected a base64 string, got {}", kind(other))),
            },
            Encoding::Json => Ok(Value::json(json)),
        }
    }

    /// Decodes the canonical bytes of `encoding` (as produced by [`Value::as_bytes`]),
    /// checking that they are well formed.
    pub fn from_bytes(encoding: Encoding, bytes: Bytes) -> Result<Self> {
        let ok = match encoding {
            Encoding::String => std::str::from_utf8(&bytes).is_ok(),
            Encoding::Integer => bytes.len() == 8,
            Encoding::Float => {
                <[u8; 8]>::try_from(&bytes[..]).is_ok_and(|b| f64::from_be_bytes(b).is_finite())
            }
            Encoding::Boolean => matches!(&bytes[..], [0] | [1]),
            Encoding::Binary => true,
            Encoding::Json => serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok(),
        };
        if ok {
            Ok(Value::raw(encoding, bytes))
        } else {
            Err(Error::invalid_value(encoding, "malformed encoded bytes"))
        }
    }

    /// The value's encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The canonical encoded bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Size of the encoded bytes; this is what the value limit and memory budget count.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the encoded form is empty (only possible for `string` and `binary`).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The integer, if this is an `integer` value.
    pub fn as_i64(&self) -> Option<i64> {
        match self.encoding {
            Encoding::Integer => Some(i64::from_be_bytes(self.bytes[..].try_into().ok()?)),
            _ => None,
        }
    }

    /// The text, if this is a `string` value.
    pub fn as_str(&self) -> Option<&str> {
        match self.encoding {
            Encoding::String => std::str::from_utf8(&self.bytes).ok(),
            _ => None,
        }
    }

    /// The value in the JSON shape of its encoding.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        let b = &self.bytes[..];
        match self.encoding {
            Encoding::String => J::String(String::from_utf8_lossy(b).into_owned()),
            Encoding::Integer => J::from(self.as_i64().unwrap_or_default()),
            Encoding::Float => {
                let f = b.try_into().map(f64::from_be_bytes).unwrap_or_default();
                serde_json::Number::from_f64(f).map_or(J::Null, J::Number)
            }
            Encoding::Boolean => J::Bool(b == [1]),
            Encoding::Binary => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
            Encoding::Json => serde_json::from_slice(b).unwrap_or(J::Null),
        }
    }
}

/// A [`Value`] serialized in the JSON shape of its encoding, without building a
/// `serde_json::Value` first. See [`Value::as_json`].
#[derive(Debug, Clone, Copy)]
pub struct JsonView<'a>(&'a Value);

impl Value {
    /// A view that serializes as [`to_json`](Value::to_json) would, straight into the output.
    pub fn as_json(&self) -> JsonView<'_> {
        JsonView(self)
    }
}

impl Serialize for JsonView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = self.0;
        match v.encoding {
            Encoding::String => s.serialize_str(&String::from_utf8_lossy(&v.bytes)),
            Encoding::Integer => s.serialize_i64(v.as_i64().unwrap_or_default()),
            Encoding::Boolean => s.serialize_bool(v.bytes[..] == [1]),
            Encoding::Binary => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&v.bytes))
            }
            Encoding::Float | Encoding::Json => v.to_json().serialize(s),
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({}: {})", self.encoding, self.to_json())
    }
}

/// In JSON (and any human-readable format) a value is `{"encoding": ..., "value": ...}` in the
/// JSON shape of its encoding. In binary formats (the peer protocol) it is the encoding and the
/// stored bytes as they are: no base64, no JSON re-encoding between nodes. Either way it is
/// validated again on the way in, since peer input is untrusted too.
impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            #[derive(Serialize)]
            struct Wire<'a> {
                encoding: Encoding,
                value: JsonView<'a>,
            }
            return Wire {
                encoding: self.encoding,
                value: self.as_json(),
            }
            .serialize(s);
        }
        #[derive(Serialize)]
        struct Stored<'a>(Encoding, #[serde(with = "raw_bytes")] &'a [u8]);
        Stored(self.encoding, &self.bytes).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            #[derive(Deserialize)]
            struct Wire {
                encoding: Encoding,
                value: serde_json::Value,
            }
            let w = Wire::deserialize(d)?;
            return Value::from_json(w.encoding, &w.value).map_err(serde::de::Error::custom);
        }
        #[derive(Deserialize)]
        struct Stored(Encoding, #[serde(with = "raw_bytes")] Vec<u8>);
        let Stored(encoding, bytes) = Stored::deserialize(d)?;
        Value::from_bytes(encoding, Bytes::from(bytes)).map_err(serde::de::Error::custom)
    }
}

/// Bytes as one serde byte string (a length and the bytes), not a sequence of numbers.
mod raw_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// `f` as an `i64` if it is a whole number below 2^53 in magnitude: how a number written with a
/// fraction or exponent is read as an integer, for values and for integer fields of requests
/// alike. From 2^53 on a JSON number parsed as an f64 may have been rounded
/// (`9007199254740993.0` reads as 2^53, `-9223372036854775809` as -2^63), so it is refused
/// rather than taken as a number the client did not send. (Below, only a fraction too small
/// for a double to hold, such as `1.0000000000000001`, is lost in parsing.)
pub fn whole_number(f: f64) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    (f.fract() == 0.0 && f.abs() < EXACT).then_some(f as i64)
}

fn kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value as J;
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

/// Constructors for the store, which keeps values as an encoding and bytes of its own.
impl Value {
    /// A value from a copy of bytes the store wrote from a [`Value`] of this `encoding`; they
    /// were validated on the way in, so they are not validated again.
    pub(crate) fn from_stored(encoding: Encoding, bytes: Bytes) -> Self {
        Value::raw(encoding, bytes)
    }
}

/// The common encodings from plain Rust values, so a client writes `"onto".into()` or
/// `42.into()`. Floats have no such conversion: NaN and infinities are not values
/// ([`Value::float`] says so with an `Option`).
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::string(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::string(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::integer(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::boolean(b)
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Self {
        Value::binary(b)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::binary(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn tags_number_the_encodings_from_one_in_their_order() {
        let tags: Vec<u8> = Encoding::ALL.iter().map(|e| e.tag()).collect();
        assert_eq!(tags, [1, 2, 3, 4, 5, 6]);
    }

    fn ok(e: Encoding, j: serde_json::Value) -> serde_json::Value {
        Value::from_json(e, &j).unwrap().to_json()
    }

    fn err(e: Encoding, j: serde_json::Value) -> Error {
        Value::from_json(e, &j).unwrap_err()
    }

    #[test]
    fn values_keep_their_json_shape() {
        assert_eq!(ok(Encoding::String, json!("onto")), json!("onto"));
        assert_eq!(ok(Encoding::Integer, json!(-7)), json!(-7));
        assert_eq!(ok(Encoding::Float, json!(1.5)), json!(1.5));
        assert_eq!(ok(Encoding::Boolean, json!(false)), json!(false));
        assert_eq!(ok(Encoding::Binary, json!("AAEC/w==")), json!("AAEC/w=="));
        let doc = json!({"a": [1, 2, {"b": null}], "c": "d"});
        assert_eq!(ok(Encoding::Json, doc.clone()), doc);
        assert_eq!(ok(Encoding::Json, json!(null)), json!(null));
    }

    #[test]
    fn scalars_are_accepted_as_strings_and_returned_typed() {
        assert_eq!(ok(Encoding::Integer, json!("42")), json!(42));
        assert_eq!(ok(Encoding::Float, json!("2.25")), json!(2.25));
        assert_eq!(ok(Encoding::Boolean, json!("true")), json!(true));
        assert_eq!(ok(Encoding::Boolean, json!("false")), json!(false));
    }

    #[test]
    fn whole_numbers_are_integers_however_written_up_to_2_pow_53() {
        let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        assert_eq!(ok(Encoding::Integer, parse("5.0")), json!(5));
        assert_eq!(ok(Encoding::Integer, parse("-3e2")), json!(-300));
        assert_eq!(
            ok(Encoding::Integer, parse("9007199254740991.0")),
            json!(9_007_199_254_740_991i64)
        );
        // From 2^53 a number read as a float may have been rounded (the first two read as
        // 2^53): refused, not stored rounded.
        for text in [
            "9007199254740992.0",
            "9007199254740993.0",
            "9007199254740994.0",
            "-9223372036854775809",
            "1e19",
            "5.5",
        ] {
            assert_eq!(err(Encoding::Integer, parse(text)).code(), "invalid_value");
        }
    }

    #[test]
    fn mismatches_name_the_encoding_and_reason() {
        let e = err(Encoding::Integer, json!("forty"));
        assert_eq!(e.code(), "invalid_value");
        assert!(e.to_string().contains("integer"), "{e}");
        assert!(e.to_string().contains("forty"), "{e}");
        for (enc, j) in [
            (Encoding::String, json!(1)),
            (Encoding::Integer, json!(1.5)),
            (Encoding::Integer, json!(9_223_372_036_854_775_808u64)),
            (Encoding::Integer, json!(true)),
            (Encoding::Float, json!("nan")),
            (Encoding::Float, json!("inf")),
            (Encoding::Float, json!([1.0])),
            (Encoding::Boolean, json!("yes")),
            (Encoding::Boolean, json!(1)),
            (Encoding::Binary, json!("not base64!")),
            (Encoding::Binary, json!(12)),
        ] {
            let e = err(enc, j.clone());
            assert!(
                matches!(e, Error::InvalidValue { encoding, .. } if encoding == enc),
                "{enc} {j}: {e}"
            );
        }
    }

    #[test]
    fn plain_rust_values_convert_to_their_encoding() {
        assert_eq!(Value::from("onto"), Value::string("onto"));
        assert_eq!(
            Value::from(String::from("onto")).encoding(),
            Encoding::String
        );
        assert_eq!(Value::from(-7i64).as_i64(), Some(-7));
        assert_eq!(Value::from(true).to_json(), json!(true));
        assert_eq!(Value::from(vec![0xde, 0xad]).to_json(), json!("3q0="));
        assert_eq!(
            Value::from(Bytes::from_static(b"x")).encoding(),
            Encoding::Binary
        );
    }

    #[test]
    fn unknown_encodings_are_refused_by_name() {
        let e = "varchar".parse::<Encoding>().unwrap_err();
        assert_eq!(e.code(), "unknown_encoding");
        assert!(e.to_string().contains("varchar"));
        for enc in Encoding::ALL {
            assert_eq!(enc.as_str().parse::<Encoding>().unwrap(), enc);
        }
    }

    #[test]
    fn from_bytes_rejects_malformed_payloads() {
        assert!(Value::from_bytes(Encoding::Integer, Bytes::from_static(&[1, 2])).is_err());
        assert!(Value::from_bytes(Encoding::Boolean, Bytes::from_static(&[2])).is_err());
        assert!(Value::from_bytes(Encoding::String, Bytes::from_static(&[0xff])).is_err());
        assert!(Value::from_bytes(Encoding::Json, Bytes::from_static(b"{")).is_err());
        let nan = f64::NAN.to_be_bytes();
        assert!(Value::from_bytes(Encoding::Float, Bytes::copy_from_slice(&nan)).is_err());
    }

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<String>().prop_map(Value::string),
            any::<i64>().prop_map(Value::integer),
            any::<f64>().prop_filter_map("finite", Value::float),
            any::<bool>().prop_map(Value::boolean),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::binary),
            any::<(i32, String)>().prop_map(|(i, s)| Value::json(&json!({"i": i, "s": s}))),
        ]
    }

    proptest! {
        #[test]
        fn json_round_trip(v in any_value()) {
            let back = Value::from_json(v.encoding(), &v.to_json()).unwrap();
            prop_assert_eq!(&back, &v);
            let wire = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&wire).unwrap();
            prop_assert_eq!(&back, &v);
            let back = Value::from_bytes(v.encoding(), v.as_bytes().clone()).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(serde_json::to_value(v.as_json()).unwrap(), v.to_json());
        }

        #[test]
        fn integer_strings_round_trip(i in any::<i64>()) {
            let v = Value::from_json(Encoding::Integer, &json!(i.to_string())).unwrap();
            prop_assert_eq!(v.as_i64(), Some(i));
            prop_assert_eq!(v.to_json(), json!(i));
        }
    }
}
