//! Record formats: golden bytes (a format change breaks these on purpose), round trips, and "any byte
//! string decodes to a record or a typed error".

mod common;

use heartbeat_fs::codec::*;
use heartbeat_fs::records::SECTOR;
use proptest::prelude::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Non-zero bytes of a sector as (offset, byte) runs, so a golden sector stays readable.
fn nonzero(b: &[u8]) -> String {
    let mut out = String::new();
    for (i, x) in b.iter().enumerate() {
        if *x != 0 {
            out.push_str(&format!("{i}:{x:02x} "));
        }
    }
    out
}

#[test]
fn heartbeat_sector_golden_bytes() {
    let b = encode_heartbeat(&common::heartbeat());
    assert_eq!(b.len(), SECTOR);
    assert_eq!(
        nonzero(&b),
        "0:46 1:44 2:4d 3:48 4:42 5:45 6:41 7:54 8:01 10:01 16:ef 17:cd 18:ab 19:89 20:67 21:45 22:23 23:01 \
24:07 28:09 32:7b 33:68 34:e5 35:cf 36:8b 37:01 40:2a 48:09 56:03 508:4c 509:35 510:97 511:87 "
    );
}

#[test]
fn claim_sector_golden_bytes() {
    let b = encode_claim(&common::claim());
    assert_eq!(
        nonzero(&b),
        "0:46 1:44 2:4d 3:43 4:4c 5:41 6:49 7:4d 8:01 10:02 16:ef 17:cd 18:ab 19:89 20:67 21:45 22:23 23:01 \
24:02 28:03 32:05 40:0b 48:d2 49:04 508:3b 509:96 510:c9 511:29 "
    );
}

#[test]
fn power_on_list_golden_bytes() {
    assert_eq!(
        hex(&encode_power_on_list(&common::power_on_list())),
        "46444d5652454300020003000c0000004d3611ee010702050102010102000103"
    );
}

#[test]
fn protected_list_golden_bytes() {
    assert_eq!(
        hex(&encode_protected_list(&common::protected_list())),
        "46444d56524543000200040031000000eddc34db0102030b040201020107000300000000000000000002020001050201010105c0cf240901080102040b020190bf05070101"
    );
}

#[test]
fn config_golden_bytes() {
    let b = encode_config(&common::config());
    assert_eq!(&b[..8], b"FDMVREC\0");
    assert_eq!(
        hex(&b),
        "46444d565245430002000500830000004b46fb20010300010864735f6c65617365a01f010831302e302e302e31000500\
d00f904eb0ea01c0a90701000380dddb010000000000080001010268310e31302e302e302e31313a37303030c03e8080\
01000101036473310101082f6d6e742f647331010103776562010a736c6565702031303030f403800403000000000000\
00010377656201"
    );
}

#[test]
fn records_round_trip() {
    assert_eq!(
        decode_heartbeat(&encode_heartbeat(&common::heartbeat())),
        Ok(common::heartbeat())
    );
    assert_eq!(
        decode_claim(&encode_claim(&common::claim())),
        Ok(common::claim())
    );
    assert_eq!(
        decode_power_on_list(&encode_power_on_list(&common::power_on_list())),
        Ok(common::power_on_list())
    );
    assert_eq!(
        decode_protected_list(&encode_protected_list(&common::protected_list())),
        Ok(common::protected_list())
    );
    assert_eq!(
        decode_config(&encode_config(&common::config())),
        Ok(common::config())
    );
}

#[test]
fn damaged_sectors_are_typed_errors() {
    let good = encode_heartbeat(&common::heartbeat());
    assert_eq!(
        decode_heartbeat(&good[..100]),
        Err(DecodeError::Truncated {
            got: 100,
            want: SECTOR
        })
    );
    assert_eq!(decode_heartbeat(&[0u8; SECTOR]), Err(DecodeError::Zeroed));
    let mut big = good.to_vec();
    big.push(0);
    assert!(matches!(
        decode_heartbeat(&big),
        Err(DecodeError::Oversized { .. })
    ));
    let mut torn = good;
    torn[40] ^= 0xff; // sequence changed, CRC not rewritten: a torn write
    assert_eq!(decode_heartbeat(&torn), Err(DecodeError::BadCrc));
    let mut half = good;
    half[256..].fill(0); // second half of the sector never landed
    assert_eq!(decode_heartbeat(&half), Err(DecodeError::BadCrc));
    let mut magic = good;
    magic[0] = b'X';
    assert_eq!(decode_heartbeat(&magic), Err(DecodeError::BadMagic));
    let mut version = good;
    version[8] = 9;
    assert_eq!(
        decode_heartbeat(&version),
        Err(DecodeError::UnsupportedVersion(9))
    );
    let claim = encode_claim(&common::claim());
    assert_eq!(decode_heartbeat(&claim), Err(DecodeError::BadMagic));
}

#[test]
fn damaged_variable_records_are_typed_errors() {
    let good = encode_power_on_list(&common::power_on_list());
    assert!(matches!(
        decode_power_on_list(&good[..good.len() - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        decode_power_on_list(&good[..5]),
        Err(DecodeError::Truncated { .. })
    ));
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(decode_power_on_list(&flipped), Err(DecodeError::BadCrc));
    assert!(matches!(
        decode_protected_list(&good),
        Err(DecodeError::WrongKind { got: 3, want: 4 })
    ));
    let mut long = good.clone();
    long.push(1);
    assert!(matches!(
        decode_power_on_list(&long),
        Err(DecodeError::Malformed(_))
    ));
    let mut huge = good;
    huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_power_on_list(&huge),
        Err(DecodeError::Oversized { .. })
    ));
    assert_eq!(decode_config(&[0u8; 64]), Err(DecodeError::Zeroed));
}

proptest! {
    #[test]
    fn any_bytes_decode_to_a_record_or_a_typed_error(b in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let _ = decode_heartbeat(&b);
        let _ = decode_claim(&b);
        let _ = decode_power_on_list(&b);
        let _ = decode_protected_list(&b);
        let _ = decode_config(&b);
    }

    #[test]
    fn heartbeat_round_trips(cluster in any::<u64>(), host in any::<u32>(), inc in any::<u64>(), seq in any::<u64>(),
                             flags in any::<u32>(), gen_ in any::<u64>(), master in any::<u32>()) {
        use heartbeat_fs::records::*;
        use heartbeat_fs::*;
        let r = HeartbeatRecord { cluster: ClusterId(cluster), host: HostId(host), incarnation: inc, sequence: seq,
            flags: HostFlags(flags), power_on_generation: gen_, master: HostId(master) };
        prop_assert_eq!(decode_heartbeat(&encode_heartbeat(&r)), Ok(r));
    }

    #[test]
    fn any_single_bit_flip_of_a_sector_is_detected(byte in 0usize..SECTOR, bit in 0u8..8) {
        let mut b = encode_heartbeat(&common::heartbeat());
        b[byte] ^= 1 << bit;
        prop_assert!(decode_heartbeat(&b).is_err());
    }

    #[test]
    fn mutated_variable_records_never_panic(idx in 0usize..40, val in any::<u8>()) {
        let mut b = encode_protected_list(&common::protected_list());
        let i = idx % b.len();
        b[i] = val;
        let _ = decode_protected_list(&b);
    }
}
