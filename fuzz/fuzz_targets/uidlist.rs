#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_maildir::fuzzing::uidlist(data));
