//! What the fuzz targets `xmlrpc_call` and `jsonrpc_request` run (see
//! `inetkit_runtime::fuzzing`): request bodies as they arrive, before any login.

use crate::jsonrpc::{self, Body};
use crate::methods::Params;
use crate::value::Value;
use crate::xmlrpc;

/// Nesting allowed in the targets (the shipped default is of this order).
const MAX_DEPTH: usize = 32;
const MAX_BATCH: usize = 16;

/// A value as XML-RPC can carry it back: characters XML cannot hold become U+FFFD (as the
/// writer makes them), doubles compared by their text (NaN is not equal to itself).
/// Quadratic in the members of a struct: fine for fuzz inputs, which are small.
fn carried(value: &Value) -> String {
    fn text(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '\t' | '\n' | '\r' => c,
                c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
                c => c,
            })
            .collect()
    }
    match value {
        Value::String(s) => format!("String({:?})", text(s)),
        Value::DateTime(s) => format!("DateTime({:?})", text(s)),
        Value::Struct(members) => {
            // Names that differ only in such characters become one name: the last value
            // wins, in the first one's place, as when parsing.
            let mut kept: Vec<(String, String)> = Vec::new();
            for (name, value) in members {
                let (name, value) = (text(name), carried(value));
                match kept.iter_mut().find(|(k, _)| *k == name) {
                    Some(member) => member.1 = value,
                    None => kept.push((name, value)),
                }
            }
            let kept: Vec<String> = kept
                .iter()
                .map(|(name, value)| format!("{name:?}: {value}"))
                .collect();
            format!("Struct{{{}}}", kept.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(carried).collect();
            format!("Array[{}]", items.join(", "))
        }
        other => format!("{other:?}"),
    }
}

/// One value as the XML-RPC writer writes it (the inside of a response's `<param>`).
fn written(value: &Value) -> String {
    let response = xmlrpc::response(value);
    let inner = response
        .trim_end()
        .strip_suffix("</param></params></methodResponse>")
        .and_then(|r| r.split_once("<methodResponse><params><param>"))
        .map(|(_, value)| value.to_owned());
    inner.unwrap_or_else(|| panic!("a response of another shape: {response:?}"))
}

/// Target `xmlrpc_call`: [`xmlrpc::parse_call`] on a request body. What parses has a
/// non-empty method name, and its parameters written by our writer and parsed again are the
/// same values (up to the characters XML cannot carry).
pub fn xmlrpc_call(body: &[u8]) {
    let Ok(call) = xmlrpc::parse_call(body, MAX_DEPTH) else {
        return;
    };
    assert!(!call.method.is_empty() && call.method.trim() == call.method);
    if call
        .method
        .chars()
        .any(|c| c.is_control() || matches!(c, '&' | '<' | '>'))
    {
        return;
    }
    let mut again = format!(
        "<?xml version=\"1.0\"?><methodCall><methodName>{}</methodName><params>",
        call.method
    );
    for param in &call.params {
        again.push_str("<param>");
        again.push_str(&written(param));
        again.push_str("</param>");
    }
    again.push_str("</params></methodCall>");
    let parsed = xmlrpc::parse_call(again.as_bytes(), MAX_DEPTH)
        .unwrap_or_else(|fault| panic!("{again:?}: {}", fault.message));
    assert_eq!(parsed.method, call.method);
    let before: Vec<String> = call.params.iter().map(carried).collect();
    let after: Vec<String> = parsed.params.iter().map(carried).collect();
    assert_eq!(after, before, "{again:?}");
}

/// Target `jsonrpc_request`: [`jsonrpc::parse`] on a request body. A batch is never empty nor
/// over its limit, and every parameter turned to JSON and back is the same value.
pub fn jsonrpc_request(body: &[u8]) {
    let requests = match jsonrpc::parse(body, MAX_BATCH) {
        Body::Error(_) => return,
        Body::Single(request) => vec![request],
        Body::Batch(requests) => {
            assert!(!requests.is_empty() && requests.len() <= MAX_BATCH);
            requests
        }
    };
    for request in requests.into_iter().flatten() {
        let values: Vec<&Value> = match &request.params {
            Params::Positional(values) => values.iter().collect(),
            Params::Named(members) => members.iter().map(|(_, v)| v).collect(),
        };
        for value in values {
            let again = Value::from_json(&value.to_json());
            assert_eq!(format!("{again:?}"), format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inetkit_runtime::fuzzing::replay;

    #[test]
    fn xmlrpc_call_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "xmlrpc_call", xmlrpc_call) > 0);
    }

    #[test]
    fn jsonrpc_request_corpus() {
        assert!(
            replay(
                env!("CARGO_MANIFEST_DIR"),
                "jsonrpc_request",
                jsonrpc_request
            ) > 0
        );
    }
}
