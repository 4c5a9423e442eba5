//! The cookie's cryptography against reference implementations: `cookie.rs` computes
//! HMAC-SHA256 from precomputed key states with a hand-written padding, and base64url
//! with its own tables, for speed; here the `hmac`, `sha2` and `base64` crates say what
//! each value must be, for any secret (shorter and longer than a SHA-256 block), any
//! cookie name length (messages across block boundaries) and any ID.
//!
//! Checked: `seal` is `b64url(id) "." b64url(tag)` with `tag` the first 16 bytes of
//! `HMAC(secret, 0x01 ‖ len(name) ‖ name ‖ id)`; `successor` and `log_hash` are the HMACs
//! of domains 0x02 and 0x03; `store_key` is SHA-256 of its label and the ID;
//! `SessionId::encode` is unpadded base64url; `open` accepts a value (optionally quoted)
//! exactly when strict base64url decoding and the reference tag say so, and then returns
//! the ID.

#![no_main]

use arbitrary::Arbitrary;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::{SessionId, Signer, B64_LEN, VALUE_LEN};
use sha2::{Digest, Sha256};

#[derive(Arbitrary, Debug)]
struct Input {
    secret: Vec<u8>,
    name: Vec<u8>,
    id: [u8; 16],
    /// A value to open: arbitrary bytes, or a sealed value with one byte changed.
    value: Vec<u8>,
    flip: Option<(u8, u8)>,
    quoted: bool,
}

fn hmac(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn reference_tag(secret: &[u8], name: &[u8], id: &[u8; 16]) -> [u8; 16] {
    let len = [0x01, name.len().min(255) as u8];
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&hmac(secret, &[&len, name, id])[..16]);
    tag
}

/// Strict base64url of exactly 16 bytes (no padding, no non-zero trailing bits).
fn decode16(s: &[u8]) -> Option<[u8; 16]> {
    URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

fn reference_open(secret: &[u8], name: &[u8], value: &[u8]) -> Option<[u8; 16]> {
    let value = match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    };
    if value.len() != VALUE_LEN || value[B64_LEN] != b'.' {
        return None;
    }
    let id = decode16(&value[..B64_LEN])?;
    let tag = decode16(&value[B64_LEN + 1..])?;
    (reference_tag(secret, name, &id) == tag).then_some(id)
}

fuzz_target!(|input: Input| {
    let (secret, name) = (&input.secret[..], &input.name[..]);
    let signer = Signer::new(secret);
    let id = SessionId(input.id);

    let b64_id = URL_SAFE_NO_PAD.encode(id.0);
    assert_eq!(&id.encode()[..], b64_id.as_bytes());
    let sealed = signer.seal(name, &id);
    let want = format!("{b64_id}.{}", URL_SAFE_NO_PAD.encode(reference_tag(secret, name, &id.0)));
    assert_eq!(&sealed[..], want.as_bytes(), "seal");
    assert_eq!(signer.open(name, &sealed), Some(id));

    let successor = hmac(secret, &[&[0x02], &id.0]);
    assert_eq!(&signer.successor(&id).0[..], &successor[..16], "successor");
    let log = hmac(secret, &[&[0x03], &id.0]);
    let hex: String = log[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(&signer.log_hash(&id)[..], hex.as_bytes(), "log_hash");
    let digest = Sha256::new()
        .chain_update(b"ngx_http_sessions_module store key v1")
        .chain_update(id.0)
        .finalize();
    assert_eq!(&id.store_key().0[..], &digest[..16], "store_key");

    let mut value = match input.flip {
        Some((at, to)) => {
            let mut v = sealed.to_vec();
            v[usize::from(at) % VALUE_LEN] = to;
            v
        }
        None => input.value,
    };
    if input.quoted {
        value.insert(0, b'"');
        value.push(b'"');
    }
    assert_eq!(
        signer.open(name, &value).map(|id| id.0),
        reference_open(secret, name, &value),
        "open({:?})",
        String::from_utf8_lossy(&value)
    );
});
