//! Session data: the named values NGINX configuration and the application keep in a
//! session (`sessions_set`, `$session_data_<key>`), and what a response asks of the
//! session (`sessions_renew`, `sessions_destroy`).
//!
//! Stored form (the same in shared memory, in Redis and in the state file): entries sorted
//! by key, each `[key length: u8][key][value length: u16 LE][value]`. The stored size —
//! what `sessions_data_size` limits — is the length of that encoding. Values are any bytes;
//! keys are 1–64 characters of `[a-z0-9_]` (checked at configuration).

use sha2::{Digest, Sha256};

use crate::cookie::SessionId;

/// The longest key.
pub const MAX_KEY_LEN: usize = 64;
/// The largest `sessions_data_size`.
pub const MAX_DATA_SIZE: usize = 64 * 1024;
/// `sessions_data_size`'s default.
pub const DEFAULT_DATA_SIZE: usize = 1024;
/// The key that names who the session belongs to; sessions are indexed by it.
pub const SUBJECT: &[u8] = b"subject";
/// Bytes an entry takes besides its key and value.
const ENTRY_OVERHEAD: usize = 1 + 2;

/// Whether `key` may name a value: 1–64 characters of `[a-z0-9_]`.
pub fn valid_key(key: &[u8]) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len())
        && key.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// What the subject index is keyed by: a hash of the subject, the same in every worker and
/// every instance (and never the subject itself in a store key).
pub fn subject_key(subject: &[u8]) -> [u8; 16] {
    let digest =
        Sha256::new_with_prefix(b"ngx_sessions subject\0").chain_update(subject).finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// A session's data, in its stored form (always well formed).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Data {
    encoded: Vec<u8>,
}

impl core::fmt::Debug for Data {
    /// Keys only: values may be personal data.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let keys: Vec<_> =
            self.iter().map(|(k, v)| (String::from_utf8_lossy(k), v.len())).collect();
        f.debug_struct("Data").field("keys_and_value_lengths", &keys).finish()
    }
}

/// One entry read from the front of `bytes`: key, value, and the rest.
fn split_entry(bytes: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (&klen, rest) = bytes.split_first()?;
    let (key, rest) = rest.split_at_checked(klen as usize)?;
    let (vlen, rest) = rest.split_at_checked(2)?;
    let vlen = u16::from_le_bytes([vlen[0], vlen[1]]) as usize;
    let (value, rest) = rest.split_at_checked(vlen)?;
    Some((key, value, rest))
}

/// Whether `bytes` is a stored form: keys valid, strictly increasing, no empty value,
/// lengths within the bytes, at most [`MAX_DATA_SIZE`] in all.
fn is_stored_form(bytes: &[u8]) -> bool {
    if bytes.len() > MAX_DATA_SIZE {
        return false;
    }
    let mut rest = bytes;
    let mut previous: Option<&[u8]> = None;
    while !rest.is_empty() {
        let Some((key, value, next)) = split_entry(rest) else { return false };
        if !valid_key(key) || value.is_empty() || previous.is_some_and(|p| p >= key) {
            return false;
        }
        previous = Some(key);
        rest = next;
    }
    true
}

impl Data {
    pub fn new() -> Self {
        Data::default()
    }

    /// Reads a stored form; `None` when it is not one (corrupted, or not ours): keys valid,
    /// strictly increasing, no empty value, lengths within the bytes, at most
    /// [`MAX_DATA_SIZE`] in all.
    pub fn decode(bytes: &[u8]) -> Option<Data> {
        is_stored_form(bytes).then(|| Data { encoded: bytes.to_vec() })
    }

    /// [`Data::decode`] of bytes the caller owns: no copy (the request path reads the data
    /// from the store into a buffer of its own, then keeps it).
    pub fn from_vec(bytes: Vec<u8>) -> Option<Data> {
        is_stored_form(&bytes).then_some(Data { encoded: bytes })
    }

