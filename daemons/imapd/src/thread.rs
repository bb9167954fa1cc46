//! THREAD (RFC 5256 §3): ORDEREDSUBJECT, REFERENCES (§2.2, after Jamie Zawinski's
//! algorithm), and REFS, Dovecot's REFERENCES without the grouping by subject and with
//! threads ordered by their newest message.
//!
//! The trees are built in an arena of containers (a message, or a dummy standing for a
//! message only referred to) indexed by number, so no reference cycles and no recursion
//! deeper than the data (which [`write`] bounds).

use std::collections::HashMap;
use std::fmt::Write as _;

use mail_parser::{HeaderValue, Message};

#[cfg(test)]
use crate::sort::base_subject;
use crate::sort::{base_subject_and_reply, Keys};

/// What threading needs of one message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// Its number in the reply: sequence number or UID.
    pub(crate) number: u32,
    /// The sent date (else the internal date) and base subject.
    pub(crate) keys: Keys,
    /// Whether the subject was a reply or forward ("Re:", "Fwd:", "(fwd)").
    pub(crate) reply: bool,
    pub(crate) message_id: Option<String>,
    /// References, else the first message ID of In-Reply-To.
    pub(crate) references: Vec<String>,
}

/// The deepest a thread grows: a message below that starts a thread of its own.
const MAX_DEPTH: usize = 1000;

/// The longest References list looked at: its last IDs, which are the nearest ancestors.
const MAX_REFERENCES: usize = 64;

impl Facts {
    pub(crate) fn of(number: u32, keys: Keys, header: Option<&Message<'_>>) -> Facts {
        let Some(m) = header else {
            return Facts {
                number,
                keys,
                ..Facts::default()
            };
        };
        let ids = |v: &HeaderValue<'_>| -> Vec<String> {
            match v {
                HeaderValue::Text(t) => vec![t.to_string()],
                HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
                _ => Vec::new(),
            }
        };
        let mut references = ids(m.references());
        if references.is_empty() {
            references = ids(m.in_reply_to()).into_iter().take(1).collect();
        }
        if references.len() > MAX_REFERENCES {
            references.drain(..references.len() - MAX_REFERENCES);
        }
        let subject = m.subject().unwrap_or_default();
        Facts {
            number,
            reply: is_reply(subject),
            keys,
            message_id: m.message_id().map(str::to_owned),
            references,
        }
    }
}

fn is_reply(subject: &str) -> bool {
    base_subject_and_reply(subject).1
}

/// A node: a message (index into the facts) or a dummy.
#[derive(Default)]
struct Node {
    message: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Forest<'f> {
    facts: &'f [Facts],
    nodes: Vec<Node>,
}

