//! A corrupted zone: the table's header, buckets and slots are arbitrary bytes (a stray
//! write, a zone from an incompatible build, a worker killed mid-update), then a sequence
//! of operations (with session data and the subject index) runs on it.
//!
//! Checked: every operation returns, without panicking, overflowing or running away (the
//! script runs libFuzzer with a short `-timeout`, so a loop that does not end is a crash);
//! so do the eviction report and `check_invariants`, which must report a corrupted table,
//! not trip over it. A table that passes `check_invariants` keeps passing it.

#![no_main]

use core::mem::size_of;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::StoreKey;
use sessions_core::session::{BindingHashes, Record, Table};
use sessions_core::table::{Header, Slot, SlotTable};

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        key: u8,
        established: bool,
        now: u32,
        expires: u32,
    },
    Get {
        key: u8,
    },
    Update {
        key: u8,
        expires: u32,
    },
    Remove {
        key: u8,
    },
    /// A new lock section (the lookup cache starts empty).
    Relock,
    Report {
        now: u64,
    },
    WriteData {
        key: u8,
        /// Bytes, in units of 4.
        len: u8,
        subject: Option<u8>,
        now: u32,
    },
    ReadData {
        key: u8,
    },
    MoveData {
        from: u8,
        to: u8,
    },
    RemoveSubject {
        subject: u8,
        keep: Option<u8>,
    },
}

/// `T` from raw bytes. Only for the plain-integer `repr(C)` types of the table, which
/// have no padding and accept every bit pattern, as they must: the glue reads them
/// straight from shared memory.
const _: () = assert!(size_of::<Header>() == 96 && size_of::<Slot>() == 64);

fn from_bytes<T: Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = bytes.len().min(size_of::<T>());
    // SAFETY: `v` is a valid `T` of `size_of::<T>()` bytes and at most that many are
    // written; `T` is `Header` or `Slot`, whose fields are integers and byte arrays with
    // no implicit padding, so any bytes make a valid value.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}

fn key(n: u8) -> StoreKey {
    let mut k = [n; 16];
    k[..4].copy_from_slice(&u32::from(n % 7).to_le_bytes());
    StoreKey(k)
}

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let header: Header = from_bytes(u.bytes(size_of::<Header>())?);
    let nbuckets = 1usize << u.int_in_range(0..=5)?;
    let nslots = u.int_in_range(0..=40)?;
    let mut buckets = Vec::with_capacity(nbuckets);
    for _ in 0..nbuckets {
        // Mostly small indices, so that corrupted links point somewhere.
        buckets.push(if u.ratio(3, 4)? { u.int_in_range(0..=45)? } else { u32::arbitrary(u)? });
    }
    let mut slots = Vec::with_capacity(nslots);
    for i in 0..nslots {
        let mut s: Slot = from_bytes(u.bytes(size_of::<Slot>())?);
        if u.ratio(1, 2)? {
            // A plausible key, so that lookups walk into the corrupted links.
            let mut raw = [0u8; size_of::<Slot>()];
            // SAFETY: `Slot` is 64 plain bytes (see `from_bytes`).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (&s as *const Slot).cast::<u8>(),
                    raw.as_mut_ptr(),
                    raw.len(),
                )
            };
            raw[..16].copy_from_slice(&key(i as u8).0);
            s = from_bytes(&raw);
        }
        slots.push(s);
    }
    let mut header = header;
    let mut t = SlotTable::new(&mut header, &mut buckets, &mut slots);
    let rec = Record {
        created: 1,
        issued: 1,
        last_seen: 1,
        renewed_at: 0,
        ip: 1,
        user_agent: 2,
        hashes: if u.arbitrary()? { BindingHashes::Legacy } else { BindingHashes::Keyed },
    };
    let mut sound = t.check_invariants().is_ok();
    for _ in 0..u.int_in_range(0..=32)? {
        match Op::arbitrary(u)? {
            Op::Insert { key: n, established, now, expires } => {
                let _ = t.insert(&key(n), &rec, expires.into(), established, now.into());
            }
            Op::Get { key: n } => {
                let _ = t.get(&key(n), 0);
            }
            Op::Update { key: n, expires } => t.update(&key(n), &rec, expires.into()),
            Op::Remove { key: n } => t.remove(&key(n)),
            Op::Relock => {
                t = SlotTable::new(&mut header, &mut buckets, &mut slots);
            }
            Op::Report { now } => {
                let _ = t.eviction_report(now);
            }
            Op::WriteData { key: n, len, subject, now } => {
                let data = vec![n; usize::from(len) * 4];
                let _ = t.write_data(&key(n), &data, subject.map(|s| [s; 16]), now.into());
            }
            Op::ReadData { key: n } => {
                let _ = t.read_data(&key(n), &mut Vec::new());
            }
            Op::MoveData { from, to } => t.move_data(&key(from), &key(to)),
            Op::RemoveSubject { subject, keep } => {
                let _ = t.remove_subject(&[subject; 16], keep.map(key).as_ref());
            }
        }
        let _ = (t.len(), t.is_empty(), t.capacity(), t.evictions_total(), t.protected_cap());
        let _ = t.slots_in_use();
        match t.check_invariants() {
            Ok(()) => sound = true,
            Err(e) => assert!(!sound, "a sound table broke: {e}"),
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