    /// The stored form.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The stored size, what `sessions_data_size` limits.
    pub fn len(&self) -> usize {
        self.encoded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut rest = &self.encoded[..];
        core::iter::from_fn(move || {
            let (key, value, next) = split_entry(rest)?;
            rest = next;
            Some((key, value))
        })
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Who the session belongs to (the `subject` key), if anyone.
    pub fn subject(&self) -> Option<&[u8]> {
        self.get(SUBJECT)
    }

    /// The data after `changes`, or why they cannot all be applied (then none is).
    pub fn apply(&self, changes: &Changes, limit: usize) -> Result<Data, TooLarge> {
        // Few keys per session: a sorted vector of borrowed entries is the whole map.
        let mut entries: Vec<(&[u8], &[u8])> = self.iter().collect();
        for (key, value) in changes.iter() {
            match entries.binary_search_by(|(k, _)| (*k).cmp(key)) {
                Ok(i) if value.is_empty() => {
                    entries.remove(i);
                }
                Ok(i) => entries[i].1 = value,
                Err(_) if value.is_empty() => {}
                Err(i) => entries.insert(i, (key, value)),
            }
        }
        let size: usize = entries.iter().map(|(k, v)| ENTRY_OVERHEAD + k.len() + v.len()).sum();
        let oversized_value = entries.iter().any(|(_, v)| v.len() > u16::MAX as usize);
        if size > limit.min(MAX_DATA_SIZE) || oversized_value {
            return Err(TooLarge { size, limit });
        }
        let mut encoded = Vec::with_capacity(size);
        for (key, value) in entries {
            encoded.push(key.len() as u8);
            encoded.extend_from_slice(key);
            encoded.extend_from_slice(&(value.len() as u16).to_le_bytes());
            encoded.extend_from_slice(value);
        }
        Ok(Data { encoded })
    }
}

/// The data a response's changes would have made: larger than `sessions_data_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub size: usize,
    pub limit: usize,
}

/// The `sessions_set` of one response, in configuration order: each sets a key, an empty
/// value removes it. Keys are valid (checked at configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    sets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Changes {
    pub fn new() -> Self {
        Changes::default()
    }

    /// Sets `key` to `value` (removes it when `value` is empty); a later set of the same
    /// key wins.
    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        debug_assert!(valid_key(key));
        self.sets.push((key.to_vec(), value.to_vec()));
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.sets.iter().map(|(k, v)| (&k[..], &v[..]))
    }

    /// Whether the changes touch the subject (the index must follow).
    pub fn touches_subject(&self) -> bool {
        self.sets.iter().any(|(k, _)| k == SUBJECT)
    }
}

/// `sessions_destroy`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destroy {
    /// This session (every worker, every instance); the cookie is expired.
    This,
    /// Every other session of this session's subject; this one is kept.
    Others,
    /// Every session of this session's subject, this one included.
    All,
}

/// What one response asks of its session, applied in this order when its header goes out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub changes: Changes,
    /// `sessions_renew`: a new ID now; the old one dies at once.
    pub renew: bool,
    pub destroy: Option<Destroy>,
}

impl Actions {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && !self.renew && self.destroy.is_none()
    }
}

/// What a response does to its session cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieChange {
    /// Nothing more than the evaluation decided.
    Keep,
    /// `Set-Cookie` with this ID (an explicit renewal).
    Set(SessionId),
    /// `Set-Cookie: <name>=; Max-Age=0` with the same Path and Domain (destroyed).
    Expire,
}

/// Why a response's data changes were not applied (one `[error]` line each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The data would have been larger than `sessions_data_size`.
    TooLarge(TooLarge),
    /// The session is gone (destroyed or expired meanwhile): never brought back.
    Gone,
    /// The store could not be used (no room, Redis failed or timed out).
    Store,
}

/// What applying a response's [`Actions`] did, whichever the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The session's ID after the response; `None` once destroyed.
    pub id: Option<SessionId>,
    /// The session's data after the response (what `$session_data_*` reads from then on).
    pub data: Data,
    pub cookie: CookieChange,
    /// This session was destroyed (`this`, `all`).
    pub destroyed_this: bool,
    /// Other sessions of the subject destroyed (`others`, `all`).
    pub destroyed_others: usize,
    /// Why the data changes were not applied, if they were not. Renewal and destruction are
    /// applied even then: a login's new ID and a logout must not depend on the data.
    pub refused: Option<Refused>,
}

