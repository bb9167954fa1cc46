//! XML-RPC (<http://xmlrpc.com/spec.md>, the `nil` and `i8` extensions): parsing a
//! `methodCall` and writing a `methodResponse`.
//!
//! The XML is read with quick-xml into a small tree first, bounded in depth (so hostile
//! nesting costs neither stack nor time) and in size by the HTTP body limit. A DTD is refused
//! outright, so no entity can be declared; only the five predefined entities and character
//! references are expanded. External entities are never fetched.

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::value::{decode_base64, is_iso8601, Fault, Members, Value};

/// A parsed `methodCall`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub method: String,
    pub params: Vec<Value>,
}

/// An element of the tree: names and text are borrowed from the body where they can be (a
/// name XML-RPC uses, text without references), so a call costs few allocations.
#[derive(Debug)]
struct Element<'a> {
    name: Cow<'static, str>,
    children: Vec<Node<'a>>,
}

#[derive(Debug)]
enum Node<'a> {
    Element(Element<'a>),
    Text(Cow<'a, str>),
}

/// The element names of XML-RPC (and its extensions), not copied for every element.
const NAMES: &[&str] = &[
    "methodCall",
    "methodName",
    "params",
    "param",
    "value",
    "string",
    "int",
    "i4",
    "i8",
    "ex:i8",
    "boolean",
    "double",
    "dateTime.iso8601",
    "base64",
    "struct",
    "member",
    "name",
    "array",
    "data",
    "nil",
    "ex:nil",
];

fn element_name(raw: &[u8]) -> Cow<'static, str> {
    match NAMES.iter().find(|n| n.as_bytes() == raw) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(String::from_utf8_lossy(raw).into_owned()),
    }
}

impl<'a> Element<'a> {
    fn new(raw_name: &[u8]) -> Element<'a> {
        Element {
            name: element_name(raw_name),
            children: Vec::new(),
        }
    }

    fn elements(&self) -> impl Iterator<Item = &Element<'a>> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The text directly inside, borrowed when it is in one piece.
    fn text(&self) -> Cow<'a, str> {
        let mut texts = self.children.iter().filter_map(|n| match n {
            Node::Text(t) => Some(t),
            Node::Element(_) => None,
        });
        let Some(first) = texts.next() else {
            return Cow::Borrowed("");
        };
        let mut out = first.clone();
        for t in texts {
            out.to_mut().push_str(t);
        }
        out
    }

    /// Text between child elements that is not whitespace: a structural element must have none.
    fn has_stray_text(&self) -> bool {
        self.children
            .iter()
            .any(|n| matches!(n, Node::Text(t) if !t.trim().is_empty()))
    }

    fn only_child(&self) -> Result<&Element<'a>, Fault> {
        let mut elements = self.elements();
        match (elements.next(), elements.next()) {
            (Some(e), None) if !self.has_stray_text() => Ok(e),
            _ => Err(invalid(format!(
                "<{}> must hold exactly one element",
                self.name
            ))),
        }
    }
}

/// Why a body is not a well-formed XML document. The cause, when there is one, is the
/// `source` and not part of the message, so it is told once.
#[derive(Debug, thiserror::Error)]
pub(crate) enum XmlError {
    #[error("not UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error("malformed XML at byte {at}")]
    Malformed {
        at: u64,
        #[source]
        source: quick_xml::Error,
    },
    #[error("malformed XML declaration")]
    Declaration(#[source] quick_xml::events::attributes::AttrError),
    #[error("unsupported encoding {0:?}")]
    Encoding(String),
    #[error("DTDs are not allowed")]
    Dtd,
    #[error("nested deeper than {0} elements")]
    TooDeep(usize),
    #[error("content after the document element")]
    AfterRoot,
    #[error("unbalanced end tag")]
    UnbalancedEnd,
    #[error("text outside the document element")]
    TextOutside,
    #[error("unexpected end of document")]
    Truncated,
    #[error("empty document")]
    Empty,
}

impl From<XmlError> for Fault {
    fn from(err: XmlError) -> Fault {
        use std::error::Error as _;
        // One level of cause: quick-xml's errors already include theirs in their message.
        let message = match err.source() {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        };
        Fault::new(Fault::PARSE_ERROR, message)
    }
}

fn invalid(message: impl Into<String>) -> Fault {
    Fault::new(Fault::INVALID_REQUEST, message)
}

/// Adds a finished element to its parent, or makes it the document element.
fn attach<'a>(
    stack: &mut [Element<'a>],
    root: &mut Option<Element<'a>>,
    element: Element<'a>,
) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(Node::Element(element)),
        None if root.is_none() => *root = Some(element),
        None => return Err(XmlError::AfterRoot),
    }
    Ok(())
}

