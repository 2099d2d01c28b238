//! Encode + MAC + verify + decode of heartbeat datagrams, per message.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use fdm_agent::core::messages::{MasterHeartbeat, Message, SlaveHeartbeat};
use fdm_agent::wire::{Header, Key, Recipient, ReplayGuard, open, seal};
use fdm_benches::{Samples, header, iterations};
use heartbeat_fs::{ClusterId, DatastoreId, Epoch, HostId};
use std::hint::black_box;

fn main() {
    let n = iterations(200_000);
    let key = Key::new([7; 32]);
    let cluster = ClusterId(1);
    let me = Recipient {
        host: HostId(1),
        incarnation: 1,
    };
    let msgs = [
        (
            "SlaveHeartbeat (2 datastores)",
            Message::SlaveHeartbeat(SlaveHeartbeat {
                seq: 1,
                echo_round: 9,
                token: 0x1234_5678_9abc_def0,
                reachable: vec![DatastoreId(1), DatastoreId(2)],
                vm_generation: 9,
                maintenance: false,
                config_generation: 3,
            }),
        ),
        (
            "MasterHeartbeat (4 claims)",
            Message::MasterHeartbeat(MasterHeartbeat {
                round: 9,
                echo_seq: 1,
                echo_token: 0x1234_5678_9abc_def0,
                reachable_datastores: 4,
                claims: (1..=4).map(|d| (DatastoreId(d), Epoch(d as u64))).collect(),
                want_vm_report: false,
                covers_all: false,
                config_generation: 3,
            }),
        ),
    ];
    println!("{}", header());
    for (name, msg) in msgs {
        let mut send = Samples::with_capacity(n);
        let mut recv = Samples::with_capacity(n);
        let mut guard = ReplayGuard::new();
        let mut size = 0;
        for seq in 1..=n as u64 {
            let h = Header {
                kind: msg.kind(),
                cluster,
                sender: HostId(2),
                incarnation: 1,
                recipient: me.host,
                recipient_incarnation: me.incarnation,
                sequence: seq,
            };
            let bytes = send.time(|| seal(&key, &h, &postcard::to_stdvec(&msg).unwrap()).unwrap());
            size = bytes.len();
            let back = recv.time(|| {
                let (h, body) = open(&key, cluster, me, &bytes).unwrap();
                guard.check(&h).unwrap();
                postcard::from_bytes::<Message>(body).unwrap()
            });
            black_box(back);
        }
        println!("{}", send.row(&format!("encode+MAC {name} ({size} B)")));
        println!("{}", recv.row(&format!("verify+replay+decode {name}")));
    }
}
