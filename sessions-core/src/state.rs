//! The state file of `sessions_zone ... state=<file>`: what a shared-memory zone must carry
//! across a restart or a binary upgrade (its live records, in LRU order, and the random
//! secret, cookie name and binding key), its versioned format, and loading it into a fresh
//! table. Besides [`write_atomically`] there is no I/O here; the glue reads the file, takes
//! the snapshot under the zone's lock and writes it outside.
//!
//! Format, version 2 (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `ngxsstat` |
//! | 4 | format version (1) |
//! | 4 | reserved, 0 |
//! | 8 | body length |
//! | body | secret (32), cookie name (16), binding key (16), written at (u64, seconds since the epoch), record count (u64), records |
//! | 32 | SHA-256 of everything before it |
//!
//! A record: store key (16), created, issued, last seen, renewed at, IP hash, User-Agent
//! hash, expires (u32 each, as the table keeps them), record version (1), flags (1; bit 0:
//! in the protected segment), then the session's data: its length (u32, 0: none) and its
//! stored form (`data::Data`; its subject is in it). Records come protected first, then
//! probation, each from its most recently used.
//!
//! Version 1, written before session data existed, is the same without the data length and
//! data; it is still read (its sessions come back without data).
//!
//! The checksum detects a torn or damaged file; it is no authentication (whoever can write
//! the file can recompute it, and could as well write the zone).

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cookie::{self, StoreKey};
use crate::data::{subject_key, Data};
use crate::session::{BindingHashes, Record, Table};
use crate::table::{chunks_for, Entry, SlotTable};

pub const MAGIC: [u8; 8] = *b"ngxsstat";
/// The format written. Change it with the layout above.
pub const VERSION: u32 = 2;
/// The format before session data, still read.
pub const VERSION_WITHOUT_DATA: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8;
const CHECKSUM_LEN: usize = 32;
/// Identity (64), written at (8), record count (8).
const BODY_FIXED_LEN: usize = 32 + 16 + 16 + 8 + 8;
/// A record's fixed part (version 2 adds the data length and data after it).
pub const RECORD_LEN: usize = 16 + 7 * 4 + 1 + 1;
const DATA_LEN_LEN: usize = 4;
const FLAG_ESTABLISHED: u8 = 1;

/// What a zone's root holds that must survive with its records: cookies are signed with
/// the random secret under the random name, and records' binding hashes are keyed.
#[derive(Clone, PartialEq, Eq)]
pub struct ZoneIdentity {
    pub secret: [u8; 32],
    pub name: [u8; 16],
    pub binding_key: [u8; 16],
}

impl fmt::Debug for ZoneIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ZoneIdentity(..)")
    }
}

/// A zone's state, as taken under its lock and as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub identity: ZoneIdentity,
    /// When it was taken (seconds since the epoch).
    pub written_at: u64,
    /// Protected first, then probation, each from its most recently used
    /// ([`crate::table::TableCopy::live_entries`]).
    pub entries: Vec<Entry>,
}

/// Why a state file was not loaded (for its one `[warn]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Shorter than its header says, or than a header.
    Truncated {
        have: usize,
        need: usize,
    },
    NotAStateFile,
    /// Another format version (written by another version of the module).
    Version(u32),
    Checksum,
    Corrupt(&'static str),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Truncated { have, need } => {
                write!(f, "truncated ({have} of {need} bytes)")
            }
            LoadError::NotAStateFile => f.write_str("not a sessions state file"),
            LoadError::Version(v) => write!(
                f,
                "format version {v}, this module reads versions {VERSION_WITHOUT_DATA} and {VERSION}"
            ),
            LoadError::Checksum => f.write_str("checksum mismatch (damaged file)"),
            LoadError::Corrupt(why) => write!(f, "corrupt ({why})"),
        }
    }
}

