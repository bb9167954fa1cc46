//! The command forms `imap-codec` does not parse: LIST with selection options, several
//! patterns and return options (LIST-EXTENDED, RFC 5258; LIST-STATUS, RFC 5819; SPECIAL-USE,
//! RFC 6154), CREATE with a `USE` parameter (CREATE-SPECIAL-USE, RFC 6154 §3) and APPEND of
//! several messages (MULTIAPPEND, RFC 3502).
//!
//! The session tries `imap-codec` first and comes here only when it refuses a command. The
//! input is a whole command with its literals (as the command reader assembles it). Anything
//! this parser does not accept is a syntax error (BAD), which is what RFC 5258 asks for an
//! unknown selection or return option and for RECURSIVEMATCH alone.

use imap_codec::imap_types::status::StatusDataItemName;

use crate::catenate::CatPart;

/// Most patterns in one LIST, and most messages in one APPEND.
const MAX_PARTS: usize = 1000;
/// Most STATUS items in a LIST's `RETURN (STATUS (...))`, and most `USE` attributes.
const MAX_ITEMS: usize = 32;

/// A command this parser understood.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Extended<'a> {
    pub(crate) tag: &'a [u8],
    pub(crate) command: ExtCommand,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExtCommand {
    List(ListExtended),
    /// CREATE with `(USE (\Sent ...))`: the name as sent (modified UTF-7) and the attributes
    /// without their backslash.
    Create {
        mailbox: Vec<u8>,
        uses: Vec<String>,
    },
    /// APPEND of one or more messages (MULTIAPPEND), each a literal or a CATENATE.
    Append {
        messages: Vec<AppendMessage>,
    },
}

/// One message of an APPEND, re-encoded as a single-message APPEND for `imap-codec` to
/// decode (flags and date-time keep one parser).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AppendMessage {
    /// The single APPEND: with the message's literal, or, for CATENATE, an empty one.
    pub(crate) command: Vec<u8>,
    /// CATENATE (RFC 4469): the parts the message is made of.
    pub(crate) catenate: Option<Vec<CatPart>>,
}

/// LIST's selection options (RFC 5258 §3.1).
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub(crate) struct Selection {
    pub(crate) subscribed: bool,
    pub(crate) special_use: bool,
    pub(crate) recursive_match: bool,
}

/// LIST's return options (RFC 5258 §3.2, RFC 5819, RFC 6154).
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub(crate) struct Returns {
    pub(crate) subscribed: bool,
    pub(crate) children: bool,
    pub(crate) special_use: bool,
    pub(crate) status: Option<Vec<StatusDataItemName>>,
}

#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub(crate) struct ListExtended {
    pub(crate) selection: Selection,
    /// The reference and patterns as sent (modified UTF-7).
    pub(crate) reference: Vec<u8>,
    pub(crate) patterns: Vec<Vec<u8>>,
    pub(crate) returns: Returns,
}

/// The command in `input` (a whole command, CRLF and literals included), when it is one of the
/// forms above.
pub(crate) fn parse(input: &[u8]) -> Option<Extended<'_>> {
    let mut p = Parser::new(input);
    let tag = p.tag()?;
    p.space()?;
    let name = p.atom()?;
    p.space()?;
    let command = if name.eq_ignore_ascii_case(b"LIST") {
        ExtCommand::List(p.list()?)
    } else if name.eq_ignore_ascii_case(b"CREATE") {
        p.create()?
    } else if name.eq_ignore_ascii_case(b"APPEND") {
        p.append(tag)?
    } else {
        return None;
    };
    p.crlf()?;
    p.at_end().then_some(Extended { tag, command })
}

/// The parser of these forms; [`crate::catenate`] adds CATENATE's parts.
pub(crate) struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b)
}

