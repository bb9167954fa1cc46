//! IMAP4rev2 dialogues in-process (see [`super::tests`]): a session that enabled it, and one
//! that did not, side by side.
