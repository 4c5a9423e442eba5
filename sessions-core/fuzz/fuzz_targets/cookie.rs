//! The Cookie header path: `for_each_named`, `CookieCollector` over several headers and
//! `Signer::open`. Headers are built from arbitrary bytes mixed with values we sealed
//! (under our name, another name and another secret), so both forged and genuine values
//! reach the verifier.
//!
//! Checked: nothing panics; a value that verifies is exactly one we sealed for that ID
//! (one encoding per ID); `seal`/`open` round-trip; the collector's verdict matches a
//! plain model of the contract (the first `MAX_CANDIDATES` values with our name, identical
//! values once, exactly one distinct verified ID). Cookie attributes that validate make a
//! `Set-Cookie` line of the announced length with no byte that could end or split it.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::{
    for_each_named, set_cookie_len, write_set_cookie, CookieAttrs, CookieCollector, Incoming,
    SameSite, Secure, SessionId, Signer, MAX_CANDIDATES, VALUE_LEN,
};

const NAME: &[u8] = b"sid";

#[derive(Arbitrary, Debug)]
enum Piece {
    Raw(Vec<u8>),
    /// `sid=<sealed id>`, optionally quoted and padded.
    Ours {
        id: [u8; 16],
        quoted: bool,
        spaces: u8,
    },
    /// A value we sealed under another cookie name, sent under ours.
    OtherName([u8; 16]),
    /// A value sealed with another secret.
    OtherSecret([u8; 16]),
    /// A genuine value with one byte changed.
    Flipped {
        id: [u8; 16],
        at: u8,
        to: u8,
    },
    Separator,
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<Vec<Piece>>,
    /// Checked against `seal` on its own.
    id: [u8; 16],
    /// Configuration-time input: cookie name and attributes.
    name: Vec<u8>,
    domain: Option<Vec<u8>>,
    path: Vec<u8>,
    samesite: u8,
    secure: u8,
}

fn signers() -> &'static (Signer, Signer) {
    static S: OnceLock<(Signer, Signer)> = OnceLock::new();
    S.get_or_init(|| {
        (
            Signer::new(b"0123456789abcdef0123456789abcdef"),
            Signer::new(b"another secret, same length....."),
        )
    })
}

fn render(pieces: &[Piece], ours: &Signer, other: &Signer) -> Vec<u8> {
    let mut h = Vec::new();
    for p in pieces {
        match p {
            Piece::Raw(b) => h.extend_from_slice(b),
            Piece::Ours { id, quoted, spaces } => {
                h.extend_from_slice(b"sid=");
                h.extend(std::iter::repeat_n(b' ', usize::from(spaces & 3)));
                if *quoted {
                    h.push(b'"');
                }
                h.extend_from_slice(&ours.seal(NAME, &SessionId(*id)));
                if *quoted {
                    h.push(b'"');
                }
            }
            Piece::OtherName(id) => {
                h.extend_from_slice(b"sid=");
                h.extend_from_slice(&ours.seal(b"other", &SessionId(*id)));
            }
            Piece::OtherSecret(id) => {
                h.extend_from_slice(b"sid=");
                h.extend_from_slice(&other.seal(NAME, &SessionId(*id)));
            }
            Piece::Flipped { id, at, to } => {
                let mut v = ours.seal(NAME, &SessionId(*id));
                let at = usize::from(*at) % VALUE_LEN;
                if v[at] != *to {
                    v[at] = *to;
                    h.extend_from_slice(b"sid=");
                    h.extend_from_slice(&v);
                }
            }
            Piece::Separator => h.extend_from_slice(b"; "),
        }
    }
    h
}

/// The contract's splitting, written independently of `for_each_named`.
fn model_values(header: &[u8]) -> Vec<&[u8]> {
    let ows = |c: &u8| *c == b' ' || *c == b'\t';
    let mut out = Vec::new();
    for pair in header.split(|&b| b == b';') {
        let start = pair.iter().position(|c| !ows(c)).unwrap_or(pair.len());
        let end = pair.iter().rposition(|c| !ows(c)).map_or(start, |e| e + 1);
        let pair = &pair[start..end.max(start)];
        if let Some(eq) = pair.iter().position(|&c| c == b'=') {
            if &pair[..eq] == NAME {
                let v = &pair[eq + 1..];
                let s = v.iter().position(|c| !ows(c)).unwrap_or(v.len());
                out.push(&v[s..]);
            }
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let (ours, other) = signers();

    // Round trip, and the verified value is the canonical one.
    let id = SessionId(input.id);
    let sealed = ours.seal(NAME, &id);
    assert_eq!(ours.open(NAME, &sealed), Some(id));
    assert_eq!(other.open(NAME, &sealed), None);

    let headers: Vec<Vec<u8>> = input.headers.iter().map(|h| render(h, ours, other)).collect();

    let mut collector = CookieCollector::new(ours, NAME);
    let mut candidates: Vec<&[u8]> = Vec::new();
    for h in &headers {
        let mut found = Vec::new();
        for_each_named(h, NAME, |v| found.push(v));
        assert_eq!(found, model_values(h), "header {:?}", String::from_utf8_lossy(h));
        for v in &found {
            assert!(!v.contains(&b';'));
            // A value that verifies is one we sealed, byte for byte (after the quotes).
            if let Some(id) = ours.open(NAME, v) {
                let bare = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v);
                assert_eq!(bare, &ours.seal(NAME, &id)[..]);
            }
        }
        candidates.extend(found);
        collector.header(h);
    }

    let mut distinct: Vec<SessionId> = Vec::new();
    for v in candidates.iter().take(MAX_CANDIDATES) {
        if let Some(id) = ours.open(NAME, v) {
            if !distinct.contains(&id) {
                distinct.push(id);
            }
        }
    }
    let expected = match (candidates.len(), distinct.as_slice()) {
        (0, _) => Incoming::Absent,
        (_, [id]) => Incoming::Verified(*id),
        _ => Incoming::Invalid,
    };
    assert_eq!(collector.finish(), expected);

    let mut attrs = CookieAttrs {
        domain: input.domain,
        path: input.path,
        samesite: [SameSite::Lax, SameSite::Strict, SameSite::None]
            [usize::from(input.samesite % 3)],
        secure: [Secure::Auto, Secure::On, Secure::Off][usize::from(input.secure % 3)],
    };
    if attrs.validate(Some(&input.name)).is_ok() {
        let suffix = attrs.suffix();
        for secure in [false, true] {
            let mut line = vec![0u8; set_cookie_len(&input.name, &suffix, secure)];
            let n = write_set_cookie(&mut line, &input.name, &sealed, &suffix, secure);
            assert_eq!(n, line.len());
            assert!(
                !line.iter().any(|&c| c < b' ' || c == 0x7f),
                "control byte in {:?}",
                String::from_utf8_lossy(&line)
            );
            // Exactly our `name=value`, then attributes: nothing smuggled in before them.
            assert!(line[input.name.len() + 1 + VALUE_LEN..].starts_with(b"; "));
        }
    }
});
