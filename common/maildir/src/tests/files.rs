//! What lies in a folder's directories besides messages: stale files in `tmp/`, what a
//! failed write leaves (nothing), FIFOs and symbolic links among the messages.

use std::io::Read;
use std::time::{Duration, SystemTime};

use super::*;

#[test]
fn stale_tmp_files_are_cleaned() {
    let dir = TestDir::new();
    let inbox = dir.store().mailbox("ivy").unwrap().inbox();
    let tmp = inbox.path().join("tmp");
    std::fs::write(tmp.join("old"), "x").unwrap();
    std::fs::write(tmp.join("young"), "x").unwrap();
    let old = SystemTime::now() - Duration::from_secs(37 * 3600);
    std::fs::File::options()
        .write(true)
        .open(tmp.join("old"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    inbox.snapshot().unwrap();
    assert_eq!(files_in(&tmp), ["young"]);
    // Looked at once in a while, not at every sync of a busy folder: a file turned stale
    // just now stays until the next look.
    std::fs::File::options()
        .write(true)
        .open(tmp.join("young"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    inbox.deliver(&mut &b"Subject: s\r\n\r\nx\r\n"[..]).unwrap();
    inbox.claim_new().unwrap();
    assert_eq!(files_in(&tmp), ["young"]);
}

#[test]
fn a_failed_read_leaves_nothing_behind() {
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("connection lost"));
            }
            self.0 -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }
    let dir = TestDir::new();
    let store = dir.store();
    let err = store.deliver("jo", &mut Broken(100)).unwrap_err();
    assert!(matches!(err, StoreError::Input(_)), "{err}");
    let inbox = store.mailbox("jo").unwrap().inbox();
    for sub in ["tmp", "new", "cur"] {
        assert!(files_in(&inbox.path().join(sub)).is_empty(), "{sub}");
    }
}

/// A FIFO or a symbolic link left among the messages (a user with a shell, or a mistake) is
/// numbered like any file but never opened: reading a FIFO would wait for a writer for ever,
/// and a link could point at another user's mail. The other messages are measured all the
/// same.
#[test]
fn fifos_and_links_among_the_messages_are_not_opened() {
    let dir = TestDir::new();
    let store = dir.store();
    let inbox = store.mailbox("gil").unwrap().inbox();
    let cur = inbox.path().join("cur");
    nix::unistd::mkfifo(
        &cur.join("1700000001.fifo:2,"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let secret = dir.0.join("secret");
    std::fs::write(&secret, "Subject: not yours\n\n").unwrap();
    std::os::unix::fs::symlink(&secret, cur.join("1700000002.link:2,")).unwrap();
    std::fs::write(cur.join("1700000003.plain:2,"), "Subject: ok\n\n").unwrap();
    let mut snapshot = inbox.snapshot().unwrap();
    assert_eq!(snapshot.messages.len(), 3);
    inbox.measure(&mut snapshot.messages).unwrap();
    let vsizes: Vec<Option<u64>> = snapshot.messages.iter().map(|m| m.vsize).collect();
    assert_eq!(vsizes, [None, None, Some(15)]);
    for msg in &snapshot.messages[..2] {
        let err = inbox.open(msg).unwrap_err();
        assert!(!matches!(err, StoreError::MessageGone { .. }), "{err}");
    }
}
