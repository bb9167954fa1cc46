#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_imapd::fuzzing::imap_quoted_utf8(data));
