//! The receive path on arbitrary bytes: envelope checks, MAC, and the message body decoder.
#![no_main]
use fdm_agent::core::messages::Message;
use fdm_agent::wire::{Key, Recipient, open};
use heartbeat_fs::{ClusterId, HostId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Key::new([0x42; 32]);
    let me = Recipient {
        host: HostId(2),
        incarnation: 5,
    };
    if let Ok((_, body)) = open(&key, ClusterId(0x1122_3344_5566_7788), me, data) {
        let _ = postcard::from_bytes::<Message>(body);
    }
    let _ = postcard::from_bytes::<Message>(data);
});
