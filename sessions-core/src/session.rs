//! The session state machine: timeouts, binding, renewal. Pure Rust; time is passed in,
//! so tests drive it with an invented clock.

use sha2::{Digest, Sha256};

use crate::cookie::{Incoming, SessionId, Signer, StoreKey, VerifiedBy};
use crate::data::{subject_key, Actions, Applied, CookieChange, Data, Destroy, Refused};

/// How long a renewed ID keeps answering with its successor (seconds), so that requests
/// already in flight with the old cookie do not fork the session.
pub const RENEWAL_GRACE: u64 = 10;

/// Timestamps this far ahead of our clock are tolerated (workers' cached clocks and
/// instances' clocks differ slightly); further ahead, the record counts as expired.
pub const FUTURE_TOLERANCE: u64 = 5;

/// The timeouts and checks of one `server`, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub idle: u64,
    pub rolling: u64,
    pub absolute: u64,
    pub check_ip: bool,
    pub check_user_agent: bool,
}

impl Policy {
    /// `last_seen` is written at most this often, to spare the store.
    pub fn touch_interval(&self) -> u64 {
        (self.idle / 30).max(1)
    }
}

/// The random key of the binding hashes, the same on every worker and instance that share a
/// store (kept in the zone, or in Redis). Never derived from a secret: a rotation must not
/// turn sessions into mismatches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BindingKey(pub [u8; 16]);

impl BindingKey {
    pub fn random() -> Self {
        let mut key = [0u8; 16];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut key[..]);
        BindingKey(key)
    }
}

impl core::fmt::Debug for BindingKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("BindingKey(..)")
    }
}

/// What a session is bound to: keyed hashes of the client address and User-Agent, and the
/// values themselves, for records written with the legacy unkeyed hashes.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub ip: u32,
    pub user_agent: u32,
    addr: &'a [u8],
    user_agent_raw: &'a [u8],
}

impl<'a> Client<'a> {
    pub fn new(key: &BindingKey, addr: &'a [u8], user_agent: &'a [u8]) -> Self {
        Client {
            ip: keyed_hash(key, b'i', addr),
            user_agent: keyed_hash(key, b'u', user_agent),
            addr,
            user_agent_raw: user_agent,
        }
    }

    /// A client known by its hashes only (tests): its legacy hashes are those of empty values.
    pub const fn hashed(ip: u32, user_agent: u32) -> Client<'static> {
        Client { ip, user_agent, addr: b"", user_agent_raw: b"" }
    }

    /// The (address, User-Agent) hashes to compare with a record's, as that record made them.
    fn hashes_for(&self, rec: &Record) -> (u32, u32) {
        match rec.hashes {
            BindingHashes::Keyed => (self.ip, self.user_agent),
            BindingHashes::Legacy => {
                (legacy_hash(b'i', self.addr), legacy_hash(b'u', self.user_agent_raw))
            }
        }
    }

    /// The record to write back: a legacy record whose both hashes are this client's is
    /// rewritten with keyed hashes (one whose bindings this client does not match, with a
    /// check turned off, stays legacy: its original binding is not ours to replace).
    pub fn rebind(&self, rec: &Record) -> Record {
        if rec.hashes == BindingHashes::Legacy && self.hashes_for(rec) == (rec.ip, rec.user_agent) {
            Record {
                ip: self.ip,
                user_agent: self.user_agent,
                hashes: BindingHashes::Keyed,
                ..*rec
            }
        } else {
            *rec
        }
    }
}

/// 32 bits suffice: a client whose address or User-Agent hashes differently is a
/// mismatch, which destroys the session, so a thief gets one guess, not 2^32. Keyed, so
/// that a hash read from the store does not give the address away (an IPv4 address space
/// is small enough to enumerate against an unkeyed hash). SipHash-1-3: fast on short inputs
/// and a PRF under its key.
fn keyed_hash(key: &BindingKey, domain: u8, value: &[u8]) -> u32 {
    use core::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_key(&key.0);
    h.write_u8(domain);
    h.write(value);
    h.finish() as u32
}

/// The hashes of records written before the binding key existed (record version 1).
fn legacy_hash(domain: u8, value: &[u8]) -> u32 {
    let digest = Sha256::new().chain_update([domain]).chain_update(value).finalize();
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The legacy (address, User-Agent) hashes, for tests that make version 1 records.
#[cfg(test)]
pub(crate) fn legacy_hashes(addr: &[u8], user_agent: &[u8]) -> (u32, u32) {
    (legacy_hash(b'i', addr), legacy_hash(b'u', user_agent))
}

/// How a record's binding hashes were made, which its version tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BindingHashes {
    /// Unkeyed truncations of SHA-256 (version 1, before the binding key).
    Legacy,
    /// SipHash-1-3 under the store's [`BindingKey`] (version 2).
    #[default]
    Keyed,
}

impl BindingHashes {
    pub fn version(self) -> u8 {
        match self {
            BindingHashes::Legacy => 1,
            BindingHashes::Keyed => 2,
        }
    }

    pub fn from_version(version: u8) -> Option<Self> {
        match version {
            1 => Some(BindingHashes::Legacy),
            2 => Some(BindingHashes::Keyed),
            _ => None,
        }
    }
}

/// One session ID's server-side record. `renewed_at` is 0 until the ID is renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// When the session began; carried over to successors (absolute timeout).
    pub created: u64,
    /// When this ID was issued (rolling timeout).
    pub issued: u64,
    pub last_seen: u64,
    pub renewed_at: u64,
    pub ip: u32,
    pub user_agent: u32,
    pub hashes: BindingHashes,
}

/// Bytes of a record on the wire (Redis value).
pub const RECORD_LEN: usize = 1 + 4 * 8 + 2 * 4;

impl Record {
    pub fn new(now: u64, client: &Client) -> Self {
        Record {
            created: now,
            issued: now,
            last_seen: now,
            renewed_at: 0,
            ip: client.ip,
            user_agent: client.user_agent,
            hashes: BindingHashes::Keyed,
        }
    }

