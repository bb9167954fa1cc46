//! Parsing calls and writing responses (xmlrpc.rs).

use super::*;

fn call(xml: &str) -> Result<Call, Fault> {
    parse_call(xml.as_bytes(), 32)
}

#[test]
fn every_type() {
    let xml = r#"<?xml version="1.0"?>
<methodCall><methodName>t.x</methodName><params>
<param><value><int>-5</int></value></param>
<param><value><i4>7</i4></value></param>
<param><value><i8>9000000000</i8></value></param>
<param><value><boolean>1</boolean></value></param>
<param><value><string>a &lt;b&gt; &amp; &#233;</string></value></param>
<param><value>  untyped </value></param>
<param><value><double>2.5</double></value></param>
<param><value><dateTime.iso8601>20261125T17:02:11</dateTime.iso8601></value></param>
<param><value><base64>aGVs
bG8=</base64></value></param>
<param><value><struct><member><name>k</name><value><nil/></value></member></struct></value></param>
<param><value><array><data><value><int>1</int></value><value/></data></array></value></param>
</params></methodCall>"#;
    let c = call(xml).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(c.method, "t.x");
    assert_eq!(
        c.params,
        vec![
            Value::Int(-5),
            Value::Int(7),
            Value::Int(9_000_000_000),
            Value::Bool(true),
            Value::string("a <b> & é"),
            Value::string("  untyped "),
            Value::Double(2.5),
            Value::DateTime("20261125T17:02:11".into()),
            Value::Base64(b"hello".to_vec()),
            Value::object([("k", Value::Nil)]),
            Value::Array(vec![Value::Int(1), Value::string("")]),
        ]
    );
}

#[test]
fn refuses_dtds_entities_depth_and_garbage() {
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>
<methodCall><methodName>&lol;</methodName></methodCall>"#;
    assert_eq!(call(laughs).map_err(|f| f.code), Err(Fault::PARSE_ERROR));
    let undeclared = "<methodCall><methodName>&lol;</methodName></methodCall>";
    assert_eq!(
        call(undeclared).map_err(|f| f.code),
        Err(Fault::PARSE_ERROR)
    );
    let deep = format!(
        "<methodCall><methodName>x</methodName><params><param>{}{}</param></params></methodCall>",
        "<value><array><data>".repeat(10_000),
        "</data></array></value>".repeat(10_000)
    );
    assert_eq!(call(&deep).map_err(|f| f.code), Err(Fault::PARSE_ERROR));
    assert_eq!(
        call("<methodCall>").map_err(|f| f.code),
        Err(Fault::PARSE_ERROR)
    );
    assert_eq!(
        parse_call(
            b"<methodCall><methodName>\xff</methodName></methodCall>",
            32
        )
        .map_err(|f| f.code),
        Err(Fault::PARSE_ERROR)
    );
    assert_eq!(
        call("<methodCall><methodName>x</methodName><params><param><value><int>x</int></value></param></params></methodCall>")
            .map_err(|f| f.code),
        Err(Fault::INVALID_REQUEST)
    );
    assert_eq!(
        call("<foo/>").map_err(|f| f.code),
        Err(Fault::INVALID_REQUEST)
    );
}

fn param(value: &str) -> Result<Value, Fault> {
    let xml = format!(
        "<methodCall><methodName>x</methodName><params><param><value>{value}</value>\
         </param></params></methodCall>"
    );
    call(&xml).map(|mut c| c.params.remove(0))
}

/// A struct of 25,000 members in a 1 MiB body (the size of the attack that took a worker
/// for a second with a quadratic de-duplication). With the members' names all equal,
/// every one is the repeat of one before.
#[test]
fn huge_structs_parse_and_the_last_repeated_name_wins() {
    let members = |name: &dyn Fn(usize) -> String| {
        let mut xml = String::from("<struct>");
        for i in 0..25_000 {
            xml.push_str(&format!(
                "<member><name>{}</name><value><i4>{i}</i4></value></member>",
                name(i)
            ));
        }
        xml.push_str("</struct>");
        xml
    };
    let distinct = members(&|i| format!("m{i:06}"));
    assert!(distinct.len() > 1_000_000);
    let Ok(Value::Struct(got)) = param(&distinct) else {
        panic!("not a struct");
    };
    assert_eq!(got.len(), 25_000);
    assert_eq!(
        got.last(),
        Some(&("m024999".to_owned(), Value::Int(24_999)))
    );
    let Ok(Value::Struct(got)) = param(&members(&|_| "same".to_owned())) else {
        panic!("not a struct");
    };
    assert_eq!(got, vec![("same".to_owned(), Value::Int(24_999))]);
}

#[test]
fn doubles_are_finite_and_dates_strict() {
    assert_eq!(param("<double>-1e+300</double>"), Ok(Value::Double(-1e300)));
    for bad in ["NaN", "nan", "inf", "-inf", "+Infinity", "1e400", "x"] {
        let got = param(&format!("<double>{bad}</double>"));
        assert_eq!(
            got.map_err(|f| f.code),
            Err(Fault::INVALID_REQUEST),
            "{bad}"
        );
    }
    assert_eq!(
        param("<dateTime.iso8601>20261125T17:02:11</dateTime.iso8601>"),
        Ok(Value::DateTime("20261125T17:02:11".into()))
    );
    for bad in [
        "--20261125T17:02:11",
        "2026-11-25T17:02:11",
        "20261125T17:02:11Z",
    ] {
        let got = param(&format!("<dateTime.iso8601>{bad}</dateTime.iso8601>"));
        assert_eq!(
            got.map_err(|f| f.code),
            Err(Fault::INVALID_REQUEST),
            "{bad}"
        );
    }
}

/// The cause of a parse error is told once, after what failed.
#[test]
fn parse_errors_name_their_cause_once() {
    let Err(fault) = call("<methodCall><methodName>x</methodName></params>") else {
        panic!("parsed");
    };
    assert_eq!(fault.code, Fault::PARSE_ERROR);
    assert!(
        fault.message.starts_with("malformed XML at byte "),
        "{}",
        fault.message
    );
    // The log line adds the outcome ("parse error") itself.
    assert!(!fault.message.contains("parse error"), "{}", fault.message);
    let parts: Vec<&str> = fault.message.split(": ").collect();
    let distinct: std::collections::HashSet<&&str> = parts.iter().collect();
    assert!(parts.len() >= 2, "{}", fault.message);
    assert_eq!(distinct.len(), parts.len(), "{}", fault.message);
    let Err(fault) = parse_call(b"<a>\xff</a>", 32) else {
        panic!("parsed");
    };
    assert!(
        fault.message.starts_with("not UTF-8: invalid utf-8"),
        "{}",
        fault.message
    );
}

#[test]
fn writes_responses_that_parse_back() {
    let v = Value::Array(vec![
        Value::Int(1 << 40),
        Value::string("a<&>\r\u{1}"),
        Value::Nil,
        Value::Base64(vec![0, 255]),
    ]);
    let xml = response(&v);
    assert!(xml.contains("<i8>1099511627776</i8>"), "{xml}");
    assert!(xml.contains("a&lt;&amp;&gt;&#13;\u{FFFD}"), "{xml}");
    let f = fault(&Fault::new(-32601, "no <such> method"));
    assert!(f.contains("<int>-32601</int>") && f.contains("no &lt;such&gt; method"));
}
