//! The session cookie: finding it in `Cookie` headers, its signed value, and the
//! `Set-Cookie` line. Pure Rust, no NGINX types.
//!
//! Value layout: `<id>.<tag>`, both unpadded base64url of 16 bytes (22 characters each):
//! `id` is the random session ID, `tag` the first 16 bytes of
//! HMAC-SHA256(secret, 0x01 ‖ len(name) ‖ name ‖ id). Binding the cookie name means a value
//! cannot be replayed under another cookie name signed with the same secret.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
        b64url_encode16(&self.0)
    }

    /// SHA-256 over a label and the ID, truncated: one-way, so that the store never
    /// learns an ID. Label and ID fit in one block, hashed directly.
    pub fn store_key(&self) -> StoreKey {
        const LEN: usize = DOMAIN_STORE_KEY.len() + ID_LEN;
        const _: () = assert!(LEN + 9 <= SHA256_BLOCK);
        let mut block = [0u8; SHA256_BLOCK];
        block[..DOMAIN_STORE_KEY.len()].copy_from_slice(DOMAIN_STORE_KEY);
        block[DOMAIN_STORE_KEY.len()..LEN].copy_from_slice(&self.0);
        block[LEN] = 0x80;
        block[SHA256_BLOCK - 8..].copy_from_slice(&((LEN * 8) as u64).to_be_bytes());
        let mut state = SHA256_IV;
        compress(&mut state, &block);
        let mut key = [0u8; 16];
        key.copy_from_slice(&state_bytes(&state)[..16]);
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

/// The keyed operations of one secret: HMAC-SHA256 with the inner and outer SHA-256
/// states after the key blocks computed once (at configuration time), so that each MAC of
/// a short message costs two compressions and no per-call key schedule or copy of a
/// generic hasher.
#[derive(Clone)]
pub struct Signer {
    /// SHA-256 state after `key ^ ipad`.
    inner: [u32; 8],
    /// SHA-256 state after `key ^ opad`.
    outer: [u32; 8],
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        // RFC 2104: a key longer than the block is hashed first, a shorter one padded.
        let mut key = [0u8; SHA256_BLOCK];
        if secret.len() > SHA256_BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(secret));
        } else {
            key[..secret.len()].copy_from_slice(secret);
        }
        let (mut ipad, mut opad) = ([0x36u8; SHA256_BLOCK], [0x5cu8; SHA256_BLOCK]);
        for ((i, o), k) in ipad.iter_mut().zip(opad.iter_mut()).zip(key) {
            *i ^= k;
            *o ^= k;
        }
        let (mut inner, mut outer) = (SHA256_IV, SHA256_IV);
        compress(&mut inner, &ipad);
        compress(&mut outer, &opad);
        Signer { inner, outer }
    }

    /// HMAC-SHA256 of the concatenation of `parts`.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256Midway::after_block(self.inner);
        for part in parts {
            h.update(part);
        }
        let inner = h.finish();
        // The outer hash is one block: the key block was hashed already, and the inner
        // digest, its padding and the length (64 + 32 bytes) fill the second.
        let mut block = [0u8; SHA256_BLOCK];
        block[..32].copy_from_slice(&inner);
        block[32] = 0x80;
        block[56..].copy_from_slice(&(((SHA256_BLOCK + 32) * 8) as u64).to_be_bytes());
        let mut state = self.outer;
        compress(&mut state, &block);
        state_bytes(&state)
    }

    fn tag(&self, name: &[u8], id: &SessionId) -> [u8; 32] {
        // Cookie names are tokens well under 256 bytes (checked at configuration time).
        self.mac(&[&[DOMAIN_TAG, name.len().min(255) as u8], name, &id.0])
    }

    /// The cookie value for `id` under cookie `name`.
    pub fn seal(&self, name: &[u8], id: &SessionId) -> [u8; VALUE_LEN] {
        let tag = self.tag(name, id);
        let mut tag16 = [0u8; TAG_LEN];
        tag16.copy_from_slice(&tag[..TAG_LEN]);
        let mut out = [0u8; VALUE_LEN];
        out[..B64_LEN].copy_from_slice(&b64url_encode16(&id.0));
        out[B64_LEN] = b'.';
        out[B64_LEN + 1..].copy_from_slice(&b64url_encode16(&tag16));
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
        let expected = self.tag(name, &id);
        bool::from(expected[..TAG_LEN].ct_eq(&tag)).then_some(id)
    }

    /// The ID that replaces `id` at renewal. Derived, not random, so that every request
    /// (on any worker or instance) that renews the same ID arrives at the same successor,
    /// and the store never has to hold a raw ID to hand it out during the grace period.
    pub fn successor(&self, id: &SessionId) -> SessionId {
        let out = self.mac(&[&[DOMAIN_SUCCESSOR], &id.0]);
        let mut next = [0u8; ID_LEN];
        next.copy_from_slice(&out[..ID_LEN]);
        SessionId(next)
    }

    /// `$session_id_hash`: 16 hex characters, stable for an ID, useless without the secret.
    pub fn log_hash(&self, id: &SessionId) -> [u8; ID_HASH_LEN] {
        let out = self.mac(&[&[DOMAIN_LOG], &id.0]);
        let mut hex = [0u8; ID_HASH_LEN];
        hex_encode(&out[..ID_HASH_LEN / 2], &mut hex);
        hex
    }
}

