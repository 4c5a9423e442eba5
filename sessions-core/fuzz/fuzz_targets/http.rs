//! Header rewriting on arbitrary bytes: `http::strip_cookie` (our cookie removed from the
//! `Cookie` header the upstream receives, `sessions_pass_cookie off`) and
//! `http::private_cache_control` (the `Cache-Control` of a response that carries our
//! `Set-Cookie`). Also `starts_session` and `sets_cookie`, which must not panic.
//!
//! Checked against plain models of the contract:
//! - `strip_cookie`: the result's pairs are the input's pairs minus ours (a pair is ours
//!   when, trimmed, it reads `<name>=...`, the way `cookie::for_each_named` finds values),
//!   byte for byte: only leading empty pairs go, only the whitespace at the two ends of the
//!   result is trimmed. `Unchanged` exactly when no pair is ours, `Removed` exactly when
//!   nothing but ours had content. The result holds none of ours.
//! - `private_cache_control`: the result starts with `private` and has it once, never
//!   `public` or `s-maxage`, and keeps every other directive of the input as written (trimmed),
//!   in order; directives split on commas outside quoted strings.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sessions_core::cookie::{check_name, for_each_named, SameSite};
use sessions_core::http::{
    private_cache_control, sets_cookie, starts_session, strip_cookie, StrippedCookie,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// 0..=3 picks a usual name (so that the fuzzer meets ours often), else `own_name`.
    name_choice: u8,
    own_name: Vec<u8>,
    cookie: Vec<u8>,
    cache_control: Option<Vec<u8>>,
    fetch_site: Option<Vec<u8>>,
    fetch_mode: Option<Vec<u8>>,
    get_or_head: bool,
    samesite: u8,
}

fn is_ows(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn trim_start(s: &[u8]) -> &[u8] {
    &s[s.iter().position(|&c| !is_ows(c)).unwrap_or(s.len())..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    &s[..s.iter().rposition(|&c| !is_ows(c)).map_or(0, |e| e + 1)]
}

fn trim(s: &[u8]) -> &[u8] {
    trim_start(trim_end(s))
}

/// A `Cookie` pair with our name: `name=` after trimming (RFC 6265bis cookie-pair).
fn is_ours(pair: &[u8], name: &[u8]) -> bool {
    let pair = trim(pair);
    match pair.iter().position(|&c| c == b'=') {
        Some(eq) => &pair[..eq] == name,
        None => false,
    }
}

fn check_strip(header: &[u8], name: &[u8]) {
    let pairs: Vec<&[u8]> = header.split(|&c| c == b';').collect();
    let ours = pairs.iter().filter(|p| is_ours(p, name)).count();
    let mut found = 0;
    for_each_named(header, name, |_| found += 1);
    assert_eq!(found, ours, "strip and the collector disagree on which pairs are ours");

    // What must remain: the other pairs, from the first with content on.
    let kept: Vec<&[u8]> = pairs
        .iter()
        .filter(|p| !is_ours(p, name))
        .skip_while(|p| trim(p).is_empty())
        .copied()
        .collect();
    let result = strip_cookie(header, name);
    let got = match (&result, ours, kept.is_empty()) {
        (StrippedCookie::Unchanged, 0, _) => return,
        (StrippedCookie::Removed, 1.., true) => return,
        (StrippedCookie::Replaced(v), 1.., false) => v,
        _ => panic!("{result:?} for {ours} of ours and {} others kept", kept.len()),
    };
    let got_pairs: Vec<&[u8]> = got.split(|&c| c == b';').collect();
    assert_eq!(got_pairs.len(), kept.len(), "{:?}", String::from_utf8_lossy(got));
    let last = kept.len() - 1;
    for (i, (g, k)) in got_pairs.iter().zip(&kept).enumerate() {
        let mut want = *k;
        if i == 0 {
            want = trim_start(want);
        }
        if i == last {
            want = trim_end(want);
        }
        assert_eq!(g, &want, "pair {i} of {:?}", String::from_utf8_lossy(got));
    }
    for_each_named(got, name, |v| panic!("our cookie survived: {v:?}"));
    assert_eq!(strip_cookie(got, name), StrippedCookie::Unchanged);
}

/// `Cache-Control` directives: split on commas outside quoted strings (a backslash
/// escapes the next character inside quotes), trimmed, empty ones dropped.
fn directives(value: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &c) in value.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && c == b'\\' {
            escaped = true;
        } else if c == b'"' {
            quoted = !quoted;
        } else if c == b',' && !quoted {
            out.push(&value[start..i]);
            start = i + 1;
        }
    }
    out.push(&value[start..]);
    out.into_iter().map(trim).filter(|d| !d.is_empty()).collect()
}

fn directive_name(d: &[u8]) -> &[u8] {
    trim(d.split(|&c| c == b'=').next().unwrap_or(b""))
}

fn check_cache_control(existing: Option<&[u8]>) {
    let result = private_cache_control(existing);
    let is = |d: &[u8], n: &str| directive_name(d).eq_ignore_ascii_case(n.as_bytes());
    let dropped = |d: &[u8]| is(d, "public") || is(d, "s-maxage") || is(d, "private");
    let want: Vec<&[u8]> =
        directives(existing.unwrap_or(b"")).into_iter().filter(|d| !dropped(d)).collect();
    let got = directives(&result);
    assert!(result.starts_with(b"private"), "{:?}", String::from_utf8_lossy(&result));
    assert_eq!(got.first().copied(), Some(&b"private"[..]));
    assert_eq!(&got[1..], &want[..], "{:?}", String::from_utf8_lossy(&result));
    for d in &got {
        assert!(!is(d, "public") && !is(d, "s-maxage"), "{:?}", String::from_utf8_lossy(d));
    }
    // Already private: applying it again changes nothing.
    assert_eq!(private_cache_control(Some(&result)), result);
}

fuzz_target!(|input: Input| {
    let name: &[u8] = match input.name_choice {
        0 => b"SID",
        1 => b"sid",
        2 => b"__Host-session",
        3 => b"a",
        _ => &input.own_name,
    };
    if check_name(name).is_ok() {
        check_strip(&input.cookie, name);
        let _ = sets_cookie(&input.cookie, name);
    }
    check_cache_control(input.cache_control.as_deref());

    let samesite =
        [SameSite::Lax, SameSite::Strict, SameSite::None][usize::from(input.samesite % 3)];
    let starts = starts_session(
        samesite,
        input.fetch_site.as_deref(),
        input.fetch_mode.as_deref(),
        input.get_or_head,
    );
    // Only a request the browser marks cross-site is ever refused a session.
    let cross_site =
        input.fetch_site.as_deref().is_some_and(|s| trim(s).eq_ignore_ascii_case(b"cross-site"));
    assert!(starts || cross_site);
});