/// Reads a whole document into a tree; `max_depth` bounds element nesting. The work is
/// linear in the size of the document.
fn parse_tree(body: &[u8], max_depth: usize) -> Result<Element<'_>, XmlError> {
    let text = std::str::from_utf8(body).map_err(XmlError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element<'_>> = Vec::new();
    let mut root: Option<Element<'_>> = None;
    let malformed = |reader: &Reader<&[u8]>, source| XmlError::Malformed {
        at: reader.buffer_position(),
        source,
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|source| malformed(&reader, source))?;
        match event {
            Event::Decl(decl) => {
                if let Some(encoding) = decl.encoding() {
                    let encoding = encoding.map_err(XmlError::Declaration)?;
                    let name = String::from_utf8_lossy(&encoding).to_ascii_lowercase();
                    if name != "utf-8" && name != "us-ascii" && name != "ascii" {
                        return Err(XmlError::Encoding(name));
                    }
                }
            }
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::PI(_) | Event::Comment(_) => {}
            Event::Start(start) => {
                if stack.len() >= max_depth {
                    return Err(XmlError::TooDeep(max_depth));
                }
                if root.is_some() {
                    return Err(XmlError::AfterRoot);
                }
                stack.push(Element::new(start.name().as_ref()));
            }
            Event::Empty(start) => {
                attach(&mut stack, &mut root, Element::new(start.name().as_ref()))?;
            }
            Event::End(_) => {
                let element = stack.pop().ok_or(XmlError::UnbalancedEnd)?;
                attach(&mut stack, &mut root, element)?;
            }
            Event::Text(text) => {
                let text = text
                    .unescape()
                    .map_err(|source| malformed(&reader, source))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(text)),
                    None if text.trim().is_empty() => {}
                    None => return Err(XmlError::TextOutside),
                }
            }
            Event::CData(data) => {
                let text = std::str::from_utf8(&data)
                    .map_err(XmlError::NotUtf8)?
                    .to_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Text(Cow::Owned(text))),
                    None => return Err(XmlError::TextOutside),
                }
            }
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Truncated);
    }
    root.ok_or(XmlError::Empty)
}

/// Parses a `methodCall`. `max_depth` bounds the nesting of values (arrays and structs).
pub(crate) fn parse_call(body: &[u8], max_depth: usize) -> Result<Call, Fault> {
    // methodCall/params/param/value, then three elements per level of nesting.
    let root = parse_tree(body, 4 + 3 * max_depth + 2)?;
    if root.name != "methodCall" || root.has_stray_text() {
        return Err(invalid("the document is not a methodCall"));
    }
    let mut method = None;
    let mut params = Vec::new();
    for child in root.elements() {
        match &*child.name {
            "methodName" if method.is_none() => {
                let name = child.text().trim().to_owned();
                if name.is_empty() || child.elements().next().is_some() {
                    return Err(invalid("methodName must be a non-empty name"));
                }
                method = Some(name);
            }
            "params" => {
                if child.has_stray_text() {
                    return Err(invalid("text in <params>"));
                }
                for param in child.elements() {
                    if param.name != "param" {
                        return Err(invalid(format!("<{}> in <params>", param.name)));
                    }
                    let value = param.only_child()?;
                    params.push(parse_value(value)?);
                }
            }
            other => return Err(invalid(format!("<{other}> in <methodCall>"))),
        }
    }
    let method = method.ok_or_else(|| invalid("no methodName"))?;
    Ok(Call { method, params })
}