/// Seconds in 32 bits, as the table keeps them (saturating).
fn secs32(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

impl Snapshot {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let data: usize = self.entries.iter().map(|e| e.data.len()).sum();
        let body_len = BODY_FIXED_LEN + self.entries.len() * (RECORD_LEN + DATA_LEN_LEN) + data;
        let mut out = Vec::with_capacity(HEADER_LEN + body_len + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(body_len as u64).to_le_bytes());
        let id = &self.identity;
        out.extend_from_slice(&id.secret);
        out.extend_from_slice(&id.name);
        out.extend_from_slice(&id.binding_key);
        out.extend_from_slice(&self.written_at.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            let r = &e.record;
            out.extend_from_slice(&e.key.0);
            for t in [r.created, r.issued, r.last_seen, r.renewed_at] {
                out.extend_from_slice(&secs32(t).to_le_bytes());
            }
            out.extend_from_slice(&r.ip.to_le_bytes());
            out.extend_from_slice(&r.user_agent.to_le_bytes());
            out.extend_from_slice(&secs32(e.expires).to_le_bytes());
            out.push(r.hashes.version());
            out.push(if e.established { FLAG_ESTABLISHED } else { 0 });
            // Data is at most `data::MAX_DATA_SIZE`; the table holds no more than u16 chunks.
            out.extend_from_slice(&u32::try_from(e.data.len()).unwrap_or(0).to_le_bytes());
            if u32::try_from(e.data.len()).is_ok() {
                out.extend_from_slice(&e.data);
            }
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// Reads a file's bytes; anything but a whole, intact version-1 or version-2 file is an
    /// error.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, LoadError> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(if bytes.is_empty() || MAGIC.starts_with(bytes) {
                LoadError::Truncated { have: bytes.len(), need: HEADER_LEN + CHECKSUM_LEN }
            } else {
                LoadError::NotAStateFile
            });
        }
        if bytes.len() < HEADER_LEN {
            return Err(LoadError::Truncated {
                have: bytes.len(),
                need: HEADER_LEN + CHECKSUM_LEN,
            });
        }
        let version = u32_at(bytes, 8);
        if version != VERSION && version != VERSION_WITHOUT_DATA {
            return Err(LoadError::Version(version));
        }
        let need = usize::try_from(u64_at(bytes, 16))
            .ok()
            .and_then(|body| body.checked_add(HEADER_LEN + CHECKSUM_LEN))
            .ok_or(LoadError::Corrupt("impossible body length"))?;
        if bytes.len() < need {
            return Err(LoadError::Truncated { have: bytes.len(), need });
        }
        if bytes.len() > need {
            return Err(LoadError::Corrupt("bytes after the checksum"));
        }
        let (signed, checksum) = bytes.split_at(need - CHECKSUM_LEN);
        if Sha256::digest(signed).as_slice() != checksum {
            return Err(LoadError::Checksum);
        }
        let body = &signed[HEADER_LEN..];
        if body.len() < BODY_FIXED_LEN {
            return Err(LoadError::Corrupt("body too short"));
        }
        let mut identity = ZoneIdentity { secret: [0; 32], name: [0; 16], binding_key: [0; 16] };
        identity.secret.copy_from_slice(&body[..32]);
        identity.name.copy_from_slice(&body[32..48]);
        identity.binding_key.copy_from_slice(&body[48..64]);
        if !cookie::is_token(&identity.name) {
            return Err(LoadError::Corrupt("the cookie name is not a token"));
        }
        let written_at = u64_at(body, 64);
        let count = u64_at(body, 72);
        let mut records = &body[BODY_FIXED_LEN..];
        let disagree = LoadError::Corrupt("record count and length disagree");
        // Every record takes at least its fixed part: no count can make this allocate more
        // than the file.
        let count = usize::try_from(count).map_err(|_| disagree.clone())?;
        if count > records.len() / RECORD_LEN {
            return Err(disagree);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let (r, rest) = records.split_at_checked(RECORD_LEN).ok_or(disagree.clone())?;
            records = rest;
            let mut data = Vec::new();
            if version != VERSION_WITHOUT_DATA {
                let (len, rest) = records.split_at_checked(DATA_LEN_LEN).ok_or(disagree.clone())?;
                let len = usize::try_from(u32_at(len, 0)).map_err(|_| disagree.clone())?;
                let (d, rest) = rest.split_at_checked(len).ok_or(disagree.clone())?;
                if !d.is_empty() && Data::decode(d).is_none() {
                    return Err(LoadError::Corrupt("session data not in its stored form"));
                }
                data = d.to_vec();
                records = rest;
            }
            let mut key = [0u8; 16];
            key.copy_from_slice(&r[..16]);
            let time = |n: usize| u64::from(u32_at(r, 16 + 4 * n));
            let hashes = BindingHashes::from_version(r[44])
                .ok_or(LoadError::Corrupt("unknown record version"))?;
            if r[45] & !FLAG_ESTABLISHED != 0 {
                return Err(LoadError::Corrupt("unknown record flags"));
            }
            entries.push(Entry {
                key: StoreKey(key),
                record: Record {
                    created: time(0),
                    issued: time(1),
                    last_seen: time(2),
                    renewed_at: time(3),
                    ip: u32_at(r, 32),
                    user_agent: u32_at(r, 36),
                    hashes,
                },
                expires: time(6),
                established: r[45] & FLAG_ESTABLISHED != 0,
                data,
            });
        }
        if !records.is_empty() {
            return Err(disagree);
        }
        Ok(Snapshot { identity, written_at, entries })
    }
}

