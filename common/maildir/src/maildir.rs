//! Maildir file names: unique base names, the `,S=` and `,W=` size fields, and flags.
//!
//! A message file is named `<base>` in `new/` and `<base>:2,<FLAGS>` in `cur/`. The base is the
//! message's identity for its whole life; only the part after `:2,` changes. Our bases look like
//! Dovecot's: `<secs>.M<micros>P<pid>Q<counter>.<host>,S=<size>,W=<vsize>`.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Message flags as Maildir letters: the six standard ones and the keyword letters `a`-`z`
/// (which IMAP keywords map to through a per-folder keyword file). Any other letter found in a
/// file name is kept as is, so renaming a message never drops a flag another program set.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u64);

impl Flags {
    /// No flag: a message just delivered.
    pub const EMPTY: Flags = Flags(0);
    /// `D`: IMAP `\Draft`.
    pub const DRAFT: Flags = Flags::letter(b'D');
    /// `F`: IMAP `\Flagged`.
    pub const FLAGGED: Flags = Flags::letter(b'F');
    /// `P`: passed (resent or forwarded), as other Maildir programs set it; IMAP shows no
    /// flag for it.
    pub const PASSED: Flags = Flags::letter(b'P');
    /// `R`: IMAP `\Answered`.
    pub const REPLIED: Flags = Flags::letter(b'R');
    /// `S`: IMAP `\Seen`; POP3 sets it at QUIT on the messages a client retrieved.
    pub const SEEN: Flags = Flags::letter(b'S');
    /// `T`: IMAP `\Deleted`; the message is removed by the next EXPUNGE. (POP3's DELE does
    /// not set it: the message is removed at QUIT.)
    pub const TRASHED: Flags = Flags::letter(b'T');

    /// Bits 0-25 are `A`-`Z`, bits 26-51 are `a`-`z`; anything else is no flag.
    const fn letter(c: u8) -> Flags {
        match c {
            b'A'..=b'Z' => Flags(1 << (c - b'A')),
            b'a'..=b'z' => Flags(1 << (26 + c - b'a')),
            _ => Flags(0),
        }
    }

    /// Keyword number `n` (0-25), stored as the letter `a` + n.
    pub fn keyword(n: u8) -> Option<Flags> {
        (n < 26).then(|| Flags::letter(b'a' + n))
    }

    /// Parses the letters after `:2,`; characters that are not ASCII letters are ignored.
    pub fn from_maildir(letters: &str) -> Flags {
        letters
            .bytes()
            .fold(Flags::EMPTY, |acc, c| acc | Flags::letter(c))
    }

    /// The letters in ASCII order, as the Maildir spec wants them in file names.
    pub fn to_maildir(self) -> String {
        (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .filter(|&c| self.contains(Flags::letter(c)))
            .map(char::from)
            .collect()
    }

    /// Whether every flag of `other` is set (true for an empty `other`).
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// No flag at all, keywords and unknown letters included.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Sets every flag of `other`.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    /// Clears every flag of `other`; the others stay.
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_maildir())
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({:?})", self.to_maildir())
    }
}

/// Splits a file name from `new/` or `cur/` into its base and its flags.
pub(crate) fn split_name(name: &str) -> (&str, Flags) {
    match name.split_once(':') {
        Some((base, info)) => (
            base,
            info.strip_prefix("2,")
                .map_or(Flags::EMPTY, Flags::from_maildir),
        ),
        None => (name, Flags::EMPTY),
    }
}

/// The file name of a message in `cur/`.
pub(crate) fn cur_name(base: &str, flags: Flags) -> String {
    format!("{base}:2,{flags}")
}

/// The file name of a message in `new/`: its base, with the flags it arrived with (IMAP
/// APPEND, COPY and MOVE give some), which scans read as in `cur/`. A message stays in `new/`
/// until a session selecting the folder claims it: that session sees it `\Recent`.
pub(crate) fn new_name(base: &str, flags: Flags) -> String {
    if flags.is_empty() {
        base.to_owned()
    } else {
        cur_name(base, flags)
    }
}

/// A numeric `,<key>=<n>` field of a base name (`S` = size, `W` = size with CRLF line ends).
pub(crate) fn size_field(base: &str, key: char) -> Option<u64> {
    base.split(',').skip(1).find_map(|field| {
        let value = field.strip_prefix(key)?.strip_prefix('=')?;
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        value.parse().ok()
    })
}

/// The delivery time at the start of a base name (`<secs>.…`), when it has one.
pub(crate) fn name_time(base: &str) -> Option<u64> {
    let secs = base.split('.').next()?;
    if secs.is_empty() || secs.len() > 12 || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    secs.parse().ok()
}

/// Where a base sorts among messages to be numbered: by its time to the microsecond when the
/// name tells it (`<secs>.M<micros>…`, ours and Dovecot's), else by the name.
pub(crate) fn arrival_key(base: &str) -> (Option<u64>, Option<u32>, &str) {
    let micros = base.split('.').nth(1).and_then(|field| {
        let digits = field.strip_prefix('M')?;
        digits
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    (name_time(base), micros, base)
}

/// A new unique base (without the size fields): `<secs>.M<micros>P<pid>Q<n>.<host>`.
///
/// `secs` is the message's internal date (normally now); the microseconds, pid and a
/// per-process counter come from the clock and this process, so two writers never pick the
/// same name. Should that still happen (a second host on a shared maildir with the same pid),
/// the exclusive create in `tmp/` and the no-replace rename into `new/` or `cur/` catch it and
/// the writer asks for another name.
pub(crate) fn unique_name(date: SystemTime) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    // Seconds and microseconds from the same instant: UIDs follow arrival by this pair, and
    // reading the clock again later (after a slow fsync) could sort a message before one
    // that arrived earlier in the same second.
    let since_epoch = date.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since_epoch.as_secs(), since_epoch.subsec_micros());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{secs}.M{micros}P{}Q{n}.{}", std::process::id(), hostname())
}

