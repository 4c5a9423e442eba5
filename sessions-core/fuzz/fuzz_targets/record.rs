//! The record codec: `Record::decode` on arbitrary bytes (a Redis value is whatever the
//! server holds under our key), the round trip through `encode`, and the shared-memory
//! form (a record written into a slot and read back, times kept in 32 bits). Whatever
//! decodes also goes through the decision logic with an arbitrary clock and policy, since
//! a decoded record's times are attacker-shaped when Redis is shared.
//!
//! Checked: nothing panics or overflows; `decode(encode(r)) == r`; bytes that decode and
//! carry the version `encode` writes are reproduced exactly; a slot keeps every field,
//! times saturating at `u32::MAX`.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::StoreKey;
use sessions_core::session::{decide, Client, Policy, Record, Table};
use sessions_core::table::{layout, Header, Slot, SlotTable};

#[derive(Arbitrary, Debug)]
struct Input {
    bytes: Vec<u8>,
    now: u64,
    idle: u64,
    rolling: u64,
    absolute: u64,
    check_ip: bool,
    check_user_agent: bool,
    client: (u32, u32),
    expires: u64,
}

fn saturated(t: u64) -> u64 {
    t.min(u64::from(u32::MAX))
}

fuzz_target!(|input: Input| {
    let Some(rec) = Record::decode(&input.bytes) else { return };

    let encoded = rec.encode();
    assert_eq!(Record::decode(&encoded), Some(rec));
    if encoded.len() == input.bytes.len() && encoded[0] == input.bytes[0] {
        assert_eq!(&encoded[..], &input.bytes[..], "same version, different bytes");
    }

    let policy = Policy {
        idle: input.idle,
        rolling: input.rolling,
        absolute: input.absolute,
        check_ip: input.check_ip,
        check_user_agent: input.check_user_agent,
    };
    let client = Client { ip: input.client.0, user_agent: input.client.1 };
    let _ = decide(&rec, input.now, &policy, &client);
    let _ = rec.expires_at(&policy);
    let _ = decide(&rec.successor(input.now), input.now, &policy, &client);

    // The shared-memory form: one slot.
    let (nbuckets, nslots) = layout(4096);
    let mut header = Header::default();
    let mut buckets = vec![0u32; nbuckets];
    let mut slots = vec![Slot::default(); nslots];
    let mut table = SlotTable::new(&mut header, &mut buckets, &mut slots);
    table.init();
    let key = StoreKey(input.bytes.get(..16).and_then(|b| b.try_into().ok()).unwrap_or([7; 16]));
    table.insert(&key, &rec, input.expires, false, input.now).expect("empty table takes a record");
    let back = table.get(&key, input.now).expect("just inserted");
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
