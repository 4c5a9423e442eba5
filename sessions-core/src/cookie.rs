//! The session cookie: finding it in `Cookie` headers, its signed value, and the
//! `Set-Cookie` line. Pure Rust, no NGINX types.
//!
//! Value layout: `<id>.<tag>`, both unpadded base64url of 16 bytes (22 characters each):
//! `id` is the random session ID, `tag` the first 16 bytes of
//! HMAC-SHA256(secret, 0x01 ‖ len(name) ‖ name ‖ id). Binding the cookie name means a value
//! cannot be replayed under another cookie name signed with the same secret.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Random bytes in a session ID (128 bits, OWASP / ASVS 5.0 7.2.3).
pub const ID_LEN: usize = 16;
/// Bytes of the HMAC kept in the cookie.
pub const TAG_LEN: usize = 16;
/// Characters of one base64url-encoded 16-byte field.
pub const B64_LEN: usize = 22;
/// Characters of the whole cookie value.
pub const VALUE_LEN: usize = 2 * B64_LEN + 1;
/// Characters of `$session_id_hash`.
pub const ID_HASH_LEN: usize = 16;
/// Cookies with our name looked at per request; more are ignored (bounded work).
pub const MAX_CANDIDATES: usize = 8;

const DOMAIN_TAG: u8 = 0x01;
const DOMAIN_SUCCESSOR: u8 = 0x02;
const DOMAIN_LOG: u8 = 0x03;
const DOMAIN_STORE_KEY: &[u8] = b"ngx_http_sessions_module store key v1";

/// A session ID as carried in the cookie.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SessionId(pub [u8; ID_LEN]);

/// What the session table is keyed by: a hash of the ID, never the ID itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, PartialOrd, Ord, Hash)]
pub struct StoreKey(pub [u8; 16]);

impl SessionId {
    /// A fresh ID from the process's CSPRNG (see [`fill_random`]).
    pub fn random() -> Self {
        let mut id = [0u8; ID_LEN];
        fill_random(&mut id);
        SessionId(id)
    }

    /// The ID part of the cookie (what `$session_id` shows).
    pub fn encode(&self) -> [u8; B64_LEN] {
        let mut out = [0u8; B64_LEN];
        b64url_encode16(&self.0, &mut out);
        out
    }

    pub fn store_key(&self) -> StoreKey {
        let digest = Sha256::new().chain_update(DOMAIN_STORE_KEY).chain_update(self.0).finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        StoreKey(key)
    }
}

thread_local! {
    /// ChaCha12 seeded from the OS, tagged with the process it was seeded in.
    static RNG: std::cell::RefCell<Option<(u32, rand::rngs::StdRng)>> =
        const { std::cell::RefCell::new(None) };
}

/// Fills `buf` from a CSPRNG that is never shared across `fork`: NGINX workers are forked
/// from the master (and re-forked on reload), and a generator state inherited from the
/// parent would hand out the same IDs in every worker. The generator is seeded from the
/// OS in the process that uses it, and reseeded when the process ID changes.
pub fn fill_random(buf: &mut [u8]) {
    use rand::{RngCore, SeedableRng};
    let pid = std::process::id();
    RNG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rng = match &mut *slot {
            Some((owner, rng)) if *owner == pid => rng,
            _ => &mut slot.insert((pid, rand::rngs::StdRng::from_entropy())).1,
        };
        rng.fill_bytes(buf);
    });
}