const SHA256_BLOCK: usize = 64;
/// FIPS 180-4 initial hash value.
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// One SHA-256 compression of one block.
fn compress(state: &mut [u32; 8], block: &[u8; SHA256_BLOCK]) {
    sha2::compress256(state, core::slice::from_ref(block.into()));
}

fn state_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// A SHA-256 computation resumed from a state after whole blocks (the HMAC key block).
struct Sha256Midway {
    state: [u32; 8],
    block: [u8; SHA256_BLOCK],
    /// Bytes in `block`.
    filled: usize,
    /// Bytes hashed in all, the blocks before the resumed state included.
    total: u64,
}

impl Sha256Midway {
    /// Resumes after one block (the key block of HMAC).
    fn after_block(state: [u32; 8]) -> Self {
        Sha256Midway { state, block: [0; SHA256_BLOCK], filled: 0, total: SHA256_BLOCK as u64 }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (SHA256_BLOCK - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            self.total += take as u64;
            data = &data[take..];
            if self.filled == SHA256_BLOCK {
                compress(&mut self.state, &self.block);
                self.filled = 0;
            }
        }
    }

    /// Padding and length (FIPS 180-4 5.1.1), then the digest.
    fn finish(mut self) -> [u8; 32] {
        let bits = self.total.wrapping_mul(8);
        self.block[self.filled] = 0x80;
        self.block[self.filled + 1..].fill(0);
        if self.filled + 1 > SHA256_BLOCK - 8 {
            compress(&mut self.state, &self.block);
            self.block = [0; SHA256_BLOCK];
        }
        self.block[SHA256_BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
        compress(&mut self.state, &self.block);
        state_bytes(&self.state)
    }
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
    // The `;` are found with memchr (SIMD): on every request the whole header is scanned,
    // and a byte-by-byte split cost more than the two SHA-256 compressions of the HMAC.
    let mut start = 0;
    for end in memchr::memchr_iter(b';', header).chain(core::iter::once(header.len())) {
        let pair = trim_ows(header.get(start..end).unwrap_or(b""));
        start = end + 1;
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

/// Which secret verified the session cookie.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum VerifiedBy {
    /// The current secret (or no cookie verified).
    #[default]
    Current,
    /// The fallback secret at this index: the response re-signs the cookie with the
    /// current one.
    Fallback(usize),
}

/// The secrets that verify cookies: the current one, then the earlier ones still accepted
/// (`sessions_secret_fallback`, or further lines of `sessions_secret_file`).
#[derive(Clone, Copy)]
pub struct Keys<'s> {
    pub current: &'s Signer,
    pub fallbacks: &'s [Signer],
}

impl<'s> Keys<'s> {
    pub fn new(current: &'s Signer, fallbacks: &'s [Signer]) -> Self {
        Keys { current, fallbacks }
    }

