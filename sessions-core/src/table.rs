//! The layout and algorithm of the shared-memory session table, over plain slices so that
//! it is tested here without NGINX; the glue points the slices at the zone and holds the
//! zone's lock while a `SlotTable` exists.
//!
//! - Fixed 64-byte slots, one per session ID, linked by 32-bit indices (the zone is mapped
//!   at the same address in every worker, but indices would survive a different one too).
//! - A power-of-two bucket array of chain heads, indexed by the first bytes of the store
//!   key (a SHA-256 output, so uniform): one or two cache misses per lookup.
//! - Two LRU lists: *probation* for sessions whose cookie has not come back, *protected*
//!   for sessions in use. When no slot is free, probation's oldest is taken first, so a flood
//!   of cookie-less clients only pushes out other cookie-less clients.

use crate::cookie::StoreKey;
use crate::session::{Record, StoreError, Table};

/// "No slot".
pub const NIL: u32 = u32::MAX;
/// Expired slots reclaimed from each list's tail per insert (as `limit_req` does).
const EXPIRE_PER_INSERT: usize = 2;

const FREE: u8 = 0;
const PROBATION: u8 = 1;
const PROTECTED: u8 = 2;

/// One session ID's record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    key: [u8; 16],
    created: u32,
    issued: u32,
    last_seen: u32,
    renewed_at: u32,
    ip: u32,
    user_agent: u32,
    /// When the record may be forgotten (seconds since the epoch).
    expires: u32,
    /// Next slot in the same bucket, or in the free list.
    chain: u32,
    /// LRU neighbours: `prev` is more recent, `next` older.
    prev: u32,
    next: u32,
    segment: u8,
    _pad: [u8; 7],
}

const _: () = assert!(core::mem::size_of::<Slot>() == 64);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct List {
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
}

/// The table's bookkeeping (counts, free list, LRU ends); the glue keeps it in the zone's
/// root, next to the pointers to the buckets and slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    count: u32,
    free: u32,
    /// Indexed by segment (`FREE` unused).
    lists: [List; 3],
}

/// Seconds since the epoch in 32 bits (good until 2106); later times saturate, which
/// `decide` treats as "from the future".
fn secs32(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

/// How a region of `bytes` is divided: (buckets, slots). Buckets are a power of two, at
/// least as many as slots (short chains).
pub fn layout(bytes: usize) -> (usize, usize) {
    let header = core::mem::size_of::<Header>();
    let avail = bytes.saturating_sub(header);
    // Each slot costs 64 bytes plus up to 2 × 4 bytes of bucket (power-of-two rounding).
    let mut slots = avail / (64 + 4);
    let mut buckets = slots.next_power_of_two().max(1);
    while slots > 0 && buckets * 4 + slots * 64 > avail {
        slots -= 1;
        buckets = slots.next_power_of_two().max(1);
    }
    (buckets, slots.min(NIL as usize - 1))
}

/// The table over its three parts.
pub struct SlotTable<'a> {
    header: &'a mut Header,
    buckets: &'a mut [u32],
    slots: &'a mut [Slot],
    /// The slot found by the last lookup, so that get-then-update searches once.
    cached: Option<(StoreKey, u32)>,
}

impl<'a> SlotTable<'a> {
    /// Wraps parts that `init` (now or in an earlier process) prepared.
    /// `buckets.len()` must be a power of two.
    pub fn new(header: &'a mut Header, buckets: &'a mut [u32], slots: &'a mut [Slot]) -> Self {
        debug_assert!(buckets.len().is_power_of_two());
        SlotTable { header, buckets, slots, cached: None }
    }

    /// Makes an empty table: all buckets empty, all slots on the free list.
    pub fn init(&mut self) {
        *self.header = Header {
            count: 0,
            free: if self.slots.is_empty() { NIL } else { 0 },
            lists: [List { head: NIL, tail: NIL }; 3],
        };
        self.buckets.fill(NIL);
        let n = self.slots.len() as u32;
        for (i, s) in self.slots.iter_mut().enumerate() {
            *s = Slot::default();
            s.chain = if i as u32 + 1 < n { i as u32 + 1 } else { NIL };
            s.prev = NIL;
            s.next = NIL;
        }
    }

