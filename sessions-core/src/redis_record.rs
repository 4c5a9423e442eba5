//! What a session looks like in Redis: key names and the compact value.
//!
//! Keys: `s:` + the store key in base64url (24 characters) for a session, `u:` + the
//! subject key in base64url for the set of a subject's session keys. Neither holds the raw
//! ID nor the subject itself.
//!
//! Value (version 3): `[3][flags][created: varint][issued - created][last_seen - issued]
//! [renewed_at - last_seen, when renewed][ip: u32 LE][user_agent: u32 LE]` followed by the
//! session's data in its stored form ([`Data`]), so that one `GET` reads both. Time
//! differences are zigzag varints (instances' clocks differ: a difference may be negative).
//! A session without data takes 17–20 bytes, which Redis keeps in one 48-byte allocation
//! with its object header (the version-2 value took 41 bytes, 64 with the header).
//!
//! Records of earlier versions (`ngx_sessions:<hex>` keys with 41-byte values) are not
//! read: after an upgrade, Redis sessions start afresh (README).

use crate::cookie::{SessionId, StoreKey};
use crate::data::Data;
use crate::session::{BindingHashes, Record};

/// Prefix of a session's key.
pub const SESSION_PREFIX: &[u8] = b"s:";
/// Prefix of a subject's set.
pub const SUBJECT_PREFIX: &[u8] = b"u:";
/// The value's version byte.
pub const VERSION: u8 = 3;
const FLAG_LEGACY_HASHES: u8 = 1;
const FLAG_RENEWED: u8 = 2;
/// The longest record part of a value: two bytes, four varints of up to 10 bytes, 8 bytes.
const MAX_RECORD_LEN: usize = 2 + 4 * 10 + 8;

/// 16 bytes as `<prefix><22 base64url characters>`.
fn prefixed(prefix: &[u8], bytes: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 22);
    k.extend_from_slice(prefix);
    // The ID's encoding is the one base64url of 16 bytes there is.
    k.extend_from_slice(&SessionId(*bytes).encode());
    k
}

/// `s:<base64url of the store key>`: never the raw ID.
pub fn session_key(key: &StoreKey) -> Vec<u8> {
    prefixed(SESSION_PREFIX, &key.0)
}

/// `u:<base64url of the subject key>` (a [`crate::data::subject_key`]).
pub fn subject_set_key(subject: &[u8; 16]) -> Vec<u8> {
    prefixed(SUBJECT_PREFIX, subject)
}

fn zigzag(d: u64) -> u64 {
    let d = d as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> u64 {
    ((z >> 1) as i64 ^ -((z & 1) as i64)) as u64
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        // The tenth byte may only carry the top bit of 64.
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn take_u32(bytes: &mut &[u8]) -> Option<u32> {
    let (head, rest) = bytes.split_at_checked(4)?;
    *bytes = rest;
    Some(u32::from_le_bytes([head[0], head[1], head[2], head[3]]))
}

/// The value of a session: its record, then its data.
pub fn encode(rec: &Record, data: &Data) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_RECORD_LEN + data.len());
    let mut flags = 0;
    if rec.hashes == BindingHashes::Legacy {
        flags |= FLAG_LEGACY_HASHES;
    }
    if rec.renewed_at != 0 {
        flags |= FLAG_RENEWED;
    }
    out.push(VERSION);
    out.push(flags);
    put_varint(&mut out, rec.created);
    put_varint(&mut out, zigzag(rec.issued.wrapping_sub(rec.created)));
    put_varint(&mut out, zigzag(rec.last_seen.wrapping_sub(rec.issued)));
    if rec.renewed_at != 0 {
        put_varint(&mut out, zigzag(rec.renewed_at.wrapping_sub(rec.last_seen)));
    }
    out.extend_from_slice(&rec.ip.to_le_bytes());
    out.extend_from_slice(&rec.user_agent.to_le_bytes());
    out.extend_from_slice(data.encoded());
    out
}

