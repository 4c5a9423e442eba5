//! HTTP header decisions that are not about the cookie's own format: whether a cookieless
//! request may start a session (Fetch Metadata), the `Cache-Control` of a response that
//! carries our `Set-Cookie`, and removing our cookie from a `Cookie` header. Pure Rust,
//! no NGINX types.

use crate::cookie::SameSite;

/// SPEC behaviour step 7: whether a request that came without our cookie may start a
/// session. With SameSite `lax` or `strict`, a request the browser marks `cross-site`
/// that is not a top-level GET/HEAD navigation may come from a visitor whose cookie
/// SameSite held back; a session started there would overwrite the visitor's cookie.
/// Header values are compared ignoring ASCII case; a missing header (an older browser, a
/// non-browser client) never blocks.
pub fn starts_session(
    samesite: SameSite,
    sec_fetch_site: Option<&[u8]>,
    sec_fetch_mode: Option<&[u8]>,
    get_or_head: bool,
) -> bool {
    if samesite == SameSite::None {
        // The browser sends the cookie cross-site: a cookieless request has none.
        return true;
    }
    let is =
        |v: Option<&[u8]>, want: &[u8]| v.is_some_and(|v| trim_ows(v).eq_ignore_ascii_case(want));
    if !is(sec_fetch_site, b"cross-site") {
        return true;
    }
    get_or_head && is(sec_fetch_mode, b"navigate")
}

/// The `Cache-Control` value for a response that carries our `Set-Cookie` (SPEC step 6):
/// `private` added, `public` and `s-maxage` removed, every other directive kept as
/// written (e.g. `max-age=3600`). `existing` is the response's `Cache-Control`, several
/// header lines joined with `,`. A field-qualified `private="..."` becomes a plain
/// `private`: the whole response, not only some fields, must stay out of shared caches.
pub fn private_cache_control(existing: Option<&[u8]>) -> Vec<u8> {
    let existing = existing.unwrap_or(b"");
    let mut out = Vec::with_capacity(existing.len() + 9);
    out.extend_from_slice(b"private");
    for directive in split_directives(existing) {
        let directive = trim_ows(directive);
        if directive.is_empty() {
            continue;
        }
        let name = trim_ows(directive.split(|&c| c == b'=').next().unwrap_or(b""));
        if [&b"public"[..], b"s-maxage", b"private"].iter().any(|n| name.eq_ignore_ascii_case(n)) {
            continue;
        }
        out.extend_from_slice(b", ");
        out.extend_from_slice(directive);
    }
    out
}