/// The keyed operations of one secret. Cloning a keyed HMAC is a memcpy, so the key
/// schedule is paid once, at configuration time.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mac = match Hmac::<Sha256>::new_from_slice(secret) {
            Ok(mac) => mac,
            Err(_) => unreachable_hmac(),
        };
        Signer { mac }
    }

    fn tag(&self, name: &[u8], id: &SessionId) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        // Cookie names are tokens well under 256 bytes (checked at configuration time).
        mac.update(&[DOMAIN_TAG, name.len().min(255) as u8]);
        mac.update(name);
        mac.update(&id.0);
        mac
    }

    /// The cookie value for `id` under cookie `name`.
    pub fn seal(&self, name: &[u8], id: &SessionId) -> [u8; VALUE_LEN] {
        let tag = self.tag(name, id).finalize().into_bytes();
        let mut out = [0u8; VALUE_LEN];
        b64url_encode16(&id.0, &mut out[..B64_LEN]);
        out[B64_LEN] = b'.';
        let mut tag16 = [0u8; TAG_LEN];
        tag16.copy_from_slice(&tag[..TAG_LEN]);
        b64url_encode16(&tag16, &mut out[B64_LEN + 1..]);
        out
    }

    /// Checks format and signature of a cookie value; the tag comparison is constant-time.
    pub fn open(&self, name: &[u8], value: &[u8]) -> Option<SessionId> {
        let value = strip_quotes(value);
        if value.len() != VALUE_LEN || value[B64_LEN] != b'.' {
            return None;
        }
        let id = b64url_decode16(&value[..B64_LEN])?;
        let tag = b64url_decode16(&value[B64_LEN + 1..])?;
        let id = SessionId(id);
        self.tag(name, &id).verify_truncated_left(&tag).ok()?;
        Some(id)
    }

    /// The ID that replaces `id` at renewal. Derived, not random, so that every request
    /// (on any worker or instance) that renews the same ID arrives at the same successor,
    /// and the store never has to hold a raw ID to hand it out during the grace period.
    pub fn successor(&self, id: &SessionId) -> SessionId {
        let mut mac = self.mac.clone();
        mac.update(&[DOMAIN_SUCCESSOR]);
        mac.update(&id.0);
        let out = mac.finalize().into_bytes();
        let mut next = [0u8; ID_LEN];
        next.copy_from_slice(&out[..ID_LEN]);
        SessionId(next)
    }

    /// `$session_id_hash`: 16 hex characters, stable for an ID, useless without the secret.
    pub fn log_hash(&self, id: &SessionId) -> [u8; ID_HASH_LEN] {
        let mut mac = self.mac.clone();
        mac.update(&[DOMAIN_LOG]);
        mac.update(&id.0);
        let out = mac.finalize().into_bytes();
        let mut hex = [0u8; ID_HASH_LEN];
        hex_encode(&out[..ID_HASH_LEN / 2], &mut hex);
        hex
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // Hmac<Sha256>::new_from_slice accepts every key length.
    std::process::abort()
}

/// A fingerprint of a secret for the log: 16 hex characters of SHA-256 over a label and
/// the secret. Lets operators compare instances without revealing anything usable.
pub fn fingerprint(secret: &[u8]) -> [u8; 16] {
    let digest =
        Sha256::new().chain_update(b"ngx_http_sessions_module fingerprint").chain_update(secret);
    let digest = digest.finalize();
    let mut hex = [0u8; 16];
    hex_encode(&digest[..8], &mut hex);
    hex
}

/// Calls `found` with the value of every cookie named exactly `name` in one `Cookie`
/// header value. Pairs are separated by `;` only (RFC 6265bis; a `,` is part of a value);
/// whitespace around pairs is ignored; names match byte for byte.
pub fn for_each_named<'a>(header: &'a [u8], name: &[u8], mut found: impl FnMut(&'a [u8])) {
    for pair in header.split(|&b| b == b';') {
        let pair = trim_ows(pair);
        if pair.len() > name.len() && pair.starts_with(name) && pair[name.len()] == b'=' {
            found(trim_ows(&pair[name.len() + 1..]));
        }
    }
}

/// What the cookies of a request say, before any store access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Incoming {
    /// No cookie with our name.
    Absent,
    /// Exactly one distinct value with our name verifies.
    Verified(SessionId),
    /// Cookies with our name came, but none or more than one verified.
    Invalid,
}

/// Collects cookie values with our name across several header lines and decides which
/// one, if any, is the session. Identical values count once.
pub struct CookieCollector<'s> {
    signer: &'s Signer,
    name: &'s [u8],
    seen: usize,
    verified: Option<SessionId>,
    conflict: bool,
}

impl<'s> CookieCollector<'s> {
    pub fn new(signer: &'s Signer, name: &'s [u8]) -> Self {
        CookieCollector { signer, name, seen: 0, verified: None, conflict: false }
    }

