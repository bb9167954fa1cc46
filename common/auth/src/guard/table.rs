//! Where the guard keeps its records: a fixed number of slots, in this process's memory or in
//! a state file that every inetkit daemon on the host shares.
//!
//! The file (the daemons use `/run/inetkit/login-guard`, on tmpfs) is a 64-byte header and
//! then fixed-size slots, so its size is set once, by whoever creates it (from its
//! `max_tracked`), and never grows. An address lives in one of the [`PROBE`] slots that
//! follow its hash, keyed with a random seed from the header so that nobody can pick
//! addresses that crowd out someone else's: an update reads at most `PROBE` slots and
//! writes one. Every update holds `flock(LOCK_EX)` on the file, plus a mutex in the process
//! (threads sharing one descriptor are not excluded by flock); a few reads and one write on
//! tmpfs, so it is done in place rather than on the blocking pool. Times are [`Moment`]s,
//! the same in every process; records expire by the policy's window and lockout.
//!
//! A file that is not ours (wrong magic, version or size) is started over. A process that
//! cannot open, lock, read or write it counts in its own memory instead and logs that once
//! (at debug level when the directory does not exist: a host or a test without
//! `/run/inetkit`), and tries the file again on the next update. A file replaced on disk
//! (another inode at the path) is reopened.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};

use super::{GuardPolicy, Moment, PeerKey, Record};

/// Slots an address may live in, from the one its hash points at.
const PROBE: usize = 16;
/// Bytes per slot in the file.
const SLOT: usize = 64;
/// Bytes before the first slot.
const HEADER: usize = 64;
/// The file's first bytes: its kind and format version.
const MAGIC: [u8; 8] = *b"IKGUARD1";
/// The most slots a header may claim (64 MiB of file): a damaged header cannot make anyone
/// allocate or read more.
const MAX_SLOTS: usize = 1 << 20;
/// The file's mode: the static `inetkit` user and the DynamicUser units in group `inetkit`
/// all read and write it.
const FILE_MODE: u32 = 0o660;

const USED: u32 = 1;
const LOCKED: u32 = 2;

/// The guard's records: the shared file when there is one and it works, else memory.
pub(super) struct Table {
    memory: Mutex<MemorySlots>,
    file: Option<Mutex<FileSlots>>,
    /// The file's path, readable without its lock.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("file", &self.path())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every update is a
/// few fields, written at the end).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Table {
    pub(super) fn memory(slots: usize) -> Table {
        Table {
            memory: Mutex::new(MemorySlots::new(slots)),
            file: None,
            path: None,
        }
    }

    pub(super) fn file(path: PathBuf, slots: usize) -> Table {
        Table {
            memory: Mutex::new(MemorySlots::new(slots)),
            path: Some(path.clone()),
            file: Some(Mutex::new(FileSlots {
                path,
                slots,
                open: None,
                failing: false,
                shared_once: false,
            })),
        }
    }

