//! The layout and algorithm of the shared-memory session table, over plain slices so that
//! it is tested here without NGINX; the glue points the slices at the zone and holds the
//! zone's lock while a `SlotTable` exists.
//!
//! - Fixed 64-byte slots, one per session ID, linked by 32-bit indices (the zone is mapped
//!   at the same address in every worker, but indices would survive a different one too).
//! - A power-of-two bucket array of chain heads, indexed by the first bytes of the store
//!   key (a SHA-256 output, so uniform): one or two cache misses per lookup.
//! - A segmented LRU: *probation* for sessions whose cookie has not come back, *protected*
//!   for sessions in use. When no slot is free, probation's oldest is taken first, so a flood
//!   of cookie-less clients only pushes out other cookie-less clients. Protected holds at
//!   most [`PROTECTED_PERCENT`] of the capacity (see [`SlotTable::protected_cap`] for why
//!   that keeps the table open to newcomers).
//! - Session data lives in the same slots: a session's data is a chain of *chunks*, free
//!   slots tagged [`DATA`] that hold [`CHUNK_BYTES`] bytes each, outside the LRU lists and
//!   the buckets; the session slot's spare bytes hold the first chunk's index and the
//!   count. Data thus competes for the one capacity: a chunk is taken like an insertion
//!   takes a slot (evicting probation's oldest when none is free), evicting a session frees
//!   its chunks, and a session *weighs* one slot plus its chunks in the segment it is in
//!   (the protected cap bounds protected's weight). A zone full of data still takes new
//!   sessions: evicting any session frees at least its own slot.
//! - The subject index: one slot per subject tagged [`SUBJECT`], in the buckets under the
//!   subject's key (`data::subject_key`), heads a doubly linked list of the sessions
//!   indexed under it; the links live in each session's first chunk (a session with a
//!   subject has data), so sessions without data pay nothing. The entry is freed when its
//!   list empties.

use crate::cookie::StoreKey;
use crate::session::{BindingHashes, DataError, Record, StoreError, Table};

/// "No slot".
pub const NIL: u32 = u32::MAX;
/// Expired slots reclaimed from each list's tail per insert (as `limit_req` does).
const EXPIRE_PER_INSERT: usize = 2;
/// The protected segment's share of the capacity (SPEC: 80 %).
pub const PROTECTED_PERCENT: u64 = 80;
/// Evictions are reported at most this often (seconds).
pub const EVICTION_REPORT_INTERVAL: u64 = 60;

const FREE: u8 = 0;
const PROBATION: u8 = 1;
const PROTECTED: u8 = 2;
/// A chunk of some session's data.
pub const DATA: u8 = 3;
/// A subject index entry.
pub const SUBJECT: u8 = 4;

/// Data bytes a chunk holds: every byte of a slot but its `chain` (the next chunk),
/// `segment` and `version` (how many of the bytes are used).
pub const CHUNK_BYTES: usize = 58;
/// The first chunk of a session's data starts with its subject links: the subject entry,
/// the previous and the next session under that subject (`NIL` when none).
const LINKS_BYTES: usize = 12;
const LINK_SUBJECT: usize = 0;
const LINK_PREV: usize = 1;
const LINK_NEXT: usize = 2;

/// The chunks `len` bytes of data take (0 for none).
pub fn chunks_for(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (LINKS_BYTES + len).div_ceil(CHUNK_BYTES)
    }
}

fn is_session(segment: u8) -> bool {
    segment == PROBATION || segment == PROTECTED
}

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
    /// The record's version ([`BindingHashes::version`]); 0, in slots written before it
    /// existed, reads as the legacy hashes. In a chunk: how many of its bytes are used.
    version: u8,
    /// How many chunks the session's data takes (0: no data).
    chunks: u16,
    /// The session's first data chunk (meaningful when `chunks > 0`).
    data: u32,
}

const _: () = assert!(core::mem::size_of::<Slot>() == 64);
// No implicit padding: the zone's bytes are read as these types.
const _: () = assert!(core::mem::size_of::<Header>() == 4 + 4 + 3 * 16 + 5 * 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct List {
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    /// Sessions.
    len: u32,
    /// Slots the sessions take with their data chunks.
    weight: u32,
}

/// The table's bookkeeping (free list, LRU ends and lengths, eviction counters); the glue
/// keeps it in the zone's root, next to the pointers to the buckets and slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    free: u32,
    /// Subject index entries.
    subjects: u32,
    /// Indexed by segment (`FREE` unused).
    lists: [List; 3],
    /// Records evicted (pushed out alive for want of room) since the zone was made.
    evictions_total: u64,
    /// The evictions not reported yet: how many, when the first happened, and the smallest
    /// idle age among them (`u64::MAX` when none).
    unreported: u64,
    unreported_since: u64,
    unreported_min_idle: u64,
    /// When the last report was made (0: never, so the first eviction reports at once).
    last_report: u64,
}

/// One live record with what the table keeps beside it: its key, expiry, segment and data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub key: StoreKey,
    pub record: Record,
    /// When the table may forget it (seconds since the epoch).
    pub expires: u64,
    /// In the protected segment: its cookie came back at least once.
    pub established: bool,
    /// The session's data (stored form; empty: none). Its subject is part of it.
    pub data: Vec<u8>,
}

/// A chunk's bytes (see [`CHUNK_BYTES`]).
fn chunk_bytes(s: &Slot) -> [u8; CHUNK_BYTES] {
    let mut b = [0u8; CHUNK_BYTES];
    b[..16].copy_from_slice(&s.key);
    let words = [
        s.created,
        s.issued,
        s.last_seen,
        s.renewed_at,
        s.ip,
        s.user_agent,
        s.expires,
        s.prev,
        s.next,
        s.data,
    ];
    for (w, out) in words.iter().zip(b[16..56].chunks_exact_mut(4)) {
        out.copy_from_slice(&w.to_le_bytes());
    }
    b[56..].copy_from_slice(&s.chunks.to_le_bytes());
    b
}

fn set_chunk_bytes(s: &mut Slot, b: &[u8; CHUNK_BYTES]) {
    s.key.copy_from_slice(&b[..16]);
    let mut words = b[16..56].chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    let mut next = || words.next().unwrap_or(0);
    s.created = next();
    s.issued = next();
    s.last_seen = next();
    s.renewed_at = next();
    s.ip = next();
    s.user_agent = next();
    s.expires = next();
    s.prev = next();
    s.next = next();
    s.data = next();
    s.chunks = u16::from_le_bytes([b[56], b[57]]);
}

/// Subject link `n` of a first chunk (they are its first bytes, the key's).
fn link(s: &Slot, n: usize) -> u32 {
    let w = &s.key[4 * n..4 * n + 4];
    u32::from_le_bytes([w[0], w[1], w[2], w[3]])
}

fn set_link(s: &mut Slot, n: usize, to: u32) {
    s.key[4 * n..4 * n + 4].copy_from_slice(&to.to_le_bytes());
}

/// The data bytes of chunk `s` (after the links in a first chunk).
fn chunk_payload(s: &Slot, first: bool) -> ([u8; CHUNK_BYTES], core::ops::Range<usize>) {
    let used = usize::from(s.version).min(CHUNK_BYTES);
    let skip = if first { LINKS_BYTES.min(used) } else { 0 };
    (chunk_bytes(s), skip..used)
}

/// A table's records as [`SlotTable::copy_into`] took them.
#[derive(Clone, Debug, Default)]
pub struct TableCopy {
    header: Header,
    /// Every slot in use with its index, in index order.
    slots: Vec<(u32, Slot)>,
}

impl TableCopy {
    /// Room for `records` without allocating, the pages written once so that filling
    /// them later does not fault them in either.
    pub fn make_room(&mut self, records: usize) {
        if self.slots.capacity() < records {
            self.slots = vec![(0, Slot::default()); records];
        }
        self.slots.clear();
    }