impl Forest<'_> {
    fn new_node(&mut self, message: Option<usize>) -> usize {
        self.nodes.push(Node {
            message,
            ..Node::default()
        });
        self.nodes.len() - 1
    }

    /// Whether `a` is `b` or one of its ancestors; also (so a link is not made) when `b` is
    /// deeper than [`MAX_DEPTH`]: each link looks up at most that far, so a folder that is
    /// one long chain costs messages × depth, not messages².
    fn is_ancestor(&self, a: usize, mut b: usize) -> bool {
        for _ in 0..MAX_DEPTH {
            if a == b {
                return true;
            }
            match self.nodes.get(b).and_then(|n| n.parent) {
                Some(p) => b = p,
                None => return false,
            }
        }
        true
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes.get_mut(child).and_then(|n| n.parent.take()) {
            if let Some(parent) = self.nodes.get_mut(p) {
                parent.children.retain(|&c| c != child);
            }
        }
    }

    fn link(&mut self, parent: usize, child: usize) {
        if let Some(n) = self.nodes.get_mut(child) {
            n.parent = Some(parent);
        }
        if let Some(p) = self.nodes.get_mut(parent) {
            p.children.push(child);
        }
    }

    fn date(&self, node: usize) -> i64 {
        self.first_message(node)
            .and_then(|m| self.facts.get(m))
            .map_or(0, |f| f.keys.date)
    }

    /// The message of a node, or of a dummy's first child (children sorted already).
    fn first_message(&self, mut node: usize) -> Option<usize> {
        for _ in 0..=self.nodes.len() {
            let n = self.nodes.get(node)?;
            if n.message.is_some() {
                return n.message;
            }
            node = *n.children.first()?;
        }
        None
    }

    /// Sorts siblings (by the date of each, or of a dummy's first child; ties by number),
    /// children before their parents.
    fn sort_all(&mut self, roots: &mut [usize], by_newest: bool) {
        let mut order = Vec::new();
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(n) = stack.pop() {
            order.push(n);
            stack.extend(self.nodes.get(n).map_or(&[][..], |n| &n.children[..]));
        }
        // The newest date in each subtree (REFS), children before parents.
        let mut newest = vec![i64::MIN; self.nodes.len()];
        for &n in order.iter().rev() {
            let mut children = std::mem::take(&mut self.nodes[n].children);
            self.sort_siblings(&mut children, by_newest.then_some(&newest[..]));
            let own = self.nodes[n].message.and_then(|m| self.facts.get(m));
            newest[n] = children
                .iter()
                .map(|&c| newest[c])
                .chain(own.map(|f| f.keys.date))
                .max()
                .unwrap_or(i64::MIN);
            self.nodes[n].children = children;
        }
        self.sort_siblings(roots, by_newest.then_some(&newest[..]));
    }

    /// By date (of a dummy's first child; or the newest in the subtree when given), ties by
    /// number.
    fn sort_siblings(&self, siblings: &mut [usize], newest: Option<&[i64]>) {
        let number = |n: usize| {
            self.first_message(n)
                .and_then(|m| self.facts.get(m))
                .map_or(0, |f| f.number)
        };
        siblings.sort_by_key(|&n| {
            let date = match newest {
                Some(newest) => newest.get(n).copied().unwrap_or(i64::MIN),
                None => self.date(n),
            };
            (date, number(n))
        });
    }
}

/// The algorithm a THREAD names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    OrderedSubject,
    References,
    Refs,
}

/// The THREAD response's body: `(1 2)(3 (4)(5))`.
pub(crate) fn thread(facts: &[Facts], algorithm: Algorithm) -> String {
    let mut forest = Forest {
        facts,
        nodes: Vec::with_capacity(facts.len()),
    };
    let mut roots = match algorithm {
        Algorithm::OrderedSubject => ordered_subject(&mut forest),
        Algorithm::References | Algorithm::Refs => references(&mut forest),
    };
    match algorithm {
        Algorithm::OrderedSubject => {}
        Algorithm::References => {
            forest.sort_all(&mut roots, false);
            roots = merge_subjects(&mut forest, roots);
            forest.sort_all(&mut roots, false);
        }
        Algorithm::Refs => forest.sort_all(&mut roots, true),
    }
    let mut out = String::new();
    for root in roots {
        out.push('(');
        write(&forest, root, &mut out);
        out.push(')');
    }
    out
}

/// ORDEREDSUBJECT: messages by base subject then date; the first of each subject is the
/// parent of the rest; threads by their first message's date.
fn ordered_subject(forest: &mut Forest<'_>) -> Vec<usize> {
    let facts = forest.facts;
    let mut order: Vec<usize> = (0..facts.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (&facts[a], &facts[b]);
        (&fa.keys.subject, fa.keys.date, fa.number).cmp(&(
            &fb.keys.subject,
            fb.keys.date,
            fb.number,
        ))
    });
    let mut roots: Vec<usize> = Vec::new();
    let mut current: Option<(usize, &str)> = None;
    for m in order {
        let node = forest.new_node(Some(m));
        let subject = facts[m].keys.subject.as_str();
        match current {
            Some((root, s)) if s == subject => forest.link(root, node),
            _ => {
                roots.push(node);
                current = Some((node, subject));
            }
        }
    }
    forest.sort_siblings(&mut roots, None);
    roots
}