    pub fn len(&self) -> usize {
        self.header.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn bucket_of(&self, key: &StoreKey) -> usize {
        let h = u32::from_le_bytes([key.0[0], key.0[1], key.0[2], key.0[3]]);
        h as usize & self.buckets.len().wrapping_sub(1)
    }

    fn find(&mut self, key: &StoreKey) -> Option<u32> {
        if let Some((k, i)) = self.cached {
            if k == *key {
                return Some(i);
            }
        }
        let mut i = *self.buckets.get(self.bucket_of(key))?;
        // Bounded by the slot count even if the zone were corrupted.
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i as usize)?;
            if slot.key == key.0 {
                self.cached = Some((*key, i));
                return Some(i);
            }
            i = slot.chain;
        }
        None
    }

    // Indices all come from this table, written under the zone's lock; still, every
    // access is checked (`get`), so a corrupted zone degrades to misses, never a panic.

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize)
    }

    fn list_mut(&mut self, segment: u8) -> Option<&mut List> {
        self.header.lists.get_mut(segment as usize)
    }

    fn unlink_lru(&mut self, i: u32) {
        let Some(&Slot { prev, next, segment, .. }) = self.slots.get(i as usize) else { return };
        match prev {
            NIL => self.list_mut(segment).into_iter().for_each(|l| l.head = next),
            p => self.slot_mut(p).into_iter().for_each(|s| s.next = next),
        }
        match next {
            NIL => self.list_mut(segment).into_iter().for_each(|l| l.tail = prev),
            n => self.slot_mut(n).into_iter().for_each(|s| s.prev = prev),
        }
    }

    fn push_front(&mut self, i: u32, segment: u8) {
        let Some(head) = self.list_mut(segment).map(|l| l.head) else { return };
        let Some(s) = self.slot_mut(i) else { return };
        s.segment = segment;
        s.prev = NIL;
        s.next = head;
        match head {
            NIL => self.list_mut(segment).into_iter().for_each(|l| l.tail = i),
            h => self.slot_mut(h).into_iter().for_each(|s| s.prev = i),
        }
        self.list_mut(segment).into_iter().for_each(|l| l.head = i);
    }

    fn unlink_chain(&mut self, i: u32) {
        let Some(&Slot { key, chain: next, .. }) = self.slots.get(i as usize) else { return };
        let b = self.bucket_of(&StoreKey(key));
        let Some(first) = self.buckets.get_mut(b) else { return };
        if *first == i {
            *first = next;
            return;
        }
        let mut p = *first;
        for _ in 0..self.slots.len() {
            let Some(s) = self.slot_mut(p) else { return };
            if s.chain == i {
                s.chain = next;
                return;
            }
            p = s.chain;
        }
    }

    /// Returns slot `i` to the free list.
    fn release(&mut self, i: u32) {
        if matches!(self.cached, Some((_, c)) if c == i) {
            self.cached = None;
        }
        self.unlink_chain(i);
        self.unlink_lru(i);
        let free = self.header.free;
        let Some(s) = self.slot_mut(i) else { return };
        s.segment = FREE;
        s.chain = free;
        self.header.free = i;
        self.header.count = self.header.count.saturating_sub(1);
    }

    fn tail(&self, segment: u8) -> u32 {
        self.header.lists.get(segment as usize).map_or(NIL, |l| l.tail)
    }

    fn expire_some(&mut self, now: u64) {
        for segment in [PROBATION, PROTECTED] {
            for _ in 0..EXPIRE_PER_INSERT {
                let t = self.tail(segment);
                match self.slots.get(t as usize) {
                    Some(s) if u64::from(s.expires) <= now => self.release(t),
                    _ => break,
                }
            }
        }
    }

    /// A free slot, evicting the least recently used record (probation first) if needed.
    fn take_slot(&mut self) -> Option<u32> {
        if self.header.free == NIL {
            let victim =
                [PROBATION, PROTECTED].iter().map(|&s| self.tail(s)).find(|&t| t != NIL)?;
            self.release(victim);
        }
        let i = self.header.free;
        self.header.free = self.slots.get(i as usize)?.chain;
        Some(i)
    }

    fn write(&mut self, i: u32, rec: &Record, expires: u64) {
        let Some(s) = self.slot_mut(i) else { return };
        s.created = secs32(rec.created);
        s.issued = secs32(rec.issued);
        s.last_seen = secs32(rec.last_seen);
        s.renewed_at = secs32(rec.renewed_at);
        s.ip = rec.ip;
        s.user_agent = rec.user_agent;
        s.expires = secs32(expires);
    }

    fn read(&self, i: u32) -> Option<Record> {
        let s = self.slots.get(i as usize)?;
        Some(Record {
            created: s.created.into(),
            issued: s.issued.into(),
            last_seen: s.last_seen.into(),
            renewed_at: s.renewed_at.into(),
            ip: s.ip,
            user_agent: s.user_agent,
        })
    }
}

