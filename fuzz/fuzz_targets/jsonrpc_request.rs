#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_rpcd::fuzzing::jsonrpc_request(data));