/// What loading put into the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub loaded: usize,
    /// Past their expiry (the policy's idle and absolute timeouts, and a renewed ID's
    /// grace, as the table computed it at their last write) at `now`.
    pub expired: usize,
    /// Alive but left out: the table is smaller than the one that wrote the file.
    pub left_out: usize,
}

/// The subject index key of an entry's data, if it names a subject.
fn subject_of(e: &Entry) -> Option<[u8; 16]> {
    Data::decode(&e.data).and_then(|d| d.subject().map(subject_key))
}

/// How many of `entries`, from the first, take no more than `room` slots: their own, their
/// data's, and an entry for each subject not in `subjects` yet (which it adds to). Returns
/// that count and the slots they take.
fn fitting(
    entries: &[(&Entry, Option<[u8; 16]>)],
    room: usize,
    subjects: &mut HashSet<[u8; 16]>,
) -> (usize, usize) {
    let mut used = 0usize;
    for (n, (e, subject)) in entries.iter().enumerate() {
        let new_subject = subject.is_some_and(|s| !subjects.contains(&s));
        let weight = 1 + chunks_for(e.data.len()) + usize::from(new_subject);
        if used + weight > room {
            return (n, used);
        }
        used += weight;
        if let Some(s) = subject {
            subjects.insert(*s);
        }
    }
    (entries.len(), used)
}

