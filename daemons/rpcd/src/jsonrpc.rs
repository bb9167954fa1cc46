//! JSON-RPC 2.0 (<https://www.jsonrpc.org/specification>): requests, notifications, batches.

use std::io::Write as _;

use serde_json::Value as J;

use crate::methods::Params;
use crate::value::{Fault, Value};

/// One well-formed request; `id` is `None` for a notification (no answer).
#[derive(Debug)]
pub(crate) struct Request {
    pub id: Option<J>,
    pub method: String,
    pub params: Params,
}

#[derive(Debug)]
pub(crate) enum Body {
    Single(Result<Request, Fault>),
    Batch(Vec<Result<Request, Fault>>),
    /// Not JSON, or an empty batch: one error response with a null id.
    Error(Fault),
}

/// Parses a request body. serde_json refuses nesting deeper than 128 levels by itself.
pub(crate) fn parse(body: &[u8], max_batch: usize) -> Body {
    let json: J = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) => return Body::Error(Fault::new(Fault::PARSE_ERROR, format!("invalid JSON: {e}"))),
    };
    match json {
        J::Array(items) if items.is_empty() => {
            Body::Error(Fault::new(Fault::INVALID_REQUEST, "empty batch"))
        }
        J::Array(items) if items.len() > max_batch => Body::Error(Fault::new(
            Fault::INVALID_REQUEST,
            format!("a batch may hold at most {max_batch} requests"),
        )),
        J::Array(items) => Body::Batch(items.into_iter().map(request).collect()),
        other => Body::Single(request(other)),
    }
}

fn request(json: J) -> Result<Request, Fault> {
    // The log line and the code say "invalid request" already.
    let invalid = |m: &str| Fault::new(Fault::INVALID_REQUEST, m);
    let J::Object(mut obj) = json else {
        return Err(invalid("a request must be an object"));
    };
    if obj.get("jsonrpc") != Some(&J::String("2.0".into())) {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let id = obj.remove("id");
    if matches!(id, Some(J::Bool(_) | J::Array(_) | J::Object(_))) {
        return Err(invalid("\"id\" must be a string, a number or null"));
    }
    let Some(J::String(method)) = obj.remove("method") else {
        return Err(invalid("\"method\" must be a string"));
    };
    let params = match obj.remove("params") {
        None => Params::Positional(Vec::new()),
        Some(J::Array(items)) => Params::Positional(items.iter().map(Value::from_json).collect()),
        Some(J::Object(members)) => Params::Named(
            members
                .into_iter()
                .map(|(k, v)| (k, Value::from_json(&v)))
                .collect(),
        ),
        Some(_) => return Err(invalid("\"params\" must be an array or an object")),
    };
    Ok(Request { id, method, params })
}

/// The answer to one request (a notification gets none).
#[derive(Debug)]
pub(crate) struct Answer {
    pub id: J,
    pub outcome: Result<Value, Fault>,
}

impl Answer {
    /// An error answer with a null id: for a body that is no request at all.
    pub(crate) fn null(fault: Fault) -> Answer {
        Answer {
            id: J::Null,
            outcome: Err(fault),
        }
    }

    /// Writes the answer's JSON, straight into `out` rather than through a map of
    /// `serde_json::Value`s, with its members in the order such a map sorts them.
    fn write(&self, out: &mut Vec<u8>) {
        // Writing a serde_json::Value or a str into a Vec cannot fail.
        match &self.outcome {
            Ok(value) => {
                out.extend_from_slice(b"{\"id\":");
                let _ = serde_json::to_writer(&mut *out, &self.id);
                out.extend_from_slice(b",\"jsonrpc\":\"2.0\",\"result\":");
                let _ = serde_json::to_writer(&mut *out, &value.to_json());
            }
            Err(fault) => {
                let _ = write!(out, "{{\"error\":{{\"code\":{},\"message\":", fault.code);
                let _ = serde_json::to_writer(&mut *out, &fault.message);
                out.extend_from_slice(b"},\"id\":");
                let _ = serde_json::to_writer(&mut *out, &self.id);
                out.extend_from_slice(b",\"jsonrpc\":\"2.0\"");
            }
        }
        out.push(b'}');
    }
}

/// The body of a reply: one answer, or a batch's answers as an array; and a newline.
pub(crate) fn reply_body(answers: &[Answer], batch: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    if batch {
        out.push(b'[');
    }
    for (i, answer) in answers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        answer.write(&mut out);
    }
    if batch {
        out.push(b']');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The same text as serde_json writes for the answer built as a map.
    #[test]
    fn answers_written_as_serde_json_writes_them() {
        let ok = Answer {
            id: json!("a\"b"),
            outcome: Ok(Value::Struct(vec![
                ("x".into(), Value::Double(1.5)),
                (
                    "y".into(),
                    Value::Array(vec![Value::Nil, Value::Bool(true)]),
                ),
            ])),
        };
        let failed = Answer {
            id: json!(7),
            outcome: Err(Fault::new(Fault::METHOD_NOT_FOUND, "no \"such\"\n")),
        };
        let expected_ok = json!({"jsonrpc": "2.0", "result": {"x": 1.5, "y": [null, true]},
                                 "id": "a\"b"});
        let expected_failed = json!({"jsonrpc": "2.0", "id": 7,
                                     "error": {"code": -32601, "message": "no \"such\"\n"}});
        let text = |body: Vec<u8>| String::from_utf8(body).expect("UTF-8");
        assert_eq!(
            text(reply_body(std::slice::from_ref(&ok), false)),
            format!("{expected_ok}\n")
        );
        assert_eq!(
            text(reply_body(
                &[ok, failed, Answer::null(Fault::invalid_params("p"))],
                true
            )),
            format!(
                "[{expected_ok},{expected_failed},{}]\n",
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32602, "message": "p"}})
            )
        );
    }

    fn code(body: &str) -> Option<i64> {
        match parse(body.as_bytes(), 10) {
            Body::Error(f) | Body::Single(Err(f)) => Some(f.code),
            _ => None,
        }
    }

    #[test]
    fn requests_and_errors() {
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"a","params":[1],"id":1}"#),
            None
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"a","params":{"x":1}}"#),
            None
        );
        assert_eq!(code("{"), Some(Fault::PARSE_ERROR));
        assert_eq!(code("[]"), Some(Fault::INVALID_REQUEST));
        assert_eq!(code("1"), Some(Fault::INVALID_REQUEST));
        assert_eq!(
            code(r#"{"jsonrpc":"1.0","method":"a"}"#),
            Some(Fault::INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":1}"#),
            Some(Fault::INVALID_REQUEST)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"a","params":3}"#),
            Some(Fault::INVALID_REQUEST)
        );
        assert_eq!(code(&"[".repeat(10_000)), Some(Fault::PARSE_ERROR));
        match parse(br#"{"jsonrpc":"2.0","method":"a"}"#, 10) {
            Body::Single(Ok(r)) => assert!(r.id.is_none()),
            other => panic!("{other:?}"),
        }
        match parse(br#"{"jsonrpc":"2.0","method":"a","id":null}"#, 10) {
            Body::Single(Ok(r)) => assert_eq!(r.id, Some(J::Null)),
            other => panic!("{other:?}"),
        }
    }
}