    /// Appends the records alive at `now` (`expires > now`) to `out`: the protected
    /// segment from its most recently used, then probation likewise (the reverse of the
    /// order in which the table would evict them). Bounded by the record count even if the
    /// copy came from a corrupted zone.
    pub fn live_entries(&self, now: u64, out: &mut Vec<Entry>) {
        // Where each slot index is in the copy.
        let end = self.slots.last().map_or(0, |&(i, _)| i as usize + 1);
        let mut at = vec![NIL; end];
        for (n, &(i, _)) in self.slots.iter().enumerate() {
            at[i as usize] = n as u32;
        }
        out.reserve(self.slots.len());
        for segment in [PROTECTED, PROBATION] {
            let mut i = self.header.lists.get(segment as usize).map_or(NIL, |l| l.head);
            for _ in 0..self.slots.len() {
                let Some(&(_, s)) = at.get(i as usize).and_then(|&n| self.slots.get(n as usize))
                else {
                    break;
                };
                if s.segment != segment {
                    break;
                }
                if u64::from(s.expires) > now {
                    out.push(Entry {
                        key: StoreKey(s.key),
                        record: Record {
                            created: s.created.into(),
                            issued: s.issued.into(),
                            last_seen: s.last_seen.into(),
                            renewed_at: s.renewed_at.into(),
                            ip: s.ip,
                            user_agent: s.user_agent,
                            hashes: BindingHashes::from_version(s.version)
                                .unwrap_or(BindingHashes::Legacy),
                        },
                        expires: s.expires.into(),
                        established: segment == PROTECTED,
                        data: self.data_of(&at, &s),
                    });
                }
                i = s.next;
            }
        }
    }

    /// Session `s`'s data, read from the copy's chunks (where `at` says they are).
    fn data_of(&self, at: &[u32], s: &Slot) -> Vec<u8> {
        let mut out = Vec::new();
        let mut c = s.data;
        for n in 0..s.chunks {
            let Some(&(_, chunk)) = at.get(c as usize).and_then(|&k| self.slots.get(k as usize))
            else {
                break;
            };
            if chunk.segment != DATA {
                break;
            }
            let (bytes, range) = chunk_payload(&chunk, n == 0);
            out.extend_from_slice(&bytes[range]);
            c = chunk.chain;
        }
        out
    }
}