/// REFERENCES steps 1 to 4: containers linked by Message-ID and References, the root set,
/// dummies pruned.
fn references(forest: &mut Forest<'_>) -> Vec<usize> {
    let facts = forest.facts;
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (m, f) in facts.iter().enumerate() {
        // (1A) This message's container: a dummy made for its ID, or a new one (a missing
        // or duplicate ID is as good as unique).
        let own = match f.message_id.as_deref() {
            Some(id) => match ids.get(id) {
                Some(&c) if forest.nodes[c].message.is_none() => {
                    forest.nodes[c].message = Some(m);
                    c
                }
                Some(_) => forest.new_node(Some(m)),
                None => {
                    let c = forest.new_node(Some(m));
                    ids.insert(id, c);
                    c
                }
            },
            None => forest.new_node(Some(m)),
        };
        // (1B) Each reference the parent of the next, unless linked already or a loop.
        let mut previous: Option<usize> = None;
        for id in &f.references {
            let c = match ids.get(id.as_str()) {
                Some(&c) => c,
                None => {
                    let c = forest.new_node(None);
                    ids.insert(id, c);
                    c
                }
            };
            if let Some(p) = previous {
                if forest.nodes[c].parent.is_none() && !forest.is_ancestor(c, p) {
                    forest.link(p, c);
                }
            }
            previous = Some(c);
        }
        // (1C) The last reference is the parent: the message says so, whatever others
        // presumed; no link that would make a loop.
        forest.unlink(own);
        if let Some(p) = previous {
            if !forest.is_ancestor(own, p) {
                forest.link(p, own);
            }
        }
    }
    // (2) The root set; (4) dummies pruned.
    let roots: Vec<usize> = (0..forest.nodes.len())
        .filter(|&n| forest.nodes[n].parent.is_none())
        .collect();
    prune(forest, roots)
}

/// Drops dummies without children and puts a dummy's children in its place, except a dummy
/// at the root with several children (it keeps them together). Children before parents, by
/// an explicit order rather than recursion: a thread can be as deep as the folder is long.
fn prune(forest: &mut Forest<'_>, roots: Vec<usize>) -> Vec<usize> {
    let mut order = Vec::new();
    let mut stack = roots.clone();
    while let Some(n) = stack.pop() {
        order.push(n);
        stack.extend(&forest.nodes[n].children);
    }
    for &n in order.iter().rev() {
        let children = std::mem::take(&mut forest.nodes[n].children);
        let mut kept = Vec::with_capacity(children.len());
        for c in children {
            if forest.nodes[c].message.is_some() {
                kept.push(c);
            } else {
                // Pruned already: its children are messages or kept dummies' stand-ins.
                kept.append(&mut forest.nodes[c].children);
            }
        }
        for &c in &kept {
            forest.nodes[c].parent = Some(n);
        }
        forest.nodes[n].children = kept;
    }
    let mut out = Vec::with_capacity(roots.len());
    for r in roots {
        if forest.nodes[r].message.is_some() || forest.nodes[r].children.len() > 1 {
            out.push(r);
        } else {
            let children = std::mem::take(&mut forest.nodes[r].children);
            for &c in &children {
                forest.nodes[c].parent = None;
            }
            out.extend(children);
        }
    }
    out
}