impl<'a> Parser<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Parser<'a> {
        Parser { input, at: 0 }
    }

    /// Whether all of the input has been taken.
    pub(crate) fn at_end(&self) -> bool {
        self.at == self.input.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    pub(crate) fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.input.get(self.at.checked_add(ahead)?).copied()
    }

    /// How far the parser is.
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    /// The next byte, taken.
    pub(crate) fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    /// What was taken since `start` (a [`Parser::position`]).
    pub(crate) fn since(&self, start: usize) -> &'a [u8] {
        self.input.get(start..self.at).unwrap_or_default()
    }

    pub(crate) fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek() == Some(b)).then(|| self.at += 1)
    }

    pub(crate) fn space(&mut self) -> Option<()> {
        self.eat(b' ')
    }

    pub(crate) fn crlf(&mut self) -> Option<()> {
        self.eat(b'\r')?;
        self.eat(b'\n')
    }

    fn take_while(&mut self, ok: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(&ok) {
            self.at += 1;
        }
        self.input.get(start..self.at).unwrap_or_default()
    }

    pub(crate) fn tag(&mut self) -> Option<&'a [u8]> {
        let tag = self.take_while(|b| is_atom_char(b) && b != b'+' || b == b']');
        (!tag.is_empty()).then_some(tag)
    }

    pub(crate) fn atom(&mut self) -> Option<&'a [u8]> {
        let atom = self.take_while(is_atom_char);
        (!atom.is_empty()).then_some(atom)
    }

    /// A keyword, case-insensitively.
    pub(crate) fn keyword(&mut self, word: &[u8]) -> Option<()> {
        let start = self.at;
        match self.atom() {
            Some(atom) if atom.eq_ignore_ascii_case(word) => Some(()),
            _ => {
                self.at = start;
                None
            }
        }
    }

    /// A quoted string, with its `\"` and `\\` escapes undone.
    fn quoted(&mut self) -> Option<Vec<u8>> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(out);
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self.peek().filter(|b| matches!(b, b'"' | b'\\'))?;
                    out.push(escaped);
                    self.at += 1;
                }
                b'\r' | b'\n' | 0 => return None,
                b => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
    }

    /// `{n}` or `{n+}` (or `~{n}` when `binary`), CRLF, and the n bytes.
    pub(crate) fn literal(&mut self, binary: bool) -> Option<&'a [u8]> {
        if binary {
            let _ = self.eat(b'~');
        }
        self.eat(b'{')?;
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() || digits.len() > 10 {
            return None;
        }
        let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let _ = self.eat(b'+');
        self.eat(b'}')?;
        self.crlf()?;
        let end = self.at.checked_add(n)?;
        let data = self.input.get(self.at..end)?;
        self.at = end;
        Some(data)
    }

    /// An astring (RFC 3501), or with `wildcards` a list-mailbox (`%` and `*` allowed).
    pub(crate) fn astring(&mut self, wildcards: bool) -> Option<Vec<u8>> {
        match self.peek()? {
            b'"' => self.quoted(),
            b'{' => self.literal(false).map(<[u8]>::to_vec),
            _ => {
                let word = self.take_while(|b| {
                    is_atom_char(b) || b == b']' || wildcards && (b == b'%' || b == b'*')
                });
                (!word.is_empty()).then(|| word.to_vec())
            }
        }
    }

    /// `(` items separated by single spaces `)`, at most `max`; `()` is an empty list.
    pub(crate) fn list_of<T>(
        &mut self,
        max: usize,
        mut item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.eat(b'(')?;
        let mut items = Vec::new();
        if self.eat(b')').is_some() {
            return Some(items);
        }
        loop {
            if items.len() == max {
                return None;
            }
            items.push(item(self)?);
            if self.eat(b')').is_some() {
                return Some(items);
            }
            self.space()?;
        }
    }

    fn list(&mut self) -> Option<ListExtended> {
        let mut list = ListExtended::default();
        if self.peek() == Some(b'(') {
            let options = self.list_of(MAX_ITEMS, |p| p.atom().map(<[u8]>::to_ascii_uppercase))?;
            let mut remote = false;
            for option in options {
                match option.as_slice() {
                    b"SUBSCRIBED" => list.selection.subscribed = true,
                    b"REMOTE" => remote = true,
                    b"RECURSIVEMATCH" => list.selection.recursive_match = true,
                    b"SPECIAL-USE" => list.selection.special_use = true,
                    _ => return None,
                }
            }
            let _ = remote; // No remote mailboxes here: REMOTE changes nothing.
                            // RFC 5258 §3.1: RECURSIVEMATCH needs an option that selects something.
            let selects = list.selection.subscribed || list.selection.special_use;
            if list.selection.recursive_match && !selects {
                return None;
            }
            self.space()?;
        }
        list.reference = self.astring(false)?;
        self.space()?;
        list.patterns = if self.peek() == Some(b'(') {
            let patterns = self.list_of(MAX_PARTS, |p| p.astring(true))?;
            if patterns.is_empty() {
                return None;
            }
            patterns
        } else {
            vec![self.astring(true)?]
        };
        if self.space().is_some() {
            self.keyword(b"RETURN")?;
            self.space()?;
            list.returns = self.returns()?;
        }
        // RFC 5258 §3.1: selection options imply the matching return options.
        list.returns.subscribed |= list.selection.subscribed;
        list.returns.special_use |= list.selection.special_use;
        Some(list)
    }

    fn returns(&mut self) -> Option<Returns> {
        let mut returns = Returns::default();
        self.eat(b'(')?;
        if self.eat(b')').is_some() {
            return Some(returns);
        }
        for _ in 0..MAX_ITEMS {
            let option = self.atom()?.to_ascii_uppercase();
            match option.as_slice() {
                b"SUBSCRIBED" => returns.subscribed = true,
                b"CHILDREN" => returns.children = true,
                b"SPECIAL-USE" => returns.special_use = true,
                b"STATUS" if returns.status.is_none() => {
                    self.space()?;
                    let items = self.list_of(MAX_ITEMS, |p| status_item(p.atom()?))?;
                    if items.is_empty() {
                        return None;
                    }
                    returns.status = Some(items);
                }
                _ => return None,
            }
            if self.eat(b')').is_some() {
                return Some(returns);
            }
            self.space()?;
        }
        None
    }

    /// `mailbox SP "(" "USE" SP "(" [use-attr *(SP use-attr)] ")" ")"`.
    fn create(&mut self) -> Option<ExtCommand> {
        let mailbox = self.astring(false)?;
        self.space()?;
        self.eat(b'(')?;
        self.keyword(b"USE")?;
        self.space()?;
        let uses = self.list_of(MAX_ITEMS, |p| {
            p.eat(b'\\')?;
            p.atom().map(|a| String::from_utf8_lossy(a).into_owned())
        })?;
        self.eat(b')')?;
        Some(ExtCommand::Create { mailbox, uses })
    }

    /// `mailbox 1*(SP [flag-list SP] [date-time SP] (literal / CATENATE SP "(" … ")"))`:
    /// the raw bytes of the mailbox, then of each message's flags, date and literal.
    fn append(&mut self, tag: &[u8]) -> Option<ExtCommand> {
        let start = self.at;
        self.astring(false)?;
        let mailbox = self.input.get(start..self.at)?;
        let mut messages = Vec::new();
        while self.peek() == Some(b' ') {
            if messages.len() == MAX_PARTS {
                return None;
            }
            self.space()?;
            let part = self.at;
            if self.peek() == Some(b'(') {
                self.list_of(MAX_PARTS, |p| {
                    let _ = p.eat(b'\\');
                    p.atom()
                })?;
                self.space()?;
            }
            if self.peek() == Some(b'"') {
                self.quoted()?;
                self.space()?;
            }
            let before = self.input.get(part..self.at)?;
            let (binary, data, catenate) = if self.keyword(b"CATENATE").is_some() {
                self.space()?;
                (false, &b""[..], Some(self.cat_parts()?))
            } else {
                // The literal's announcement is rewritten as `{n}` or `~{n}`: the reader has
                // dealt with synchronising already.
                let binary = self.peek() == Some(b'~');
                (binary, self.literal(true)?, None)
            };
            let mut command = Vec::with_capacity(tag.len() + mailbox.len() + data.len() + 40);
            command.extend_from_slice(tag);
            command.extend_from_slice(b" APPEND ");
            command.extend_from_slice(mailbox);
            command.push(b' ');
            command.extend_from_slice(before);
            if binary {
                command.push(b'~');
            }
            command.extend_from_slice(format!("{{{}}}\r\n", data.len()).as_bytes());
            command.extend_from_slice(data);
            command.extend_from_slice(b"\r\n");
            messages.push(AppendMessage { command, catenate });
        }
        (!messages.is_empty()).then_some(ExtCommand::Append { messages })
    }
}

