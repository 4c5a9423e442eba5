//! The shared-memory table under random operation sequences, against a model.
//!
//! A small table (0 to ~60 slots, few buckets so chains collide) takes groups of
//! operations; each group runs in one `SlotTable`, as one request does under the zone's
//! lock (so the table's lookup cache lives across the group). After each group, a copy of
//! the storage is probed for every key, which tells exactly which records are present
//! without disturbing the LRU order of the real table.
//!
//! Checked: the table's own structural invariants (`check_invariants`: lists, free list,
//! chains, the protected cap, the lookup cache) after every operation; a found record is
//! the one last stored for that key (times kept in 32 bits, the version kept); a removed
//! or never-inserted key is never found; a key known to be present is found and makes
//! `insert` say `Exists`; inserting an absent key succeeds when the table has any slot;
//! `len` equals the records present and never exceeds the capacity; only an insert makes
//! records disappear, and one insert evicts at most one unexpired record, only when no
//! slot was free after reclaiming expired ones, and counts it as an eviction; the eviction
//! reports add up to the evictions counted; a new session that is never looked up again
//! survives at least `capacity - protected_cap - 1` newer insertions unless it expires
//! (the segmented LRU's guarantee to newcomers, `SlotTable::protected_cap`).
//!
//! With session data (`write_data`, `read_data`, `move_data`, `remove_subject`): a present
//! session's data is the one last written (a refused write leaves it as it was), moved with
//! a renewal, dropped with its session; `write_data` says `Gone` exactly for absent keys;
//! `remove_subject` removes exactly the sessions written under that subject but the kept
//! one. Data takes slots, so once an input has written data the checks that count one
//! eviction per insert and the newcomer bound (stated for tables without data) are skipped
//! for the groups that allocate.

#![no_main]