    pub fn header(&mut self, value: &[u8]) {
        let (signer, name) = (self.signer, self.name);
        for_each_named(value, name, |v| {
            self.seen += 1;
            if self.seen > MAX_CANDIDATES {
                return;
            }
            if let Some(id) = signer.open(name, v) {
                match self.verified {
                    Some(prev) if prev != id => self.conflict = true,
                    _ => self.verified = Some(id),
                }
            }
        });
    }

    pub fn finish(self) -> Incoming {
        match (self.seen, self.verified, self.conflict) {
            (0, _, _) => Incoming::Absent,
            (_, Some(id), false) => Incoming::Verified(id),
            _ => Incoming::Invalid,
        }
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn strip_quotes(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_encode16(src: &[u8; 16], out: &mut [u8]) {
    let mut o = 0;
    for chunk in src.chunks(3) {
        let n = match *chunk {
            [a, b, c] => (a as u32) << 16 | (b as u32) << 8 | c as u32,
            [a] => (a as u32) << 16,
            _ => 0, // 16 = 5 * 3 + 1: the only partial chunk has one byte
        };
        let chars = if chunk.len() == 3 { 4 } else { 2 };
        for i in 0..chars {
            out[o] = B64URL[(n >> (18 - 6 * i) & 63) as usize];
            o += 1;
        }
    }
}

fn b64url_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    } as u32)
}

/// Strict decoding of exactly 22 characters into 16 bytes: the unused low bits of the
/// last character must be zero, so that every ID has exactly one encoding.
fn b64url_decode16(src: &[u8]) -> Option<[u8; 16]> {
    if src.len() != B64_LEN {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, quad) in src[..20].chunks(4).enumerate() {
        let mut n = 0u32;
        for &c in quad {
            n = n << 6 | b64url_value(c)?;
        }
        out[3 * i] = (n >> 16) as u8;
        out[3 * i + 1] = (n >> 8) as u8;
        out[3 * i + 2] = n as u8;
    }
    let last = b64url_value(src[20])? << 6 | b64url_value(src[21])?;
    if last & 0xf != 0 {
        return None;
    }
    out[15] = (last >> 4) as u8;
    Some(out)
}

fn hex_encode(src: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in src.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

/// RFC 9110 `tchar`, the characters of a cookie name.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// The `SameSite` attribute.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// `sessions_cookie_secure`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Secure {
    /// `Secure` on https requests only.
    Auto,
    On,
    Off,
}

/// Why a cookie configuration is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AttrError {
    NameNotToken,
    BadAttributeChar(&'static str),
    AttributeTooLong(&'static str),
    PathNotAbsolute,
    HostPrefixWithDomain,
    HostPrefixWithPath,
    PrefixWithoutSecure,
    SameSiteNoneWithoutSecure,
}

impl std::fmt::Display for AttrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrError::NameNotToken => {
                f.write_str("cookie name must be an RFC 6265 token (letters, digits, !#$%&'*+-.^_`|~)")
            }
            AttrError::BadAttributeChar(what) => {
                write!(f, "cookie {what} must not contain control characters, spaces, \";\" or \",\"")
            }
            AttrError::AttributeTooLong(what) => {
                write!(f, "cookie {what} is longer than 1024 bytes (browsers ignore it)")
            }
            AttrError::PathNotAbsolute => f.write_str("cookie path must start with \"/\""),
            AttrError::HostPrefixWithDomain => {
                f.write_str("a \"__Host-\" cookie must not have a domain (RFC 6265bis)")
            }
            AttrError::HostPrefixWithPath => {
                f.write_str("a \"__Host-\" cookie must have path \"/\" (RFC 6265bis)")
            }
            AttrError::PrefixWithoutSecure => f.write_str(
                "\"__Host-\" and \"__Secure-\" cookies need Secure; \"sessions_cookie_secure off\" contradicts the name",
            ),
            AttrError::SameSiteNoneWithoutSecure => {
                f.write_str("\"SameSite=None\" needs Secure; \"sessions_cookie_secure off\" contradicts it")
            }
        }
    }
}

