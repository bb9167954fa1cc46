#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_ftpd::fuzzing::ftp_command(data));
