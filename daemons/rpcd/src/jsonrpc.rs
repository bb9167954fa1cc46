//! JSON-RPC 2.0 (<https://www.jsonrpc.org/specification>): requests, notifications, batches.

use serde_json::{json, Map, Value as J};

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

pub(crate) fn success(id: J, result: &Value) -> J {
    json!({"jsonrpc": "2.0", "result": result.to_json(), "id": id})
}

pub(crate) fn error(id: J, fault: &Fault) -> J {
    let mut err = Map::new();
    err.insert("code".into(), J::from(fault.code));
    err.insert("message".into(), J::String(fault.message.clone()));
    json!({"jsonrpc": "2.0", "error": err, "id": id})
}

#[cfg(test)]
mod tests {
    use super::*;

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
