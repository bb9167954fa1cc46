//! Where in a config file a value is: key paths for the checks that run after parsing, and
//! finding them again in the text to name the line and column.

use std::fmt;

use toml_edit::{Array, ArrayOfTables, ImDocument, Item, TableLike, Value};

/// A key in a config, from its section down: `ftp.passive_ports`, `record[2].value`,
/// `listen.imap[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

impl KeyPath {
    /// A top-level key: a section such as `ftp`, or an array of tables such as `record`.
    pub fn new(key: &str) -> Self {
        KeyPath(vec![Step::Key(key.to_owned())])
    }

    /// A key inside this table.
    pub fn key(mut self, key: &str) -> Self {
        self.0.push(Step::Key(key.to_owned()));
        self
    }

    /// An element of this array (counted from 0).
    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Step::Index(index));
        self
    }

    /// What is wrong here.
    pub fn problem(self, message: impl Into<String>) -> Problem {
        Problem {
            key: self,
            message: message.into(),
        }
    }

    /// The byte offset of this key in `text` (or of the nearest enclosing key that is
    /// there), if `text` parses as TOML.
    pub(crate) fn locate(&self, text: &str) -> Option<usize> {
        let document = ImDocument::parse(text).ok()?;
        let mut node = Node::of_item(document.as_item());
        let mut found = None;
        for step in &self.0 {
            let (offset, next) = match (step, node) {
                (Step::Key(key), Node::Table(table)) => {
                    let Some((key, item)) = table.get_key_value(key) else {
                        break;
                    };
                    (key.span().or_else(|| item.span()), Node::of_item(item))
                }
                (Step::Index(i), Node::Array(array)) => {
                    let Some(value) = array.get(*i) else { break };
                    (value.span(), Node::of_value(value))
                }
                (Step::Index(i), Node::Tables(tables)) => {
                    let Some(table) = tables.get(*i) else { break };
                    (table.span(), Node::Table(table))
                }
                _ => break,
            };
            found = offset.map(|span| span.start).or(found);
            node = next;
        }
        found
    }
}

/// What a step of a [`KeyPath`] can go into.
#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a dyn TableLike),
    Array(&'a Array),
    Tables(&'a ArrayOfTables),
    Leaf,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Self {
        match item {
            Item::Table(table) => Node::Table(table),
            Item::ArrayOfTables(tables) => Node::Tables(tables),
            Item::Value(value) => Node::of_value(value),
            Item::None => Node::Leaf,
        }
    }

    fn of_value(value: &'a Value) -> Self {
        match value {
            Value::InlineTable(table) => Node::Table(table),
            Value::Array(array) => Node::Array(array),
            _ => Node::Leaf,
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => write!(f, "{key}")?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Something wrong with a config that parsed: the key it is about, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Problem {
    /// The offending key.
    pub key: KeyPath,
    /// What is wrong with it, for the sysadmin.
    pub message: String,
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for (at, c) in text.char_indices() {
        if at >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[listen]
imap = ["127.0.0.1:143", "127.0.0.1:99999"]

[ftp]
passive_ports = [60000, 50000]

[[record]]
name = "a.lan"

[[record]]
name = "b.lan"
value = "not-an-ip"

[acl]
allow = ["127.0.0.0/8", "10.0.0.0/33"]
inline = { a = 1, b = [1, 2] }
"#;

    fn at(path: KeyPath) -> Option<(usize, usize)> {
        path.locate(TEXT).map(|offset| line_column(TEXT, offset))
    }

    #[test]
    fn keys_are_found_where_they_are_written() {
        assert_eq!(at(KeyPath::new("listen").key("imap")), Some((3, 1)));
        assert_eq!(
            at(KeyPath::new("listen").key("imap").index(1)),
            Some((3, 26))
        );
        assert_eq!(at(KeyPath::new("ftp").key("passive_ports")), Some((6, 1)));
        assert_eq!(at(KeyPath::new("record").index(1)), Some((11, 1)));
        assert_eq!(
            at(KeyPath::new("record").index(1).key("value")),
            Some((13, 1))
        );
        assert_eq!(
            at(KeyPath::new("acl").key("allow").index(1)),
            Some((16, 25))
        );
        assert_eq!(
            at(KeyPath::new("acl").key("inline").key("b").index(1)),
            Some((17, 27))
        );
    }

    #[test]
    fn a_missing_key_falls_back_to_what_encloses_it() {
        assert_eq!(at(KeyPath::new("ftp").key("passive_address")), Some((5, 2)));
        assert_eq!(
            at(KeyPath::new("record").index(0).key("value")),
            Some((8, 1))
        );
        assert_eq!(at(KeyPath::new("record").index(7)), Some((8, 3)));
        assert_eq!(at(KeyPath::new("tls").key("cert")), None);
        assert_eq!(KeyPath::new("a").locate("not [toml"), None);
    }

    #[test]
    fn paths_read_like_toml() {
        let path = KeyPath::new("record").index(2).key("value");
        assert_eq!(path.to_string(), "record[2].value");
        assert_eq!(
            KeyPath::new("ftp")
                .key("passive_ports")
                .problem("no")
                .to_string(),
            "ftp.passive_ports: no"
        );
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("a\nbé c", 6), (2, 4));
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("abc", 99), (1, 4));
    }
}