/// Checks a cookie attribute value (Domain, Path) for what would break the header.
pub fn check_attribute(value: &[u8], what: &'static str) -> Result<(), AttrError> {
    if value.len() > 1024 {
        return Err(AttrError::AttributeTooLong(what));
    }
    if value.iter().any(|&c| c <= b' ' || c == 0x7f || c == b';' || c == b',') {
        return Err(AttrError::BadAttributeChar(what));
    }
    Ok(())
}

/// The attributes that follow `name=value` in every `Set-Cookie`, validated once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieAttrs {
    pub domain: Option<Vec<u8>>,
    pub path: Vec<u8>,
    pub samesite: SameSite,
    pub secure: Secure,
}

impl CookieAttrs {
    /// Validates the attributes for a cookie called `name` (which may be `None` while a
    /// random name is not yet known; random names never carry a prefix) and resolves
    /// `auto` where the name or SameSite demands Secure on every request.
    pub fn validate(&mut self, name: Option<&[u8]>) -> Result<(), AttrError> {
        if let Some(name) = name {
            if !is_token(name) || name.len() > 255 {
                return Err(AttrError::NameNotToken);
            }
        }
        if let Some(domain) = &self.domain {
            check_attribute(domain, "domain")?;
        }
        check_attribute(&self.path, "path")?;
        if !self.path.starts_with(b"/") {
            return Err(AttrError::PathNotAbsolute);
        }
        let host = name.is_some_and(|n| n.starts_with(b"__Host-"));
        let secure_prefix = host || name.is_some_and(|n| n.starts_with(b"__Secure-"));
        if host && self.domain.is_some() {
            return Err(AttrError::HostPrefixWithDomain);
        }
        if host && self.path != b"/" {
            return Err(AttrError::HostPrefixWithPath);
        }
        let needs_secure = secure_prefix || self.samesite == SameSite::None;
        if needs_secure {
            match self.secure {
                Secure::Off if secure_prefix => return Err(AttrError::PrefixWithoutSecure),
                Secure::Off => return Err(AttrError::SameSiteNoneWithoutSecure),
                // The browser would drop the cookie on plain http anyway.
                Secure::Auto => self.secure = Secure::On,
                Secure::On => {}
            }
        }
        Ok(())
    }

    /// Everything after the value, e.g. `; Domain=a.example; Path=/; HttpOnly; SameSite=Lax`.
    /// `Secure` is left out: it is decided per request.
    pub fn suffix(&self) -> Vec<u8> {
        let mut s = Vec::with_capacity(64);
        if let Some(domain) = &self.domain {
            s.extend_from_slice(b"; Domain=");
            s.extend_from_slice(domain);
        }
        s.extend_from_slice(b"; Path=");
        s.extend_from_slice(&self.path);
        s.extend_from_slice(b"; HttpOnly; SameSite=");
        s.extend_from_slice(self.samesite.as_str().as_bytes());
        s
    }
}

/// Writes `name=value<suffix>[; Secure]` into `out` and returns the length written;
/// `out` must hold `set_cookie_len(..)` bytes.
pub fn set_cookie_len(name: &[u8], suffix: &[u8], secure: bool) -> usize {
    name.len() + 1 + VALUE_LEN + suffix.len() + if secure { SECURE.len() } else { 0 }
}

const SECURE: &[u8] = b"; Secure";

