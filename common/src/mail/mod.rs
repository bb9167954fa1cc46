//! The Maildir++ mail store shared by smtp-submit, pop3d and imapd.