/// REFERENCES step 5: threads at the root with the same base subject become one.
fn merge_subjects(forest: &mut Forest<'_>, roots: Vec<usize>) -> Vec<usize> {
    let facts = forest.facts;
    let subject_of = |forest: &Forest<'_>, n: usize| -> Option<(String, bool, bool)> {
        let dummy = forest.nodes[n].message.is_none();
        let m = forest.first_message(n)?;
        let f = facts.get(m)?;
        (!f.keys.subject.is_empty()).then(|| (f.keys.subject.clone(), dummy, f.reply && !dummy))
    };
    let mut table: HashMap<String, usize> = HashMap::new();
    for &r in &roots {
        let Some((subject, dummy, reply)) = subject_of(forest, r) else {
            continue;
        };
        let replace = match table.get(&subject) {
            None => true,
            Some(&old) => {
                let old_dummy = forest.nodes[old].message.is_none();
                let old_reply = subject_of(forest, old).is_some_and(|s| s.2);
                (dummy && !old_dummy) || (old_reply && !reply && !dummy)
            }
        };
        if replace {
            table.insert(subject, r);
        }
    }
    let mut out = Vec::new();
    for r in roots {
        let Some((subject, dummy, reply)) = subject_of(forest, r) else {
            out.push(r);
            continue;
        };
        let Some(&kept) = table.get(&subject) else {
            out.push(r);
            continue;
        };
        if kept == r {
            out.push(r);
            continue;
        }
        let kept_dummy = forest.nodes[kept].message.is_none();
        let kept_reply = subject_of(forest, kept).is_some_and(|s| s.2);
        if dummy && kept_dummy {
            let children = std::mem::take(&mut forest.nodes[r].children);
            for c in children {
                forest.nodes[c].parent = None;
                forest.link(kept, c);
            }
        } else if kept_dummy {
            forest.link(kept, r);
        } else if dummy {
            // The message joins the dummy's thread, which takes its place.
            forest.link(r, kept);
            table.insert(subject, r);
            if let Some(slot) = out.iter_mut().find(|x| **x == kept) {
                *slot = r;
            }
        } else if reply && !kept_reply {
            forest.link(kept, r);
        } else {
            let dummy = forest.new_node(None);
            forest.link(dummy, kept);
            forest.link(dummy, r);
            table.insert(subject, dummy);
            if let Some(slot) = out.iter_mut().find(|x| **x == kept) {
                *slot = dummy;
            }
        }
    }
    out
}