/// The host name with the characters that mean something in a Maildir name escaped as octal,
/// as other Maildir writers do (`/` and `:`), and `,` so that it cannot fake a size field.
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let mut host = String::with_capacity(raw.len());
        for c in raw.chars() {
            match c {
                '/' => host.push_str("\\057"),
                ':' => host.push_str("\\072"),
                ',' => host.push_str("\\054"),
                c if c.is_ascii_graphic() => host.push(c),
                _ => host.push('_'),
            }
        }
        host
    })
}

/// Counts a message's size and its size with every bare LF counted as CRLF (the "virtual" size
/// POP3 LIST and IMAP RFC822.SIZE report). A lone CR is counted as it is.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SizeCounter {
    pub size: u64,
    pub vsize: u64,
    last_was_cr: bool,
}

impl SizeCounter {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else { return };
        let mut bare_lf = 0u64;
        for at in memchr::memchr_iter(b'\n', bytes) {
            let after_cr = match at {
                0 => self.last_was_cr,
                _ => bytes[at - 1] == b'\r',
            };
            bare_lf += u64::from(!after_cr);
        }
        self.last_was_cr = last == b'\r';
        self.size += bytes.len() as u64;
        self.vsize += bytes.len() as u64 + bare_lf;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_sorted() {
        let flags = Flags::from_maildir("TSRPFDzab");
        assert_eq!(flags.to_maildir(), "DFPRSTabz");
        assert_eq!(Flags::from_maildir(&flags.to_maildir()), flags);
        assert!(flags.contains(Flags::SEEN | Flags::DRAFT));
        assert!(flags.contains(Flags::keyword(25).unwrap()));
        assert_eq!(Flags::keyword(26), None);
        // Unknown letters survive; other characters are not flags.
        assert_eq!(Flags::from_maildir("X,S1").to_maildir(), "SX");
        let mut f = Flags::SEEN;
        f.insert(Flags::FLAGGED);
        f.remove(Flags::SEEN);
        assert_eq!(f, Flags::FLAGGED);
        assert!(Flags::EMPTY.is_empty());
    }

    #[test]
    fn names_split_and_fields() {
        let base = "1700000000.M123P45Q6.host,S=1000,W=1020";
        assert_eq!(split_name(base), (base, Flags::EMPTY));
        let cur = cur_name(base, Flags::SEEN | Flags::REPLIED);
        assert_eq!(cur, format!("{base}:2,RS"));
        assert_eq!(split_name(&cur), (base, Flags::SEEN | Flags::REPLIED));
        assert_eq!(size_field(base, 'S'), Some(1000));
        assert_eq!(size_field(base, 'W'), Some(1020));
        assert_eq!(name_time(base), Some(1_700_000_000));
        // Names written by other programs.
        assert_eq!(split_name("abc:1,xyz"), ("abc", Flags::EMPTY));
        assert_eq!(size_field("1.2.host", 'S'), None);
        assert_eq!(size_field("1.2.host,S=", 'S'), None);
        assert_eq!(size_field("1.2.host,S=12x", 'S'), None);
        assert_eq!(name_time("msg-one"), None);
        // Arrival order: microseconds are not zero-padded in names.
        let early = "1700000000.M99P1Q0.h,S=1,W=1";
        let late = "1700000000.M100P1Q0.h,S=1,W=1";
        assert!(arrival_key(early) < arrival_key(late));
        assert!(arrival_key("1699999999.M999999P1.h") < arrival_key(early));
        assert_eq!(arrival_key("1.2.h"), (Some(1), None, "1.2.h"));
        // Names from other programs: the microseconds end at the first non-digit, multi-byte
        // characters included.
        assert_eq!(arrival_key("7.M12ü3P1.h").1, Some(12));
        assert_eq!(arrival_key("7.Mé.h").1, None);
        assert_eq!(arrival_key("7.M€").1, None);
    }

    #[test]
    fn unique_name_takes_seconds_and_microseconds_from_one_instant() {
        let at = UNIX_EPOCH + std::time::Duration::new(1_795_630_056, 999_999_000);
        let name = unique_name(at);
        assert!(name.starts_with("1795630056.M999999P"), "{name}");
        let later = unique_name(UNIX_EPOCH + std::time::Duration::new(1_795_630_057, 1_000));
        assert!(arrival_key(&name) < arrival_key(&later));
    }

    #[test]
    fn unique_names_differ_and_parse() {
        let a = unique_name(SystemTime::now());
        let b = unique_name(SystemTime::now());
        assert_ne!(a, b);
        assert!(name_time(&a).is_some());
        assert!(!a.contains(':') && !a.contains('/') && !a.contains(','));
    }

    #[test]
    fn vsize_counts_bare_lf_across_chunks() {
        let mut c = SizeCounter::default();
        c.update(b"a\r");
        c.update(b"\nb\n\n");
        c.update(b"c\r");
        assert_eq!(c.size, 8);
        assert_eq!(c.vsize, 10); // two bare LFs
        let mut d = SizeCounter::default();
        d.update(b"x\ry\n");
        assert_eq!(d.vsize, 5); // a CR not before LF does not pair with a later LF
    }
}