pub fn write_set_cookie(
    out: &mut [u8],
    name: &[u8],
    value: &[u8; VALUE_LEN],
    suffix: &[u8],
    secure: bool,
) -> usize {
    let mut n = 0;
    let secure: &[u8] = if secure { SECURE } else { b"" };
    for part in [name, b"=", &value[..], suffix, secure] {
        out[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    n
}

/// A random cookie name: `s` followed by 15 letters and digits (an RFC 6265 token that
/// does not look like any framework's default).
pub fn random_name() -> [u8; 16] {
    const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut name = [0u8; 16];
    name[0] = b's';
    // Made once per zone, in the master: straight from the OS, no generator state left
    // behind for the workers to inherit.
    let mut rng = rand::rngs::OsRng;
    for c in &mut name[1..] {
        *c = ALNUM[rand::Rng::gen_range(&mut rng, 0..ALNUM.len())];
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn seal_open_round_trip() {
        let s = signer();
        let id = SessionId([7; 16]);
        let v = s.seal(b"sid", &id);
        assert_eq!(v.len(), VALUE_LEN);
        assert_eq!(s.open(b"sid", &v), Some(id));
        assert_eq!(&v[..B64_LEN], &id.encode()[..]);
    }

    #[test]
    #[cfg_attr(miri, ignore = "3,000 HMACs: about 15 min under Miri")]
    fn every_character_substitution_is_rejected() {
        let s = signer();
        let v = s.seal(b"sid", &SessionId::random());
        for i in 0..v.len() {
            for c in B64URL.iter().chain(b".=+/ ") {
                if *c == v[i] {
                    continue;
                }
                let mut t = v;
                t[i] = *c;
                assert_eq!(s.open(b"sid", &t), None, "position {i} char {}", *c as char);
            }
        }
    }

    #[test]
    fn truncated_overlong_empty_rejected() {
        let s = signer();
        let v = s.seal(b"sid", &SessionId::random());
        for n in 0..v.len() {
            assert_eq!(s.open(b"sid", &v[..n]), None);
        }
        let mut long = v.to_vec();
        long.push(b'A');
        assert_eq!(s.open(b"sid", &long), None);
        assert_eq!(s.open(b"sid", b""), None);
    }

    #[test]
    fn bound_to_name_and_secret() {
        let s = signer();
        let v = s.seal(b"sid", &SessionId::random());
        assert_eq!(s.open(b"other", &v), None);
        assert_eq!(Signer::new(b"another secret of enough length!!").open(b"sid", &v), None);
    }

    #[test]
    fn quoted_value_accepted() {
        let s = signer();
        let id = SessionId::random();
        let v = s.seal(b"sid", &id);
        let mut q = vec![b'"'];
        q.extend_from_slice(&v);
        q.push(b'"');
        assert_eq!(s.open(b"sid", &q), Some(id));
    }

    #[test]
    fn base64_is_canonical() {
        for _ in 0..200 {
            let id = SessionId::random();
            let e = id.encode();
            assert_eq!(b64url_decode16(&e), Some(id.0));
        }
        // Same bytes, non-zero padding bits in the last character.
        let mut e = SessionId([0; 16]).encode();
        e[21] = b'B';
        assert_eq!(b64url_decode16(&e), None);
    }

    #[test]
    fn cookie_header_split_on_semicolon_only() {
        let mut got = vec![];
        for_each_named(b"a=1; sid=x;sid=y , z; sidx=q;  sid = w; =sid", b"sid", |v| got.push(v));
        assert_eq!(got, vec![&b"x"[..], &b"y , z"[..]]);
        let mut got = vec![];
        for_each_named(b"other=1, sid=v", b"sid", |v| got.push(v));
        assert!(got.is_empty());
    }

    #[test]
    fn collector_decides() {
        let s = signer();
        let id = SessionId::random();
        let v = s.seal(b"sid", &id);
        let good = [&b"sid="[..], &v[..]].concat();
        let other = [&b"sid="[..], &s.seal(b"sid", &SessionId::random())[..]].concat();

        let mut c = CookieCollector::new(&s, b"sid");
        c.header(b"a=b");
        assert_eq!(c.finish(), Incoming::Absent);

        let mut c = CookieCollector::new(&s, b"sid");
        c.header(b"a=b");
        c.header(&good);
        assert_eq!(c.finish(), Incoming::Verified(id));

        let mut c = CookieCollector::new(&s, b"sid");
        c.header(&[&good[..], b"; sid=bogus"].concat());
        assert_eq!(c.finish(), Incoming::Verified(id));

        let mut c = CookieCollector::new(&s, b"sid");
        c.header(&good);
        c.header(&good);
        assert_eq!(c.finish(), Incoming::Verified(id));

        let mut c = CookieCollector::new(&s, b"sid");
        c.header(&good);
        c.header(&other);
        assert_eq!(c.finish(), Incoming::Invalid);

        let mut c = CookieCollector::new(&s, b"sid");
        c.header(b"sid=");
        assert_eq!(c.finish(), Incoming::Invalid);
    }

    #[test]
    fn successor_and_hash_are_deterministic() {
        let s = signer();
        let id = SessionId([1; 16]);
        assert_eq!(s.successor(&id), s.successor(&id));
        assert_ne!(s.successor(&id), id);
        assert_eq!(s.log_hash(&id), s.log_hash(&id));
        assert_ne!(s.log_hash(&id), s.log_hash(&s.successor(&id)));
        assert_ne!(id.store_key().0, id.0);
    }

    #[test]
    fn attributes_validated() {
        let base = CookieAttrs {
            domain: None,
            path: b"/".to_vec(),
            samesite: SameSite::Lax,
            secure: Secure::Auto,
        };
        assert_eq!(base.clone().validate(Some(b"a;b")), Err(AttrError::NameNotToken));
        assert_eq!(base.clone().validate(Some(b"a b")), Err(AttrError::NameNotToken));
        assert_eq!(base.clone().validate(Some(b"")), Err(AttrError::NameNotToken));
        let mut a = base.clone();
        a.domain = Some(b"x.example".to_vec());
        assert_eq!(a.validate(Some(b"__Host-s")), Err(AttrError::HostPrefixWithDomain));
        let mut a = base.clone();
        a.path = b"/app".to_vec();
        assert_eq!(a.validate(Some(b"__Host-s")), Err(AttrError::HostPrefixWithPath));
        let mut a = base.clone();
        a.secure = Secure::Off;
        assert_eq!(a.validate(Some(b"__Secure-s")), Err(AttrError::PrefixWithoutSecure));
        let mut a = base.clone();
        a.samesite = SameSite::None;
        a.secure = Secure::Off;
        assert_eq!(a.validate(Some(b"s")), Err(AttrError::SameSiteNoneWithoutSecure));
        let mut a = base.clone();
        a.samesite = SameSite::None;
        a.validate(Some(b"s")).unwrap();
        assert_eq!(a.secure, Secure::On);
        let mut a = base.clone();
        a.path = b"/a;b".to_vec();
        assert!(a.validate(Some(b"s")).is_err());
        let mut a = base.clone();
        a.domain = Some(b"a\r\nb".to_vec());
        assert!(a.validate(Some(b"s")).is_err());
        let mut a = base.clone();
        a.path = b"app".to_vec();
        assert_eq!(a.validate(Some(b"s")), Err(AttrError::PathNotAbsolute));
        let mut a = base;
        a.domain = Some(b"a.example".to_vec());
        a.validate(Some(b"sid")).unwrap();
        assert_eq!(a.suffix(), b"; Domain=a.example; Path=/; HttpOnly; SameSite=Lax".to_vec());
    }

    #[test]
    fn set_cookie_line() {
        let s = signer();
        let v = s.seal(b"sid", &SessionId([0; 16]));
        let suffix = b"; Path=/; HttpOnly; SameSite=Lax";
        let mut buf = vec![0u8; set_cookie_len(b"sid", suffix, true)];
        let n = write_set_cookie(&mut buf, b"sid", &v, suffix, true);
        assert_eq!(n, buf.len());
        assert!(buf.starts_with(b"sid=AAAAAAAAAAAAAAAAAAAAAA."));
        assert!(buf.ends_with(b"; Path=/; HttpOnly; SameSite=Lax; Secure"));
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot fork")]
    fn ids_differ_after_fork() {
        // Warm the generator in this process, then fork: parent and child must differ.
        let _ = SessionId::random();
        let mut fds = [0i32; 2];
        // SAFETY: plain POSIX calls; the child only computes, writes 16 bytes and exits.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let id = SessionId::random();
                libc::write(fds[1], id.0.as_ptr().cast(), 16);
                libc::_exit(0);
            }
            let parent = SessionId::random();
            let mut child = [0u8; 16];
            assert_eq!(libc::read(fds[0], child.as_mut_ptr().cast(), 16), 16);
            libc::waitpid(pid, core::ptr::null_mut(), 0);
            assert_ne!(parent.0, child);
        }
    }

    #[test]
    fn random_names_are_tokens() {
        for _ in 0..100 {
            assert!(is_token(&random_name()));
        }
        assert_ne!(random_name(), random_name());
    }
}