    /// When the store may forget this record (seconds since the epoch).
    pub fn expires_at(&self, policy: &Policy) -> u64 {
        let mut t = self
            .last_seen
            .saturating_add(policy.idle)
            .min(self.created.saturating_add(policy.absolute));
        if self.renewed_at != 0 {
            t = t.min(self.renewed_at.saturating_add(RENEWAL_GRACE));
        }
        t
    }

    /// The record of the ID that replaces this one: same session, new ID age.
    pub fn successor(&self, now: u64) -> Self {
        Record { issued: now, last_seen: now, renewed_at: 0, ..*self }
    }

    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0] = self.hashes.version();
        let times = [self.created, self.issued, self.last_seen, self.renewed_at];
        for (i, t) in times.iter().enumerate() {
            out[1 + 8 * i..9 + 8 * i].copy_from_slice(&t.to_le_bytes());
        }
        out[33..37].copy_from_slice(&self.ip.to_le_bytes());
        out[37..41].copy_from_slice(&self.user_agent.to_le_bytes());
        out
    }

    /// Parses a stored record; anything else (foreign or corrupted value) is `None`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != RECORD_LEN {
            return None;
        }
        let hashes = BindingHashes::from_version(bytes[0])?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Some(Record {
            created: u64_at(1),
            issued: u64_at(9),
            last_seen: u64_at(17),
            renewed_at: u64_at(25),
            ip: u32_at(33),
            user_agent: u32_at(37),
            hashes,
        })
    }
}

/// What to do with a found record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Alive; write `last_seen = now` if `touch`.
    Valid { touch: bool },
    /// The ID passed the rolling timeout: make the successor now.
    Renew,
    /// Already renewed, still in its grace: answer with the successor.
    Successor,
    /// Idle or absolute timeout passed (or the record is from the future).
    Expired,
    /// IP or User-Agent changed: destroy.
    Mismatch,
    /// A renewed ID past its grace.
    Dead,
}

/// Checks in the order of the contract: absolute, idle, IP, User-Agent, then renewal.
pub fn decide(rec: &Record, now: u64, policy: &Policy, client: &Client) -> Verdict {
    let horizon = now.saturating_add(FUTURE_TOLERANCE);
    if rec.created > horizon || rec.last_seen > horizon || rec.issued > horizon {
        return Verdict::Expired;
    }
    if now.saturating_sub(rec.created) >= policy.absolute {
        return Verdict::Expired;
    }
    if rec.renewed_at != 0 && now.saturating_sub(rec.renewed_at) > RENEWAL_GRACE {
        return Verdict::Dead;
    }
    if now.saturating_sub(rec.last_seen) >= policy.idle {
        return Verdict::Expired;
    }
    if policy.check_ip || policy.check_user_agent {
        let (ip, user_agent) = client.hashes_for(rec);
        if policy.check_ip && rec.ip != ip {
            return Verdict::Mismatch;
        }
        if policy.check_user_agent && rec.user_agent != user_agent {
            return Verdict::Mismatch;
        }
    }
    if rec.renewed_at != 0 {
        return Verdict::Successor;
    }
    if now.saturating_sub(rec.issued) >= policy.rolling {
        return Verdict::Renew;
    }
    Verdict::Valid { touch: now.saturating_sub(rec.last_seen) >= policy.touch_interval() }
}

/// `$session_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    New,
    Valid,
    Renewed,
    Expired,
    Invalid,
    Mismatch,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Valid => "valid",
            Status::Renewed => "renewed",
            Status::Expired => "expired",
            Status::Invalid => "invalid",
            Status::Mismatch => "mismatch",
            Status::Error => "error",
        }
    }
}

/// The result of evaluating one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub status: Status,
    /// The session's ID after this request (`$session_id`); `None` when there is none.
    pub id: Option<SessionId>,
    /// Whether the response must carry `Set-Cookie` with `id`.
    pub set_cookie: bool,
    /// This request renewed the ID (made the successor); `false` for an old ID in its
    /// grace, answered with the successor an earlier request made.
    pub renewal: bool,
}

impl Evaluation {
    /// The store could not be used: the request goes on, the cookie (and so its ID, if it
    /// verified) is left as it is.
    pub fn store_error(incoming: Option<SessionId>) -> Self {
        Evaluation { status: Status::Error, id: incoming, set_cookie: false, renewal: false }
    }
}

impl Evaluation {
    /// A cookie that verified only with a fallback secret: when its session goes on under
    /// the same ID, the response re-signs it with the current secret, so that the fallback
    /// can be dropped once the idle timeout has passed.
    pub fn resigned(mut self, incoming: Incoming, by: VerifiedBy) -> Self {
        if let (Incoming::Verified(id), VerifiedBy::Fallback(_), Status::Valid) =
            (incoming, by, self.status)
        {
            self.set_cookie |= self.id == Some(id);
        }
        self
    }
}

/// Why a store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The key is taken (only for inserts of new IDs).
    Exists,
    /// No room even after eviction, or the store is unreachable.
    Unavailable,
}

/// Why session data could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataError {
    /// The session is not in the table (any more).
    Gone,
    /// No room for the data even after eviction.
    NoRoom,
}