/// Splits a `Cache-Control` value on the commas between directives (not on those inside
/// a quoted string, as in `no-cache="Set-Cookie, X-Foo"`).
fn split_directives(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    core::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &c) in s.iter().enumerate() {
            match c {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// Whether a `Set-Cookie` value sets the cookie `name`, as a browser reads it (RFC 6265bis
/// 5.7): the name is what precedes the first `=` of the part before the first `;`, with
/// whitespace trimmed, compared byte for byte.
pub fn sets_cookie(set_cookie: &[u8], name: &[u8]) -> bool {
    let pair = set_cookie.split(|&c| c == b';').next().unwrap_or(b"");
    match pair.iter().position(|&c| c == b'=') {
        Some(eq) => trim_ows(&pair[..eq]) == name,
        None => false,
    }
}

/// What removing our cookie did to one `Cookie` header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrippedCookie {
    /// No cookie with our name: the header stays as it is.
    Unchanged,
    /// The header without our cookie(s).
    Replaced(Vec<u8>),
    /// Only our cookie(s) were in it: the header goes.
    Removed,
}

/// Removes every `name=...` pair from a `Cookie` header value, matching the name as
/// [`crate::cookie::for_each_named`] does (split on `;`, whitespace around pairs ignored,
/// the name byte for byte). The other pairs and what separates them are kept byte for
/// byte; only the whitespace at the ends of the result is trimmed.
pub fn strip_cookie(header: &[u8], name: &[u8]) -> StrippedCookie {
    let is_ours = |pair: &[u8]| {
        let pair = trim_ows(pair);
        pair.len() > name.len() && pair.starts_with(name) && pair[name.len()] == b'='
    };
    if !header.split(|&c| c == b';').any(is_ours) {
        return StrippedCookie::Unchanged;
    }
    let mut out = Vec::with_capacity(header.len());
    for pair in header.split(|&c| c == b';').filter(|p| !is_ours(p)) {
        if !out.is_empty() || !trim_ows(pair).is_empty() {
            if !out.is_empty() {
                out.push(b';');
            }
            out.extend_from_slice(pair);
        }
    }
    let kept = trim_ows(&out);
    if kept.iter().all(|&c| c == b';' || c == b' ' || c == b'\t') {
        return StrippedCookie::Removed;
    }
    StrippedCookie::Replaced(kept.to_vec())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_metadata_decides_who_starts_a_session() {
        let lax = SameSite::Lax;
        let cs = Some(&b"cross-site"[..]);
        let nav = Some(&b"navigate"[..]);
        // A cross-site form POST (the attack) and cross-site subresources: no session.
        assert!(!starts_session(lax, cs, nav, false));
        assert!(!starts_session(lax, cs, Some(b"no-cors"), true));
        assert!(!starts_session(lax, cs, Some(b"cors"), true));
        assert!(!starts_session(lax, cs, None, true));
        assert!(!starts_session(SameSite::Strict, cs, nav, false));
        assert!(!starts_session(lax, Some(b"Cross-Site"), Some(b"NAVIGATE"), false));
        assert!(!starts_session(lax, Some(b" cross-site "), nav, false));
        // A top-level GET/HEAD navigation from another site (a link): a session.
        assert!(starts_session(lax, cs, nav, true));
        assert!(starts_session(lax, Some(b"CROSS-SITE"), Some(b"Navigate"), true));
        assert!(starts_session(SameSite::Strict, cs, nav, true));
        // Same site, same origin, typed URLs, no Fetch Metadata at all: a session.
        for site in [Some(&b"same-site"[..]), Some(b"same-origin"), Some(b"none"), None] {
            assert!(starts_session(lax, site, Some(b"cors"), false));
            assert!(starts_session(lax, site, None, false));
        }
        // SameSite=None sends the cookie cross-site: nothing was held back.
        assert!(starts_session(SameSite::None, cs, Some(b"cors"), false));
        // Not exactly "cross-site".
        assert!(starts_session(lax, Some(b"cross-site2"), None, false));
    }

    fn cc(existing: Option<&str>) -> String {
        String::from_utf8(private_cache_control(existing.map(str::as_bytes))).unwrap()
    }

    #[test]
    fn cache_control_becomes_private() {
        assert_eq!(cc(None), "private");
        assert_eq!(cc(Some("")), "private");
        assert_eq!(cc(Some("max-age=3600")), "private, max-age=3600");
        assert_eq!(cc(Some("public, s-maxage=600")), "private");
        assert_eq!(cc(Some("public, max-age=60, s-maxage=600")), "private, max-age=60");
        assert_eq!(cc(Some("PUBLIC,S-MAXAGE=600 ,must-revalidate")), "private, must-revalidate");
        assert_eq!(cc(Some("private")), "private");
        assert_eq!(cc(Some("no-cache, private, max-age=0")), "private, no-cache, max-age=0");
        assert_eq!(cc(Some("private=\"Set-Cookie\", max-age=5")), "private, max-age=5");
        assert_eq!(cc(Some("no-store")), "private, no-store");
        assert_eq!(
            cc(Some("no-cache=\"Set-Cookie, X-A\", public")),
            "private, no-cache=\"Set-Cookie, X-A\""
        );
        assert_eq!(cc(Some(" , ,max-age=1,")), "private, max-age=1");
        assert_eq!(cc(Some("s-maxage = 5, x=\"a\\\",b\"")), "private, x=\"a\\\",b\"");
        // Several header lines, joined.
        assert_eq!(cc(Some("public, max-age=10,immutable")), "private, max-age=10, immutable");
        // Names that merely start like the removed ones are kept.
        assert_eq!(cc(Some("publicity, s-maxage2=1")), "private, publicity, s-maxage2=1");
    }

    #[test]
    fn set_cookie_names_read_as_browsers_do() {
        for v in ["SID=x", "SID=", " SID =x; Path=/", "SID\t=x", "SID=a=b; Max-Age=0"] {
            assert!(sets_cookie(v.as_bytes(), b"SID"), "{v}");
        }
        for v in ["SIDX=x", "sid=x", "xSID=x", "SID", "a=1; SID=x", "=SID", "", "S ID=x"] {
            assert!(!sets_cookie(v.as_bytes(), b"SID"), "{v}");
        }
    }

    fn strip(h: &str) -> StrippedCookie {
        strip_cookie(h.as_bytes(), b"SID")
    }

    fn replaced(s: &str) -> StrippedCookie {
        StrippedCookie::Replaced(s.as_bytes().to_vec())
    }

    #[test]
    fn our_cookie_is_stripped_others_kept_exactly() {
        assert_eq!(strip("a=1; b=2"), StrippedCookie::Unchanged);
        assert_eq!(strip(""), StrippedCookie::Unchanged);
        assert_eq!(strip("SIDX=1; sid=2; SID; xSID=3"), StrippedCookie::Unchanged);
        assert_eq!(strip("SID=x"), StrippedCookie::Removed);
        assert_eq!(strip("SID="), StrippedCookie::Removed);
        assert_eq!(strip(" SID=x ; SID=y;"), StrippedCookie::Removed);
        assert_eq!(strip("a=1; SID=x; b=2"), replaced("a=1; b=2"));
        assert_eq!(strip("SID=x; a=1"), replaced("a=1"));
        assert_eq!(strip("a=1;SID=x"), replaced("a=1"));
        assert_eq!(strip("a=1;SID=x;SID=y;b=\"q;r\""), replaced("a=1;b=\"q;r\""));
        assert_eq!(strip("a=x,SID=y; SID=z; c=  3 "), replaced("a=x,SID=y; c=  3"));
        assert_eq!(strip("a=1;;SID=x; b=2"), replaced("a=1;; b=2"));
        assert_eq!(strip("\tSID=x\t;\tz=9"), replaced("z=9"));
        // Not our cookie for the collector either (a space before `=`).
        assert_eq!(strip("SID =x; a=1"), StrippedCookie::Unchanged);
    }
}