use std::collections::{HashMap, HashSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::StoreKey;
use sessions_core::session::{BindingHashes, DataError, Record, StoreError, Table};
use sessions_core::table::{layout, Header, Slot, SlotTable};

/// Enough keys to fill the smaller tables (up to ~60 slots), so that evictions happen.
const KEYS: u8 = 48;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Expires {
    In(u16),
    At(u64),
}

type RawRecord = (u64, u64, u64, u64, u32, u32, bool);

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        key: u8,
        rec: RawRecord,
        expires: Expires,
        established: bool,
    },
    Get {
        key: u8,
    },
    Update {
        key: u8,
        rec: RawRecord,
        expires: Expires,
    },
    Remove {
        key: u8,
    },
    Tick(u8),
    /// Clocks are not monotonic across workers and reloads.
    ClockBack(u8),
    /// The once-a-minute eviction log line.
    Report,
    WriteData {
        key: u8,
        /// Bytes, in units of 4 (up to 1020: more than the smaller tables hold).
        len: u8,
        subject: Option<u8>,
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

/// A few subjects, so that they share sessions.
fn subject(s: u8) -> [u8; 16] {
    [s % 4; 16]
}

fn data_bytes(len: u8, seed: u8) -> Vec<u8> {
    (0..usize::from(len) * 4).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

#[derive(Arbitrary, Debug)]
struct Input {
    bytes: u16,
    start: u32,
    groups: Vec<Vec<Op>>,
}

/// Keys whose first bytes (the bucket index) collide often.
fn key(n: u8) -> StoreKey {
    let n = n % KEYS;
    let mut k = [0xa5; 16];
    k[..4].copy_from_slice(&u32::from(n % 5).to_le_bytes());
    k[4] = n;
    StoreKey(k)
}

fn sat(t: u64) -> u64 {
    t.min(u64::from(u32::MAX))
}

fn record(r: RawRecord) -> Record {
    Record {
        created: r.0,
        issued: r.1,
        last_seen: r.2,
        renewed_at: r.3,
        ip: r.4,
        user_agent: r.5,
        hashes: if r.6 { BindingHashes::Legacy } else { BindingHashes::Keyed },
    }
}

fn check(t: &SlotTable, context: &dyn std::fmt::Debug) {
    if let Err(e) = t.check_invariants() {
        panic!("invariant broken after {context:?}: {e}");
    }
}

/// What a slot keeps of a record.
fn stored(r: &Record) -> Record {
    Record {
        created: sat(r.created),
        issued: sat(r.issued),
        last_seen: sat(r.last_seen),
        renewed_at: sat(r.renewed_at),
        ..*r
    }
}

fn expiry(e: Expires, now: u64) -> u64 {
    match e {
        Expires::In(d) => now + u64::from(d),
        Expires::At(t) => t,
    }
}

struct Storage {
    header: Header,
    buckets: Vec<u32>,
    slots: Vec<Slot>,
}

impl Storage {
    fn table(&mut self) -> SlotTable<'_> {
        SlotTable::new(&mut self.header, &mut self.buckets, &mut self.slots)
    }

    /// The keys present and their records and data, read from a copy.
    fn probe(&self) -> (HashMap<StoreKey, Record>, usize, HashMap<StoreKey, Vec<u8>>) {
        let mut copy = Storage {
            header: self.header,
            buckets: self.buckets.clone(),
            slots: self.slots.clone(),
        };
        let mut t = copy.table();
        let present: HashMap<StoreKey, Record> =
            (0..KEYS).map(key).filter_map(|k| t.get(&k, 0).map(|r| (k, r))).collect();
        let data = present
            .keys()
            .map(|k| {
                let mut d = Vec::new();
                assert!(t.read_data(k, &mut d), "a present key has no data answer");
                (*k, d)
            })
            .collect();
        (present, t.len(), data)
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Known {
    Present,
    Maybe,
}

/// Whether `k` is in the table (without touching its LRU place).
fn present_now(t: &mut SlotTable, k: &StoreKey) -> bool {
    t.read_data(k, &mut Vec::new())
}

/// A session inserted as new (probation) and never looked up since: the newcomer whose
/// survival the protected cap guarantees.
#[derive(Clone, Copy, Debug)]
struct Newcomer {
    /// `inserts` when it was inserted.
    seq: u64,
}

fuzz_target!(|input: Input| {
    let (nbuckets, nslots) = layout(usize::from(input.bytes % 4096));
    let mut st = Storage {
        header: Header::default(),
        buckets: vec![0; nbuckets],
        slots: vec![Slot::default(); nslots],
    };
    st.table().init();
    let capacity = nslots;
    let guaranteed = {
        let t = st.table();
        check(&t, &"init");
        (capacity as u64).saturating_sub(u64::from(t.protected_cap()) + 1)
    };
    let mut now = u64::from(input.start);

    // Last record and expiry written per key; what is known of its presence (absent keys
    // are not in `known`).
    let mut written: HashMap<StoreKey, (Record, u64)> = HashMap::new();
    let mut known: HashMap<StoreKey, Known> = HashMap::new();
    let mut newcomers: HashMap<StoreKey, Newcomer> = HashMap::new();
    // Successful inserts so far, and evictions reported so far.
    let mut inserts_total = 0u64;
    let mut reported = 0u64;
    let mut evictions = 0u64;
    let (mut before, _, _) = st.probe();
    // Each session's data and subject as last written (absent: none).
    let mut data: HashMap<StoreKey, (Vec<u8>, Option<u8>)> = HashMap::new();
    // Whether the input has given any session data yet.
    let mut data_used = false;

    for group in input.groups.iter().take(64) {
        let mut inserts = 0;
        // Keys whose record had expired when the (last) insert ran.
        let mut expired_at_insert: HashSet<StoreKey> = HashSet::new();
        // Keys whose record had expired when any insert of the group ran.
        let mut expired_at_any_insert: HashSet<StoreKey> = HashSet::new();
        let mut removed: HashSet<StoreKey> = HashSet::new();
        // Slots taken for data in this group (each may evict).
        let mut allocations = 0u64;
        let evictions_before = evictions;
        {
            let mut t = st.table();
            for op in group.iter().take(4) {
                match *op {
                    Op::Insert { key: n, rec, expires, established } => {
                        let (k, rec) = (key(n), record(rec));
                        let exp = expiry(expires, now);
                        let res = t.insert(&k, &rec, exp, established, now);
                        match known.get(&k) {
                            Some(Known::Present) => assert_eq!(res, Err(StoreError::Exists)),
                            None if capacity > 0 => assert_eq!(res, Ok(())),
                            None => assert_eq!(res, Err(StoreError::Unavailable)),
                            Some(Known::Maybe) => assert_ne!(res, Err(StoreError::Unavailable)),
                        }
                        match res {
                            Ok(()) => {
                                inserts += 1;
                                inserts_total += 1;
                                expired_at_insert = written
                                    .iter()
                                    .filter(|(_, (_, exp))| *exp <= now)
                                    .map(|(k, _)| *k)
                                    .collect();
                                expired_at_any_insert.extend(expired_at_insert.iter().copied());
                                // Others may have been evicted or reclaimed.
                                known.values_mut().for_each(|v| *v = Known::Maybe);
                                known.insert(k, Known::Present);
                                written.insert(k, (stored(&rec), sat(exp)));
                                data.remove(&k);
                                removed.remove(&k);
                                if established {
                                    newcomers.remove(&k);
                                } else {
                                    newcomers.insert(k, Newcomer { seq: inserts_total });
                                }
                            }
                            Err(StoreError::Exists) => {
                                known.insert(k, Known::Present);
                            }
                            Err(StoreError::Unavailable) => {}
                        }
                    }
                    Op::Get { key: n } => {
                        let k = key(n);
                        let got = t.get(&k, now);
                        match known.get(&k) {
                            None => assert_eq!(got, None, "absent key found"),
                            Some(Known::Present) => assert!(got.is_some(), "present key lost"),
                            Some(Known::Maybe) => {}
                        }
                        match got {
                            Some(r) => {
                                assert_eq!(r, written[&k].0, "found record is not the stored one");
                                known.insert(k, Known::Present);
                                // In use now: promoted, no longer a newcomer.
                                newcomers.remove(&k);
                            }
                            None => {
                                known.remove(&k);
                            }
                        }
                    }
                    Op::Update { key: n, rec, expires } => {
                        let (k, rec) = (key(n), record(rec));
                        let exp = expiry(expires, now);
                        t.update(&k, &rec, exp);
                        // An absent key stays absent until inserted again, which rewrites it.
                        if known.contains_key(&k) {
                            written.insert(k, (stored(&rec), sat(exp)));
                        }
                    }
                    Op::Remove { key: n } => {
                        let k = key(n);
                        t.remove(&k);
                        known.remove(&k);
                        removed.insert(k);
                        newcomers.remove(&k);
                        data.remove(&k);
                    }
                    Op::WriteData { key: n, len, subject: s } => {
                        let k = key(n);
                        let d = data_bytes(len, n);
                        let res = t.write_data(&k, &d, s.map(subject), now);
                        match known.get(&k) {
                            None => assert_eq!(res, Err(DataError::Gone), "absent key written"),
                            Some(Known::Present) => assert_ne!(res, Err(DataError::Gone)),
                            Some(Known::Maybe) => {}
                        }
                        match res {
                            Ok(()) => {
                                known.insert(k, Known::Present);
                                if d.is_empty() && s.is_none() {
                                    data.remove(&k);
                                } else {
                                    data_used = true;
                                    data.insert(k, (d, s));
                                }
                            }
                            Err(DataError::NoRoom) => {
                                data_used = true;
                                known.insert(k, Known::Present);
                            }
                            Err(DataError::Gone) => {
                                known.remove(&k);
                                data.remove(&k);
                            }
                        }
                        if res != Err(DataError::Gone) && data_used {
                            allocations += 1;
                            // Others may have been evicted for the chunks.
                            known.values_mut().for_each(|v| *v = Known::Maybe);
                            known.insert(k, Known::Present);
                        }
                    }
                    Op::ReadData { key: n } => {
                        let k = key(n);
                        let mut d = Vec::new();
                        let found = t.read_data(&k, &mut d);
                        match known.get(&k) {
                            None => assert!(!found, "absent key has data"),
                            Some(Known::Present) => assert!(found, "present key lost"),
                            Some(Known::Maybe) => {}
                        }
                        if found {
                            let want = data.get(&k).map(|(d, _)| &d[..]).unwrap_or_default();
                            assert_eq!(d, want, "data is not the last written");
                            known.insert(k, Known::Present);
                        } else {
                            known.remove(&k);
                        }
                    }
                    Op::MoveData { from, to } => {
                        let (f, to) = (key(from), key(to));
                        let present = |t: &mut SlotTable, k| t.read_data(k, &mut Vec::new());
                        let moved = f != to && present(&mut t, &f) && present(&mut t, &to);
                        t.move_data(&f, &to);
                        if moved {
                            match data.remove(&f) {
                                Some(d) => data.insert(to, d),
                                None => data.remove(&to),
                            };
                        }
                    }
                    Op::RemoveSubject { subject: s, keep } => {
                        let keep = keep.map(key);
                        let removed_now = t.remove_subject(&subject(s), keep.as_ref());
                        let gone: Vec<StoreKey> = data
                            .iter()
                            .filter(|(k, (_, ds))| {
                                ds.map(subject) == Some(subject(s)) && Some(**k) != keep
                            })
                            .map(|(k, _)| *k)
                            .collect();
                        for k in &gone {
                            assert!(!present_now(&mut t, k), "a session of the subject stayed");
                            known.remove(k);
                            removed.insert(*k);
                            newcomers.remove(k);
                            data.remove(k);
                        }
                        // Sessions whose data is in the model and that are still there.
                        assert!(removed_now <= gone.len(), "removed sessions of no subject");
                    }
                    Op::Tick(d) => now += u64::from(d),
                    Op::ClockBack(d) => now = now.saturating_sub(u64::from(d)),
                    Op::Report => {
                        if let Some(r) = t.eviction_report(now) {
                            assert!(r.evictions > 0, "an empty report: {r:?}");
                            reported += r.evictions;
                        }
                    }
                }
                check(&t, op);
                assert!(t.len() <= capacity);
                evictions = t.evictions_total();
                assert!(reported <= evictions, "{reported} reported of {evictions} evictions");
            }
        }
        {
            let t = st.table();
            check(&t, &"the end of a lock section");
        }

        let (present, len, present_data) = st.probe();
        assert_eq!(len, present.len(), "len() disagrees with the records present");
        data.retain(|k, _| present.contains_key(k));
        for (k, d) in &present_data {
            let want = data.get(k).map(|(d, _)| &d[..]).unwrap_or_default();
            assert_eq!(&d[..], want, "data changed behind our back");
        }
        assert!(len <= capacity);
        for (k, r) in &present {
            assert!(known.contains_key(k), "a removed or evicted key came back");
            assert_eq!(*r, written[k].0, "record changed behind our back");
        }
        for (k, v) in &known {
            if *v == Known::Present {
                assert!(present.contains_key(k), "a key known present is gone");
            }
        }
        known = present.keys().map(|k| (*k, Known::Present)).collect();

        // What disappeared, apart from explicit removes, went through an insert.
        let dropped: Vec<StoreKey> = before
            .keys()
            .filter(|k| !present.contains_key(k) && !removed.contains(k))
            .copied()
            .collect();
        let evicted = evictions - evictions_before;
        // Chunks and subject entries take slots too: a data write may evict many sessions.
        if allocations == 0 {
            assert!(evicted <= inserts, "{evicted} evictions counted in {inserts} inserts");
        }
        if allocations == 0 && inserts == 0 {
            assert!(dropped.is_empty(), "records vanished without an insert: {dropped:?}");
        } else if allocations == 0 && inserts == 1 && removed.is_empty() && !data_used {
            let (expired, live): (Vec<&StoreKey>, Vec<&StoreKey>) =
                dropped.iter().partition(|k| expired_at_insert.contains(*k));
            assert!(live.len() <= 1, "one insert evicted {} live records", live.len());
            assert_eq!(live.len() as u64, evicted, "evictions miscounted");
            if live.len() == 1 {
                assert_eq!(
                    before.len() - expired.len(),
                    capacity,
                    "a live record was evicted while a slot was free"
                );
            }
        }

        // A newcomer that vanished was evicted (it was neither removed nor looked up) unless
        // it had expired: by an insert of this group, after at least `guaranteed` others.
        newcomers.retain(|k, n| {
            if present.contains_key(k) {
                return true;
            }
            if !expired_at_any_insert.contains(k) && !data_used {
                let newer = inserts_total - n.seq;
                assert!(
                    newer > guaranteed,
                    "a newcomer was evicted by the {newer}th newer insert; guaranteed \
                     {guaranteed} (capacity {capacity})"
                );
            }
            false
        });
        before = present;
    }

    // Whatever was evicted and not reported yet is reported when the minute is up.
    let mut t = st.table();
    if let Some(r) = t.eviction_report(u64::MAX) {
        reported += r.evictions;
    }
    assert_eq!(reported, t.evictions_total(), "reports do not add up to the evictions");
});