/// Eviction pressure over a period, for a log line: many evictions of records idle for
/// little time mean the zone is too small for the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvictionReport {
    /// When the first eviction of this report happened (seconds since the epoch).
    pub since: u64,
    pub evictions: u64,
    /// The smallest idle age (seconds since `last_seen`) among the evicted records: how
    /// recently the "warmest" of them had been used.
    pub min_idle_age: u64,
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
            free: if self.slots.is_empty() { NIL } else { 0 },
            lists: [List { head: NIL, tail: NIL, len: 0, weight: 0 }; 3],
            unreported_min_idle: u64::MAX,
            ..Header::default()
        };
        self.buckets.fill(NIL);
        let n = self.slots.len() as u32;
        for (i, s) in self.slots.iter_mut().enumerate() {
            *s = Slot::default();
            s.chain = if i as u32 + 1 < n { i as u32 + 1 } else { NIL };
            s.prev = NIL;
            s.next = NIL;
            s.data = NIL;
        }
    }

    pub fn len(&self) -> usize {
        let [_, probation, protected] = self.header.lists;
        probation.len.saturating_add(protected.len) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots in use: sessions, their data chunks and the subject entries (what a copy of
    /// the table holds, see [`SlotTable::copy_into`]).
    pub fn slots_in_use(&self) -> usize {
        let [_, probation, protected] = self.header.lists;
        probation.weight.saturating_add(protected.weight).saturating_add(self.header.subjects)
            as usize
    }

    /// Records pushed out alive for want of room since the zone was made.
    pub fn evictions_total(&self) -> u64 {
        self.header.evictions_total
    }

    /// The most slots the protected segment's sessions take with their data:
    /// [`PROTECTED_PERCENT`] of the capacity.
    ///
    /// Why a new session X then survives at least `capacity - cap - 1` (a fifth of the
    /// capacity, less one) newer insertions, whatever the other clients do: let `d` be the
    /// records older than X in probation (X goes when it is probation's tail and a slot is
    /// needed), `f` the free slots, `h = cap - protected` the room left in protected, and
    /// `Φ = d + f - h`. At X's insertion `Φ = capacity - 1 - cap` (every other record is in
    /// protected, older than X in probation, or free). A promotion of a record older than X
    /// lowers `d` by one and either uses one of `h` or, protected being full, demotes its LRU
    /// record to probation's *oldest* end, behind X, which gives `d` back: `Φ` is unchanged.
    /// Promotions of newer records, removals and expiries never lower `Φ`; an insertion lowers
    /// it by at most one (it takes a free slot or evicts probation's tail). X can only be
    /// evicted by an insertion that finds `d = f = 0`, i.e. `Φ <= 0`. (Demoting to the newest
    /// end instead would let each promotion ahead of X move X one step closer to eviction,
    /// which is how clients returning each cookie once locked newcomers out.)
    ///
    /// With data, count slots instead of records: `d` is the slots that records older than X
    /// in probation take with their chunks, `protected` the protected segment's weight. A
    /// promotion moves a record's whole weight, demotions move whole records behind X, and a
    /// chunk for a record older than X, or protected, moves a free slot into `d` or
    /// `protected`: `Φ` is unchanged. A chunk for X or a newer record, and a subject entry,
    /// lower `Φ` by one, as an insertion does; subject entries present at X's insertion lower
    /// the bound by their number. Without data the bound is the one above.
    pub fn protected_cap(&self) -> u32 {
        secs32(self.slots.len() as u64 * PROTECTED_PERCENT / 100)
    }

    /// The evictions since the last report, at most once per
    /// [`EVICTION_REPORT_INTERVAL`] (the first at once); `None` when there were none or the
    /// last report is too recent. Cheap when there is nothing to report.
    pub fn eviction_report(&mut self, now: u64) -> Option<EvictionReport> {
        let h = &mut *self.header;
        if h.unreported == 0
            || (h.last_report != 0 && now.saturating_sub(h.last_report) < EVICTION_REPORT_INTERVAL)
        {
            return None;
        }
        let report = EvictionReport {
            since: h.unreported_since,
            evictions: h.unreported,
            min_idle_age: h.unreported_min_idle,
        };
        h.unreported = 0;
        h.unreported_min_idle = u64::MAX;
        h.last_report = now.max(1);
        Some(report)
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
            // Subject entries share the buckets.
            if slot.key == key.0 && slot.segment != SUBJECT {
                self.cached = Some((*key, i));
                return Some(i);
            }
            i = slot.chain;
        }
        None
    }

    /// The subject index entry of `subject`.
    fn find_subject(&self, subject: &[u8; 16]) -> Option<u32> {
        let mut i = *self.buckets.get(self.bucket_of(&StoreKey(*subject)))?;
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i as usize)?;
            if slot.key == *subject && slot.segment == SUBJECT {
                return Some(i);
            }
            i = slot.chain;
        }
        None
    }

    // Indices all come from this table, written under the zone's lock; still, every
    // access is checked (`get`) and every count saturates, so a corrupted zone degrades to
    // misses, never a panic.

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize)
    }

    fn list_mut(&mut self, segment: u8) -> Option<&mut List> {
        self.header.lists.get_mut(segment as usize)
    }

    /// The slots session `i` takes: its own and its data's.
    fn weight_of(&self, i: u32) -> u32 {
        self.slots.get(i as usize).map_or(0, |s| 1 + u32::from(s.chunks))
    }

    fn unlink_lru(&mut self, i: u32) {
        let Some(&Slot { prev, next, segment, .. }) = self.slots.get(i as usize) else { return };
        if !is_session(segment) {
            return;
        }
        let w = self.weight_of(i);
        self.list_mut(segment).into_iter().for_each(|l| l.weight = l.weight.saturating_sub(w));
        match prev {
            NIL => self.list_mut(segment).into_iter().for_each(|l| l.head = next),
            p => self.slot_mut(p).into_iter().for_each(|s| s.next = next),
        }
        match next {
            NIL => self.list_mut(segment).into_iter().for_each(|l| l.tail = prev),
            n => self.slot_mut(n).into_iter().for_each(|s| s.prev = prev),
        }
        self.list_mut(segment).into_iter().for_each(|l| l.len = l.len.saturating_sub(1));
    }

    /// Links unlinked slot `i` at the most recent end of `segment`.
    fn push_front(&mut self, i: u32, segment: u8) {
        let w = self.weight_of(i);
        let Some(head) = self.list_mut(segment).map(|l| l.head) else { return };
        let Some(s) = self.slot_mut(i) else { return };
        s.segment = segment;
        s.prev = NIL;
        s.next = head;
        match head {
            NIL => self.list_mut(segment).into_iter().for_each(|l| l.tail = i),
            h => self.slot_mut(h).into_iter().for_each(|s| s.prev = i),
        }
        self.list_mut(segment).into_iter().for_each(|l| {
            l.head = i;
            l.len = l.len.saturating_add(1);
            l.weight = l.weight.saturating_add(w);
        });
    }

    /// Links unlinked slot `i` at the oldest end of `segment` (next in line for eviction).
    fn push_back(&mut self, i: u32, segment: u8) {
        let w = self.weight_of(i);
        let Some(tail) = self.list_mut(segment).map(|l| l.tail) else { return };
        let Some(s) = self.slot_mut(i) else { return };
        s.segment = segment;
        s.prev = tail;
        s.next = NIL;
        match tail {
            NIL => self.list_mut(segment).into_iter().for_each(|l| l.head = i),
            t => self.slot_mut(t).into_iter().for_each(|s| s.next = i),
        }
        self.list_mut(segment).into_iter().for_each(|l| {
            l.tail = i;
            l.len = l.len.saturating_add(1);
            l.weight = l.weight.saturating_add(w);
        });
    }

    /// Makes slot `i` protected's most recent, demoting protected's least recently used
    /// records to probation's oldest end if that takes protected over its cap.
    fn protect(&mut self, i: u32) {
        self.unlink_lru(i);
        self.push_front(i, PROTECTED);
        self.enforce_protected_cap();
    }

    /// Demotes protected's least recently used records to probation's oldest end until
    /// protected weighs no more than its cap (one record at most without data).
    fn enforce_protected_cap(&mut self) {
        for _ in 0..self.slots.len() {
            if self.header.lists[PROTECTED as usize].weight <= self.protected_cap() {
                return;
            }
            let t = self.tail(PROTECTED);
            if t == NIL {
                return;
            }
            self.unlink_lru(t);
            self.push_back(t, PROBATION);
        }
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

    /// Forgets session `i`: its data, its place in the subject index, its slot.
    fn release(&mut self, i: u32) {
        if matches!(self.cached, Some((_, c)) if c == i) {
            self.cached = None;
        }
        if self.slots.get(i as usize).is_none_or(|s| !is_session(s.segment)) {
            return;
        }
        self.drop_data(i);
        self.unlink_chain(i);
        self.unlink_lru(i);
        self.free_slot(i);
    }

    /// Puts slot `i`, unlinked from everything, on the free list.
    fn free_slot(&mut self, i: u32) {
        let free = self.header.free;
        let Some(s) = self.slot_mut(i) else { return };
        s.segment = FREE;
        s.chain = free;
        s.prev = NIL;
        s.next = NIL;
        s.chunks = 0;
        s.data = NIL;
        self.header.free = i;
    }

    /// Frees a chain of chunks (bounded, and stopping at anything but a chunk).
    fn free_chunks(&mut self, first: u32) {
        let mut c = first;
        for _ in 0..self.slots.len() {
            match self.slots.get(c as usize) {
                Some(s) if s.segment == DATA => {
                    let next = s.chain;
                    self.free_slot(c);
                    c = next;
                }
                _ => return,
            }
        }
    }

    /// Session `i`'s first chunk (`NIL`: no data).
    fn first_chunk(&self, i: u32) -> u32 {
        match self.slots.get(i as usize) {
            Some(s) if is_session(s.segment) && s.chunks > 0 => s.data,
            _ => NIL,
        }
    }

    /// Subject link `n` of session `i` (`NIL` without data).
    fn subject_link(&self, i: u32, n: usize) -> u32 {
        self.slots.get(self.first_chunk(i) as usize).map_or(NIL, |c| link(c, n))
    }

    fn set_subject_link(&mut self, i: u32, n: usize, to: u32) {
        let c = self.first_chunk(i);
        if let Some(chunk) = self.slot_mut(c) {
            set_link(chunk, n, to);
        }
    }

    /// Takes session `i` out of its subject's list, freeing the entry if the list empties.
    fn unlink_subject(&mut self, i: u32) {
        let subject = self.subject_link(i, LINK_SUBJECT);
        if subject == NIL {
            return;
        }
        let prev = self.subject_link(i, LINK_PREV);
        let next = self.subject_link(i, LINK_NEXT);
        match prev {
            NIL => {
                if let Some(e) = self.slot_mut(subject).filter(|e| e.segment == SUBJECT) {
                    e.next = next;
                }
            }
            p => self.set_subject_link(p, LINK_NEXT, next),
        }
        if next != NIL {
            self.set_subject_link(next, LINK_PREV, prev);
        }
        for n in [LINK_SUBJECT, LINK_PREV, LINK_NEXT] {
            self.set_subject_link(i, n, NIL);
        }
        if self.slots.get(subject as usize).is_some_and(|e| e.segment == SUBJECT && e.next == NIL) {
            self.unlink_chain(subject);
            self.free_slot(subject);
            self.header.subjects = self.header.subjects.saturating_sub(1);
        }
    }

    /// Makes session `i` (with data, out of any list) the first under subject entry `e`.
    fn link_subject(&mut self, i: u32, e: u32) {
        let Some(head) = self.slots.get(e as usize).map(|e| e.next) else { return };
        self.set_subject_link(i, LINK_SUBJECT, e);
        self.set_subject_link(i, LINK_PREV, NIL);
        self.set_subject_link(i, LINK_NEXT, head);
        if head != NIL {
            self.set_subject_link(head, LINK_PREV, i);
        }
        if let Some(entry) = self.slot_mut(e) {
            entry.next = i;
        }
    }

    /// Makes free slot `e` (taken off the free list) the entry of `subject`.
    fn new_subject(&mut self, e: u32, subject: &[u8; 16]) {
        let b = self.bucket_of(&StoreKey(*subject));
        let Some(&head) = self.buckets.get(b) else { return };
        let Some(entry) = self.slot_mut(e) else { return };
        *entry = Slot {
            key: *subject,
            chain: head,
            prev: NIL,
            next: NIL,
            segment: SUBJECT,
            data: NIL,
            ..Slot::default()
        };
        if let Some(first) = self.buckets.get_mut(b) {
            *first = e;
        }
        self.header.subjects = self.header.subjects.saturating_add(1);
    }

    /// Frees session `i`'s data and takes it out of the subject index.
    fn drop_data(&mut self, i: u32) {
        let first = self.first_chunk(i);
        if first == NIL {
            return;
        }
        self.unlink_subject(i);
        self.set_chunks(i, NIL, 0);
        self.free_chunks(first);
    }

    /// Gives session `i` the chunk chain `first` of `chunks` chunks, keeping its segment's
    /// weight.
    fn set_chunks(&mut self, i: u32, first: u32, chunks: u16) {
        let Some(s) = self.slot_mut(i) else { return };
        let (old, segment) = (s.chunks, s.segment);
        s.chunks = chunks;
        s.data = if chunks == 0 { NIL } else { first };
        if let Some(l) = self.list_mut(segment).filter(|_| is_session(segment)) {
            l.weight = l.weight.saturating_sub(old.into()).saturating_add(chunks.into());
        }
    }

    fn tail(&self, segment: u8) -> u32 {
        self.header.lists.get(segment as usize).map_or(NIL, |l| l.tail)
    }

    fn expire_some(&mut self, now: u64) {
        self.expire_some_sparing(now, NIL);
    }

    /// [`Self::expire_some`], never reclaiming session `spare`.
    fn expire_some_sparing(&mut self, now: u64, spare: u32) {
        for segment in [PROBATION, PROTECTED] {
            for _ in 0..EXPIRE_PER_INSERT {
                let t = self.tail(segment);
                match self.slots.get(t as usize) {
                    Some(s) if u64::from(s.expires) <= now && t != spare => self.release(t),
                    _ => break,
                }
            }
        }
    }

    /// A free slot, evicting the least recently used record (probation first) if needed.
    fn take_slot(&mut self, now: u64) -> Option<u32> {
        self.take_slot_sparing(now, NIL)
    }

    /// [`Self::take_slot`], never evicting session `spare` (the one whose data is written).
    fn take_slot_sparing(&mut self, now: u64, spare: u32) -> Option<u32> {
        if self.header.free == NIL {
            let victim = [PROBATION, PROTECTED]
                .iter()
                .map(|&s| match self.tail(s) {
                    t if t == spare && t != NIL => {
                        self.slots.get(t as usize).map_or(NIL, |s| s.prev)
                    }
                    t => t,
                })
                .find(|&t| t != NIL)?;
            let idle = now.saturating_sub(self.slots.get(victim as usize)?.last_seen.into());
            self.release(victim);
            let h = &mut *self.header;
            h.evictions_total = h.evictions_total.saturating_add(1);
            if h.unreported == 0 {
                h.unreported_since = now;
            }
            h.unreported = h.unreported.saturating_add(1);
            h.unreported_min_idle = h.unreported_min_idle.min(idle);
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
        s.version = rec.hashes.version();
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
            hashes: BindingHashes::from_version(s.version).unwrap_or(BindingHashes::Legacy),
        })
    }

    /// Copies every record into `copy` in one sequential pass, for the state file: cheap
    /// enough to run under the zone's lock (no pointer chasing; nothing allocated if
    /// `copy` has room, see [`TableCopy::make_room`]). The LRU order is read from the copy
    /// afterwards, without the lock ([`TableCopy::live_entries`]).
    pub fn copy_into(&self, copy: &mut TableCopy) {
        copy.header = *self.header;
        copy.slots.clear();
        let used = self.slots.iter().enumerate().filter(|(_, s)| s.segment != FREE);
        copy.slots.extend(used.map(|(i, s)| (i as u32, *s)));
    }

    /// The records alive at `now`, in [`TableCopy::live_entries`] order.
    pub fn live_entries(&self, now: u64) -> Vec<Entry> {
        let mut copy = TableCopy::default();
        self.copy_into(&mut copy);
        let mut out = Vec::new();
        copy.live_entries(now, &mut out);
        out
    }

    /// Checks the table's structure: both LRU lists (links, ends, lengths, weights, segment
    /// tags), each session's data chain (chunks tagged, counted, used bytes in range), the
    /// free list, the bucket chains (every record and subject entry in its key's bucket,
    /// once), each subject's list (non-empty, links both ways, every member pointing back,
    /// every session with a subject in its list), the protected cap, and that no slot is in
    /// two places. For tests and fuzzing: it walks the whole table.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.slots.len();
        // Where each slot was found: 0 nowhere yet, else its segment + 1.
        let mut seen = vec![0u8; n];
        // Sessions whose first chunk names a subject entry.
        let mut with_subject = 0usize;
        for segment in [PROBATION, PROTECTED] {
            let list = self.header.lists[segment as usize];
            let (mut i, mut prev, mut len, mut weight) = (list.head, NIL, 0u32, 0u32);
            while i != NIL {
                let s = self
                    .slots
                    .get(i as usize)
                    .ok_or_else(|| format!("segment {segment}: bad index {i}"))?;
                if seen[i as usize] != 0 {
                    return Err(format!("slot {i} twice in the lists (segment {segment})"));
                }
                seen[i as usize] = segment + 1;
                if s.segment != segment {
                    return Err(format!("slot {i} in list {segment} tagged {}", s.segment));
                }
                if s.prev != prev {
                    return Err(format!("slot {i}: prev {} instead of {prev}", s.prev));
                }
                let mut c = s.data;
                for k in 0..s.chunks {
                    let chunk = self
                        .slots
                        .get(c as usize)
                        .ok_or_else(|| format!("slot {i}: chunk {k} bad index {c}"))?;
                    if seen[c as usize] != 0 || chunk.segment != DATA {
                        return Err(format!(
                            "slot {i}: chunk {k} ({c}) tagged {} or seen before",
                            chunk.segment
                        ));
                    }
                    seen[c as usize] = DATA + 1;
                    let used = usize::from(chunk.version);
                    if used > CHUNK_BYTES || (k == 0 && used < LINKS_BYTES) {
                        return Err(format!("slot {i}: chunk {k} uses {used} bytes"));
                    }
                    if k + 1 < s.chunks && used != CHUNK_BYTES {
                        return Err(format!("slot {i}: chunk {k} not full but not last"));
                    }
                    if k == 0 && link(chunk, LINK_SUBJECT) != NIL {
                        with_subject += 1;
                    }
                    c = chunk.chain;
                }
                if s.chunks > 0 && c != NIL {
                    return Err(format!("slot {i}: data chain longer than {} chunks", s.chunks));
                }
                len += 1;
                weight += 1 + u32::from(s.chunks);
                prev = i;
                i = s.next;
            }
            if list.tail != prev {
                return Err(format!("segment {segment}: tail {} instead of {prev}", list.tail));
            }
            if list.len != len {
                return Err(format!("segment {segment}: len {} but {len} linked", list.len));
            }
            if list.weight != weight {
                return Err(format!("segment {segment}: weight {} but {weight}", list.weight));
            }
        }
        let mut i = self.header.free;
        let mut free = 0usize;
        while i != NIL {
            let s =
                self.slots.get(i as usize).ok_or_else(|| format!("free list: bad index {i}"))?;
            if seen[i as usize] != 0 {
                return Err(format!("slot {i} free and in use, or twice free"));
            }
            if s.segment != FREE {
                return Err(format!("free slot {i} tagged {}", s.segment));
            }
            seen[i as usize] = FREE + 1;
            free += 1;
            i = s.chain;
        }
        let mut chained = vec![false; n];
        let (mut sessions, mut subjects, mut members) = (0usize, 0usize, 0usize);
        for (b, &first) in self.buckets.iter().enumerate() {
            let mut i = first;
            while i != NIL {
                let s = self
                    .slots
                    .get(i as usize)
                    .ok_or_else(|| format!("bucket {b}: bad index {i}"))?;
                if chained[i as usize] {
                    return Err(format!("slot {i} twice in the bucket chains"));
                }
                chained[i as usize] = true;
                if self.bucket_of(&StoreKey(s.key)) != b {
                    return Err(format!("slot {i} in bucket {b}, not its key's"));
                }
                match s.segment {
                    PROBATION | PROTECTED => sessions += 1,
                    SUBJECT => {
                        if seen[i as usize] != 0 {
                            return Err(format!("subject entry {i} also elsewhere"));
                        }
                        seen[i as usize] = SUBJECT + 1;
                        subjects += 1;
                        members += self.check_subject_list(i, &seen)?;
                    }
                    other => return Err(format!("slot {i} tagged {other} in bucket {b}")),
                }
                i = s.chain;
            }
        }
        if let Some(i) = seen.iter().position(|&w| w == 0) {
            return Err(format!("slot {i} is nowhere"));
        }
        if free + self.slots_in_use() != n {
            return Err(format!("{free} free + {} in use != {n} slots", self.slots_in_use()));
        }
        let protected = self.header.lists[PROTECTED as usize].weight;
        if protected > self.protected_cap() {
            return Err(format!("{protected} protected > cap {}", self.protected_cap()));
        }
        if sessions != self.len() {
            return Err(format!("{sessions} chained != {} stored", self.len()));
        }
        if subjects != self.header.subjects as usize {
            return Err(format!(
                "{subjects} subject entries, header says {}",
                self.header.subjects
            ));
        }
        if members != with_subject {
            return Err(format!("{members} in subject lists, {with_subject} name a subject"));
        }
        if let Some((key, i)) = self.cached {
            if self.slots.get(i as usize).is_none_or(|s| !is_session(s.segment) || s.key != key.0) {
                return Err(format!("cached slot {i} does not hold the cached key"));
            }
        }
        Ok(())
    }

    /// Checks subject entry `e`'s list of sessions (`seen` tags the slots by segment);
    /// returns its length.
    fn check_subject_list(&self, e: u32, seen: &[u8]) -> Result<usize, String> {
        let mut i = self.slots.get(e as usize).map_or(NIL, |s| s.next);
        if i == NIL {
            return Err(format!("subject entry {e} with no session"));
        }
        let (mut prev, mut count) = (NIL, 0usize);
        while i != NIL {
            if count >= self.slots.len() {
                return Err(format!("subject entry {e}: list loops"));
            }
            if !seen.get(i as usize).is_some_and(|&w| w == PROBATION + 1 || w == PROTECTED + 1) {
                return Err(format!("subject entry {e}: member {i} is no session"));
            }
            let [subject, p, next] =
                [LINK_SUBJECT, LINK_PREV, LINK_NEXT].map(|n| self.subject_link(i, n));
            if subject != e || p != prev {
                return Err(format!("subject entry {e}: member {i} links {subject}, prev {p}"));
            }
            count += 1;
            prev = i;
            i = next;
        }
        Ok(count)
    }
}