/// Loads `entries` (in [`Snapshot::entries`] order) into an empty table. Expired records are
/// skipped; when the live ones do not fit, the table keeps what it would itself have kept:
/// sessions in use (protected, up to its cap) first, then the most recently used. Each
/// segment keeps its LRU order; protected records beyond the cap go to probation's oldest
/// end, as the table demotes them. Data comes back with its session (and so its subject
/// index); data that finds no room is left out, its session kept.
pub fn restore(table: &mut SlotTable<'_>, entries: &[Entry], now: u64) -> Restored {
    let mut report = Restored::default();
    let (mut protected, mut probation) = (Vec::new(), Vec::new());
    for e in entries {
        if e.expires <= now {
            report.expired += 1;
        } else if e.established {
            protected.push((e, subject_of(e)));
        } else {
            probation.push((e, subject_of(e)));
        }
    }
    let alive = protected.len() + probation.len();
    let room = table.capacity().saturating_sub(table.slots_in_use());
    // A subject's entry is counted with the first session kept that needs it.
    let mut subjects = HashSet::new();
    let (keep_protected, used) =
        fitting(&protected, room.min(table.protected_cap() as usize), &mut subjects);
    let demoted = protected.split_off(keep_protected);
    probation.extend(demoted);
    let (keep_probation, _) = fitting(&probation, room.saturating_sub(used), &mut subjects);
    probation.truncate(keep_probation);
    let before = table.len();
    // Oldest first: each insertion becomes its segment's most recent.
    let order = probation.iter().rev().map(|e| (e, false));
    for (&(e, subject), established) in order.chain(protected.iter().rev().map(|e| (e, true))) {
        // A key twice in the file: the table holds it once.
        if table.insert(&e.key, &e.record, e.expires, established, now).is_ok()
            && !e.data.is_empty()
        {
            let _ = table.write_data(&e.key, &e.data, subject, now);
        }
    }
    report.loaded = table.len().saturating_sub(before);
    report.left_out = alive - report.loaded;
    report
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same directory (mode
/// 0600, created exclusively, so never through a link someone left there), written and
/// flushed to disk, then renamed over `path`, and the directory flushed. A reader sees the
/// old file or the new one, never a part. The temporary name carries the process ID, so
/// two writers (a worker and a master, or two workers across a reload) never share it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    // Left by a process of the same ID that died mid-write.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // The rename itself is durable once the directory is flushed; a failure here leaves a
    // complete file in place, so it is not reported.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `<file>.<pid>.tmp` beside the file.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::SessionId;
    use crate::table::tests::Owned;
    use crate::table::TableCopy;

    fn key(n: u32) -> StoreKey {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_le_bytes());
        SessionId(id).store_key()
    }

    fn rec(t: u64) -> Record {
        Record {
            created: t,
            issued: t + 1,
            last_seen: t + 2,
            renewed_at: 0,
            ip: 0xdead_beef,
            user_agent: 7,
            hashes: BindingHashes::Keyed,
        }
    }

    fn identity() -> ZoneIdentity {
        ZoneIdentity { secret: [7; 32], name: *b"sAbCdEfGhIjKlMnO", binding_key: [9; 16] }
    }

    /// Stored-form data: a subject shared by every fourth session, and a value of `len`
    /// bytes.
    fn data(i: u32, len: usize) -> Vec<u8> {
        let mut c = crate::data::Changes::new();
        c.set(b"subject", format!("user{}", i % 4).as_bytes());
        c.set(b"cart", &vec![b'x'; len.max(1)]);
        crate::data::Data::new().apply(&c, 1 << 16).unwrap().encoded().to_vec()
    }

    fn snapshot(n: u32) -> Snapshot {
        let entries = (0..n)
            .map(|i| Entry {
                key: key(i),
                record: Record {
                    renewed_at: if i % 5 == 0 { 1005 } else { 0 },
                    hashes: if i % 7 == 0 { BindingHashes::Legacy } else { BindingHashes::Keyed },
                    ..rec(1000 + u64::from(i))
                },
                expires: 5000 + u64::from(i),
                established: i % 3 == 0,
                data: if i % 2 == 0 { data(i, i as usize) } else { Vec::new() },
            })
            .collect();
        Snapshot { identity: identity(), written_at: 4242, entries }
    }

    #[test]
    fn round_trip() {
        for n in [0, 1, 100] {
            let s = snapshot(n);
            let bytes = s.encode();
            let data: usize = s.entries.iter().map(|e| e.data.len()).sum();
            assert_eq!(
                bytes.len(),
                HEADER_LEN
                    + BODY_FIXED_LEN
                    + n as usize * (RECORD_LEN + DATA_LEN_LEN)
                    + data
                    + CHECKSUM_LEN
            );
            assert_eq!(Snapshot::decode(&bytes), Ok(s));
        }
    }

    #[test]
    fn truncated_files_are_refused_with_the_sizes() {
        let bytes = snapshot(10).encode();
        for cut in [0, 3, 8, 20, HEADER_LEN, 100, bytes.len() - 1] {
            match Snapshot::decode(&bytes[..cut]) {
                Err(LoadError::Truncated { have, need }) => {
                    assert_eq!(have, cut);
                    assert!(need > cut, "{cut}: need {need}");
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert_eq!(
            Snapshot::decode(&bytes[..100]).unwrap_err().to_string(),
            format!("truncated (100 of {} bytes)", bytes.len())
        );
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let bytes = snapshot(20).encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Snapshot::decode(&bad).is_err(), "byte {i} flipped and accepted");
        }
        let mut bad = bytes.clone();
        bad[HEADER_LEN + 100] ^= 1;
        assert_eq!(Snapshot::decode(&bad), Err(LoadError::Checksum));
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(Snapshot::decode(&longer), Err(LoadError::Corrupt("bytes after the checksum")));
    }

    #[test]
    fn foreign_files_and_versions_are_refused() {
        assert_eq!(Snapshot::decode(b"hello, world, this is text"), Err(LoadError::NotAStateFile));
        let mut v3 = snapshot(3).encode();
        v3[8] = 3;
        assert_eq!(Snapshot::decode(&v3), Err(LoadError::Version(3)));
        assert_eq!(
            LoadError::Version(3).to_string(),
            "format version 3, this module reads versions 1 and 2"
        );
    }

    /// A file whose checksum is right but whose content is not (a buggy or hostile writer)
    /// is refused, never trusted into the zone.
    #[test]
    fn well_formed_nonsense_is_refused() {
        let reseal = |mut b: Vec<u8>| {
            b.truncate(b.len() - CHECKSUM_LEN);
            let sum = Sha256::digest(&b);
            b.extend_from_slice(&sum);
            b
        };
        let good = snapshot(2).encode();
        let name_at = HEADER_LEN + 32;
        let mut bad_name = good.clone();
        bad_name[name_at] = b';';
        assert_eq!(
            Snapshot::decode(&reseal(bad_name)),
            Err(LoadError::Corrupt("the cookie name is not a token"))
        );
        let count_at = HEADER_LEN + 72;
        let mut bad_count = good.clone();
        bad_count[count_at] = 3;
        assert_eq!(
            Snapshot::decode(&reseal(bad_count)),
            Err(LoadError::Corrupt("record count and length disagree"))
        );
        let first = HEADER_LEN + BODY_FIXED_LEN;
        let mut bad_version = good.clone();
        bad_version[first + 44] = 9;
        assert_eq!(
            Snapshot::decode(&reseal(bad_version)),
            Err(LoadError::Corrupt("unknown record version"))
        );
        let mut bad_flags = good;
        bad_flags[first + 45] = 2;
        assert_eq!(
            Snapshot::decode(&reseal(bad_flags)),
            Err(LoadError::Corrupt("unknown record flags"))
        );
        let mut huge = snapshot(0).encode();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Snapshot::decode(&huge).is_err());
    }

    #[test]
    fn a_table_comes_back_with_its_records_and_lru_order() {
        let mut src = Owned::new(64 * 1024);
        let mut t = src.table();
        for n in 0..300 {
            t.insert(&key(n), &rec(1000), 10_000 + u64::from(n), n % 2 == 0, 1000).unwrap();
        }
        // Bring a few back (protected, most recent first: 10, then 11).
        t.get(&key(11), 1000).unwrap();
        t.get(&key(10), 1000).unwrap();
        let before = t.live_entries(1000);
        assert_eq!(before.len(), 300);
        assert_eq!(before[0].key, key(10));
        let bytes =
            Snapshot { identity: identity(), written_at: 1000, entries: before.clone() }.encode();

        let mut dst = Owned::new(64 * 1024);
        let mut t = dst.table();
        let loaded = Snapshot::decode(&bytes).unwrap();
        let r = restore(&mut t, &loaded.entries, 2000);
        assert_eq!(r, Restored { loaded: 300, expired: 0, left_out: 0 });
        t.check_invariants().unwrap();
        assert_eq!(t.live_entries(2000), before);
        assert_eq!(t.get(&key(5), 2000), Some(rec(1000)));
        assert_eq!(t.evictions_total(), 0);
    }

    #[test]
    fn data_and_subjects_come_back_with_their_sessions() {
        let mut src = Owned::new(64 * 1024);
        let mut t = src.table();
        for n in 0..100 {
            t.insert(&key(n), &rec(1000), 10_000, n % 2 == 0, 1000).unwrap();
            if n % 3 == 0 {
                let d = data(n, n as usize * 3);
                let subject = Data::decode(&d).unwrap().subject().map(subject_key);
                t.write_data(&key(n), &d, subject, 1000).unwrap();
            }
        }
        let before = t.live_entries(1000);
        assert_eq!(before.iter().filter(|e| !e.data.is_empty()).count(), 34);
        let bytes =
            Snapshot { identity: identity(), written_at: 1000, entries: before.clone() }.encode();
        let loaded = Snapshot::decode(&bytes).unwrap();
        assert_eq!(loaded.entries, before);

        let mut dst = Owned::new(64 * 1024);
        let mut t = dst.table();
        let r = restore(&mut t, &loaded.entries, 2000);
        assert_eq!(r, Restored { loaded: 100, expired: 0, left_out: 0 });
        t.check_invariants().unwrap();
        assert_eq!(t.live_entries(2000), before);
        let mut out = Vec::new();
        assert!(t.read_data(&key(9), &mut out));
        assert_eq!(out, data(9, 27));
        // The subject index came back too: user1's sessions are 9, 21, 33, ...
        let user1: Vec<u32> = (0..100).filter(|n| n % 3 == 0 && n % 4 == 1).collect();
        assert_eq!(t.remove_subject(&subject_key(b"user1"), None), user1.len());
        assert!(t.get(&key(9), 2000).is_none());
        t.check_invariants().unwrap();
    }

    #[test]
    fn a_smaller_table_counts_data_when_choosing_what_to_keep() {
        // Fewer under Miri, still more than the small table holds.
        let count = if cfg!(miri) { 300 } else { 1000 };
        let mut src = Owned::new(256 * 1024);
        let mut t = src.table();
        for n in 0..count {
            t.insert(&key(n), &rec(1000), 10_000, false, 1000).unwrap();
            t.write_data(&key(n), &data(n, 80), None, 1000).unwrap();
        }
        let entries = t.live_entries(1000);
        let weight = 1 + chunks_for(entries[0].data.len());
        assert_eq!(weight, 3);

        let mut dst = Owned::new(16 * 1024);
        let mut small = dst.table();
        // Four subjects (user0 to user3), one slot each.
        let fits = (small.capacity() - 4) / weight;
        let r = restore(&mut small, &entries, 1000);
        small.check_invariants().unwrap();
        assert_eq!(r, Restored { loaded: fits, expired: 0, left_out: count as usize - fits });
        assert_eq!(small.evictions_total(), 0, "what was loaded was not pushed out again");
        // The most recent ones, with their data.
        let mut out = Vec::new();
        assert!(small.read_data(&key(count - 1), &mut out));
        assert_eq!(out, data(count - 1, 80));
        assert!(small.get(&key(count - 1 - fits as u32), 1000).is_none());
    }

    /// A file of the format before session data: its records, without the data length.
    fn encode_version_1(s: &Snapshot) -> Vec<u8> {
        let v2 = Snapshot {
            entries: s.entries.iter().map(|e| Entry { data: Vec::new(), ..e.clone() }).collect(),
            ..s.clone()
        }
        .encode();
        let mut body = v2[HEADER_LEN..HEADER_LEN + BODY_FIXED_LEN].to_vec();
        let records = &v2[HEADER_LEN + BODY_FIXED_LEN..v2.len() - CHECKSUM_LEN];
        for r in records.chunks_exact(RECORD_LEN + DATA_LEN_LEN) {
            body.extend_from_slice(&r[..RECORD_LEN]);
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION_WITHOUT_DATA.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    #[test]
    fn a_file_of_the_previous_format_still_loads_without_data() {
        let s = snapshot(30);
        let v1 = encode_version_1(&s);
        assert_eq!(v1.len(), HEADER_LEN + BODY_FIXED_LEN + 30 * RECORD_LEN + CHECKSUM_LEN);
        let loaded = Snapshot::decode(&v1).unwrap();
        let without_data: Vec<Entry> =
            s.entries.iter().map(|e| Entry { data: Vec::new(), ..e.clone() }).collect();
        assert_eq!(loaded.entries, without_data);
        let mut o = Owned::new(64 * 1024);
        let mut t = o.table();
        assert_eq!(restore(&mut t, &loaded.entries, 4000).loaded, 30);
        assert_eq!(t.slots_in_use(), 30);
        // Bad data in a version-2 file is refused.
        let mut bad = snapshot(1);
        bad.entries[0].data = b"\x07not data".to_vec();
        assert_eq!(
            Snapshot::decode(&bad.encode()),
            Err(LoadError::Corrupt("session data not in its stored form"))
        );
    }

    #[test]
    fn expired_records_are_not_loaded() {
        let mut t_owned = Owned::new(64 * 1024);
        let mut t = t_owned.table();
        let s = snapshot(10); // expires 5000 + i
        let r = restore(&mut t, &s.entries, 5004);
        assert_eq!(r, Restored { loaded: 5, expired: 5, left_out: 0 });
        for i in 0..10 {
            assert_eq!(t.get(&key(i), 5004).is_some(), i > 4, "{i}");
        }
    }

    #[test]
    fn a_smaller_table_keeps_the_sessions_in_use_then_the_most_recent() {
        let mut src = Owned::new(256 * 1024);
        let mut t = src.table();
        // 1000 sessions; those divisible by 4 are in use, the rest never came back; older
        // numbers were used less recently.
        for n in 0..1000 {
            t.insert(&key(n), &rec(1000), 10_000, false, 1000).unwrap();
            if n % 4 == 0 {
                t.get(&key(n), 1000).unwrap();
            }
        }
        let entries = t.live_entries(1000);

        let mut dst = Owned::new(16 * 1024);
        let mut small = dst.table();
        let capacity = small.capacity();
        let cap = small.protected_cap() as usize;
        assert!(capacity < 250, "{capacity}");
        let r = restore(&mut small, &entries, 1000);
        small.check_invariants().unwrap();
        assert_eq!(r.loaded, capacity);
        assert_eq!(r.left_out, 1000 - capacity);
        assert_eq!(small.evictions_total(), 0);
        let kept: Vec<u32> = (0..1000).filter(|&n| small.get(&key(n), 1000).is_some()).collect();
        // The `cap` most recent sessions in use, then the most recent of the rest (the
        // demoted older sessions in use come after every session that never came back).
        let in_use: Vec<u32> = (0..1000).rev().filter(|n| n % 4 == 0).take(cap).collect();
        let rest: Vec<u32> = (0..1000).rev().filter(|n| n % 4 != 0).take(capacity - cap).collect();
        let mut expected: Vec<u32> = in_use.into_iter().chain(rest).collect();
        expected.sort_unstable();
        assert_eq!(kept, expected);
    }

    #[test]
    fn write_atomically_replaces_the_file_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "sessions-state-test-{}-{}",
            std::process::id(),
            line!()
        ));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sessions.state");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        // A stale temporary file of this process ID is replaced, not written through.
        fs::write(temp_path(&path), b"stale").unwrap();
        write_atomically(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!temp_path(&path).exists());
        let missing = dir.join("no-such-dir/sessions.state");
        assert!(write_atomically(&missing, b"x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Size and time for 100k sessions; run it with
    /// `cargo test --release -p sessions-core state::tests::numbers_for_100k -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn numbers_for_100k() {
        use std::time::Instant;
        let mut src = Owned::new(8 << 20);
        let mut t = src.table();
        assert!(t.capacity() >= 100_000);
        for n in 0..100_000 {
            t.insert(&key(n), &rec(1000), 10_000, false, 1000).unwrap();
        }
        // Sessions come back in random order, so the LRU lists are scattered over the
        // slots as in a table in use (the walk's cache misses).
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..200_000 {
            t.get(&key(rng.gen_range(0..100_000)), 1000);
        }
        // As the glue does: room made before the lock, one pass under it, the order and
        // the encoding after it.
        let mut copy = TableCopy::default();
        copy.make_room(t.len() + t.len() / 8);
        let start = Instant::now();
        t.copy_into(&mut copy);
        let locked = start.elapsed();
        let start = Instant::now();
        let mut entries = Vec::new();
        copy.live_entries(1000, &mut entries);
        let order = start.elapsed();
        let s = Snapshot { identity: identity(), written_at: 1000, entries };
        let start = Instant::now();
        let bytes = s.encode();
        let encode = start.elapsed();
        let path = std::env::temp_dir().join(format!("sessions-100k-{}.state", std::process::id()));
        let start = Instant::now();
        write_atomically(&path, &bytes).unwrap();
        let write = start.elapsed();
        let start = Instant::now();
        let read = fs::read(&path).unwrap();
        let back = Snapshot::decode(&read).unwrap();
        let decode = start.elapsed();
        let mut dst = Owned::new(8 << 20);
        let mut t2 = dst.table();
        let start = Instant::now();
        let r = restore(&mut t2, &back.entries, 1000);
        let load = start.elapsed();
        assert_eq!(r.loaded, 100_000);
        fs::remove_file(&path).unwrap();
        println!(
            "100k sessions: file {} bytes; copy under the lock {locked:?}, LRU order {order:?}, \
             encode {encode:?}, write+fsync+rename {write:?}; read+decode {decode:?}, \
             load {load:?}",
            bytes.len()
        );
    }
}