    pub(super) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` on the record of `key` under the table's lock and stores what it leaves
    /// (an idle record frees its slot). A missing record is created when `create` is set
    /// (evicting if need be); otherwise `f` is not called and the answer is `None`.
    pub(super) fn with_record<R>(
        &self,
        key: PeerKey,
        now: Moment,
        policy: &GuardPolicy,
        create: bool,
        f: impl FnOnce(&mut Record) -> R,
    ) -> Option<R> {
        let mut f = Some(f);
        if let Some(file) = &self.file {
            let mut file = lock(file);
            let (answer, error) = file.update(key, now, policy, create, &mut f);
            // Only a file that could not be read sends the update to memory.
            let unread = error.is_some() && f.is_some();
            file.note(error);
            if !unread {
                return answer;
            }
        }
        let mut memory = lock(&self.memory);
        update(&mut *memory, key, now, policy, create, &mut f).0
    }

    /// Records currently stored.
    pub(super) fn tracked(&self) -> usize {
        if let Some(file) = &self.file {
            let mut file = lock(file);
            match file.tracked() {
                Ok(count) => return count,
                Err(error) => file.note(Some(error)),
            }
        }
        lock(&self.memory).records.len()
    }
}

/// Reading and writing slots, wherever they are.
trait Slots {
    fn len(&self) -> usize;
    fn seed(&self) -> [u64; 2];
    fn read(&mut self, index: usize) -> io::Result<Option<Record>>;
    fn write(&mut self, index: usize, record: Option<&Record>) -> io::Result<()>;
}

/// The slot `key` hashes to: a keyed mix of its 128 bits (murmur3's finaliser, twice).
fn home_slot(seed: [u64; 2], key: PeerKey, len: usize) -> usize {
    fn mix(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
    let bits = u128::from_be_bytes(key.octets());
    let (high, low) = ((bits >> 64) as u64, bits as u64);
    let hash = mix(mix(low ^ seed[0]) ^ high ^ seed[1]);
    let len = u64::try_from(len.max(1)).unwrap_or(u64::MAX);
    usize::try_from(hash % len).unwrap_or(0)
}

/// The update itself, on any slots. Returns `f`'s answer and the I/O error met, if any: an
/// error before `f` ran leaves it in `f` (the caller may try elsewhere); an error writing
/// the result back comes with the answer.
fn update<S: Slots + ?Sized, R>(
    slots: &mut S,
    key: PeerKey,
    now: Moment,
    policy: &GuardPolicy,
    create: bool,
    f: &mut Option<impl FnOnce(&mut Record) -> R>,
) -> (Option<R>, Option<io::Error>) {
    let len = slots.len().max(1);
    let home = home_slot(slots.seed(), key, len);
    let mut found = None;
    let mut free = None;
    // The slot to take when none is free: no attempt running, then least recently active.
    let mut victim: Option<(usize, (bool, Moment))> = None;
    for step in 0..PROBE.min(len) {
        let index = (home + step) % len;
        let record = match slots.read(index) {
            Ok(record) => record,
            Err(error) => return (None, Some(error)),
        };
        let Some(mut record) = record else {
            free.get_or_insert(index);
            continue;
        };
        if record.key == key {
            found = Some((index, record));
            break;
        }
        record.expire(policy, now);
        if record.idle() {
            free.get_or_insert(index);
            continue;
        }
        let rank = (record.in_flight > 0, record.last_active);
        if victim.is_none_or(|(_, best)| rank < best) {
            victim = Some((index, rank));
        }
    }
    let (index, mut record) = match found {
        Some((index, mut record)) => {
            record.expire(policy, now);
            (index, record)
        }
        None if create => match free.or(victim.map(|(index, _)| index)) {
            Some(index) => (index, Record::new(key, now)),
            None => return (None, None),
        },
        None => return (None, None),
    };
    let Some(f) = f.take() else {
        return (None, None);
    };
    let answer = f(&mut record);
    let kept = (!record.idle()).then_some(&record);
    let error = slots.write(index, kept).err();
    (Some(answer), error)
}

/// Slots in this process's memory: only the used ones take room.
struct MemorySlots {
    len: usize,
    seed: [u64; 2],
    records: HashMap<usize, Record>,
}

impl MemorySlots {
    fn new(len: usize) -> MemorySlots {
        MemorySlots {
            len: len.max(1),
            seed: rand::random(),
            records: HashMap::new(),
        }
    }
}

impl Slots for MemorySlots {
    fn len(&self) -> usize {
        self.len
    }

    fn seed(&self) -> [u64; 2] {
        self.seed
    }

    fn read(&mut self, index: usize) -> io::Result<Option<Record>> {
        Ok(self.records.get(&index).cloned())
    }

    fn write(&mut self, index: usize, record: Option<&Record>) -> io::Result<()> {
        match record {
            Some(record) => self.records.insert(index, record.clone()),
            None => self.records.remove(&index),
        };
        Ok(())
    }
}

/// The shared state file, opened when first needed.
struct FileSlots {
    path: PathBuf,
    /// The size of a file this process creates.
    slots: usize,
    open: Option<OpenFile>,
    /// The last update failed (logged once, until one works again).
    failing: bool,
    /// "Shared through ..." was logged.
    shared_once: bool,
}

/// The file as opened, with what identifies it on disk.
struct OpenFile {
    file: File,
    dev: u64,
    ino: u64,
}

impl FileSlots {
    /// The update under the file's lock; see [`update`] for what comes back.
    fn update<R>(
        &mut self,
        key: PeerKey,
        now: Moment,
        policy: &GuardPolicy,
        create: bool,
        f: &mut Option<impl FnOnce(&mut Record) -> R>,
    ) -> (Option<R>, Option<io::Error>) {
        let mut locked = match self.lock() {
            Ok(locked) => locked,
            Err(error) => return (None, Some(error)),
        };
        let result = update(&mut locked, key, now, policy, create, f);
        self.unlock(locked);
        result
    }

    /// Records stored in the file.
    fn tracked(&mut self) -> io::Result<usize> {
        let mut locked = self.lock()?;
        let mut count = 0;
        let mut result = Ok(());
        for index in 0..locked.len {
            match locked.read(index) {
                Ok(Some(_)) => count += 1,
                Ok(None) => {}
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        self.unlock(locked);
        result.map(|()| count)
    }

    /// Opens the file if need be (or again, if the path now names another file), takes its
    /// lock and reads its header, starting the file over when the header is not right.
    fn lock(&mut self) -> io::Result<LockedFile> {
        let open = match self.open.take() {
            Some(open) if same_file(&self.path, &open) => open,
            _ => open_file(&self.path)?,
        };
        let OpenFile { file, dev, ino } = open;
        let mut file = file;
        let file = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(locked) => break locked,
                // Interrupted by a signal: the same descriptor comes back, try again.
                Err((back, Errno::EINTR)) => file = back,
                Err((_, errno)) => return Err(io::Error::from(errno)),
            }
        };
        let (len, seed) = header(&file, self.slots)?;
        if !self.shared_once {
            self.shared_once = true;
            tracing::info!(path = %self.path.display(), slots = len, "login guard shared through its state file");
        }
        Ok(LockedFile {
            file,
            dev,
            ino,
            len,
            seed,
        })
    }

    /// Lets go of the lock and keeps the file open for the next update.
    fn unlock(&mut self, locked: LockedFile) {
        let LockedFile { file, dev, ino, .. } = locked;
        // If unlocking fails the descriptor is closed (which unlocks) and reopened next time.
        if let Ok(file) = file.unlock() {
            self.open = Some(OpenFile { file, dev, ino });
        }
    }

    /// Logs the first failure of a run and the recovery after it.
    fn note(&mut self, error: Option<io::Error>) {
        match error {
            None if self.failing => {
                self.failing = false;
                tracing::info!(path = %self.path.display(), "login guard state file usable again");
            }
            None => {}
            Some(error) if !self.failing => {
                self.failing = true;
                self.open = None;
                let path = self.path.display();
                let directory_missing =
                    error.kind() == io::ErrorKind::NotFound && !self.path.exists();
                if directory_missing {
                    tracing::debug!(%path, "no login guard state file ({error}): this process counts failed logins alone");
                } else {
                    tracing::warn!(%path, "login guard state file unusable ({error}): this process counts failed logins alone until it works again");
                }
            }
            Some(_) => self.open = None,
        }
    }
}

/// Whether `path` still names the file we have open (an admin or tmpfiles may have
/// replaced it).
fn same_file(path: &Path, open: &OpenFile) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.dev() == open.dev && meta.ino() == open.ino)
}

/// Opens the state file for reading and writing, creating it (never its directory).
fn open_file(path: &Path) -> io::Result<OpenFile> {
    // Never through a symlink: the directory is writable by the whole group.
    let nofollow = OFlag::O_NOFOLLOW.bits();
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(nofollow)
        .open(path);
    let file = match created {
        Ok(file) => {
            // The daemon's umask (0077 in the units) narrowed the mode; the other daemons'
            // users need it as is.
            file.set_permissions(Permissions::from_mode(FILE_MODE))?;
            file
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nofollow)
            .open(path)?,
        Err(error) => return Err(error),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(OpenFile {
        file,
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Reads the header (slot count and hash seed), or writes a new one over a file that is
/// empty or not ours. Called with the lock held.
fn header(file: &File, slots: usize) -> io::Result<(usize, [u64; 2])> {
    let size = file.metadata()?.len();
    let mut bytes = [0u8; HEADER];
    if size >= HEADER as u64 {
        file.read_exact_at(&mut bytes, 0)?;
        if let Some((len, seed)) = parse_header(&bytes) {
            if size >= file_size(len) {
                return Ok((len, seed));
            }
        }
        tracing::warn!("login guard state file not in the expected format: starting it over");
    }
    let len = slots.clamp(1, MAX_SLOTS);
    let seed: [u64; 2] = rand::random();
    // Zeroed slots are empty ones.
    file.set_len(0)?;
    file.set_len(file_size(len))?;
    file.write_all_at(&encode_header(len, seed), 0)?;
    Ok((len, seed))
}

fn file_size(len: usize) -> u64 {
    (HEADER as u64).saturating_add((len as u64).saturating_mul(SLOT as u64))
}

fn encode_header(len: usize, seed: [u64; 2]) -> [u8; HEADER] {
    let mut writer = Writer::new();
    writer.put(&MAGIC);
    writer.put(&(SLOT as u32).to_le_bytes());
    writer.put(&(len as u64).to_le_bytes());
    writer.put(&seed[0].to_le_bytes());
    writer.put(&seed[1].to_le_bytes());
    writer.finish()
}

fn parse_header(bytes: &[u8; HEADER]) -> Option<(usize, [u64; 2])> {
    let mut reader = Reader::new(bytes);
    if reader.bytes::<8>() != MAGIC || reader.u32() != SLOT as u32 {
        return None;
    }
    let len = usize::try_from(reader.u64()).ok()?;
    let seed = [reader.u64(), reader.u64()];
    (1..=MAX_SLOTS).contains(&len).then_some((len, seed))
}

/// The file while its lock is held.
struct LockedFile {
    file: Flock<File>,
    dev: u64,
    ino: u64,
    len: usize,
    seed: [u64; 2],
}

impl LockedFile {
    fn offset(index: usize) -> u64 {
        file_size(index)
    }
}

impl Slots for LockedFile {
    fn len(&self) -> usize {
        self.len
    }

    fn seed(&self) -> [u64; 2] {
        self.seed
    }

    fn read(&mut self, index: usize) -> io::Result<Option<Record>> {
        let mut bytes = [0u8; SLOT];
        self.file.read_exact_at(&mut bytes, Self::offset(index))?;
        Ok(decode(&bytes))
    }

    fn write(&mut self, index: usize, record: Option<&Record>) -> io::Result<()> {
        let bytes = record.map_or([0u8; SLOT], encode);
        self.file.write_all_at(&bytes, Self::offset(index))
    }
}

/// A record as a slot: key, flags, failures, streak, in flight, then five times in ms.
fn encode(record: &Record) -> [u8; SLOT] {
    let mut writer = Writer::new();
    writer.put(&record.key.octets());
    let flags = USED
        | if record.locked_until.is_some() {
            LOCKED
        } else {
            0
        };
    writer.put(&flags.to_le_bytes());
    writer.put(&record.failures.to_le_bytes());
    writer.put(&record.streak.to_le_bytes());
    writer.put(&record.in_flight.to_le_bytes());
    for moment in [
        record.in_flight_until,
        record.window_start,
        record.last_active,
        record.locked_until.unwrap_or(Moment(0)),
    ] {
        writer.put(&moment.as_millis().to_le_bytes());
    }
    writer.finish()
}

/// The record in a slot; `None` for an empty one.
fn decode(bytes: &[u8; SLOT]) -> Option<Record> {
    let mut reader = Reader::new(bytes);
    let key = PeerKey::from_octets(reader.bytes::<16>());
    let flags = reader.u32();
    if flags & USED == 0 {
        return None;
    }
    let failures = reader.u32();
    let streak = reader.u32();
    let in_flight = reader.u32();
    let in_flight_until = Moment(reader.u64());
    let window_start = Moment(reader.u64());
    let last_active = Moment(reader.u64());
    let locked_until = Moment(reader.u64());
    Some(Record {
        key,
        failures,
        streak,
        in_flight,
        in_flight_until,
        window_start,
        last_active,
        locked_until: (flags & LOCKED != 0).then_some(locked_until),
    })
}

/// Fills a block of `N` bytes from the front.
struct Writer<const N: usize> {
    bytes: [u8; N],
    at: usize,
}

impl<const N: usize> Writer<N> {
    fn new() -> Writer<N> {
        Writer {
            bytes: [0; N],
            at: 0,
        }
    }

    fn put(&mut self, data: &[u8]) {
        let end = self.at + data.len();
        if let Some(target) = self.bytes.get_mut(self.at..end) {
            target.copy_from_slice(data);
        }
        self.at = end;
    }

    fn finish(self) -> [u8; N] {
        self.bytes
    }
}

/// Reads a block of `N` bytes from the front; past its end it reads zeros.
struct Reader<'a, const N: usize> {
    bytes: &'a [u8; N],
    at: usize,
}

impl<'a, const N: usize> Reader<'a, N> {
    fn new(bytes: &'a [u8; N]) -> Reader<'a, N> {
        Reader { bytes, at: 0 }
    }

    fn bytes<const M: usize>(&mut self) -> [u8; M] {
        let mut out = [0u8; M];
        if let Some(source) = self.bytes.get(self.at..self.at + M) {
            out.copy_from_slice(source);
        }
        self.at += M;
        out
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}