/// A session table that answers synchronously (shared memory, or a map in tests). Every
/// method is called inside one critical section per request.
pub trait Table {
    /// Finds a record; a hit also marks it as in use (its cookie came back).
    fn get(&mut self, key: &StoreKey, now: u64) -> Option<Record>;
    /// Inserts a record that must not exist yet. `established` records (successors) are
    /// protected from floods of new clients the way returning sessions are.
    fn insert(
        &mut self,
        key: &StoreKey,
        rec: &Record,
        expires: u64,
        established: bool,
        now: u64,
    ) -> Result<(), StoreError>;
    /// Replaces an existing record.
    fn update(&mut self, key: &StoreKey, rec: &Record, expires: u64);
    /// Forgets a record with its data and its place in the subject index.
    fn remove(&mut self, key: &StoreKey);
    /// Appends the data (stored form) of `key`'s session to `out`; false when the key is unknown.
    fn read_data(&mut self, key: &StoreKey, out: &mut Vec<u8>) -> bool;
    /// Replaces the data of `key`'s session (empty: none) and indexes the session under
    /// `subject` (a `data::subject_key`; `None`: not indexed).
    fn write_data(
        &mut self,
        key: &StoreKey,
        data: &[u8],
        subject: Option<[u8; 16]>,
        now: u64,
    ) -> Result<(), DataError>;
    /// Gives `to` the data and subject of `from` (renewal); `from` keeps none. Nothing
    /// changes when either session is unknown.
    fn move_data(&mut self, from: &StoreKey, to: &StoreKey);
    /// Removes every session indexed under `subject` but `keep`; returns how many.
    fn remove_subject(&mut self, subject: &[u8; 16], keep: Option<&StoreKey>) -> usize;
}

/// How many fresh IDs are tried when one collides (never, in practice).
const NEW_ID_ATTEMPTS: usize = 3;

/// One request against a synchronous table: the whole per-request algorithm.
pub fn evaluate<T: Table>(
    table: &mut T,
    incoming: Incoming,
    signer: &Signer,
    now: u64,
    policy: &Policy,
    client: &Client,
) -> Evaluation {
    evaluate_reading(table, incoming, signer, now, policy, client, &mut Vec::new())
}

/// [`evaluate`], and the session's data (stored form) appended to `data`: the data of the
/// ID the request goes on with (the successor's, for a renewal or an old ID in its grace,
/// since data follows a rolling renewal). Nothing for a new session.
pub fn evaluate_reading<T: Table>(
    table: &mut T,
    incoming: Incoming,
    signer: &Signer,
    now: u64,
    policy: &Policy,
    client: &Client,
    data: &mut Vec<u8>,
) -> Evaluation {
    let status = match incoming {
        Incoming::Absent => Status::New,
        Incoming::Invalid => Status::Invalid,
        Incoming::Verified(id) => {
            let key = id.store_key();
            match table.get(&key, now) {
                None => Status::Invalid,
                Some(rec) => match decide(&rec, now, policy, client) {
                    Verdict::Valid { touch } => {
                        if touch {
                            let rec = Record { last_seen: now, ..client.rebind(&rec) };
                            table.update(&key, &rec, rec.expires_at(policy));
                        }
                        table.read_data(&key, data);
                        return Evaluation {
                            status: Status::Valid,
                            id: Some(id),
                            set_cookie: false,
                            renewal: false,
                        };
                    }
                    Verdict::Renew => {
                        let next = signer.successor(&id);
                        let rec = client.rebind(&rec);
                        let succ = rec.successor(now);
                        match table.insert(
                            &next.store_key(),
                            &succ,
                            succ.expires_at(policy),
                            true,
                            now,
                        ) {
                            // The data follows the session to its new ID.
                            Ok(()) => table.move_data(&key, &next.store_key()),
                            // Another worker renewed it first (and moved the data).
                            Err(StoreError::Exists) => {}
                            Err(StoreError::Unavailable) => {
                                return Evaluation::store_error(Some(id))
                            }
                        }
                        let old = Record { renewed_at: now, last_seen: now, ..rec };
                        table.update(&key, &old, old.expires_at(policy));
                        table.read_data(&next.store_key(), data);
                        return Evaluation {
                            status: Status::Renewed,
                            id: Some(next),
                            set_cookie: true,
                            renewal: true,
                        };
                    }
                    // The successor must still exist: if it was destroyed (mismatch), the
                    // old ID must not hand its ID out again.
                    Verdict::Successor => {
                        let next = signer.successor(&id);
                        if table.get(&next.store_key(), now).is_some() {
                            table.read_data(&next.store_key(), data);
                            return Evaluation {
                                status: Status::Renewed,
                                id: Some(next),
                                set_cookie: true,
                                renewal: false,
                            };
                        }
                        table.remove(&key);
                        Status::Invalid
                    }
                    Verdict::Expired => {
                        table.remove(&key);
                        Status::Expired
                    }
                    Verdict::Mismatch => {
                        table.remove(&key);
                        // An old ID within its grace speaks for the whole session: its
                        // successor goes too.
                        if rec.renewed_at != 0 {
                            table.remove(&signer.successor(&id).store_key());
                        }
                        Status::Mismatch
                    }
                    Verdict::Dead => {
                        table.remove(&key);
                        Status::Invalid
                    }
                },
            }
        }
    };
    start(table, status, now, policy, client)
}

/// Starts a new session for a request whose cookie gave none.
fn start<T: Table>(
    table: &mut T,
    status: Status,
    now: u64,
    policy: &Policy,
    client: &Client,
) -> Evaluation {
    let rec = Record::new(now, client);
    for _ in 0..NEW_ID_ATTEMPTS {
        let id = SessionId::random();
        match table.insert(&id.store_key(), &rec, rec.expires_at(policy), false, now) {
            Ok(()) => return Evaluation { status, id: Some(id), set_cookie: true, renewal: false },
            Err(StoreError::Exists) => continue,
            Err(StoreError::Unavailable) => break,
        }
    }
    Evaluation::store_error(None)
}

