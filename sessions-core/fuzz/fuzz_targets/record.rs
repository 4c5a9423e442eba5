//! The record codec: `Record::decode` on arbitrary bytes (a Redis value is whatever the
//! server holds under our key), the round trip through `encode`, and the shared-memory
//! form (a record written into a slot and read back, times kept in 32 bits). Whatever
//! decodes also goes through the decision logic with an arbitrary clock and policy, since
//! a decoded record's times are attacker-shaped when Redis is shared.
//!
//! Checked: nothing panics or overflows; `decode(encode(r)) == r`; bytes that decode are
//! reproduced exactly (both versions, 1 legacy and 2 keyed, are written as read); a slot
//! keeps every field and the version, times saturating at `u32::MAX`; a client's
//! `rebind` changes nothing but the binding of a legacy record it matches, and the result
//! is a keyed record that the same client still matches.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::StoreKey;
use sessions_core::session::{
    decide, BindingHashes, BindingKey, Client, Policy, Record, Table, Verdict, RECORD_LEN,
};
use sessions_core::table::{layout, Header, Slot, SlotTable};
use sha2::{Digest, Sha256};

#[derive(Arbitrary, Debug)]
struct Input {
    /// A stored value of the record's length (decodes when the version byte is 1 or 2).
    bytes: [u8; RECORD_LEN],
    /// A stored value of any length.
    other: Vec<u8>,
    now: u64,
    idle: u64,
    rolling: u64,
    absolute: u64,
    check_ip: bool,
    check_user_agent: bool,
    binding_key: [u8; 16],
    addr: Vec<u8>,
    user_agent: Vec<u8>,
    /// Rewrites the record's binding hashes to the client's (as its version makes them).
    matching: bool,
    expires: u64,
}

/// Record version 1's binding hash, written independently of `session.rs`: the first 4
/// bytes (little endian) of SHA-256 over a domain byte and the value.
fn legacy_hash(domain: u8, value: &[u8]) -> u32 {
    let d = Sha256::new().chain_update([domain]).chain_update(value).finalize();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

fn saturated(t: u64) -> u64 {
    t.min(u64::from(u32::MAX))
}

fuzz_target!(|input: Input| {
    let other = Record::decode(&input.other);
    assert_eq!(
        other.is_some(),
        input.other.len() == RECORD_LEN && matches!(input.other[0], 1 | 2),
        "{other:?}"
    );
    let Some(mut rec) = Record::decode(&input.bytes) else { return };

    let encoded = rec.encode();
    assert_eq!(Record::decode(&encoded), Some(rec));
    assert_eq!(&encoded[..], &input.bytes[..], "decoded, then encoded differently");
    assert_eq!(rec.hashes, BindingHashes::from_version(input.bytes[0]).expect("decoded"));

    let policy = Policy {
        idle: input.idle,
        rolling: input.rolling,
        absolute: input.absolute,
        check_ip: input.check_ip,
        check_user_agent: input.check_user_agent,
    };
    let key = BindingKey(input.binding_key);
    let client = Client::new(&key, &input.addr, &input.user_agent);
    if input.matching {
        (rec.ip, rec.user_agent) = match rec.hashes {
            BindingHashes::Legacy => {
                (legacy_hash(b'i', &input.addr), legacy_hash(b'u', &input.user_agent))
            }
            BindingHashes::Keyed => (client.ip, client.user_agent),
        };
    }
    let verdict = decide(&rec, input.now, &policy, &client);
    let _ = rec.expires_at(&policy);
    let _ = decide(&rec.successor(input.now), input.now, &policy, &client);

    // What `evaluate` and the Redis flow write back after a touch or a renewal.
    let rebound = client.rebind(&rec);
    assert_eq!(
        Record { ip: rec.ip, user_agent: rec.user_agent, hashes: rec.hashes, ..rebound },
        rec
    );
    if rebound != rec {
        assert_eq!(rec.hashes, BindingHashes::Legacy, "a keyed record was rebound");
        assert_eq!(rebound.hashes, BindingHashes::Keyed);
        assert_eq!((rebound.ip, rebound.user_agent), (client.ip, client.user_agent));
        assert_eq!(
            decide(&rebound, input.now, &policy, &client),
            verdict,
            "rebinding changed the verdict"
        );
    }
    assert_eq!(client.rebind(&rebound), rebound, "rebind is not idempotent");
    if input.matching {
        assert_ne!(verdict, Verdict::Mismatch, "the record's own client is a mismatch");
        assert_eq!(rebound.hashes, BindingHashes::Keyed, "a matching legacy record stays legacy");
    }

    // The shared-memory form: one slot.
    let (nbuckets, nslots) = layout(4096);
    let mut header = Header::default();
    let mut buckets = vec![0u32; nbuckets];
    let mut slots = vec![Slot::default(); nslots];
    let mut table = SlotTable::new(&mut header, &mut buckets, &mut slots);
    table.init();
    let store_key = StoreKey(input.bytes[..16].try_into().expect("16 bytes"));
    table
        .insert(&store_key, &rec, input.expires, false, input.now)
        .expect("empty table takes a record");
    let back = table.get(&store_key, input.now).expect("just inserted");
    assert_eq!(
        back,
        Record {
            created: saturated(rec.created),
            issued: saturated(rec.issued),
            last_seen: saturated(rec.last_seen),
            renewed_at: saturated(rec.renewed_at),
            ..rec
        }
    );
});
