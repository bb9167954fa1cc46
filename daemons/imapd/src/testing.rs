//! What the unit tests of several modules share.

use crate::selected::Selected;

/// An INBOX with these messages, selected; removed with the guard (search and sort tests).
pub(crate) fn inbox(name: &str, messages: &[String]) -> (Selected, impl Drop) {
    use inetkit_maildir::Store;
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!("imapd-search-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::new(&dir);
    for m in messages {
        store.deliver("u", &mut m.as_bytes()).expect("delivery");
    }
    let folder = store.mailbox("u").expect("mailbox").inbox();
    let selected = Selected::open(folder, true, &crate::watch::Watches::new()).expect("open");
    (selected, Gone(dir))
}