/// Reads a session's value; `None` for anything else (another version, a foreign or
/// corrupted value), which is never trusted.
pub fn decode(value: &[u8]) -> Option<(Record, Data)> {
    let [VERSION, flags, rest @ ..] = value else { return None };
    if flags & !(FLAG_LEGACY_HASHES | FLAG_RENEWED) != 0 {
        return None;
    }
    let mut rest = rest;
    let created = take_varint(&mut rest)?;
    let issued = created.wrapping_add(unzigzag(take_varint(&mut rest)?));
    let last_seen = issued.wrapping_add(unzigzag(take_varint(&mut rest)?));
    let renewed_at = match flags & FLAG_RENEWED {
        0 => 0,
        _ => last_seen.wrapping_add(unzigzag(take_varint(&mut rest)?)),
    };
    // A renewal at time 0 would read back as "not renewed".
    if flags & FLAG_RENEWED != 0 && renewed_at == 0 {
        return None;
    }
    let ip = take_u32(&mut rest)?;
    let user_agent = take_u32(&mut rest)?;
    let hashes = match flags & FLAG_LEGACY_HASHES {
        0 => BindingHashes::Keyed,
        _ => BindingHashes::Legacy,
    };
    let data = Data::decode(rest)?;
    Some((Record { created, issued, last_seen, renewed_at, ip, user_agent, hashes }, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Changes;

    fn data() -> Data {
        let mut c = Changes::new();
        c.set(b"user", b"alice");
        c.set(b"subject", b"42");
        Data::new().apply(&c, 1024).unwrap()
    }

    #[test]
    fn keys_are_short_and_hide_the_id() {
        let id = SessionId::random();
        let k = session_key(&id.store_key());
        assert_eq!(k.len(), 24);
        assert!(k.starts_with(b"s:"));
        assert!(!k.windows(22).any(|w| w == id.encode()));
        assert!(k[2..].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
        let u = subject_set_key(&crate::data::subject_key(b"alice"));
        assert_eq!((u.len(), &u[..2]), (24, &b"u:"[..]));
    }

    #[test]
    fn values_round_trip_and_are_compact() {
        let now = 1_780_000_000;
        let r = Record {
            created: now,
            issued: now + 3600,
            last_seen: now + 3700,
            renewed_at: 0,
            ip: 0xdead_beef,
            user_agent: 7,
            hashes: BindingHashes::Keyed,
        };
        let v = encode(&r, &Data::new());
        // At most 28 bytes: Redis keeps the value in one 48-byte allocation with its header.
        assert_eq!(v.len(), 19);
        assert_eq!(encode(&Record { issued: now, last_seen: now, ..r }, &Data::new()).len(), 17);
        assert_eq!(decode(&v), Some((r, Data::new())));
        let d = data();
        let v = encode(&r, &d);
        assert_eq!(v.len(), 19 + d.len());
        assert_eq!(decode(&v), Some((r, d.clone())));
        // Clock skew between instances: times before `created`; a renewal; legacy hashes.
        let odd = Record {
            issued: now - 3,
            last_seen: now - 5,
            renewed_at: now - 4,
            hashes: BindingHashes::Legacy,
            ..r
        };
        assert_eq!(decode(&encode(&odd, &d)), Some((odd, d)));
        for extreme in [0, 1, u64::MAX, u64::MAX / 2] {
            let e = Record {
                created: extreme,
                issued: u64::MAX - extreme,
                last_seen: extreme,
                renewed_at: extreme.max(1),
                ..r
            };
            assert_eq!(decode(&encode(&e, &Data::new())), Some((e, Data::new())));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let v = encode(&Record { created: 5, ..Record::default() }, &data());
        // The record part takes 13 bytes here, then come two entries (12 + 12 bytes); a cut
        // anywhere else leaves no value.
        assert!(decode(&v[..13]).is_some_and(|(_, d)| d.is_empty()));
        for cut in (0..13).chain(14..25).chain(26..v.len()) {
            assert_eq!(decode(&v[..cut]), None, "cut at {cut}");
        }
        let mut bad = v.clone();
        bad[0] = 2;
        assert_eq!(decode(&bad), None, "version 2");
        bad = v.clone();
        bad[1] = 4;
        assert_eq!(decode(&bad), None, "unknown flag");
        bad = v.clone();
        bad.push(0);
        assert_eq!(decode(&bad), None, "data that is no stored form");
        assert_eq!(
            decode(&[VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            None
        );
        assert_eq!(decode(&[0; 41]), None, "a version-2 value");
    }
}