impl Table for SlotTable<'_> {
    fn get(&mut self, key: &StoreKey, _now: u64) -> Option<Record> {
        let i = self.find(key)?;
        self.protect(i);
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
        let i = self.take_slot(now).ok_or(StoreError::Unavailable)?;
        let b = self.bucket_of(key);
        let (Some(&head), Some(slot)) = (self.buckets.get(b), self.slots.get_mut(i as usize))
        else {
            return Err(StoreError::Unavailable);
        };
        slot.key = key.0;
        slot.chain = head;
        slot.chunks = 0;
        slot.data = NIL;
        if let Some(first) = self.buckets.get_mut(b) {
            *first = i;
        }
        self.write(i, rec, expires);
        if established {
            self.protect(i);
        } else {
            self.push_front(i, PROBATION);
        }
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

    fn read_data(&mut self, key: &StoreKey, out: &mut Vec<u8>) -> bool {
        let Some(i) = self.find(key) else { return false };
        let chunks = self.slots.get(i as usize).map_or(0, |s| s.chunks);
        // One allocation for the whole copy (the request path's buffer starts empty).
        out.reserve(usize::from(chunks) * CHUNK_BYTES);
        let mut c = self.first_chunk(i);
        for n in 0..chunks {
            let Some(chunk) = self.slots.get(c as usize).filter(|s| s.segment == DATA) else {
                break;
            };
            let (bytes, range) = chunk_payload(chunk, n == 0);
            out.extend_from_slice(&bytes[range]);
            c = chunk.chain;
        }
        true
    }

    fn write_data(
        &mut self,
        key: &StoreKey,
        data: &[u8],
        subject: Option<[u8; 16]>,
        now: u64,
    ) -> Result<(), DataError> {
        let i = self.find(key).ok_or(DataError::Gone)?;
        if data.is_empty() && subject.is_none() {
            self.drop_data(i);
            return Ok(());
        }
        let need = u16::try_from((LINKS_BYTES + data.len()).div_ceil(CHUNK_BYTES))
            .map_err(|_| DataError::NoRoom)?;
        let have = self.slots.get(i as usize).map_or(0, |s| s.chunks);
        if need > have {
            // Dead records go before live ones are evicted, as for an insertion.
            self.expire_some_sparing(now, i);
        }
        // The chunks it lacks first, on a chain of their own: on failure the session keeps
        // its data as it was.
        let mut extra = NIL;
        for _ in have..need {
            let Some(c) = self.take_slot_sparing(now, i) else {
                self.free_chunks(extra);
                return Err(DataError::NoRoom);
            };
            if let Some(chunk) = self.slot_mut(c) {
                *chunk = Slot { segment: DATA, chain: extra, ..Slot::default() };
            }
            extra = c;
        }
        let first = self.first_chunk(i);
        let old_subject = self.subject_link(i, LINK_SUBJECT);
        let same_subject = subject.is_some()
            && self.slots.get(old_subject as usize).map(|e| e.key) == subject
            && old_subject != NIL;
        // A slot for a new subject entry, taken before anything changes for the same reason.
        let mut entry = NIL;
        if let Some(sk) = subject.filter(|_| !same_subject) {
            entry = match self.find_subject(&sk) {
                Some(e) => e,
                None => match self.take_slot_sparing(now, i) {
                    Some(e) => {
                        self.new_subject(e, &sk);
                        e
                    }
                    None => {
                        self.free_chunks(extra);
                        return Err(DataError::NoRoom);
                    }
                },
            };
        }
        if !same_subject {
            self.unlink_subject(i);
        }
        // Evictions may have changed the links: read them now.
        let links = [LINK_SUBJECT, LINK_PREV, LINK_NEXT].map(|n| self.subject_link(i, n));
        let mut stream = links.iter().flat_map(|l| l.to_le_bytes()).chain(data.iter().copied());
        // The old chain, then the extra one.
        let (mut c, mut last) = (if first == NIL { extra } else { first }, NIL);
        for n in 0..need {
            if n == have && have > 0 {
                if let Some(l) = self.slot_mut(last) {
                    l.chain = extra;
                }
                c = extra;
            }
            let mut bytes = [0u8; CHUNK_BYTES];
            let mut used = 0u8;
            for (b, v) in bytes.iter_mut().zip(stream.by_ref()) {
                *b = v;
                used += 1;
            }
            let Some(chunk) = self.slot_mut(c) else { break };
            set_chunk_bytes(chunk, &bytes);
            chunk.version = used;
            last = c;
            c = chunk.chain;
        }
        // What the old chain had beyond the new data.
        if let Some(l) = self.slot_mut(last) {
            l.chain = NIL;
        }
        if need < have {
            self.free_chunks(c);
        }
        self.set_chunks(i, if first == NIL { extra } else { first }, need);
        if entry != NIL {
            self.link_subject(i, entry);
        }
        self.enforce_protected_cap();
        Ok(())
    }

    fn move_data(&mut self, from: &StoreKey, to: &StoreKey) {
        let (Some(f), Some(t)) = (self.find(from), self.find(to)) else { return };
        if f == t {
            return;
        }
        self.drop_data(t);
        let first = self.first_chunk(f);
        if first == NIL {
            return;
        }
        let chunks = self.slots.get(f as usize).map_or(0, |s| s.chunks);
        let [subject, prev, next] =
            [LINK_SUBJECT, LINK_PREV, LINK_NEXT].map(|n| self.subject_link(f, n));
        self.set_chunks(f, NIL, 0);
        self.set_chunks(t, first, chunks);
        // `t` takes `f`'s place in the subject's list.
        if subject != NIL {
            match prev {
                NIL => {
                    if let Some(e) = self.slot_mut(subject) {
                        e.next = t;
                    }
                }
                p => self.set_subject_link(p, LINK_NEXT, t),
            }
            if next != NIL {
                self.set_subject_link(next, LINK_PREV, t);
            }
        }
        self.enforce_protected_cap();
    }

    fn remove_subject(&mut self, subject: &[u8; 16], keep: Option<&StoreKey>) -> usize {
        let Some(e) = self.find_subject(subject) else { return 0 };
        let keep = keep.and_then(|k| self.find(k)).unwrap_or(NIL);
        let mut i = self.slots.get(e as usize).map_or(NIL, |e| e.next);
        let mut removed = 0;
        for _ in 0..self.slots.len() {
            if i == NIL {
                break;
            }
            let next = self.subject_link(i, LINK_NEXT);
            if i != keep {
                self.release(i);
                removed += 1;
            }
            i = next;
        }
        removed
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cookie::SessionId;

    /// A table over owned memory, for tests here and in `state`.
    pub(crate) struct Owned {
        pub(crate) header: Header,
        buckets: Vec<u32>,
        slots: Vec<Slot>,
    }

    impl Owned {
        pub(crate) fn new(bytes: usize) -> Owned {
            let (b, s) = layout(bytes);
            let mut o = Owned {
                header: Header::default(),
                buckets: vec![0; b],
                slots: vec![Slot::default(); s],
            };
            o.table().init();
            o
        }
        pub(crate) fn table(&mut self) -> SlotTable<'_> {
            SlotTable::new(&mut self.header, &mut self.buckets, &mut self.slots)
        }
    }

    fn rec(t: u64) -> Record {
        Record { created: t, issued: t, last_seen: t, ip: 1, user_agent: 2, ..Record::default() }
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
        let cap = t.protected_cap();
        for n in 0..cap {
            t.insert(&key(n), &rec(0), 10_000, true, 0).unwrap();
        }
        t.get(&key(0), 0).unwrap(); // 0 is now the most recent; 1 the oldest
                                    // One more protected record: protected's oldest (1) is demoted, next to go.
        t.insert(&key(9998), &rec(0), 10_000, true, 0).unwrap();
        t.check_invariants().unwrap();
        for n in 9999..9999 + t.capacity() as u32 - cap {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
        }
        t.check_invariants().unwrap();
        assert!(t.get(&key(1), 0).is_none(), "demoted record outlived the newcomers");
        assert!(t.get(&key(0), 0).is_some());
        assert!(t.get(&key(2), 0).is_some());
    }

    /// The attack of issue 8: clients that return each cookie once. Before the protected
    /// segment was capped they filled it with the whole table, and each newcomer was
    /// evicted by the next one.
    #[test]
    fn newcomers_survive_clients_that_return_each_cookie_once() {
        let mut o = Owned::new(32 * 1024);
        let mut t = o.table();
        let cap = t.capacity() as u32;
        let guaranteed = cap - t.protected_cap() - 1;
        assert!(guaranteed + 1 >= cap / 5, "{guaranteed} of {cap}");
        for n in 0..2 * cap {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
            t.get(&key(n), 0).unwrap();
        }
        t.check_invariants().unwrap();
        assert_eq!(t.header.lists[PROTECTED as usize].len, t.protected_cap());
        let a = key(1_000_000);
        t.insert(&a, &rec(0), 10_000, false, 0).unwrap();
        // The attacker goes on: a new record, returned once, for every newer arrival.
        for n in 0..guaranteed {
            t.insert(&key(2 * cap + n), &rec(0), 10_000, false, 0).unwrap();
            t.get(&key(2 * cap + n), 0).unwrap();
        }
        t.check_invariants().unwrap();
        assert!(t.get(&a, 0).is_some(), "newcomer evicted within {guaranteed} insertions");
    }

    /// The bound of `protected_cap`'s comment, against an adversary that does anything:
    /// promote any record (older or newer than X), insert new or established records,
    /// remove records. X is never evicted before `capacity - cap - 1` newer insertions.
    #[test]
    fn newcomer_survival_bound_holds_against_random_adversaries() {
        use rand::{Rng, SeedableRng};
        // Under Miri each seed takes about 6 s; a few still exercise every operation.
        let seeds = if cfg!(miri) { 4 } else { 40 };
        for seed in 0..seeds {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut o = Owned::new(4 * 1024 + (seed as usize % 7) * 512);
            let mut t = o.table();
            let cap = t.capacity() as u32;
            let guaranteed = cap - t.protected_cap() - 1;
            // A random start: some records in use, some not, some gone.
            let mut next = 0u32;
            for _ in 0..rng.gen_range(0..3 * cap) {
                t.insert(&key(next), &rec(0), 10_000, rng.gen_bool(0.2), 0).unwrap();
                if rng.gen_bool(0.6) {
                    t.get(&key(rng.gen_range(0..=next)), 0);
                }
                if rng.gen_bool(0.05) {
                    t.remove(&key(rng.gen_range(0..=next)));
                }
                next += 1;
            }
            let x = key(u32::MAX - 1);
            t.insert(&x, &rec(0), 10_000, false, 0).unwrap();
            let mut insertions = 0;
            while insertions < guaranteed {
                match rng.gen_range(0..10) {
                    0..=3 => {
                        t.get(&key(rng.gen_range(0..=next)), 0);
                    }
                    4 => t.remove(&key(rng.gen_range(0..=next))),
                    _ => {
                        t.insert(&key(next), &rec(0), 10_000, rng.gen_bool(0.3), 0).unwrap();
                        next += 1;
                        insertions += 1;
                    }
                }
                // `find`, not `get`: looking X up must not promote it.
                assert!(t.find(&x).is_some(), "seed {seed}: X evicted after {insertions}");
                t.cached = None;
            }
            t.check_invariants().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }

    #[test]
    fn random_operations_keep_the_invariants() {
        use rand::{Rng, SeedableRng};
        // A full walk of the table per step: 60,000 of them take over an hour under Miri.
        let (seeds, steps) = if cfg!(miri) { (3, 400) } else { (20, 3000) };
        for seed in 0..seeds {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut o = Owned::new(2 * 1024 + seed as usize * 300);
            let mut t = o.table();
            let mut now = 1000u64;
            for step in 0..steps {
                let k = key(rng.gen_range(0..300));
                match rng.gen_range(0..8) {
                    0..=2 => {
                        let expires = now + rng.gen_range(0..20);
                        let _ = t.insert(&k, &rec(now), expires, rng.gen_bool(0.3), now);
                    }
                    3 | 4 => {
                        t.get(&k, now);
                    }
                    5 => t.update(&k, &rec(now), now + 10),
                    6 => t.remove(&k),
                    _ => now += rng.gen_range(0..5),
                }
                t.check_invariants().unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
            }
        }
    }

    /// As above with data and subjects; each session's data is checked against a model
    /// (evictions and expiries only ever take whole sessions).
    #[test]
    fn random_operations_with_data_keep_the_invariants() {
        use rand::{Rng, SeedableRng};
        use std::collections::HashMap;
        let (seeds, steps) = if cfg!(miri) { (2, 300) } else { (20, 3000) };
        for seed in 0..seeds {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut o = Owned::new(2 * 1024 + seed as usize * 300);
            let mut t = o.table();
            let mut now = 1000u64;
            let mut model: HashMap<StoreKey, (Vec<u8>, Option<[u8; 16]>)> = HashMap::new();
            for step in 0..steps {
                let n = rng.gen_range(0..100);
                let k = key(n);
                let subject = |rng: &mut rand::rngs::StdRng| {
                    rng.gen_bool(0.7).then(|| [rng.gen_range(0..6u8); 16])
                };
                match rng.gen_range(0..12) {
                    0..=2 => {
                        let expires = now + rng.gen_range(0..20);
                        let _ = t.insert(&k, &rec(now), expires, rng.gen_bool(0.3), now);
                    }
                    3 => {
                        t.get(&k, now);
                    }
                    4 => t.remove(&k),
                    5..=7 => {
                        let len = [0, 1, 40, 46, 100, 300, 2000][rng.gen_range(0..7)];
                        let d = bytes(len, step as u8);
                        let s = subject(&mut rng);
                        match t.write_data(&k, &d, s, now) {
                            Ok(()) => {
                                model.insert(k, (d, s));
                            }
                            Err(DataError::Gone) => assert!(t.find(&k).is_none()),
                            Err(DataError::NoRoom) => assert!(len > 1000),
                        }
                    }
                    8 => {
                        let to = key(rng.gen_range(0..100));
                        let moved = t.find(&k).is_some() && t.find(&to).is_some() && k != to;
                        t.move_data(&k, &to);
                        if moved {
                            let d = model.remove(&k).unwrap_or_default();
                            model.insert(to, d);
                        }
                    }
                    9 => {
                        let s = [rng.gen_range(0..6u8); 16];
                        let keep = rng.gen_bool(0.5).then_some(k);
                        let expected = model
                            .iter()
                            .filter(|(m, (_, ms))| *ms == Some(s) && Some(**m) != keep)
                            .count();
                        assert_eq!(t.remove_subject(&s, keep.as_ref()), expected);
                        for (m, (_, ms)) in &model {
                            if *ms == Some(s) && Some(*m) != keep {
                                assert!(t.find(m).is_none(), "seed {seed} step {step}");
                            }
                        }
                    }
                    _ => now += rng.gen_range(0..5),
                }
                t.cached = None;
                model.retain(|m, _| t.find(m).is_some());
                t.cached = None;
                t.check_invariants().unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                for (m, (d, _)) in &model {
                    let mut out = Vec::new();
                    assert!(t.read_data(m, &mut out));
                    assert_eq!(&out, d, "seed {seed} step {step}");
                }
                t.cached = None;
            }
        }
    }

    #[test]
    fn evictions_are_counted_and_reported_once_a_minute() {
        let mut o = Owned::new(8 * 1024);
        let mut t = o.table();
        let cap = t.capacity() as u32;
        assert_eq!(t.eviction_report(1000), None);
        for n in 0..cap {
            t.insert(&key(n), &rec(1000 + u64::from(n)), 100_000, false, 1000 + u64::from(n))
                .unwrap();
        }
        assert_eq!((t.evictions_total(), t.eviction_report(2000)), (0, None));
        // Two evictions at 3000: records last seen at 1000 and 1001.
        t.insert(&key(cap), &rec(3000), 100_000, false, 3000).unwrap();
        t.insert(&key(cap + 1), &rec(3000), 100_000, false, 3000).unwrap();
        assert_eq!(t.evictions_total(), 2);
        // The first report comes at once.
        let r = t.eviction_report(3000).unwrap();
        assert_eq!(r, EvictionReport { since: 3000, evictions: 2, min_idle_age: 1999 });
        assert_eq!(t.eviction_report(3000), None, "reported already");
        t.insert(&key(cap + 2), &rec(3010), 100_000, false, 3010).unwrap();
        assert_eq!(t.eviction_report(3059), None, "within the minute");
        let r = t.eviction_report(3060).unwrap();
        assert_eq!(r, EvictionReport { since: 3010, evictions: 1, min_idle_age: 2010 - 2 });
        assert_eq!(t.eviction_report(4000), None, "nothing new");
        assert_eq!(t.evictions_total(), 3);
        // Expiry and removal are not evictions.
        t.remove(&key(cap));
        t.insert(&key(cap + 3), &rec(4000), 100_000, false, 4000).unwrap();
        assert_eq!(t.evictions_total(), 3);
    }

    #[test]
    fn corrupted_header_degrades_without_panics() {
        let mut o = Owned::new(8 * 1024);
        {
            let mut t = o.table();
            for n in 0..50 {
                t.insert(&key(n), &rec(0), 10_000, n % 2 == 0, 0).unwrap();
            }
        }
        o.header.lists[PROBATION as usize].len = 0;
        o.header.lists[PROTECTED as usize].len = u32::MAX;
        o.header.lists[PROBATION as usize].tail = 12_345;
        o.buckets[0] = 99_999;
        let mut t = o.table();
        assert!(t.check_invariants().is_err());
        for n in 0..500 {
            let _ = t.insert(&key(n), &rec(0), 10_000, n % 3 == 0, 0);
            t.get(&key(n / 2), 0);
            t.remove(&key(n / 3));
        }
        let _ = t.len();
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
        let alice = Client::hashed(1, 2);
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
    fn slots_keep_the_record_version() {
        let mut o = Owned::new(8 * 1024);
        let mut t = o.table();
        let legacy = Record { hashes: BindingHashes::Legacy, ..rec(5) };
        t.insert(&key(1), &legacy, 10_000, false, 0).unwrap();
        t.insert(&key(2), &rec(5), 10_000, false, 0).unwrap();
        assert_eq!(t.get(&key(1), 0), Some(legacy));
        assert_eq!(t.get(&key(2), 0).unwrap().hashes, BindingHashes::Keyed);
        // A slot written before versions existed (pad byte 0) holds legacy hashes.
        let i = t.find(&key(2)).unwrap();
        t.slots[i as usize].version = 0;
        assert_eq!(t.get(&key(2), 0).unwrap().hashes, BindingHashes::Legacy);
    }

    #[test]
    fn corrupted_count_does_not_overflow() {
        // Found by fuzz/table_corrupt: a zone whose segment lengths read u32::MAX.
        let mut o = Owned::new(8 * 1024);
        o.header.lists[PROBATION as usize].len = u32::MAX;
        o.header.lists[PROTECTED as usize].len = u32::MAX;
        let mut t = o.table();
        t.insert(&key(1), &rec(0), 100, false, 0).unwrap();
        assert_eq!(t.len(), u32::MAX as usize);
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| seed.wrapping_add(i as u8).wrapping_mul(31)).collect()
    }

    fn read(t: &mut SlotTable<'_>, k: &StoreKey) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        t.read_data(k, &mut out).then_some(out)
    }

    const ALICE: [u8; 16] = [0xa1; 16];
    const BOB: [u8; 16] = [0xb0; 16];

    #[test]
    fn data_read_write_move_remove() {
        // Under Miri a smaller table and largest value: each walk of the table costs there.
        let (zone, largest) = if cfg!(miri) { (16 * 1024, 4000) } else { (256 * 1024, 64 * 1024) };
        let mut o = Owned::new(zone);
        let mut t = o.table();
        for n in 0..10 {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
        }
        assert_eq!(read(&mut t, &key(1)), Some(vec![]));
        assert_eq!(read(&mut t, &key(99)), None);
        assert_eq!(t.write_data(&key(99), b"x", None, 0), Err(DataError::Gone));
        // Sizes around the chunk boundaries, growing and shrinking in place.
        for len in [1, 45, 46, 47, 104, 105, 1000, 3, 0, largest, 7] {
            let d = bytes(len, len as u8);
            t.write_data(&key(1), &d, None, 0).unwrap();
            assert_eq!(read(&mut t, &key(1)), Some(d), "{len}");
            t.check_invariants().unwrap_or_else(|e| panic!("{len}: {e}"));
        }
        assert_eq!(t.slots_in_use(), 10 + 1);
        t.write_data(&key(1), &[], None, 0).unwrap();
        assert_eq!(t.slots_in_use(), 10);
        // A subject with no other data still takes a chunk (its links) and an entry.
        t.write_data(&key(2), &[], Some(ALICE), 0).unwrap();
        assert_eq!(read(&mut t, &key(2)), Some(vec![]));
        assert_eq!(t.slots_in_use(), 10 + 2);
        t.write_data(&key(3), b"three", Some(ALICE), 0).unwrap();
        t.write_data(&key(4), b"four", Some(BOB), 0).unwrap();
        t.check_invariants().unwrap();
        // Move: the successor takes the data and the old ID's place under the subject.
        t.write_data(&key(5), b"overwritten", None, 0).unwrap();
        t.move_data(&key(3), &key(5));
        assert_eq!(read(&mut t, &key(3)), Some(vec![]));
        assert_eq!(read(&mut t, &key(5)), Some(b"three".to_vec()));
        t.check_invariants().unwrap();
        // Moving to or from an unknown key changes nothing.
        t.move_data(&key(5), &key(99));
        t.move_data(&key(99), &key(5));
        assert_eq!(read(&mut t, &key(5)), Some(b"three".to_vec()));
        // A session changes subject.
        t.write_data(&key(4), b"four", Some(ALICE), 0).unwrap();
        t.check_invariants().unwrap();
        assert_eq!(t.header.subjects, 1, "Bob's entry went with his last session");
        // Remove frees the data and unlinks the subject entry.
        let before = t.slots_in_use();
        t.remove(&key(5));
        assert_eq!(t.slots_in_use(), before - 2);
        t.check_invariants().unwrap();
        assert_eq!(t.remove_subject(&ALICE, None), 2);
        assert_eq!(t.header.subjects, 0);
        assert_eq!(t.slots_in_use(), t.len());
        assert_eq!(t.len(), 10 - 3);
        t.check_invariants().unwrap();
    }

    #[test]
    fn remove_subject_keeps_the_one_asked() {
        let mut o = Owned::new(64 * 1024);
        let mut t = o.table();
        for n in 0..20 {
            t.insert(&key(n), &rec(0), 10_000, n % 2 == 0, 0).unwrap();
            let subject = if n % 3 == 0 { BOB } else { ALICE };
            t.write_data(&key(n), &bytes(n as usize * 10, 1), Some(subject), 0).unwrap();
        }
        t.check_invariants().unwrap();
        let alice: Vec<u32> = (0..20).filter(|n| n % 3 != 0).collect();
        assert_eq!(t.remove_subject(&ALICE, Some(&key(7))), alice.len() - 1);
        t.check_invariants().unwrap();
        for n in 0..20 {
            assert_eq!(t.get(&key(n), 0).is_some(), n % 3 == 0 || n == 7, "{n}");
        }
        // The kept session is still indexed: removing the subject again takes it.
        assert_eq!(t.remove_subject(&ALICE, Some(&key(99))), 1);
        assert!(t.get(&key(7), 0).is_none());
        assert_eq!(t.remove_subject(&ALICE, None), 0);
        assert_eq!(t.remove_subject(&BOB, None), 7);
        assert!(t.is_empty());
        assert_eq!(t.slots_in_use(), 0);
        t.check_invariants().unwrap();
    }

    #[test]
    fn evicting_a_session_frees_its_chunks() {
        let mut o = Owned::new(16 * 1024);
        let mut t = o.table();
        let cap = t.capacity();
        t.insert(&key(0), &rec(0), 10_000, false, 0).unwrap();
        t.write_data(&key(0), &bytes(1000, 0), Some(ALICE), 0).unwrap();
        let weight = 1 + chunks_for(1000);
        assert_eq!(t.slots_in_use(), weight + 1);
        // Fill the rest; the first insertion that finds no room evicts key 0 and with it
        // its chunks and its subject entry.
        for n in 1..=(cap - weight - 1) as u32 {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
        }
        assert_eq!(t.evictions_total(), 0);
        t.insert(&key(100_000), &rec(0), 10_000, false, 0).unwrap();
        assert_eq!(t.evictions_total(), 1);
        assert!(t.get(&key(0), 0).is_none());
        assert_eq!(t.header.subjects, 0);
        assert_eq!(t.slots_in_use(), t.len());
        assert_eq!(t.capacity() - t.len(), weight, "the chunks and entry are free again");
        t.check_invariants().unwrap();
    }

    #[test]
    fn a_table_full_of_data_still_takes_new_sessions() {
        let mut o = Owned::new(if cfg!(miri) { 8 * 1024 } else { 32 * 1024 });
        let mut t = o.table();
        let cap = t.capacity() as u32;
        for n in 0..cap {
            t.insert(&key(n), &rec(0), 10_000, n % 2 == 0, 0).unwrap();
            t.get(&key(n), 0);
            let _ = t.write_data(&key(n), &bytes(300, n as u8), Some([n as u8 % 5; 16]), 0);
        }
        t.check_invariants().unwrap();
        assert!(t.slots_in_use() > cap as usize * 9 / 10);
        // New clients, more than the table holds: never an error.
        let every = if cfg!(miri) { 256 } else { 16 };
        for n in 0..3 * cap {
            t.insert(&key(1_000_000 + n), &rec(0), 10_000, false, 0).unwrap();
            if n % every == 0 {
                t.check_invariants().unwrap();
            }
        }
        assert!(t.get(&key(1_000_000 + 3 * cap - 1), 0).is_some());
        // And data can still be written for the newest.
        t.write_data(&key(1_000_000 + 3 * cap - 1), &bytes(200, 3), Some(ALICE), 0).unwrap();
        t.check_invariants().unwrap();
    }

    #[test]
    fn data_larger_than_the_room_is_refused_and_spares_its_session() {
        let mut o = Owned::new(8 * 1024);
        let mut t = o.table();
        let cap = t.capacity();
        // The session written is the oldest in probation: next in line for eviction.
        t.insert(&key(0), &rec(0), 10_000, false, 0).unwrap();
        t.write_data(&key(0), b"before", Some(ALICE), 0).unwrap();
        for n in 1..10 {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
        }
        let too_big = bytes(cap * CHUNK_BYTES, 9);
        assert_eq!(t.write_data(&key(0), &too_big, Some(BOB), 0), Err(DataError::NoRoom));
        t.check_invariants().unwrap();
        // It evicted the others trying, never the session written, whose data is unchanged.
        assert_eq!(read(&mut t, &key(0)), Some(b"before".to_vec()));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove_subject(&BOB, None), 0);
        // Data that fits the whole table but the session's own slot and its subject entry.
        let most = bytes((cap - 2) * CHUNK_BYTES - LINKS_BYTES, 4);
        t.write_data(&key(0), &most, Some(ALICE), 0).unwrap();
        assert_eq!(read(&mut t, &key(0)), Some(most));
        assert_eq!(t.slots_in_use(), cap);
        t.check_invariants().unwrap();
        // A new session still gets in, evicting the big one.
        t.insert(&key(1), &rec(0), 10_000, false, 0).unwrap();
        assert!(t.get(&key(0), 0).is_none());
        t.check_invariants().unwrap();
    }

    #[test]
    fn protected_weight_counts_data() {
        let mut o = Owned::new(16 * 1024);
        let mut t = o.table();
        let cap = t.protected_cap() as usize;
        for n in 0..cap as u32 {
            t.insert(&key(n), &rec(0), 10_000, true, 0).unwrap();
            t.write_data(&key(n), &bytes(100, 1), None, 0).unwrap();
        }
        t.check_invariants().unwrap();
        let protected = t.header.lists[PROTECTED as usize];
        assert!(protected.weight as usize <= cap);
        assert_eq!(protected.len as usize, cap / (1 + chunks_for(100)));
    }

    /// The zone bytes a session takes, with no data and with 100 bytes of data; run with
    /// `cargo test -p sessions-core table::tests::bytes_per_session -- --nocapture`.
    #[test]
    #[cfg_attr(miri, ignore = "fills a 10 MB table twice")]
    fn bytes_per_session() {
        let zone = 10 << 20;
        let (_, slots) = layout(zone);
        let bare = zone as f64 / slots as f64;
        // Sessions with 100 bytes of data, each under its own subject (the worst case:
        // one entry each), and under no subject.
        let mut o = Owned::new(zone);
        let mut t = o.table();
        let mut with_subject = 0u32;
        for n in 0.. {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
            let mut subject = [0u8; 16];
            subject[..4].copy_from_slice(&n.to_le_bytes());
            t.write_data(&key(n), &bytes(100, 1), Some(subject), 0).unwrap();
            if t.evictions_total() > 0 {
                with_subject = n;
                break;
            }
        }
        let mut o = Owned::new(zone);
        let mut t = o.table();
        let mut without_subject = 0u32;
        for n in 0.. {
            t.insert(&key(n), &rec(0), 10_000, false, 0).unwrap();
            t.write_data(&key(n), &bytes(100, 1), None, 0).unwrap();
            if t.evictions_total() > 0 {
                without_subject = n;
                break;
            }
        }
        println!(
            "10 MB zone: {slots} sessions without data ({bare:.1} B each); with 100 B of \
             data: {without_subject} sessions ({:.1} B each), {with_subject} when each has \
             its own subject ({:.1} B each)",
            zone as f64 / f64::from(without_subject),
            zone as f64 / f64::from(with_subject),
        );
        assert!(bare <= 72.0, "{bare}");
        assert!(without_subject as usize >= slots / 3);
    }

    #[test]
    fn times_beyond_2106_saturate() {
        let mut o = Owned::new(8 * 1024);
        let mut t = o.table();
        t.insert(&key(1), &rec(u64::MAX), u64::MAX, false, 0).unwrap();
        assert_eq!(t.get(&key(1), 0).unwrap().created, u64::from(u32::MAX));
    }
}
