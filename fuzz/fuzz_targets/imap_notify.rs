#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_imapd::fuzzing::imap_notify(data));
