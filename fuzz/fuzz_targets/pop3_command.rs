#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_pop3d::fuzzing::pop3_command(data));