    /// Opens a cookie value with the current secret, then with each fallback in order
    /// (each comparison constant-time). A cookie of the current secret costs one HMAC,
    /// as without fallbacks; only cookies the current secret rejects try the others.
    pub fn open(&self, name: &[u8], value: &[u8]) -> Option<(SessionId, VerifiedBy)> {
        if let Some(id) = self.current.open(name, value) {
            return Some((id, VerifiedBy::Current));
        }
        self.fallbacks
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.open(name, value).map(|id| (id, VerifiedBy::Fallback(i))))
    }

    /// The secret that verified a cookie. What is derived from the ID (its successor at
    /// renewal) is derived with it, so that every worker and instance, before or after a
    /// rotation, derives the same.
    pub fn verifier(&self, by: VerifiedBy) -> &'s Signer {
        match by {
            VerifiedBy::Fallback(i) => self.fallbacks.get(i).unwrap_or(self.current),
            VerifiedBy::Current => self.current,
        }
    }
}

/// Collects cookie values with our name across several header lines and decides which
/// one, if any, is the session. Identical values count once.
pub struct CookieCollector<'s> {
    keys: Keys<'s>,
    name: &'s [u8],
    seen: usize,
    verified: Option<(SessionId, VerifiedBy)>,
    conflict: bool,
}

impl<'s> CookieCollector<'s> {
    /// Verifies with one secret.
    pub fn new(signer: &'s Signer, name: &'s [u8]) -> Self {
        Self::with_keys(Keys::new(signer, &[]), name)
    }

    /// Verifies with the current secret and its fallbacks.
    pub fn with_keys(keys: Keys<'s>, name: &'s [u8]) -> Self {
        CookieCollector { keys, name, seen: 0, verified: None, conflict: false }
    }

    pub fn header(&mut self, value: &[u8]) {
        let (keys, name) = (self.keys, self.name);
        for_each_named(value, name, |v| {
            self.seen += 1;
            if self.seen > MAX_CANDIDATES {
                return;
            }
            if let Some((id, by)) = keys.open(name, v) {
                match self.verified {
                    Some((prev, _)) if prev != id => self.conflict = true,
                    // The same ID signed with the current secret too: nothing to re-sign.
                    Some((_, VerifiedBy::Current)) => {}
                    _ => self.verified = Some((id, by)),
                }
            }
        });
    }

    pub fn finish(self) -> Incoming {
        self.finish_with_key().0
    }

    /// The decision, and which secret verified the session's cookie.
    pub fn finish_with_key(self) -> (Incoming, VerifiedBy) {
        match (self.seen, self.verified, self.conflict) {
            (0, _, _) => (Incoming::Absent, VerifiedBy::Current),
            (_, Some((id, by)), false) => (Incoming::Verified(id), by),
            _ => (Incoming::Invalid, VerifiedBy::Current),
        }
    }
}

/// What `sessions_secret_file` holds: the current secret, then earlier ones still accepted.
#[derive(Debug, PartialEq, Eq)]
pub struct SecretFile {
    pub current: Vec<u8>,
    pub fallbacks: Vec<Vec<u8>>,
}

