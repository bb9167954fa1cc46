#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inetkit_dns_forwarder::fuzzing::dns_query(data));