fn status_item(name: &[u8]) -> Option<StatusDataItemName> {
    Some(match name.to_ascii_uppercase().as_slice() {
        b"MESSAGES" => StatusDataItemName::Messages,
        b"RECENT" => StatusDataItemName::Recent,
        b"UIDNEXT" => StatusDataItemName::UidNext,
        b"UIDVALIDITY" => StatusDataItemName::UidValidity,
        b"UNSEEN" => StatusDataItemName::Unseen,
        b"SIZE" => StatusDataItemName::Size,
        // IMAP4rev2's (RFC 9051 §6.3.11); the session refuses it to a rev1 client.
        b"DELETED" => StatusDataItemName::Deleted,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(input: &str) -> Option<ListExtended> {
        match parse(input.as_bytes())?.command {
            ExtCommand::List(list) => Some(list),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_with_selection_patterns_and_returns() {
        let l = list("a LIST (SPECIAL-USE) \"\" \"*\"\r\n").expect("parsed");
        assert!(l.selection.special_use && l.returns.special_use);
        assert_eq!(l.patterns, vec![b"*".to_vec()]);
        let l = list("a list (subscribed recursivematch) \"\" (a/% {3}\r\nb*c) return (children status (messages size))\r\n")
            .expect("parsed");
        assert!(l.selection.subscribed && l.selection.recursive_match && l.returns.subscribed);
        assert_eq!(l.patterns, vec![b"a/%".to_vec(), b"b*c".to_vec()]);
        assert!(l.returns.children);
        assert_eq!(
            l.returns.status,
            Some(vec![StatusDataItemName::Messages, StatusDataItemName::Size])
        );
        let l = list("a LIST \"\" \"\" RETURN ()\r\n").expect("parsed");
        assert_eq!(l.returns, Returns::default());
        assert!(list("a LIST (REMOTE) \"\" %\r\n").is_some());
    }

    #[test]
    fn list_errors_are_refused() {
        for bad in [
            "a LIST (imaptest) \"\" \"\"\r\n",
            "a LIST (recursivematch) \"\" \"\"\r\n",
            "a LIST (recursivematch remote) \"\" \"\"\r\n",
            "a LIST \"\" \"\" return (imaptest)\r\n",
            "a LIST \"\" () \r\n",
            "a LIST \"\" \"*\" RETURN (STATUS ())\r\n",
            "a LIST \"\" \"*\" RETURN (STATUS (FOO))\r\n",
            "a LIST \"\" \"*\" RETURN\r\n",
            "a LIST \"\" {5}\r\nab\r\n",
            "a LIST \"\" \"*\r\n",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn create_with_use() {
        let e = parse(b"t1 CREATE \"My Sent\" (USE (\\Sent \\Archive))\r\n").expect("parsed");
        assert_eq!(e.tag, b"t1");
        assert_eq!(
            e.command,
            ExtCommand::Create {
                mailbox: b"My Sent".to_vec(),
                uses: vec!["Sent".into(), "Archive".into()]
            }
        );
        assert_eq!(parse(b"t1 CREATE x (FOO (\\Sent))\r\n"), None);
        assert_eq!(parse(b"t1 CREATE x (USE (Sent))\r\n"), None);
    }

    #[test]
    fn multiappend_splits_into_single_appends() {
        let input = b"A1 APPEND box (\\Seen) \"24-Mar-2007 23:00:00 +0200\" {3+}\r\nabc (\\Flagged) ~{2}\r\nde {1}\r\nf\r\n";
        let e = parse(input).expect("parsed");
        let ExtCommand::Append { messages } = e.command else {
            panic!("not an append");
        };
        let commands: Vec<&[u8]> = messages.iter().map(|m| m.command.as_slice()).collect();
        assert_eq!(
            commands,
            vec![
                &b"A1 APPEND box (\\Seen) \"24-Mar-2007 23:00:00 +0200\" {3}\r\nabc\r\n"[..],
                b"A1 APPEND box (\\Flagged) ~{2}\r\nde\r\n",
                b"A1 APPEND box {1}\r\nf\r\n",
            ]
        );
        assert!(messages.iter().all(|m| m.catenate.is_none()));
        // A literal shorter than announced, and nothing after the mailbox.
        assert_eq!(parse(b"A1 APPEND box {9}\r\nabc\r\n"), None);
        assert_eq!(parse(b"A1 APPEND box\r\n"), None);
    }

    #[test]
    fn catenate_messages_carry_their_parts() {
        let input = b"A1 APPEND box (\\Seen) CATENATE (URL \"/INBOX/;UID=1\" TEXT {3+}\r\nabc) \
            catenate (text {1}\r\nx) {2}\r\nyz\r\n";
        let e = parse(input).expect("parsed");
        let ExtCommand::Append { messages } = e.command else {
            panic!("not an append");
        };
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].command, b"A1 APPEND box (\\Seen) {0}\r\n\r\n");
        assert_eq!(
            messages[0].catenate,
            Some(vec![
                CatPart::Url(b"/INBOX/;UID=1".to_vec()),
                CatPart::Text(b"abc".to_vec())
            ])
        );
        assert_eq!(messages[1].command, b"A1 APPEND box {0}\r\n\r\n");
        assert_eq!(
            messages[1].catenate,
            Some(vec![CatPart::Text(b"x".to_vec())])
        );
        assert_eq!(messages[2].command, b"A1 APPEND box {2}\r\nyz\r\n");
        assert_eq!(messages[2].catenate, None);
        // An empty CATENATE, and one not closed.
        assert_eq!(parse(b"A1 APPEND box CATENATE ()\r\n"), None);
        assert_eq!(parse(b"A1 APPEND box CATENATE (URL x\r\n"), None);
    }

    #[test]
    fn other_commands_are_not_taken() {
        assert_eq!(parse(b"a SELECT INBOX\r\n"), None);
        assert_eq!(parse(b"a LIST \"\" \"*\"\r\nextra"), None);
    }
}
