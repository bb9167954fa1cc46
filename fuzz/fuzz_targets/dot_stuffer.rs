#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_runtime::fuzzing::dot_stuffer(data));
