#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| telemetry_gateway_fuzz::grpc_framing(data));
