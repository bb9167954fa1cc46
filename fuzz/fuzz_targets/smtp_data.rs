#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_smtp_submit::fuzzing::smtp_data(data));