impl Applied {
    /// Nothing done: the session goes on under `id` with `data` (and `refused` says why the
    /// changes were not applied, if they were asked for).
    pub fn unchanged(id: SessionId, data: Data, refused: Option<Refused>) -> Self {
        Applied {
            id: Some(id),
            data,
            cookie: CookieChange::Keep,
            destroyed_this: false,
            destroyed_others: 0,
            refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(sets: &[(&str, &str)]) -> Changes {
        let mut c = Changes::new();
        for (k, v) in sets {
            c.set(k.as_bytes(), v.as_bytes());
        }
        c
    }

    #[test]
    fn keys_are_checked() {
        assert!(valid_key(b"user"));
        assert!(valid_key(b"a_1"));
        assert!(valid_key(&[b'k'; 64]));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'k'; 65]));
        assert!(!valid_key(b"User"));
        assert!(!valid_key(b"a-b"));
        assert!(!valid_key(b"a b"));
    }

    #[test]
    fn set_get_remove_in_key_order() {
        let d = Data::new()
            .apply(&changes(&[("user", "alice"), ("human", "1"), ("subject", "42")]), 1024)
            .unwrap();
        let keys: Vec<_> = d.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(keys, [b"human".to_vec(), b"subject".to_vec(), b"user".to_vec()]);
        assert_eq!(d.get(b"user"), Some(&b"alice"[..]));
        assert_eq!(d.subject(), Some(&b"42"[..]));
        assert_eq!(d.len(), 3 * 3 + 5 + 1 + 7 + 2 + 4 + 5);
        let d2 = d.apply(&changes(&[("user", ""), ("human", "2"), ("absent", "")]), 1024).unwrap();
        assert_eq!(d2.get(b"user"), None);
        assert_eq!(d2.get(b"human"), Some(&b"2"[..]));
        assert_eq!(Data::decode(d2.encoded()), Some(d2.clone()));
        let empty = d2.apply(&changes(&[("human", ""), ("subject", "")]), 1024).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn the_last_set_of_a_key_wins() {
        let d = Data::new().apply(&changes(&[("a", "1"), ("a", ""), ("a", "3")]), 64).unwrap();
        assert_eq!(d.get(b"a"), Some(&b"3"[..]));
    }

    #[test]
    fn too_large_applies_nothing() {
        let d = Data::new().apply(&changes(&[("a", "1")]), 10).unwrap();
        let big = "x".repeat(8);
        assert_eq!(
            d.apply(&changes(&[("b", "2"), ("c", &big)]), 10),
            Err(TooLarge { size: 5 + 5 + 12, limit: 10 })
        );
        // Removing makes room.
        assert!(d.apply(&changes(&[("a", ""), ("c", "1234")]), 10).is_ok());
        // Limit 0: data off.
        assert!(Data::new().apply(&changes(&[("a", "1")]), 0).is_err());
        assert!(Data::new().apply(&changes(&[("a", "")]), 0).unwrap().is_empty());
        let huge = "y".repeat(70_000);
        assert!(Data::new().apply(&changes(&[("a", &huge)]), usize::MAX).is_err());
    }

    #[test]
    fn decode_refuses_what_is_not_a_stored_form() {
        assert_eq!(Data::decode(b""), Some(Data::new()));
        assert_eq!(Data::from_vec(b"\x01a\x01\x00x".to_vec()).map(|d| d.len()), Some(5));
        for bad in [
            &b"\x01a"[..],                   // no value length
            b"\x01a\x02\x00x",               // value cut short
            b"\x01A\x01\x00x",               // key not allowed
            b"\x00\x01\x00x",                // empty key
            b"\x01a\x00\x00",                // empty value
            b"\x01b\x01\x00x\x01a\x01\x00y", // not sorted
            b"\x01a\x01\x00x\x01a\x01\x00y", // twice
        ] {
            assert_eq!(Data::decode(bad), None, "{bad:?}");
            assert_eq!(Data::from_vec(bad.to_vec()), None, "{bad:?}");
        }
    }

    #[test]
    fn subject_keys_differ_and_are_stable() {
        assert_eq!(subject_key(b"alice"), subject_key(b"alice"));
        assert_ne!(subject_key(b"alice"), subject_key(b"bob"));
    }

    #[test]
    fn debug_shows_no_values() {
        let d = Data::new().apply(&changes(&[("user", "secret-value")]), 64).unwrap();
        assert!(!format!("{d:?}").contains("secret-value"));
    }
}