/// Applies a response's [`Actions`] to the session `id` (shared memory, under the zone's
/// lock): the sets (one write of the whole data, within `limit`), then an explicit renewal
/// (a random new ID; the old one is removed at once, so a fixated ID never reaches the
/// session), then destruction.
pub fn respond<T: Table>(
    table: &mut T,
    id: SessionId,
    actions: &Actions,
    limit: usize,
    now: u64,
    policy: &Policy,
) -> Applied {
    let mut key = id.store_key();
    let mut current = Vec::new();
    let mut applied = Applied::unchanged(id, Data::new(), None);
    let exists = table.read_data(&key, &mut current);
    // A record's data is always one we wrote; anything else is treated as none.
    let mut data = Data::decode(&current).unwrap_or_default();
    if !actions.changes.is_empty() {
        applied.refused = if !exists {
            // Destroyed or expired meanwhile: never brought back.
            Some(Refused::Gone)
        } else {
            match data.apply(&actions.changes, limit) {
                Err(too_large) => Some(Refused::TooLarge(too_large)),
                Ok(changed) if changed == data => None,
                Ok(changed) => {
                    let subject = changed.subject().map(subject_key);
                    match table.write_data(&key, changed.encoded(), subject, now) {
                        Ok(()) => {
                            data = changed;
                            None
                        }
                        Err(DataError::Gone) => Some(Refused::Gone),
                        Err(DataError::NoRoom) => Some(Refused::Store),
                    }
                }
            }
        };
    }
    if actions.renew && exists {
        if let Some(rec) = table.get(&key, now) {
            let next = rec.successor(now);
            for _ in 0..NEW_ID_ATTEMPTS {
                let new_id = SessionId::random();
                let new_key = new_id.store_key();
                match table.insert(&new_key, &next, next.expires_at(policy), true, now) {
                    Ok(()) => {
                        table.move_data(&key, &new_key);
                        table.remove(&key);
                        (key, applied.id) = (new_key, Some(new_id));
                        applied.cookie = CookieChange::Set(new_id);
                        break;
                    }
                    Err(StoreError::Exists) => continue,
                    // The session goes on under its old ID.
                    Err(StoreError::Unavailable) => {
                        applied.refused = applied.refused.or(Some(Refused::Store));
                        break;
                    }
                }
            }
        }
    }
    if let Some(destroy) = actions.destroy {
        let subject = data.subject().map(subject_key);
        if destroy != Destroy::This {
            if let Some(subject) = subject {
                applied.destroyed_others = table.remove_subject(&subject, Some(&key));
            }
        }
        if destroy != Destroy::Others {
            table.remove(&key);
            applied.destroyed_this = exists;
            applied.id = None;
            applied.cookie = CookieChange::Expire;
            data = Data::new();
        }
    }
    applied.data = data;
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const POLICY: Policy =
        Policy { idle: 30, rolling: 60, absolute: 300, check_ip: true, check_user_agent: true };

    #[derive(Default)]
    struct MapTable {
        map: HashMap<StoreKey, Record>,
        /// Each session's data and subject, when it has any.
        data: HashMap<StoreKey, (Vec<u8>, Option<[u8; 16]>)>,
        writes: usize,
        full: bool,
    }

    impl Table for MapTable {
        fn get(&mut self, key: &StoreKey, _now: u64) -> Option<Record> {
            self.map.get(key).copied()
        }
        fn insert(
            &mut self,
            key: &StoreKey,
            rec: &Record,
            _expires: u64,
            _established: bool,
            _now: u64,
        ) -> Result<(), StoreError> {
            if self.full {
                return Err(StoreError::Unavailable);
            }
            if self.map.contains_key(key) {
                return Err(StoreError::Exists);
            }
            self.writes += 1;
            self.map.insert(*key, *rec);
            Ok(())
        }
        fn update(&mut self, key: &StoreKey, rec: &Record, _expires: u64) {
            self.writes += 1;
            self.map.insert(*key, *rec);
        }
        fn remove(&mut self, key: &StoreKey) {
            self.map.remove(key);
            self.data.remove(key);
        }
        fn read_data(&mut self, key: &StoreKey, out: &mut Vec<u8>) -> bool {
            if !self.map.contains_key(key) {
                return false;
            }
            if let Some((d, _)) = self.data.get(key) {
                out.extend_from_slice(d);
            }
            true
        }
        fn write_data(
            &mut self,
            key: &StoreKey,
            data: &[u8],
            subject: Option<[u8; 16]>,
            _now: u64,
        ) -> Result<(), DataError> {
            if !self.map.contains_key(key) {
                return Err(DataError::Gone);
            }
            if data.is_empty() && subject.is_none() {
                self.data.remove(key);
            } else {
                self.data.insert(*key, (data.to_vec(), subject));
            }
            Ok(())
        }
        // As `SlotTable`: nothing unless both sessions exist; then `to` has what `from` had.
        fn move_data(&mut self, from: &StoreKey, to: &StoreKey) {
            if from == to || !self.map.contains_key(from) || !self.map.contains_key(to) {
                return;
            }
            match self.data.remove(from) {
                Some(d) => self.data.insert(*to, d),
                None => self.data.remove(to),
            };
        }
        fn remove_subject(&mut self, subject: &[u8; 16], keep: Option<&StoreKey>) -> usize {
            let gone: Vec<StoreKey> = self
                .data
                .iter()
                .filter(|(k, (_, s))| s.as_ref() == Some(subject) && Some(*k) != keep)
                .map(|(k, _)| *k)
                .collect();
            for k in &gone {
                self.remove(k);
            }
            gone.len()
        }
    }

    fn signer() -> Signer {
        Signer::new(b"a secret that is long enough......")
    }

    const ALICE: Client = Client::hashed(1, 2);

    fn begin(t: &mut MapTable, now: u64) -> SessionId {
        let e = evaluate(t, Incoming::Absent, &signer(), now, &POLICY, &ALICE);
        assert_eq!(e.status, Status::New);
        assert!(e.set_cookie);
        e.id.unwrap()
    }

    fn again(t: &mut MapTable, id: SessionId, now: u64, c: &Client) -> Evaluation {
        evaluate(t, Incoming::Verified(id), &signer(), now, &POLICY, c)
    }

    #[test]
    fn a_cookie_of_a_fallback_secret_keeps_its_session_and_is_re_signed() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        let incoming = Incoming::Verified(id);
        let e = again(&mut t, id, 1001, &ALICE);
        let by_fallback = e.resigned(incoming, VerifiedBy::Fallback(0));
        assert_eq!(by_fallback, Evaluation { set_cookie: true, ..e });
        assert_eq!(e.resigned(incoming, VerifiedBy::Current), e);
        // Nothing else changes: a new session, a renewal, an error, another ID.
        let fresh = evaluate(&mut t, Incoming::Absent, &signer(), 1001, &POLICY, &ALICE);
        assert_eq!(fresh.resigned(Incoming::Absent, VerifiedBy::Current), fresh);
        let error = Evaluation::store_error(Some(id));
        assert_eq!(error.resigned(incoming, VerifiedBy::Fallback(0)), error);
        let other = Incoming::Verified(SessionId([9; 16]));
        assert_eq!(e.resigned(other, VerifiedBy::Fallback(0)), e);
    }

    #[test]
    fn renewal_grace_survives_a_rotation() {
        // Renewed under the old secret; within the grace, the old cookie (now verified by
        // the fallback) must find the same successor.
        let old = signer();
        let new = Signer::new(b"the new secret, long enough too.....");
        let fallbacks = [old.clone()];
        let keys = crate::cookie::Keys::new(&new, &fallbacks);
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        let renew_at = 1000 + POLICY.rolling;
        // Kept alive (idle timeout) up to the rolling timeout.
        for now in (1020..renew_at).step_by(20) {
            assert_eq!(again(&mut t, id, now, &ALICE).status, Status::Valid);
        }
        let first = evaluate(&mut t, Incoming::Verified(id), &old, renew_at, &POLICY, &ALICE);
        assert_eq!(first.status, Status::Renewed);
        let by = VerifiedBy::Fallback(0);
        let later = evaluate(
            &mut t,
            Incoming::Verified(id),
            keys.verifier(by),
            renew_at + 1,
            &POLICY,
            &ALICE,
        );
        assert_eq!((later.status, later.id), (Status::Renewed, first.id));
    }

    #[test]
    fn new_then_valid_without_cookie() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        let e = again(&mut t, id, 1001, &ALICE);
        assert_eq!(
            e,
            Evaluation { status: Status::Valid, id: Some(id), set_cookie: false, renewal: false }
        );
    }

    #[test]
    fn idle_timeout_and_touch_throttle() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        let w = t.writes;
        assert_eq!(again(&mut t, id, 1000, &ALICE).status, Status::Valid);
        assert_eq!(t.writes, w, "no write within the touch interval");
        assert_eq!(again(&mut t, id, 1029, &ALICE).status, Status::Valid);
        assert_eq!(t.writes, w + 1, "touched");
        assert_eq!(again(&mut t, id, 1058, &ALICE).status, Status::Valid);
        let e = again(&mut t, id, 1058 + 30 + 1, &ALICE);
        assert_eq!(e.status, Status::Expired);
        assert!(e.set_cookie);
        assert_ne!(e.id, Some(id));
        assert_eq!(again(&mut t, id, 1090, &ALICE).status, Status::Invalid, "destroyed");
    }

    #[test]
    fn idle_boundary_is_inclusive() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        assert_eq!(again(&mut t, id, 1029, &ALICE).status, Status::Valid);
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        assert_eq!(again(&mut t, id, 1030, &ALICE).status, Status::Expired);
    }

    #[test]
    fn rolling_renewal_single_successor_and_grace() {
        let mut t = MapTable::default();
        let s = signer();
        let id = begin(&mut t, 1000);
        assert_eq!(again(&mut t, id, 1020, &ALICE).status, Status::Valid);
        assert_eq!(again(&mut t, id, 1040, &ALICE).status, Status::Valid);
        let e = again(&mut t, id, 1060, &ALICE);
        assert_eq!(e.status, Status::Renewed);
        assert!(e.renewal, "this request made the successor");
        let next = e.id.unwrap();
        assert_eq!(next, s.successor(&id));
        // In-flight requests with the old ID get the same successor.
        for dt in 0..=RENEWAL_GRACE {
            let e2 = again(&mut t, id, 1060 + dt, &ALICE);
            assert_eq!(
                e2,
                Evaluation {
                    status: Status::Renewed,
                    id: Some(next),
                    set_cookie: true,
                    renewal: false
                }
            );
        }
        assert_eq!(again(&mut t, next, 1065, &ALICE).status, Status::Valid);
        assert_eq!(again(&mut t, id, 1060 + RENEWAL_GRACE + 1, &ALICE).status, Status::Invalid);
        // Creation time carried over.
        assert_eq!(t.map[&next.store_key()].created, 1000);
    }

    #[test]
    fn destroyed_successor_never_comes_back_through_the_old_id() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        again(&mut t, id, 1029, &ALICE);
        again(&mut t, id, 1058, &ALICE);
        let next = again(&mut t, id, 1060, &ALICE).id.unwrap();
        let eve = Client::hashed(9, 2);
        assert_eq!(again(&mut t, next, 1061, &eve).status, Status::Mismatch);
        let e = again(&mut t, id, 1062, &ALICE);
        assert_eq!(e.status, Status::Invalid);
        assert_ne!(e.id, Some(next));
        assert_eq!(again(&mut t, id, 1063, &ALICE).status, Status::Invalid);
    }

    #[test]
    fn mismatch_of_an_old_id_within_its_grace_destroys_the_successor_too() {
        for eve in [Client::hashed(9, 2), Client::hashed(1, 9)] {
            let mut t = MapTable::default();
            let id = begin(&mut t, 1000);
            again(&mut t, id, 1029, &ALICE);
            again(&mut t, id, 1058, &ALICE);
            let next = again(&mut t, id, 1060, &ALICE).id.unwrap();
            let e = again(&mut t, id, 1062, &eve);
            assert_eq!(e.status, Status::Mismatch);
            assert!(e.set_cookie);
            assert_ne!(e.id, Some(next));
            assert_eq!(t.map.len(), 1, "only the session handed to eve is left");
            assert_eq!(again(&mut t, next, 1063, &ALICE).status, Status::Invalid);
            assert_eq!(again(&mut t, id, 1064, &ALICE).status, Status::Invalid);
        }
    }

    #[test]
    fn keyed_hashes_match_the_reference_siphash_1_3() {
        // The reference implementation's first SipHash-1-3 test vector (key 00..0f, empty
        // message; as in Rust's own `SipHasher13` tests), through the same hasher.
        use core::hash::Hasher;
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let h = siphasher::sip::SipHasher13::new_with_key(&key);
        assert_eq!(h.finish(), 0xabac_0158_050f_c4dc);
        let mut h = siphasher::sip::SipHasher13::new_with_key(&key);
        h.write(&(0u8..15).collect::<Vec<_>>());
        assert_eq!(h.finish(), 0xd320_d86d_2a51_9956);
        // Ours: a domain byte, then the value; the low 32 bits.
        let mut msg = vec![b'i'];
        msg.extend_from_slice(b"203.0.113.57");
        let mut h = siphasher::sip::SipHasher13::new_with_key(&key);
        h.write(&msg);
        let c = Client::new(&BindingKey(key), b"203.0.113.57", b"");
        assert_eq!(c.ip, h.finish() as u32);
    }

    #[test]
    fn binding_hashes_depend_on_the_key_and_the_domain() {
        let (k1, k2) = (BindingKey([1; 16]), BindingKey([2; 16]));
        let a = Client::new(&k1, b"192.0.2.1", b"agent");
        assert_eq!((a.ip, a.user_agent), {
            let b = Client::new(&k1, b"192.0.2.1", b"agent");
            (b.ip, b.user_agent)
        });
        assert_ne!(a.ip, Client::new(&k2, b"192.0.2.1", b"agent").ip);
        assert_ne!(a.ip, Client::new(&k1, b"192.0.2.2", b"agent").ip);
        let same = Client::new(&k1, b"x", b"x");
        assert_ne!(same.ip, same.user_agent, "address and User-Agent hashes are apart");
        // A session made under one key is a mismatch under another.
        let mut t = MapTable::default();
        let e = evaluate(&mut t, Incoming::Absent, &signer(), 1000, &POLICY, &a);
        let other = Client::new(&k2, b"192.0.2.1", b"agent");
        let e =
            evaluate(&mut t, Incoming::Verified(e.id.unwrap()), &signer(), 1001, &POLICY, &other);
        assert_eq!(e.status, Status::Mismatch);
    }

    /// A record written before the binding key (version 1, unkeyed hashes) keeps working and
    /// is rewritten keyed at its next write; a mismatch is still a mismatch.
    #[test]
    fn legacy_records_keep_working_and_are_rewritten_keyed() {
        let key = BindingKey([9; 16]);
        let alice = Client::new(&key, b"192.0.2.1", b"agent-A");
        let (ip, user_agent) = legacy_hashes(b"192.0.2.1", b"agent-A");
        let legacy = Record {
            ip,
            user_agent,
            hashes: BindingHashes::Legacy,
            ..Record::new(1000, &Client::hashed(0, 0))
        };
        assert_eq!(Record::decode(&legacy.encode()), Some(legacy));
        let mut t = MapTable::default();
        let id = SessionId::random();
        t.map.insert(id.store_key(), legacy);
        assert_eq!(decide(&legacy, 1000, &POLICY, &alice), Verdict::Valid { touch: false });
        assert_eq!(again(&mut t, id, 1000, &alice).status, Status::Valid);
        assert_eq!(t.map[&id.store_key()], legacy, "no write: unchanged");
        assert_eq!(again(&mut t, id, 1029, &alice).status, Status::Valid);
        let stored = t.map[&id.store_key()];
        assert_eq!(stored.hashes, BindingHashes::Keyed, "touched: rewritten keyed");
        assert_eq!(
            (stored.ip, stored.user_agent, stored.last_seen),
            (alice.ip, alice.user_agent, 1029)
        );
        assert_eq!(again(&mut t, id, 1030, &alice).status, Status::Valid);

        // Renewal rewrites the old record and makes a keyed successor.
        let id = SessionId::random();
        t.map.insert(id.store_key(), Record { last_seen: 1050, ..legacy });
        let e = again(&mut t, id, 1060, &alice);
        assert_eq!(e.status, Status::Renewed);
        let succ = t.map[&e.id.unwrap().store_key()];
        assert_eq!((succ.hashes, succ.ip), (BindingHashes::Keyed, alice.ip));
        assert_eq!(t.map[&id.store_key()].hashes, BindingHashes::Keyed);

        // Another address, or User-Agent, against a legacy record: mismatch.
        for eve in [
            Client::new(&key, b"192.0.2.2", b"agent-A"),
            Client::new(&key, b"192.0.2.1", b"agent-B"),
        ] {
            let id = SessionId::random();
            t.map.insert(id.store_key(), legacy);
            assert_eq!(again(&mut t, id, 1001, &eve).status, Status::Mismatch);
        }
        // With the address check off, another address keeps a legacy session, but the
        // record stays legacy: its binding is the original client's, not ours to replace.
        let relaxed = Policy { check_ip: false, ..POLICY };
        let roaming = Client::new(&key, b"192.0.2.7", b"agent-A");
        assert_eq!(decide(&legacy, 1000, &relaxed, &roaming), Verdict::Valid { touch: false });
        assert_eq!(roaming.rebind(&legacy), legacy);
        assert_eq!(alice.rebind(&legacy).hashes, BindingHashes::Keyed);
    }

    #[test]
    fn absolute_timeout_survives_renewals() {
        let mut t = MapTable::default();
        let mut id = begin(&mut t, 1000);
        let mut now = 1000;
        let mut renewals = 0;
        loop {
            now += 20;
            let e = again(&mut t, id, now, &ALICE);
            match e.status {
                Status::Valid => {}
                Status::Renewed => {
                    renewals += 1;
                    id = e.id.unwrap();
                }
                Status::Expired => break,
                s => panic!("unexpected {s:?}"),
            }
            assert!(now < 2000);
        }
        assert_eq!(now, 1300);
        assert!(renewals >= 4);
    }

    #[test]
    fn binding_checks() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        let eve = Client::hashed(9, 2);
        let e = again(&mut t, id, 1001, &eve);
        assert_eq!(e.status, Status::Mismatch);
        assert!(e.set_cookie);
        assert_eq!(again(&mut t, id, 1002, &ALICE).status, Status::Invalid, "destroyed for all");

        let id = begin(&mut t, 1000);
        let ua = Client::hashed(1, 3);
        assert_eq!(again(&mut t, id, 1001, &ua).status, Status::Mismatch);

        let relaxed = Policy { check_ip: false, check_user_agent: false, ..POLICY };
        let id = begin(&mut t, 1000);
        let e = evaluate(&mut t, Incoming::Verified(id), &signer(), 1001, &relaxed, &eve);
        assert_eq!(e.status, Status::Valid);
    }

    #[test]
    fn clock_oddities() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        // Small skew between workers: fine.
        assert_eq!(again(&mut t, id, 998, &ALICE).status, Status::Valid);
        // A record from the far future: expired, no panic.
        let id = begin(&mut t, 5000);
        assert_eq!(again(&mut t, id, 1000, &ALICE).status, Status::Expired);
        // Extreme values saturate.
        let r = Record { created: u64::MAX, last_seen: u64::MAX, ..Record::default() };
        // Zero seconds elapsed at the end of time: alive, so the binding decides.
        assert_eq!(decide(&r, u64::MAX, &POLICY, &ALICE), Verdict::Mismatch);
        assert_eq!(r.expires_at(&POLICY), u64::MAX);
    }

    #[test]
    fn unknown_and_invalid_never_touch_store_for_invalid() {
        let mut t = MapTable::default();
        let e = evaluate(&mut t, Incoming::Invalid, &signer(), 1000, &POLICY, &ALICE);
        assert_eq!(e.status, Status::Invalid);
        assert!(e.set_cookie);
        let e = again(&mut t, SessionId::random(), 1000, &ALICE);
        assert_eq!(e.status, Status::Invalid);
    }

    #[test]
    fn store_full_is_error_and_keeps_cookie() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        assert_eq!(again(&mut t, id, 1029, &ALICE).status, Status::Valid);
        assert_eq!(again(&mut t, id, 1058, &ALICE).status, Status::Valid);
        t.full = true;
        let e = evaluate(&mut t, Incoming::Absent, &signer(), 1000, &POLICY, &ALICE);
        assert_eq!(e, Evaluation::store_error(None));
        let e = again(&mut t, id, 1060, &ALICE);
        assert_eq!(e, Evaluation::store_error(Some(id)));
        // Nothing lost: once there is room the renewal happens.
        t.full = false;
        assert_eq!(again(&mut t, id, 1061, &ALICE).status, Status::Renewed);
    }

    #[test]
    fn record_codec() {
        let r = Record {
            created: 1,
            issued: 2,
            last_seen: 3,
            renewed_at: 4,
            ip: 5,
            user_agent: 6,
            hashes: BindingHashes::Keyed,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(r.encode()[0], 2);
        let legacy = Record { hashes: BindingHashes::Legacy, ..r };
        assert_eq!(legacy.encode()[0], 1);
        assert_eq!(Record::decode(&legacy.encode()), Some(legacy));
        assert_eq!(Record::decode(&r.encode()[1..]), None);
        let mut bad = r.encode();
        bad[0] = 9;
        assert_eq!(Record::decode(&bad), None);
    }

    #[test]
    fn expiry_is_the_earliest_deadline() {
        let r = Record { created: 100, issued: 100, last_seen: 200, ..Record::default() };
        assert_eq!(r.expires_at(&POLICY), 230);
        let r = Record { created: 100, issued: 100, last_seen: 390, ..Record::default() };
        assert_eq!(r.expires_at(&POLICY), 400);
        let r = Record { renewed_at: 205, ..Record { created: 100, last_seen: 200, ..r } };
        assert_eq!(r.expires_at(&POLICY), 215);
    }

    // respond: what a response's actions do to its session (shared-memory semantics).

    fn sets(pairs: &[(&str, &str)]) -> Actions {
        let mut a = Actions::default();
        for (k, v) in pairs {
            a.changes.set(k.as_bytes(), v.as_bytes());
        }
        a
    }

    fn read(t: &mut MapTable, id: SessionId, now: u64) -> (Evaluation, Data) {
        let mut out = Vec::new();
        let e =
            evaluate_reading(t, Incoming::Verified(id), &signer(), now, &POLICY, &ALICE, &mut out);
        (e, Data::decode(&out).unwrap())
    }

    #[test]
    fn sets_are_stored_and_read_back() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        let a = respond(&mut t, id, &sets(&[("user", "alice"), ("n", "1")]), 1024, 1000, &POLICY);
        assert_eq!((a.id, a.cookie, a.refused), (Some(id), CookieChange::Keep, None));
        assert_eq!(a.data.get(b"user"), Some(&b"alice"[..]));
        let (e, d) = read(&mut t, id, 1001);
        assert_eq!(e.status, Status::Valid);
        assert_eq!(d, a.data);
        // An empty value removes the key.
        let a = respond(&mut t, id, &sets(&[("n", "")]), 1024, 1002, &POLICY);
        assert_eq!(a.data.get(b"n"), None);
        assert_eq!(read(&mut t, id, 1003).1.get(b"user"), Some(&b"alice"[..]));
        // A session without data reads none.
        let other = begin(&mut t, 1003);
        assert!(read(&mut t, other, 1004).1.is_empty());
    }

    #[test]
    fn too_large_refuses_the_sets_but_not_the_renewal() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        respond(&mut t, id, &sets(&[("a", "1")]), 16, 1000, &POLICY);
        let mut big = sets(&[("b", "0123456789")]);
        big.renew = true;
        let a = respond(&mut t, id, &big, 16, 1001, &POLICY);
        assert!(matches!(a.refused, Some(Refused::TooLarge(_))));
        let CookieChange::Set(new) = a.cookie else { panic!("renewed") };
        assert_eq!(a.data.get(b"a"), Some(&b"1"[..]));
        assert_eq!(a.data.get(b"b"), None);
        assert_eq!(read(&mut t, new, 1002).1, a.data);
    }

    #[test]
    fn explicit_renewal_gives_a_random_id_keeps_data_and_kills_the_old_id() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        let mut login = sets(&[("user", "alice")]);
        login.renew = true;
        let a = respond(&mut t, id, &login, 1024, 1005, &POLICY);
        let CookieChange::Set(new) = a.cookie else { panic!("renewed") };
        assert_ne!(new, id);
        assert_ne!(new, signer().successor(&id), "not the derived successor");
        assert_eq!(a.id, Some(new));
        // The old ID is dead at once, no grace.
        assert_eq!(again(&mut t, id, 1005, &ALICE).status, Status::Invalid);
        let (e, d) = read(&mut t, new, 1006);
        assert_eq!((e.status, d.get(b"user")), (Status::Valid, Some(&b"alice"[..])));
        // Creation time is kept: the absolute timeout still counts from the start.
        assert_eq!(t.map[&new.store_key()].created, 1000);
    }

    #[test]
    fn data_follows_a_rolling_renewal_and_an_old_id_in_grace_reads_it() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        respond(&mut t, id, &sets(&[("user", "alice")]), 1024, 1000, &POLICY);
        for now in [1020, 1040] {
            assert_eq!(read(&mut t, id, now).0.status, Status::Valid);
        }
        let (e, d) = read(&mut t, id, 1000 + POLICY.rolling);
        assert_eq!(e.status, Status::Renewed);
        assert_eq!(d.get(b"user"), Some(&b"alice"[..]));
        let next = e.id.unwrap();
        assert_eq!(read(&mut t, next, 1061).1.get(b"user"), Some(&b"alice"[..]));
        // The old ID within its grace answers with the successor and its data.
        let (e, d) = read(&mut t, id, 1062);
        assert_eq!((e.status, e.id), (Status::Renewed, Some(next)));
        assert_eq!(d.get(b"user"), Some(&b"alice"[..]));
    }

    #[test]
    fn a_gone_session_is_never_brought_back() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        t.remove(&id.store_key());
        let a = respond(&mut t, id, &sets(&[("user", "alice")]), 1024, 1001, &POLICY);
        assert_eq!(a.refused, Some(Refused::Gone));
        assert!(!t.map.contains_key(&id.store_key()));
    }

    #[test]
    fn destroy_this_others_all() {
        let mut t = MapTable::default();
        let login = sets(&[("subject", "alice")]);
        let (a1, a2, a3) = (begin(&mut t, 1000), begin(&mut t, 1000), begin(&mut t, 1000));
        let bob = begin(&mut t, 1000);
        for id in [a1, a2, a3] {
            respond(&mut t, id, &login, 1024, 1000, &POLICY);
        }
        respond(&mut t, bob, &sets(&[("subject", "bob")]), 1024, 1000, &POLICY);
        let others = Actions { destroy: Some(Destroy::Others), ..Actions::default() };
        let a = respond(&mut t, a1, &others, 1024, 1001, &POLICY);
        assert_eq!((a.destroyed_others, a.destroyed_this, a.id), (2, false, Some(a1)));
        assert_eq!(a.cookie, CookieChange::Keep);
        assert_eq!(again(&mut t, a2, 1002, &ALICE).status, Status::Invalid);
        assert_eq!(again(&mut t, a1, 1002, &ALICE).status, Status::Valid);
        assert_eq!(again(&mut t, bob, 1002, &ALICE).status, Status::Valid);

        let a4 = begin(&mut t, 1003);
        respond(&mut t, a4, &login, 1024, 1003, &POLICY);
        let all = Actions { destroy: Some(Destroy::All), ..Actions::default() };
        let a = respond(&mut t, a1, &all, 1024, 1004, &POLICY);
        assert_eq!((a.destroyed_others, a.destroyed_this, a.id), (1, true, None));
        assert_eq!(a.cookie, CookieChange::Expire);
        assert!(a.data.is_empty());
        for id in [a1, a4] {
            assert_eq!(again(&mut t, id, 1005, &ALICE).status, Status::Invalid);
        }
        let this = Actions { destroy: Some(Destroy::This), ..Actions::default() };
        let a = respond(&mut t, bob, &this, 1024, 1006, &POLICY);
        assert_eq!(
            (a.destroyed_others, a.destroyed_this, a.cookie),
            (0, true, CookieChange::Expire)
        );
        assert_eq!(again(&mut t, bob, 1007, &ALICE).status, Status::Invalid);
    }

    #[test]
    fn a_renewal_the_store_cannot_take_keeps_the_old_id() {
        let mut t = MapTable::default();
        let id = begin(&mut t, 1000);
        t.full = true;
        let renew = Actions { renew: true, ..Actions::default() };
        let a = respond(&mut t, id, &renew, 1024, 1001, &POLICY);
        assert_eq!(
            (a.id, a.cookie, a.refused),
            (Some(id), CookieChange::Keep, Some(Refused::Store))
        );
        t.full = false;
        assert_eq!(again(&mut t, id, 1002, &ALICE).status, Status::Valid);
    }
}
