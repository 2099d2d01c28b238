//! The datagram envelope and message bodies: golden bytes for every message kind (a format change
//! breaks these on purpose), round trips, tamper detection, replay rules, and a corpus that every
//! decoder must survive.

use fdm_agent::core::VmRunState;
use fdm_agent::core::messages::{
    CandidacyNotice, Handover, MasterHeartbeat, Message, PowerOffCommand, PowerOffReason,
    PowerOnCommand, PowerOnResult, SlaveHeartbeat, VM_REPORT_PART, VmReport, VmStatus,
};
use fdm_agent::wire::*;
use heartbeat_fs::{ClusterId, DatastoreId, Epoch, HostId, VmId};
use proptest::prelude::*;

const CLUSTER: ClusterId = ClusterId(0x1122_3344_5566_7788);

fn key() -> Key {
    Key::new([0x42; 32])
}

/// The receiving agent of every test datagram.
const ME: Recipient = Recipient {
    host: HostId(2),
    incarnation: 5,
};

fn header(kind: u8, seq: u64) -> Header {
    Header {
        kind,
        cluster: CLUSTER,
        sender: HostId(3),
        incarnation: 9,
        recipient: ME.host,
        recipient_incarnation: ME.incarnation,
        sequence: seq,
    }
}

fn sealed(m: &Message) -> Vec<u8> {
    let body = postcard::to_stdvec(m).unwrap();
    seal(&key(), &header(m.kind(), 1), &body).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn examples() -> Vec<Message> {
    vec![
        Message::Candidacy(CandidacyNotice {
            reachable_datastores: 2,
            incumbent: false,
        }),
        Message::MasterHeartbeat(MasterHeartbeat {
            round: 9,
            echo_seq: 77,
            echo_token: 0x0102_0304_0506_0708,
            reachable_datastores: 2,
            claims: vec![(DatastoreId(1), Epoch(5)), (DatastoreId(2), Epoch(6))],
            want_vm_report: true,
            covers_all: true,
            config_generation: 12,
        }),
        Message::SlaveHeartbeat(SlaveHeartbeat {
            seq: 78,
            echo_round: 9,
            token: 0x1112_1314_1516_1718,
            reachable: vec![DatastoreId(1), DatastoreId(2)],
            vm_generation: 4,
            maintenance: false,
            config_generation: 12,
        }),
        Message::VmReport(VmReport {
            generation: 4,
            part: 0,
            parts: 1,
            vms: vec![
                VmStatus {
                    vm: VmId(10),
                    state: VmRunState::Running,
                },
                VmStatus {
                    vm: VmId(11),
                    state: VmRunState::Crashed,
                },
            ],
        }),
        Message::PowerOn(PowerOnCommand {
            vm: VmId(10),
            datastore: DatastoreId(1),
            epoch: Epoch(5),
            attempt: 2,
        }),
        Message::PowerOnResult(PowerOnResult {
            vm: VmId(10),
            attempt: 2,
            running: false,
            error: Some("no".into()),
            stopped_by_operator: false,
            vm_generation: 7,
        }),
        Message::Yield(Handover { to: HostId(4) }),
        Message::PowerOff(PowerOffCommand {
            vm: VmId(4),
            reason: PowerOffReason::StaleCopy,
        }),
    ]
}

/// Golden datagrams, one per message kind, in `examples()` order.
const GOLDEN: [&str; 8] = [
    "46444d770401000088776655443322110300000009000000000000000200000005000000000000000100000000000000030000020065dceb6cabb7f58fb8751c2a04117937",
    "46444d770402000088776655443322110300000009000000000000000200000005000000000000000100000000000000150001094d888e98a8c0e080810102020105020601010c63b97052db455bca0f024bf168f0cb5d",
    "46444d7704030000887766554433221103000000090000000000000002000000050000000000000001000000000000001200024e0998aed8a8c1e284891102010204000c57268d80cce19acee5e0ff5d8e4db059",
    "46444d770404000088776655443322110300000009000000000000000200000005000000000000000100000000000000090003040001020a010b0341ed75874194ccf89ea014ec1109e812",
    "46444d7704050000887766554433221103000000090000000000000002000000050000000000000001000000000000000500040a01050202b5b22c0de31108e625b8dc3069ef98",
    "46444d7704060000887766554433221103000000090000000000000002000000050000000000000001000000000000000a00050a020001026e6f00073264a9fa9079d04b385be1b009ce7f61",
    "46444d770407000088776655443322110300000009000000000000000200000005000000000000000100000000000000020006049468b8a247884e10efcea7ccadfa3ff8",
    "46444d7704080000887766554433221103000000090000000000000002000000050000000000000001000000000000000300070401b41e155615304188ec3b4be98ef85340",
];

#[test]
fn message_kinds_are_pinned() {
    let kinds: Vec<u8> = examples().iter().map(Message::kind).collect();
    assert_eq!(kinds, vec![1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn every_message_seals_to_its_golden_bytes() {
    let got: Vec<String> = examples().iter().map(|m| hex(&sealed(m))).collect();
    if std::env::var_os("FDM_PRINT_GOLDEN").is_some() {
        for g in &got {
            println!("GOLDEN {g}");
        }
    }
    for ((m, got), want) in examples().iter().zip(&got).zip(GOLDEN) {
        assert_eq!(got, want, "{m:?}");
    }
}

#[test]
fn every_message_round_trips() {
    for m in examples() {
        let bytes = sealed(&m);
        let (h, body) = open(&key(), CLUSTER, ME, &bytes).unwrap();
        assert_eq!(h, header(m.kind(), 1));
        assert_eq!(postcard::from_bytes::<Message>(body).unwrap(), m);
    }
}

#[test]
fn largest_realistic_messages_fit_one_datagram() {
    let big = [
        Message::MasterHeartbeat(MasterHeartbeat {
            round: 9,
            echo_seq: u64::MAX,
            echo_token: u64::MAX,
            reachable_datastores: 64,
            claims: (0..64)
                .map(|d| (DatastoreId(u32::MAX - d), Epoch(u64::MAX)))
                .collect(),
            want_vm_report: true,
            covers_all: true,
            config_generation: u64::MAX,
        }),
        Message::SlaveHeartbeat(SlaveHeartbeat {
            seq: u64::MAX,
            echo_round: 9,
            token: u64::MAX,
            reachable: (0..64).map(|d| DatastoreId(u32::MAX - d)).collect(),
            vm_generation: u64::MAX,
            maintenance: true,
            config_generation: u64::MAX,
        }),
        Message::VmReport(VmReport {
            generation: u64::MAX,
            part: u16::MAX,
            parts: u16::MAX,
            vms: (0..VM_REPORT_PART as u32)
                .map(|v| VmStatus {
                    vm: VmId(u32::MAX - v),
                    state: VmRunState::StoppedByAgent,
                })
                .collect(),
        }),
    ];
    for m in big {
        let body = postcard::to_stdvec(&m).unwrap();
        assert!(
            body.len() <= MAX_BODY,
            "{} bytes for kind {}",
            body.len(),
            m.kind()
        );
        assert!(seal(&key(), &header(m.kind(), 1), &body).unwrap().len() <= MAX_DATAGRAM);
    }
}

#[test]
fn each_bad_datagram_has_its_own_reason() {
    let good = sealed(&examples()[0]);
    assert_eq!(
        open(&key(), CLUSTER, ME, &good[..10]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        open(&key(), CLUSTER, ME, &vec![0u8; MAX_DATAGRAM + 1]),
        Err(WireError::Oversized)
    );
    let mut m = good.clone();
    m[0] = b'X';
    assert_eq!(open(&key(), CLUSTER, ME, &m), Err(WireError::BadMagic));
    let mut v = good.clone();
    v[4] = 1;
    assert_eq!(
        open(&key(), CLUSTER, ME, &v),
        Err(WireError::UnknownVersion)
    );
    let mut l = good.clone();
    l.push(0);
    assert_eq!(open(&key(), CLUSTER, ME, &l), Err(WireError::BadLength));
    assert_eq!(
        open(&key(), ClusterId(1), ME, &good),
        Err(WireError::WrongCluster)
    );
    assert_eq!(
        open(&Key::new([1; 32]), CLUSTER, ME, &good),
        Err(WireError::BadMac)
    );
    assert_eq!(
        seal(&key(), &header(1, 1), &vec![0; MAX_BODY + 1]),
        Err(WireError::BodyTooLarge)
    );
    let mut counters = DropCounters::default();
    for e in [WireError::BadMac, WireError::BadMac, WireError::Replay] {
        counters.count(e);
    }
    assert_eq!(counters.by_reason[&WireError::BadMac], 2);
    assert_eq!(counters.total(), 3);
}

#[test]
fn a_datagram_is_good_only_for_the_host_and_incarnation_it_names() {
    let good = sealed(&examples()[1]);
    // Relayed to another host: dropped, although the MAC is good.
    let other = Recipient {
        host: HostId(4),
        incarnation: 5,
    };
    assert_eq!(
        open(&key(), CLUSTER, other, &good),
        Err(WireError::WrongRecipient)
    );
    // Replayed to a restarted agent on the right host: dropped.
    let restarted = Recipient {
        host: ME.host,
        incarnation: 6,
    };
    assert_eq!(
        open(&key(), CLUSTER, restarted, &good),
        Err(WireError::StaleRecipient)
    );
    // Rewriting the recipient breaks the MAC.
    let mut rewritten = good.clone();
    rewritten[28] = 4;
    assert_eq!(
        open(&key(), CLUSTER, other, &rewritten),
        Err(WireError::BadMac)
    );
    // A sender that has not heard the recipient yet names no incarnation: any incarnation takes it.
    let mut h = header(1, 1);
    h.recipient_incarnation = 0;
    let body = postcard::to_stdvec(&examples()[0]).unwrap();
    let first_contact = seal(&key(), &h, &body).unwrap();
    assert!(open(&key(), CLUSTER, restarted, &first_contact).is_ok());
}

#[test]
fn echo_tokens_are_bound_to_the_slave_its_incarnation_and_the_heartbeat() {
    let k = key();
    let t = k.echo_token(HostId(2), 5, 77);
    assert_eq!(t, k.echo_token(HostId(2), 5, 77));
    for other in [
        k.echo_token(HostId(3), 5, 77),
        k.echo_token(HostId(2), 6, 77),
        k.echo_token(HostId(2), 5, 78),
        Key::new([7; 32]).echo_token(HostId(2), 5, 77),
    ] {
        assert_ne!(t, other);
    }
}

#[test]
fn replay_window_accepts_each_sequence_once() {
    let mut g = ReplayGuard::new();
    assert_eq!(g.check(&header(1, 10)), Ok(()));
    assert_eq!(g.check(&header(1, 10)), Err(WireError::Replay), "duplicate");
    assert_eq!(g.check(&header(1, 12)), Ok(()));
    assert_eq!(
        g.check(&header(1, 11)),
        Ok(()),
        "reordered within the window"
    );
    assert_eq!(g.check(&header(1, 11)), Err(WireError::Replay));
    assert_eq!(g.check(&header(1, 200)), Ok(()));
    assert_eq!(
        g.check(&header(1, 200 - REPLAY_WINDOW)),
        Err(WireError::Replay),
        "too old"
    );
    assert_eq!(g.check(&header(1, 199)), Ok(()));
    let mut older = header(1, 500);
    older.incarnation = 8;
    assert_eq!(g.check(&older), Err(WireError::StaleIncarnation));
    let mut newer = header(1, 1);
    newer.incarnation = 10;
    assert_eq!(g.check(&newer), Ok(()), "a restarted sender starts over");
    assert_eq!(g.check(&header(1, 201)), Err(WireError::StaleIncarnation));
}

/// A small stored corpus: valid datagrams and mutations of them. Every decoder survives all of it.
#[test]
fn decoders_survive_the_corpus() {
    let mut corpus: Vec<Vec<u8>> = examples().iter().map(sealed).collect();
    for g in corpus.clone() {
        for i in (0..g.len()).step_by(3) {
            let mut m = g.clone();
            m[i] ^= 0xa5;
            corpus.push(m);
            corpus.push(g[..i].to_vec());
        }
    }
    let mut ok = 0;
    for c in &corpus {
        if let Ok((_, body)) = open(&key(), CLUSTER, ME, c) {
            ok += 1;
            let _ = postcard::from_bytes::<Message>(body);
        }
        // Bodies straight from the wire without a MAC check must not panic either.
        let _ = postcard::from_bytes::<Message>(c);
    }
    assert_eq!(ok, examples().len(), "only the untouched datagrams verify");
}

proptest! {
    #[test]
    fn seal_open_round_trip(kind in any::<u8>(), sender in any::<u32>(), inc in any::<u64>(), seq in any::<u64>(),
                            body in proptest::collection::vec(any::<u8>(), 0..MAX_BODY)) {
        let h = Header { kind, cluster: CLUSTER, sender: HostId(sender), incarnation: inc,
                         recipient: ME.host, recipient_incarnation: ME.incarnation, sequence: seq };
        let b = seal(&key(), &h, &body).unwrap();
        prop_assert!(b.len() <= MAX_DATAGRAM);
        let (h2, body2) = open(&key(), CLUSTER, ME, &b).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(body2, &body[..]);
    }

    #[test]
    fn any_bytes_open_to_a_value_or_a_typed_error(b in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let _ = open(&key(), CLUSTER, ME, &b);
        let _ = postcard::from_bytes::<Message>(&b);
    }

    #[test]
    fn any_single_bit_flip_is_rejected(which in 0usize..7, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = sealed(&examples()[which]);
        let i = pos.index(b.len());
        b[i] ^= 1 << bit;
        prop_assert!(open(&key(), CLUSTER, ME, &b).is_err());
    }
}