/// A node's members: its number, then one child continuing the line or several in
/// parentheses each. A dummy has no number.
fn write(forest: &Forest<'_>, node: usize, out: &mut String) {
    // (node, what to write before it): an explicit stack, as a thread can be long.
    enum Step {
        Node(usize),
        Text(&'static str),
    }
    let mut stack = vec![Step::Node(node)];
    while let Some(step) = stack.pop() {
        let n = match step {
            Step::Text(t) => {
                out.push_str(t);
                continue;
            }
            Step::Node(n) => n,
        };
        let Some(node) = forest.nodes.get(n) else {
            continue;
        };
        let number = node
            .message
            .and_then(|m| forest.facts.get(m))
            .map(|f| f.number);
        if let Some(number) = number {
            let _ = write!(out, "{number}");
        }
        match node.children.as_slice() {
            [] => {}
            [only] if number.is_some() => {
                stack.push(Step::Node(*only));
                stack.push(Step::Text(" "));
            }
            [only] => stack.push(Step::Node(*only)),
            children => {
                for &c in children.iter().rev() {
                    stack.push(Step::Text(")"));
                    stack.push(Step::Node(c));
                    stack.push(Step::Text("("));
                }
                if number.is_some() {
                    stack.push(Step::Text(" "));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(number: u32, date: i64, subject: &str, id: &str, refs: &[&str]) -> Facts {
        Facts {
            number,
            keys: Keys {
                date,
                subject: base_subject(subject),
                ..Keys::default()
            },
            reply: is_reply(subject),
            message_id: (!id.is_empty()).then(|| id.to_owned()),
            references: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn replies_are_told_by_their_subject() {
        assert!(is_reply("Re: x"));
        assert!(is_reply("x (fwd)"));
        assert!(is_reply("[Fwd: x]"));
        assert!(!is_reply("x"));
        assert!(!is_reply("[list] x"));
    }

    #[test]
    fn references_as_imaptest_expects() {
        // thread.mbox: b refers to a and c, c to b: c's own header wins, b stays its child.
        let facts = [
            fact(1, 17, "", "a@b", &[]),
            fact(2, 15, "", "b@b", &["a@b", "c@b"]),
            fact(3, 16, "", "c@b", &["b@b"]),
        ];
        assert_eq!(thread(&facts, Algorithm::References), "(3 2)(1)");
        // thread5.mbox: children in date order, ties by number.
        let facts = [
            fact(1, 17, "", "1@b", &[]),
            fact(2, 15, "", "2@b", &["1@b"]),
            fact(3, 15, "", "3@b", &["1@b"]),
            fact(4, 15, "", "4@b", &["2@b"]),
        ];
        assert_eq!(thread(&facts, Algorithm::References), "(1 (2 4)(3))");
        // Parents gone: a dummy with one child gives way to it, one with two stays.
        let facts = [
            fact(1, 15, "", "3@b", &["1@b"]),
            fact(2, 15, "", "4@b", &["2@b"]),
            fact(3, 15, "", "5@b", &["2@b"]),
        ];
        assert_eq!(thread(&facts, Algorithm::References), "(1)((2)(3))");
        // A duplicate ID is a message of its own.
        let facts = [
            fact(1, 1, "", "a@b", &[]),
            fact(2, 1, "", "c@b", &["b@b"]),
            fact(3, 1, "", "b@b", &["a@b"]),
        ];
        assert_eq!(thread(&facts, Algorithm::References), "(1 3 2)");
    }

    #[test]
    fn references_gathers_subjects() {
        let facts = [
            fact(1, 1, "hello", "1@x", &[]),
            fact(2, 2, "Re: hello", "2@x", &[]),
            fact(3, 3, "other", "3@x", &[]),
            fact(4, 4, "hello", "4@x", &[]),
        ];
        // The reply joins its original; two originals go under a dummy.
        assert_eq!(thread(&facts, Algorithm::References), "((1 2)(4))(3)");
        // REFS does not; and orders threads by their newest message.
        let facts = [
            fact(1, 1, "hello", "1@x", &[]),
            fact(2, 5, "Re: hello", "2@x", &["1@x"]),
            fact(3, 3, "other", "3@x", &[]),
        ];
        assert_eq!(thread(&facts, Algorithm::Refs), "(3)(1 2)");
        assert_eq!(thread(&facts, Algorithm::References), "(1 2)(3)");
    }

    #[test]
    fn ordered_subject() {
        let facts = [
            fact(1, 1, "a", "", &[]),
            fact(2, 2, "b", "", &[]),
            fact(3, 3, "Re: a", "", &[]),
            fact(4, 4, "re: a", "", &[]),
            fact(5, 0, "Fwd: b", "", &[]),
        ];
        assert_eq!(thread(&facts, Algorithm::OrderedSubject), "(5 2)(1 (3)(4))");
    }

    #[test]
    fn a_long_chain_is_written_without_recursion() {
        let n = 5_000;
        let facts: Vec<Facts> = (1..=n)
            .map(|i| {
                let parent = format!("{}@x", i - 1);
                let refs: Vec<&str> = if i > 1 { vec![parent.as_str()] } else { vec![] };
                fact(i, i64::from(i), "", &format!("{i}@x"), &refs)
            })
            .collect();
        let out = thread(&facts, Algorithm::References);
        // Past MAX_DEPTH a message starts a thread of its own.
        let first = out.split(')').next().unwrap_or_default();
        assert_eq!(first.split(' ').count(), MAX_DEPTH + 1, "{out:.80}");
        assert!(out.starts_with("(1 2 3 "), "{out:.80}");
        assert!(out.ends_with(&format!(" {n})")), "{out:.80}");
    }
}