fn parse_value(value: &Element<'_>) -> Result<Value, Fault> {
    if value.name != "value" {
        return Err(invalid(format!("<{}> where a <value> belongs", value.name)));
    }
    // No type element: the text is a string (whitespace and all).
    if value.elements().next().is_none() {
        return Ok(Value::String(value.text().into_owned()));
    }
    let typed = value.only_child()?;
    let text = || typed.text();
    let bad = |what: &str| invalid(format!("<{}>: {what}", typed.name));
    let scalar = || {
        if typed.elements().next().is_some() {
            Err(bad("expected text, not elements"))
        } else {
            Ok(())
        }
    };
    // Apache's extensions come namespaced (`ex:nil`, `ex:i8`).
    let name = typed.name.strip_prefix("ex:").unwrap_or(&typed.name);
    Ok(match name {
        "int" | "i4" => {
            scalar()?;
            let n: i32 = text()
                .trim()
                .parse()
                .map_err(|_| bad("not a 32-bit integer"))?;
            Value::Int(n.into())
        }
        "i8" => {
            scalar()?;
            Value::Int(
                text()
                    .trim()
                    .parse()
                    .map_err(|_| bad("not a 64-bit integer"))?,
            )
        }
        "boolean" => {
            scalar()?;
            match text().trim() {
                "1" | "true" => Value::Bool(true),
                "0" | "false" => Value::Bool(false),
                _ => return Err(bad("must be 0 or 1")),
            }
        }
        "string" => {
            scalar()?;
            Value::String(text().into_owned())
        }
        "double" => {
            scalar()?;
            // The spec has no infinity or NaN (Rust would read "inf" and "NaN").
            let d: f64 = text().trim().parse().map_err(|_| bad("not a number"))?;
            if !d.is_finite() {
                return Err(bad("not a finite number"));
            }
            Value::Double(d)
        }
        "dateTime.iso8601" => {
            scalar()?;
            let t = text().trim().to_owned();
            if !is_iso8601(&t) {
                return Err(bad("not a date and time as YYYYMMDDTHH:MM:SS"));
            }
            Value::DateTime(t)
        }
        "base64" => {
            scalar()?;
            Value::Base64(decode_base64(&text()).ok_or_else(|| bad("not base64"))?)
        }
        "nil" => {
            if !typed.children.is_empty() {
                return Err(bad("must be empty"));
            }
            Value::Nil
        }
        "array" => {
            let data = typed.only_child()?;
            if data.name != "data" || data.has_stray_text() {
                return Err(bad("must hold one <data>"));
            }
            Value::Array(data.elements().map(parse_value).collect::<Result<_, _>>()?)
        }
        "struct" => {
            if typed.has_stray_text() {
                return Err(bad("text between members"));
            }
            let mut members = Members::default();
            for member in typed.elements() {
                if member.name != "member" || member.has_stray_text() {
                    return Err(bad("holds something other than <member>"));
                }
                let mut parts = member.elements();
                let (Some(name), Some(value), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad("a <member> needs a <name> and a <value>"));
                };
                if name.name != "name" || name.elements().next().is_some() {
                    return Err(bad("a <member> needs a <name> first"));
                }
                members.insert(name.text().into_owned(), parse_value(value)?);
            }
            members.into_value()
        }
        other => return Err(invalid(format!("unknown type <{other}>"))),
    })
}

/// Text as XML character data. Characters XML 1.0 cannot carry at all (most C0 controls)
/// become U+FFFD; CR is written as a reference so it survives line-end normalisation.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

fn write_value(out: &mut String, value: &Value) {
    use std::fmt::Write;
    out.push_str("<value>");
    match value {
        Value::Int(n) if i32::try_from(*n).is_ok() => {
            let _ = write!(out, "<int>{n}</int>");
        }
        Value::Int(n) => {
            let _ = write!(out, "<i8>{n}</i8>");
        }
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
        }
        Value::String(s) => {
            out.push_str("<string>");
            escape_into(out, s);
            out.push_str("</string>");
        }
        Value::Double(d) => {
            let _ = write!(out, "<double>{d}</double>");
        }
        Value::DateTime(t) => {
            out.push_str("<dateTime.iso8601>");
            escape_into(out, t);
            out.push_str("</dateTime.iso8601>");
        }
        Value::Base64(bytes) => {
            use base64::Engine;
            out.push_str("<base64>");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
            out.push_str("</base64>");
        }
        Value::Struct(members) => {
            out.push_str("<struct>");
            for (name, v) in members {
                out.push_str("<member><name>");
                escape_into(out, name);
                out.push_str("</name>");
                write_value(out, v);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
        Value::Array(items) => {
            out.push_str("<array><data>");
            for v in items {
                write_value(out, v);
            }
            out.push_str("</data></array>");
        }
        Value::Nil => out.push_str("<nil/>"),
    }
    out.push_str("</value>");
}

const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// A `methodResponse` carrying `value`.
pub(crate) fn response(value: &Value) -> String {
    // Room for a scalar's answer, which is most of them, without growing.
    let mut out = String::with_capacity(256);
    out.push_str(HEADER);
    out.push_str("<methodResponse><params><param>");
    write_value(&mut out, value);
    out.push_str("</param></params></methodResponse>\n");
    out
}

/// A `methodResponse` carrying a fault.
pub(crate) fn fault(fault: &Fault) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(HEADER);
    out.push_str("<methodResponse><fault>");
    write_value(&mut out, &fault_struct(fault));
    out.push_str("</fault></methodResponse>\n");
    out
}

/// The fault struct, also what `system.multicall` puts in place of a failed call's result.
pub(crate) fn fault_struct(fault: &Fault) -> Value {
    Value::object([
        ("faultCode", Value::Int(fault.code)),
        ("faultString", Value::String(fault.message.clone())),
    ])
}

#[cfg(test)]
mod tests;