impl Table for SlotTable<'_> {
    fn get(&mut self, key: &StoreKey, _now: u64) -> Option<Record> {
        let i = self.find(key)?;
        self.unlink_lru(i);
        self.push_front(i, PROTECTED);
        self.read(i)
    }

    fn insert(
        &mut self,
        key: &StoreKey,
        rec: &Record,
        expires: u64,
        established: bool,
        now: u64,
    ) -> Result<(), StoreError> {
        if self.find(key).is_some() {
            return Err(StoreError::Exists);
        }
        self.expire_some(now);
        let i = self.take_slot().ok_or(StoreError::Unavailable)?;
        let b = self.bucket_of(key);
        let (Some(&head), Some(slot)) = (self.buckets.get(b), self.slots.get_mut(i as usize))
        else {
            return Err(StoreError::Unavailable);
        };
        slot.key = key.0;
        slot.chain = head;
        if let Some(first) = self.buckets.get_mut(b) {
            *first = i;
        }
        self.write(i, rec, expires);
        self.push_front(i, if established { PROTECTED } else { PROBATION });
        self.header.count = self.header.count.saturating_add(1);
        self.cached = Some((*key, i));
        Ok(())
    }

    fn update(&mut self, key: &StoreKey, rec: &Record, expires: u64) {
        if let Some(i) = self.find(key) {
            self.write(i, rec, expires);
        }
    }

    fn remove(&mut self, key: &StoreKey) {
        if let Some(i) = self.find(key) {
            self.release(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::SessionId;

    struct Owned {
        header: Header,
        buckets: Vec<u32>,
        slots: Vec<Slot>,
    }

    impl Owned {
        fn new(bytes: usize) -> Owned {
            let (b, s) = layout(bytes);
            let mut o = Owned {
                header: Header::default(),
                buckets: vec![0; b],
                slots: vec![Slot::default(); s],
            };
            o.table().init();
            o
        }
        fn table(&mut self) -> SlotTable<'_> {
            SlotTable::new(&mut self.header, &mut self.buckets, &mut self.slots)
        }
    }

    fn rec(t: u64) -> Record {
        Record { created: t, issued: t, last_seen: t, renewed_at: 0, ip: 1, user_agent: 2 }
    }

    fn key(n: u32) -> StoreKey {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_le_bytes());
        if cfg!(miri) {
            // A SHA-256 per key is most of these tests' time under Miri; a multiplicative
            // hash in the bucket bytes spreads keys as well, for what the table sees.
            id[4..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9).to_le_bytes());
            id.rotate_left(4);
            return StoreKey(id);
        }
        SessionId(id).store_key()
    }

    #[test]
    fn layout_fits() {
        for bytes in [0, 64, 1000, 32 * 1024, 1 << 20, 10 << 20] {
            let (b, s) = layout(bytes);
            assert!(b.is_power_of_two());
            assert!(
                core::mem::size_of::<Header>() + b * 4 + s * 64
                    <= bytes.max(core::mem::size_of::<Header>() + 4)
            );
            assert!(b >= s);
        }
        let (_, s) = layout(1 << 20);
        assert!(s > 14_000, "{s} sessions per MB");
    }

    #[test]
    fn insert_get_update_remove() {
        let mut o = Owned::new(64 * 1024);
        let mut t = o.table();
        assert!(t.is_empty());
        for n in 0..500 {
            t.insert(&key(n), &rec(u64::from(n)), 10_000, false, 0).unwrap();
        }
        assert_eq!(t.len(), 500);
        assert_eq!(t.insert(&key(7), &rec(0), 10_000, false, 0), Err(StoreError::Exists));
        for n in 0..500 {
            assert_eq!(t.get(&key(n), 0), Some(rec(u64::from(n))));
        }
        let r = Record { last_seen: 99, ..rec(7) };
        t.update(&key(7), &r, 10_000);
        assert_eq!(t.get(&key(7), 0), Some(r));
        for n in (0..500).step_by(2) {
            t.remove(&key(n));
        }
        assert_eq!(t.len(), 250);
        for n in 0..500 {
            assert_eq!(t.get(&key(n), 0).is_some(), n % 2 == 1, "{n}");
        }
    }

    #[test]
    fn full_table_evicts_probation_before_protected() {
        let mut o = Owned::new(32 * 1024);
        let mut t = o.table();
        let cap = t.capacity() as u32;
        // Established sessions: inserted, then seen again.
        for n in 0..20 {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
            t.get(&key(n), 0).unwrap();
        }
        // A flood of never-returning clients, three times the capacity.
        for n in 1000..1000 + 3 * cap {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
        }
        assert_eq!(t.len() as u32, cap);
        for n in 0..20 {
            assert!(t.get(&key(n), 0).is_some(), "established session {n} evicted");
        }
        // The flood's oldest went first, its newest stayed.
        assert!(t.get(&key(1000), 0).is_none());
        assert!(t.get(&key(1000 + 3 * cap - 1), 0).is_some());
    }

    #[test]
    fn lru_order_within_protected() {
        let mut o = Owned::new(8 * 1024);
        let mut t = o.table();
        let cap = t.capacity() as u32;
        for n in 0..cap {
            t.insert(&key(n), &rec(0), 10_000, true, 0).unwrap();
        }
        t.get(&key(0), 0).unwrap(); // 0 is now the most recent; 1 the oldest
        t.insert(&key(9999), &rec(0), 10_000, false, 0).unwrap();
        assert!(t.get(&key(0), 0).is_some());
        assert!(t.get(&key(1), 0).is_none());
    }

    #[test]
    fn expired_tails_are_reclaimed_on_insert() {
        let mut o = Owned::new(8 * 1024);
        let mut t = o.table();
        t.insert(&key(1), &rec(0), 100, false, 0).unwrap();
        t.insert(&key(2), &rec(0), 100, true, 0).unwrap();
        t.insert(&key(3), &rec(0), 500, false, 200).unwrap();
        assert_eq!(t.len(), 1);
        assert!(t.get(&key(3), 200).is_some());
    }

    #[test]
    fn drives_the_session_algorithm() {
        use crate::cookie::{Incoming, Signer};
        use crate::session::{evaluate, Client, Policy, Status};
        let mut o = Owned::new(64 * 1024);
        let mut t = o.table();
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let policy =
            Policy { idle: 30, rolling: 60, absolute: 300, check_ip: true, check_user_agent: true };
        let alice = Client { ip: 1, user_agent: 2 };
        let e = evaluate(&mut t, Incoming::Absent, &signer, 1000, &policy, &alice);
        let id = e.id.unwrap();
        assert_eq!(
            evaluate(&mut t, Incoming::Verified(id), &signer, 1010, &policy, &alice).status,
            Status::Valid
        );
        assert_eq!(
            evaluate(&mut t, Incoming::Verified(id), &signer, 1039, &policy, &alice).status,
            Status::Valid
        );
        let e = evaluate(&mut t, Incoming::Verified(id), &signer, 1061, &policy, &alice);
        assert_eq!(e.status, Status::Renewed);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn corrupted_count_does_not_overflow() {
        // Found by fuzz/table_corrupt: a zone whose count reads u32::MAX.
        let mut o = Owned::new(8 * 1024);
        o.header.count = u32::MAX;
        let mut t = o.table();
        t.insert(&key(1), &rec(0), 100, false, 0).unwrap();
        assert_eq!(t.len(), u32::MAX as usize);
    }

    #[test]
    fn times_beyond_2106_saturate() {
        let mut o = Owned::new(8 * 1024);
        let mut t = o.table();
        t.insert(&key(1), &rec(u64::MAX), u64::MAX, false, 0).unwrap();
        assert_eq!(t.get(&key(1), 0).unwrap().created, u64::from(u32::MAX));
    }
}
