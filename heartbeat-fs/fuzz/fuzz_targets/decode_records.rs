//! Every datastore decoder on arbitrary bytes: a record or a typed error, never a panic; and a record
//! that decodes re-encodes to the same bytes (no two encodings of one value).
#![no_main]
use heartbeat_fs::codec::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_heartbeat(data) {
        assert_eq!(&encode_heartbeat(&r)[..], data);
    }
    if let Ok(c) = decode_claim(data) {
        assert_eq!(&encode_claim(&c)[..], data);
    }
    let _ = decode_power_on_list(data);
    let _ = decode_protected_list(data);
    let _ = decode_config(data);
});
