//! The values both protocols carry, with XML-RPC's types as the model (JSON maps onto them),
//! and the errors (faults) every call can end in.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;

use base64::Engine;

/// An XML-RPC value. JSON-RPC values map onto these: numbers to `Int`/`Double`, `null` to
/// `Nil`; `DateTime` and `Base64` come out of JSON as strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `<int>`/`<i4>`, and `<i8>` (the common extension) when it does not fit 32 bits.
    Int(i64),
    Bool(bool),
    String(String),
    Double(f64),
    /// `dateTime.iso8601` as written, e.g. `20261125T17:02:11`.
    DateTime(String),
    Base64(Vec<u8>),
    /// Members in the order they came; names are unique (see [`Members`]).
    Struct(Vec<(String, Value)>),
    Array(Vec<Value>),
    /// The `<nil/>` extension; JSON `null`.
    Nil,
}

/// The type names of XML-RPC, as used in signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Type {
    #[serde(rename = "int", alias = "i4")]
    Int,
    #[serde(rename = "i8")]
    I8,
    #[serde(rename = "boolean")]
    Bool,
    #[serde(rename = "string")]
    String,
    #[serde(rename = "double")]
    Double,
    #[serde(rename = "dateTime.iso8601")]
    DateTime,
    #[serde(rename = "base64")]
    Base64,
    #[serde(rename = "struct")]
    Struct,
    #[serde(rename = "array")]
    Array,
    #[serde(rename = "nil")]
    Nil,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::Int => "int",
            Type::I8 => "i8",
            Type::Bool => "boolean",
            Type::String => "string",
            Type::Double => "double",
            Type::DateTime => "dateTime.iso8601",
            Type::Base64 => "base64",
            Type::Struct => "struct",
            Type::Array => "array",
            Type::Nil => "nil",
        }
    }

    /// Does `value` fit a parameter of this type? Integers widen to double; JSON, which has
    /// no date or binary type, may give a string for `dateTime.iso8601` and `base64`.
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (Type::Int, Value::Int(n)) => i32::try_from(*n).is_ok(),
            (Type::I8, Value::Int(_)) => true,
            (Type::Bool, Value::Bool(_)) => true,
            (Type::String, Value::String(_)) => true,
            (Type::Double, Value::Double(_) | Value::Int(_)) => true,
            (Type::DateTime, Value::DateTime(_)) => true,
            (Type::DateTime, Value::String(s)) => is_iso8601(s),
            (Type::Base64, Value::Base64(_)) => true,
            (Type::Base64, Value::String(s)) => decode_base64(s).is_some(),
            (Type::Struct, Value::Struct(_)) => true,
            (Type::Array, Value::Array(_)) => true,
            (Type::Nil, Value::Nil) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(n) if i32::try_from(*n).is_ok() => "int",
            Value::Int(_) => "i8",
            Value::Bool(_) => "boolean",
            Value::String(_) => "string",
            Value::Double(_) => "double",
            Value::DateTime(_) => "dateTime.iso8601",
            Value::Base64(_) => "base64",
            Value::Struct(_) => "struct",
            Value::Array(_) => "array",
            Value::Nil => "nil",
        }
    }

    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// A struct from `(name, value)` pairs.
    pub fn object<const N: usize>(members: [(&str, Value); N]) -> Value {
        Value::Struct(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    /// The value as JSON: dates as their ISO 8601 text, binary as base64 text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Int(n) => J::from(*n),
            Value::Bool(b) => J::Bool(*b),
            Value::String(s) | Value::DateTime(s) => J::String(s.clone()),
            // JSON has no NaN or infinity.
            Value::Double(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
            Value::Base64(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
            Value::Struct(members) => J::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
            Value::Array(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Nil => J::Null,
        }
    }

    pub fn from_json(json: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Nil,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::String(s.clone()),
            J::Array(items) => Value::Array(items.iter().map(Value::from_json).collect()),
            J::Object(members) => Value::Struct(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Decodes base64 as clients send it: Python wraps lines every 76 characters.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

/// XML-RPC's `dateTime.iso8601` exactly as the spec writes it and clients send it,
/// `YYYYMMDDTHH:MM:SS`: a real calendar date and time of day, nothing before or after (so
/// a value passed to a command can never look like an option).
pub(crate) fn is_iso8601(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() != 17 || b.get(8) != Some(&b'T') || b.get(11) != Some(&b':') {
        return false;
    }
    if b.get(14) != Some(&b':') {
        return false;
    }
    let number = |from: usize, to: usize| -> Option<u16> {
        let digits = b.get(from..to)?;
        digits.iter().try_fold(0u16, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u16::from(d - b'0'))
        })
    };
    let fields = (
        number(0, 4),
        number(4, 6).and_then(|m| u8::try_from(m).ok()),
        number(6, 8).and_then(|d| u8::try_from(d).ok()),
        number(9, 11),
        number(12, 14),
        number(15, 17),
    );
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = fields
    else {
        return false;
    };
    let date = time::Month::try_from(month)
        .and_then(|month| time::Date::from_calendar_date(i32::from(year), month, day));
    // 60: a leap second.
    date.is_ok() && hour < 24 && minute < 60 && second <= 60
}

/// A struct's members as they are read, in time linear in their number: a repeated name
/// keeps the place of its first appearance and the value of its last, as a dictionary would.
#[derive(Debug, Default)]
pub(crate) struct Members {
    members: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Members {
    pub(crate) fn insert(&mut self, name: String, value: Value) {
        match self.index.entry(name) {
            Entry::Occupied(seen) => {
                if let Some(member) = self.members.get_mut(*seen.get()) {
                    member.1 = value;
                }
            }
            Entry::Vacant(new) => {
                let name = new.key().clone();
                new.insert(self.members.len());
                self.members.push((name, value));
            }
        }
    }

    pub(crate) fn into_value(self) -> Value {
        Value::Struct(self.members)
    }
}

/// Why a call failed: a code shared by both protocols (JSON-RPC 2.0's, which the XML-RPC
/// fault code interoperability spec also uses) and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub code: i64,
    pub message: String,
}

impl Fault {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    // Server errors (-32000 to -32099), ours.
    /// The command exited non-zero or was killed by a signal; the message carries stderr.
    pub const COMMAND_FAILED: i64 = -32000;
    pub const TIMEOUT: i64 = -32001;
    /// stdout passed the method's cap: the output was cut and the command killed.
    pub const OUTPUT_TOO_LARGE: i64 = -32002;
    pub const AUTH_REQUIRED: i64 = -32003;
    pub const FORBIDDEN: i64 = -32004;
    /// The method's concurrency limit stayed full for its whole timeout.
    pub const BUSY: i64 = -32005;
    /// The command's JSON output could not be parsed.
    pub const BAD_OUTPUT: i64 = -32006;

    pub fn new(code: i64, message: impl Into<String>) -> Fault {
        Fault {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Fault {
        Fault::new(Fault::INVALID_PARAMS, message)
    }

    pub fn not_found(method: &str) -> Fault {
        Fault::new(
            Fault::METHOD_NOT_FOUND,
            format!("method not found: {}", method.escape_debug()),
        )
    }

    /// A short word for the log.
    pub fn outcome(&self) -> &'static str {
        match self.code {
            Fault::PARSE_ERROR => "parse error",
            Fault::INVALID_REQUEST => "invalid request",
            Fault::METHOD_NOT_FOUND => "method not found",
            Fault::INVALID_PARAMS => "invalid params",
            Fault::COMMAND_FAILED => "command failed",
            Fault::TIMEOUT => "timeout",
            Fault::OUTPUT_TOO_LARGE => "output too large",
            Fault::AUTH_REQUIRED => "authentication required",
            Fault::FORBIDDEN => "forbidden",
            Fault::BUSY => "busy",
            Fault::BAD_OUTPUT => "bad output",
            _ => "internal error",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_is_strict() {
        for ok in [
            "20261125T17:02:11",
            "20240229T00:00:00",
            "19991231T23:59:60",
        ] {
            assert!(is_iso8601(ok), "{ok}");
        }
        for bad in [
            "",
            "2026",
            "--20261125T17:02:11",
            "-2026112T17:02:11",
            "2026-11-25T17:02:11",
            "20261125T17:02:11Z",
            "20261125T17:02:11.5+01:00",
            " 20261125T17:02:11",
            "20261125 17:02:11",
            "20261125T17:02",
            "2026112XT17:02:11",
            "20261125T17:02:1-",
            "20230229T00:00:00",
            "20261325T00:00:00",
            "20261100T00:00:00",
            "20261125T24:00:00",
            "20261125T23:60:00",
            "２0261125T17:02:11",
        ] {
            assert!(!is_iso8601(bad), "{bad}");
        }
    }

    #[test]
    fn members_keep_the_first_place_and_the_last_value() {
        let mut members = Members::default();
        for (name, n) in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)] {
            members.insert(name.to_owned(), Value::Int(n));
        }
        assert_eq!(
            members.into_value(),
            Value::object([
                ("a", Value::Int(3)),
                ("b", Value::Int(5)),
                ("c", Value::Int(4))
            ])
        );
    }

    #[test]
    fn types_accept() {
        assert!(Type::Int.accepts(&Value::Int(5)));
        assert!(!Type::Int.accepts(&Value::Int(1 << 40)));
        assert!(Type::I8.accepts(&Value::Int(1 << 40)));
        assert!(Type::Double.accepts(&Value::Int(1)));
        assert!(!Type::String.accepts(&Value::Int(1)));
        assert!(Type::Base64.accepts(&Value::string("aGk=")));
        assert!(!Type::Base64.accepts(&Value::string("!!")));
    }

    #[test]
    fn json_round_trip() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"a":[1,2.5,"x",null,true,{"b":-7}]}"#).unwrap_or_default();
        assert_eq!(Value::from_json(&json).to_json(), json);
        assert_eq!(decode_base64("aGVs\nbG8=\n"), Some(b"hello".to_vec()));
    }
}