/// Reads a secret file: the first line is the secret, each further non-empty line a
/// fallback; a line ends at `\n`, and a `\r` before it is dropped (files written on
/// Windows, `echo` adding a newline). `None` when there is no secret (an empty first line).
pub fn parse_secret_file(contents: &[u8]) -> Option<SecretFile> {
    let mut lines = contents.split(|&c| c == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let current = lines.next().filter(|l| !l.is_empty())?.to_vec();
    let fallbacks = lines.filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    Some(SecretFile { current, fallbacks })
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

/// Value of each base64url character; `INVALID` for every other byte.
const B64URL_VALUE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[B64URL[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const INVALID: u8 = 0xff;

/// 16 bytes as 22 unpadded base64url characters.
fn b64url_encode16(src: &[u8; 16]) -> [u8; B64_LEN] {
    let mut out = [0u8; B64_LEN];
    // 16 = 5 * 3 + 1: five whole groups, then one byte in two characters.
    for i in 0..5 {
        let n = u32::from(src[3 * i]) << 16
            | u32::from(src[3 * i + 1]) << 8
            | u32::from(src[3 * i + 2]);
        out[4 * i] = B64URL[(n >> 18) as usize & 63];
        out[4 * i + 1] = B64URL[(n >> 12) as usize & 63];
        out[4 * i + 2] = B64URL[(n >> 6) as usize & 63];
        out[4 * i + 3] = B64URL[n as usize & 63];
    }
    out[20] = B64URL[usize::from(src[15] >> 2)];
    out[21] = B64URL[usize::from(src[15] & 3) << 4];
    out
}

/// Strict decoding of exactly 22 characters into 16 bytes: the unused low bits of the
/// last character must be zero, so that every ID has exactly one encoding.
fn b64url_decode16(src: &[u8]) -> Option<[u8; 16]> {
    let src: &[u8; B64_LEN] = src.try_into().ok()?;
    let mut v = [0u8; B64_LEN];
    let mut seen = 0u8;
    for (v, &c) in v.iter_mut().zip(src) {
        *v = B64URL_VALUE[usize::from(c)];
        seen |= *v;
    }
    // Valid values are below 64; `INVALID` has the top bits set.
    if seen & 0xc0 != 0 || v[21] & 0xf != 0 {
        return None;
    }
    let mut out = [0u8; 16];
    for i in 0..5 {
        let n = u32::from(v[4 * i]) << 18
            | u32::from(v[4 * i + 1]) << 12
            | u32::from(v[4 * i + 2]) << 6
            | u32::from(v[4 * i + 3]);
        out[3 * i] = (n >> 16) as u8;
        out[3 * i + 1] = (n >> 8) as u8;
        out[3 * i + 2] = n as u8;
    }
    out[15] = v[20] << 2 | v[21] >> 4;
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
    /// A `$` in the name or an attribute: they are literal, variables are not expanded.
    Variable(&'static str),
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
            AttrError::Variable(what) => write!(
                f,
                "cookie {what} must not contain \"$\": it is literal, variables are not expanded"
            ),
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

/// Checks a cookie attribute value (Domain, Path) for what would break the header, and
/// for a `$` that suggests a variable (attributes are sent as written).
pub fn check_attribute(value: &[u8], what: &'static str) -> Result<(), AttrError> {
    if value.len() > 1024 {
        return Err(AttrError::AttributeTooLong(what));
    }
    if value.iter().any(|&c| c <= b' ' || c == 0x7f || c == b';' || c == b',') {
        return Err(AttrError::BadAttributeChar(what));
    }
    if value.contains(&b'$') {
        return Err(AttrError::Variable(what));
    }
    Ok(())
}

/// Checks a configured cookie name: an RFC 6265 token of at most 255 bytes, without `$`
/// (a token character, but in `nginx.conf` it reads as a variable that is never expanded).
pub fn check_name(name: &[u8]) -> Result<(), AttrError> {
    if !is_token(name) || name.len() > 255 {
        return Err(AttrError::NameNotToken);
    }
    if name.contains(&b'$') {
        return Err(AttrError::Variable("name"));
    }
    Ok(())
}

/// Whether `name` starts with `prefix`, ignoring ASCII case (as browsers match the
/// `__Host-` and `__Secure-` prefixes).
fn has_prefix_ignore_case(name: &[u8], prefix: &[u8]) -> bool {
    name.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
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
            check_name(name)?;
        }
        if let Some(domain) = &self.domain {
            check_attribute(domain, "domain")?;
        }
        check_attribute(&self.path, "path")?;
        if !self.path.starts_with(b"/") {
            return Err(AttrError::PathNotAbsolute);
        }
        let host = name.is_some_and(|n| has_prefix_ignore_case(n, b"__Host-"));
        let secure_prefix = host || name.is_some_and(|n| has_prefix_ignore_case(n, b"__Secure-"));
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

/// The `Set-Cookie` value that makes the browser forget our cookie (`sessions_destroy`):
/// `name=; Max-Age=0<suffix>[; Secure]`, with the same Path and Domain as the cookie it
/// replaces (a browser only drops a cookie whose attributes match).
pub fn expire_cookie(name: &[u8], suffix: &[u8], secure: bool) -> Vec<u8> {
    let secure: &[u8] = if secure { SECURE } else { b"" };
    [name, b"=; Max-Age=0", suffix, secure].concat()
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
    fn expire_cookie_keeps_path_and_domain() {
        let attrs = CookieAttrs {
            domain: Some(b"a.example".to_vec()),
            path: b"/app".to_vec(),
            samesite: SameSite::Lax,
            secure: Secure::Auto,
        };
        assert_eq!(
            expire_cookie(b"sid", &attrs.suffix(), true),
            b"sid=; Max-Age=0; Domain=a.example; Path=/app; HttpOnly; SameSite=Lax; Secure"
                .to_vec()
        );
        assert_eq!(expire_cookie(b"sid", b"; Path=/", false), b"sid=; Max-Age=0; Path=/".to_vec());
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

    /// The old implementation, on the `hmac` crate: cookies, successors and log hashes
    /// made before the precomputed-state HMAC must come out the same.
    fn reference_mac(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    #[test]
    #[cfg_attr(miri, ignore = "6,500 HMACs of up to 1,000 bytes: over twice the 3,000-HMAC test")]
    fn hmac_matches_the_hmac_crate() {
        let mut secret = Vec::new();
        let mut msg = Vec::new();
        for key_len in [0usize, 1, 31, 32, 55, 56, 63, 64, 65, 100, 200] {
            secret.clear();
            secret.extend((0..key_len).map(|i| (i * 7 + key_len) as u8));
            let s = Signer::new(&secret);
            for msg_len in (0..=140).chain([191, 192, 255, 273, 300, 1000]) {
                msg.clear();
                msg.extend((0..msg_len).map(|i| (i * 13 + msg_len) as u8));
                let expected = reference_mac(&secret, &[&msg]);
                assert_eq!(s.mac(&[&msg]), expected, "key {key_len} msg {msg_len}");
                // The same message in several parts.
                let (a, b) = msg.split_at(msg_len / 3);
                assert_eq!(s.mac(&[a, &[], b]), expected, "key {key_len} msg {msg_len} split");
            }
        }
    }

    #[test]
    fn outputs_are_those_of_the_previous_implementation() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let s = Signer::new(secret);
        for name in [&b"sid"[..], b"__Host-x", &[b'n'; 255]] {
            for _ in 0..20 {
                let id = SessionId::random();
                let tag = reference_mac(secret, &[&[DOMAIN_TAG, name.len() as u8], name, &id.0]);
                let v = s.seal(name, &id);
                let mut tag16 = [0u8; TAG_LEN];
                tag16.copy_from_slice(&tag[..TAG_LEN]);
                assert_eq!(&v[B64_LEN + 1..], &b64url_encode16(&tag16)[..]);
                let succ = reference_mac(secret, &[&[DOMAIN_SUCCESSOR], &id.0]);
                assert_eq!(s.successor(&id).0[..], succ[..ID_LEN]);
                let log = reference_mac(secret, &[&[DOMAIN_LOG], &id.0]);
                let mut hex = [0u8; ID_HASH_LEN];
                hex_encode(&log[..ID_HASH_LEN / 2], &mut hex);
                assert_eq!(s.log_hash(&id), hex);
                let digest =
                    Sha256::new().chain_update(DOMAIN_STORE_KEY).chain_update(id.0).finalize();
                assert_eq!(id.store_key().0[..], digest[..16]);
            }
        }
    }

    /// The table-driven codec against a plain bit-by-bit one.
    #[test]
    fn base64_matches_a_plain_codec() {
        fn plain_encode(src: &[u8]) -> Vec<u8> {
            let bits: Vec<u8> =
                src.iter().flat_map(|b| (0..8).rev().map(move |i| b >> i & 1)).collect();
            bits.chunks(6)
                .map(|c| {
                    let v =
                        c.iter().chain(core::iter::repeat(&0)).take(6).fold(0, |a, &b| a << 1 | b);
                    B64URL[v as usize]
                })
                .collect()
        }
        for _ in 0..500 {
            let id = SessionId::random();
            assert_eq!(&id.encode()[..], &plain_encode(&id.0)[..]);
            assert_eq!(b64url_decode16(&id.encode()), Some(id.0));
        }
        let good = SessionId([0xa5; 16]).encode();
        for i in 0..B64_LEN {
            for c in 0..=255u8 {
                let mut t = good;
                t[i] = c;
                let valid = B64URL.contains(&c) && (i < 21 || B64URL_VALUE[c as usize] & 0xf == 0);
                assert_eq!(b64url_decode16(&t).is_some(), valid, "position {i} byte {c}");
            }
        }
        assert_eq!(b64url_decode16(&good[..21]), None);
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
    fn fallback_secrets_verify_and_say_which() {
        let (current, old, older) = (signer(), Signer::new(b"old"), Signer::new(b"older"));
        let fallbacks = [old.clone(), older.clone()];
        let keys = Keys::new(&current, &fallbacks);
        let id = SessionId::random();
        assert_eq!(keys.open(b"sid", &current.seal(b"sid", &id)), Some((id, VerifiedBy::Current)));
        assert_eq!(keys.open(b"sid", &old.seal(b"sid", &id)), Some((id, VerifiedBy::Fallback(0))));
        assert_eq!(
            keys.open(b"sid", &older.seal(b"sid", &id)),
            Some((id, VerifiedBy::Fallback(1)))
        );
        assert_eq!(keys.open(b"sid", &Signer::new(b"other").seal(b"sid", &id)), None);
        assert_eq!(keys.open(b"other", &old.seal(b"sid", &id)), None);
        // Successors are derived with the secret that verified.
        assert_eq!(keys.verifier(VerifiedBy::Fallback(1)).successor(&id), older.successor(&id));
        assert_eq!(keys.verifier(VerifiedBy::Current).successor(&id), current.successor(&id));
        // Without fallbacks, only the current secret.
        let alone = Keys::new(&current, &[]);
        assert_eq!(alone.open(b"sid", &old.seal(b"sid", &id)), None);
    }

    #[test]
    fn collector_with_fallbacks() {
        let (current, old) = (signer(), Signer::new(b"old secret"));
        let fallbacks = [old.clone()];
        let keys = Keys::new(&current, &fallbacks);
        let id = SessionId::random();
        let by_old = [&b"sid="[..], &old.seal(b"sid", &id)[..]].concat();
        let by_current = [&b"sid="[..], &current.seal(b"sid", &id)[..]].concat();

        let mut c = CookieCollector::with_keys(keys, b"sid");
        c.header(&by_old);
        assert_eq!(c.finish_with_key(), (Incoming::Verified(id), VerifiedBy::Fallback(0)));

        // The same ID under both secrets: the current one wins, nothing to re-sign.
        for order in [[&by_old, &by_current], [&by_current, &by_old]] {
            let mut c = CookieCollector::with_keys(keys, b"sid");
            c.header(order[0]);
            c.header(order[1]);
            assert_eq!(c.finish_with_key(), (Incoming::Verified(id), VerifiedBy::Current));
        }

        // Two sessions, one under each secret: ambiguous.
        let other = [&b"sid="[..], &current.seal(b"sid", &SessionId::random())[..]].concat();
        let mut c = CookieCollector::with_keys(keys, b"sid");
        c.header(&by_old);
        c.header(&other);
        assert_eq!(c.finish_with_key(), (Incoming::Invalid, VerifiedBy::Current));

        // Without the fallback, the old cookie is just invalid.
        let mut c = CookieCollector::new(&current, b"sid");
        c.header(&by_old);
        assert_eq!(c.finish(), Incoming::Invalid);
    }

    #[test]
    fn secret_file_lines() {
        let f = |s: &[u8]| parse_secret_file(s);
        assert_eq!(f(b""), None);
        assert_eq!(f(b"\n"), None);
        assert_eq!(f(b"\r\nold\n"), None);
        let one = SecretFile { current: b"new".to_vec(), fallbacks: vec![] };
        assert_eq!(f(b"new"), Some(one));
        let two = || SecretFile { current: b"new".to_vec(), fallbacks: vec![b"old".to_vec()] };
        assert_eq!(f(b"new\nold\n"), Some(two()));
        assert_eq!(f(b"new\r\n\r\nold\r\n\n"), Some(two()));
        assert_eq!(f(b"new\n\nold"), Some(two()));
        // Only CR/LF is stripped: other bytes are part of the secret.
        assert_eq!(f(b" new \t\n").unwrap().current, b" new \t");
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
        let mut a = base.clone();
        a.domain = Some(b"a.example".to_vec());
        a.validate(Some(b"sid")).unwrap();
        assert_eq!(a.suffix(), b"; Domain=a.example; Path=/; HttpOnly; SameSite=Lax".to_vec());
    }

    #[test]
    fn dollar_is_refused_everywhere() {
        let base = CookieAttrs {
            domain: None,
            path: b"/".to_vec(),
            samesite: SameSite::Lax,
            secure: Secure::Auto,
        };
        let mut a = base.clone();
        a.domain = Some(b"$host".to_vec());
        assert_eq!(a.validate(Some(b"s")), Err(AttrError::Variable("domain")));
        let mut a = base.clone();
        a.path = b"/$uri".to_vec();
        assert_eq!(a.validate(Some(b"s")), Err(AttrError::Variable("path")));
        assert_eq!(base.clone().validate(Some(b"s$id")), Err(AttrError::Variable("name")));
        assert_eq!(check_name(b"$cookie"), Err(AttrError::Variable("name")));
        assert_eq!(check_attribute(b"a.example$", "domain"), Err(AttrError::Variable("domain")));
        assert!(AttrError::Variable("domain").to_string().contains("variables are not expanded"));
        check_name(b"sid").unwrap();
    }

    #[test]
    fn prefixes_match_ignoring_case() {
        let base = CookieAttrs {
            domain: None,
            path: b"/".to_vec(),
            samesite: SameSite::Lax,
            secure: Secure::Auto,
        };
        for name in [&b"__host-s"[..], b"__HOST-s", b"__Host-s", b"__hOsT-s"] {
            let mut a = base.clone();
            a.domain = Some(b"x.example".to_vec());
            assert_eq!(a.validate(Some(name)), Err(AttrError::HostPrefixWithDomain));
            let mut a = base.clone();
            a.path = b"/app".to_vec();
            assert_eq!(a.validate(Some(name)), Err(AttrError::HostPrefixWithPath));
            let mut a = base.clone();
            a.validate(Some(name)).unwrap();
            assert_eq!(a.secure, Secure::On, "{}", String::from_utf8_lossy(name));
        }
        for name in [&b"__secure-s"[..], b"__SECURE-s", b"__Secure-s"] {
            let mut a = base.clone();
            a.secure = Secure::Off;
            assert_eq!(a.validate(Some(name)), Err(AttrError::PrefixWithoutSecure));
        }
        // Not a prefix: the rules do not apply.
        let mut a = base.clone();
        a.path = b"/app".to_vec();
        a.validate(Some(b"_host-s")).unwrap();
        assert_eq!(a.secure, Secure::Auto);
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
