//! Tampered, truncated, overlong, malformed and duplicated cookies: always rejected like a
//! request without a session (new cookie, no 5xx), and they never hurt the real session.

mod common;

use common::*;

const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn tamper_site() -> Nginx {
    Nginx::start(&site(&default_http(""), "large_client_header_buffers 4 64k;"))
}

/// Checks a response to a rejected cookie: 200, `$session_status` in `allowed`, one new
/// well-formed Set-Cookie whose ID is none of `not`, same header names as `baseline`.
fn assert_rejected(r: &Response, what: &str, allowed: &[&str], not: &[&str], baseline: &Response) {
    assert_eq!(r.status, 200, "{what}: {r}");
    assert!(allowed.contains(&r.st()), "{what}: status {:?} not in {allowed:?}: {r}", r.st());
    let c = r.one_cookie(SID);
    assert_cookie_format(&c.value);
    assert!(!not.contains(&c.id()), "{what}: the old ID was handed out again: {r}");
    assert_eq!(r.id(), c.id(), "{what}: {r}");
    assert_eq!(
        r.header_names(),
        baseline.header_names(),
        "{what}: response headers differ from a cookie-less request"
    );
}

#[test]
fn every_character_substituted_is_invalid() {
    let ng = tamper_site();
    let mut conn = Conn::new(ng.port);
    let baseline = conn.send(&Req::get("/index.html"));
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);
    let bytes = v.as_bytes();
    let mut n = 0;
    for i in 0..bytes.len() {
        let c = bytes[i] as char;
        let mut subs: Vec<char> = Vec::new();
        // another alphabet character
        subs.push(if c == 'A' { 'B' } else { 'A' });
        // the neighbour in the alphabet (changes few bits; also the non-canonical last char)
        if let Some(p) = ALPHABET.find(c) {
            subs.push(ALPHABET.as_bytes()[(p + 1) % 64] as char);
        }
        // case flip
        if c.is_ascii_alphabetic() {
            subs.push(if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
        }
        // characters outside base64url
        subs.push('+');
        subs.push(if i % 2 == 0 { '/' } else { '=' });
        if c != '.' {
            subs.push('.');
        }
        for s in subs {
            if s == c {
                continue;
            }
            let mut t = v.clone().into_bytes();
            t[i] = s as u8;
            let t = String::from_utf8(t).unwrap();
            let r = conn.send(&Req::get("/index.html").sid(&t));
            assert_rejected(
                &r,
                &format!("pos {i} {c:?}->{s:?} ({t})"),
                &["invalid"],
                &[id_of(&v)],
                &baseline,
            );
            n += 1;
        }
    }
    assert!(n > 200, "only {n} variants");
    // the real session survived all of it, on both workers
    for _ in 0..6 {
        assert_valid(ng.port, Req::get("/index.html"), &v);
    }
}

#[test]
fn truncated_and_overlong_are_invalid() {
    let ng = tamper_site();
    let mut conn = Conn::new(ng.port);
    let baseline = conn.send(&Req::get("/index.html"));
    let v = new_session(ng.port, Req::get("/index.html"));
    let id = id_of(&v).to_string();
    let mac = v[23..].to_string();

    // every non-empty prefix
    for len in 1..v.len() {
        let t = &v[..len];
        let r = conn.send(&Req::get("/index.html").sid(t));
        assert_rejected(&r, &format!("prefix {len} ({t})"), &["invalid"], &[&id], &baseline);
    }
    // empty value: absent or invalid
    let r = conn.send(&Req::get("/index.html").sid(""));
    assert_rejected(&r, "empty value", &["new", "invalid"], &[&id], &baseline);

    let long1000 = format!("{v}{}", "A".repeat(1000));
    let long4000 = format!("{v}{}", "x".repeat(4000));
    let variants = [
        format!("{v}A"),
        format!("{v}AA"),
        format!("{v}."),
        format!("{v}.{mac}"),
        long1000,
        long4000,
        id.clone(),
        format!("{id}."),
        format!(".{mac}"),
        format!("{mac}.{id}"),
        format!("{id}.{id}"),
        format!("{id}={mac}"),
        format!("{id}{mac}"),
        format!("{id}.{}", &mac[..21]),
        format!("{id}.{}", &mac[..1]),
        format!("{id}.{mac}="),
        format!("{id}==.{mac}=="),
        format!("{}.{mac}", &id[..21]),
        format!("A{v}"),
        format!("%41{}", &v[1..]),
        format!("{id}%2E{mac}"),
        v.to_ascii_uppercase(),
        v.to_ascii_lowercase(),
        v.replace('-', "+").replace('_', "/") + "x",
    ];
    for t in variants {
        if t == v {
            continue;
        }
        let r = conn.send(&Req::get("/index.html").sid(&t));
        assert_rejected(&r, &format!("variant {t:.80}"), &["invalid"], &[&id], &baseline);
    }
    // MAC of another session with this ID, and this MAC with another ID
    let w = new_session(ng.port, Req::get("/index.html"));
    for t in [format!("{id}.{}", &w[23..]), format!("{}.{mac}", id_of(&w))] {
        let r = conn.send(&Req::get("/index.html").sid(&t));
        assert_rejected(&r, &format!("spliced {t}"), &["invalid"], &[&id, id_of(&w)], &baseline);
    }
    assert_valid(ng.port, Req::get("/index.html"), &v);
    assert_valid(ng.port, Req::get("/index.html"), &w);
}

#[test]
fn odd_bytes_and_quoting_never_5xx() {
    let ng = tamper_site();
    let v = new_session(ng.port, Req::get("/index.html"));
    let id = id_of(&v).to_string();
    let cases: Vec<Vec<u8>> = vec![
        format!("\"{v}\"").into_bytes(),
        format!("{} {}", &v[..22], &v[22..]).into_bytes(),
        format!("{}\t{}", &v[..22], &v[22..]).into_bytes(),
        [&v.as_bytes()[..10], &[0x80, 0xff], &v.as_bytes()[12..]].concat(),
        [&v.as_bytes()[..44], &[0xc3, 0xa9]].concat(),
        [v.as_bytes(), &[0xff; 50]].concat(),
        [&v.as_bytes()[..5], &[0x00], &v.as_bytes()[6..]].concat(),
        [&v.as_bytes()[..5], &[0x01], &v.as_bytes()[6..]].concat(),
        [&v.as_bytes()[..5], &[0x7f], &v.as_bytes()[6..]].concat(),
    ];
    for value in cases {
        let mut req = format!(
            "GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nUser-Agent: {UA}\r\nCookie: {SID}="
        )
        .into_bytes();
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\n\r\n");
        let r = raw(ng.port, &req);
        let what = String::from_utf8_lossy(&value).into_owned();
        assert!(r.status < 500, "{what:?}: {r}");
        if r.status == 200 {
            // quoted form: RFC 6265 allows DQUOTEs around the value; either reading is fine
            assert!(["invalid", "new", "valid"].contains(&r.st()), "{what:?}: {r}");
            if r.st() != "valid" {
                let c = r.one_cookie(SID);
                assert_ne!(c.id(), id, "{what:?}");
            } else {
                assert!(value.starts_with(b"\""), "{what:?} must not be accepted: {r}");
            }
        } else {
            assert_eq!(r.status, 400, "{what:?}: {r}");
        }
    }
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

#[test]
fn malformed_pairs_are_absent_or_invalid() {
    let ng = tamper_site();
    let v = new_session(ng.port, Req::get("/index.html"));
    let mut conn = Conn::new(ng.port);
    let baseline = conn.send(&Req::get("/index.html"));
    for line in [
        SID.to_string(),
        format!("{SID}="),
        format!("{SID}=;"),
        format!("{SID}=="),
        format!("={}", v),
        ";;;".to_string(),
        ";".to_string(),
        "".to_string(),
        " ".to_string(),
        format!("{SID} ; a=1"),
        format!("=;{SID}"),
    ] {
        let r = conn.send(&Req::get("/index.html").cookie(&line));
        assert_rejected(
            &r,
            &format!("Cookie: {line}"),
            &["new", "invalid"],
            &[id_of(&v)],
            &baseline,
        );
    }
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

#[test]
fn duplicate_names() {
    let ng = tamper_site();
    let v = new_session(ng.port, Req::get("/index.html"));
    let w = new_session(ng.port, Req::get("/index.html"));
    let bogus = format!("{}.{}", id_of(&v), &w[23..]);
    let junk = "junk";

    // one valid + bogus ones: exactly one verifies → that session
    for lines in [
        vec![format!("{SID}={junk}; {SID}={v}")],
        vec![format!("{SID}={v}; {SID}={junk}")],
        vec![format!("{SID}={bogus}; {SID}={v}")],
        vec![format!("{SID}={v}; {SID}={bogus}")],
        vec![format!("{SID}={bogus}"), format!("{SID}={v}")],
        vec![format!("{SID}={v}"), format!("a=1; {SID}={junk}")],
    ] {
        let mut req = Req::get("/index.html");
        for l in &lines {
            req = req.cookie(l);
        }
        let r = req.send(ng.port);
        assert_eq!(r.status, 200, "{lines:?}: {r}");
        assert_eq!(r.st(), "valid", "{lines:?}: only one cookie verifies: {r}");
        assert_eq!(r.id(), id_of(&v), "{lines:?}: {r}");
        assert!(r.set_cookies(SID).len() <= 1, "{lines:?}: {r}");
    }

    // two different valid sessions: no session, a new one, none of the two
    for lines in [
        vec![format!("{SID}={v}; {SID}={w}")],
        vec![format!("{SID}={w}; {SID}={v}")],
        vec![format!("{SID}={w}"), format!("{SID}={v}")],
    ] {
        let mut req = Req::get("/index.html");
        for l in &lines {
            req = req.cookie(l);
        }
        let r = req.send(ng.port);
        assert_eq!(r.status, 200, "{lines:?}: {r}");
        assert_eq!(r.st(), "invalid", "{lines:?}: two sessions must not yield one: {r}");
        let c = r.one_cookie(SID);
        assert!(c.id() != id_of(&v) && c.id() != id_of(&w), "{lines:?}: {r}");
    }

    // the same valid cookie twice: no 5xx, at most one Set-Cookie, never another session
    let r = Req::get("/index.html").cookie(&format!("{SID}={v}; {SID}={v}")).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert!(["valid", "invalid"].contains(&r.st()), "{r}");
    assert!(r.set_cookies(SID).len() <= 1, "{r}");
    if r.st() == "valid" {
        assert_eq!(r.id(), id_of(&v));
    }
}

/// Presenting two valid cookies at once (cookie tossing) must not destroy either session.
#[test]
fn duplicate_valid_cookies_do_not_destroy_sessions() {
    let ng = tamper_site();
    let v = new_session(ng.port, Req::get("/index.html"));
    let w = new_session(ng.port, Req::get("/index.html"));
    let r = Req::get("/index.html").cookie(&format!("{SID}={v}; {SID}={w}")).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_valid(ng.port, Req::get("/index.html"), &v);
    assert_valid(ng.port, Req::get("/index.html"), &w);
}

#[test]
fn many_cookies_and_huge_headers() {
    let ng = tamper_site();
    let v = new_session(ng.port, Req::get("/index.html"));
    // 2000 other cookies, ours last (~20 KB with 64k header buffers)
    let mut line: String = (0..2000).map(|i| format!("a{i}=x; ")).collect();
    line.push_str(&format!("{SID}={v}"));
    let r = Req::get("/index.html").cookie(&line).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "valid", "{r}");
    // ours first, then 2000 others
    let line2 = format!("{SID}={v}; {}", "b=1; ".repeat(2000));
    let r = Req::get("/index.html").cookie(line2.trim_end_matches("; ")).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    // 50 Cookie header lines
    let mut req = Req::get("/index.html");
    for i in 0..50 {
        req = req.cookie(&format!("c{i}=y"));
    }
    let r = req.cookie(&format!("{SID}={v}")).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    // a header line larger than the buffers: nginx answers 400 itself, worker stays alive
    let huge = format!("{SID}={v}; z={}", "q".repeat(70_000));
    let r = Req::get("/index.html").cookie(&huge).send(ng.port);
    assert_eq!(r.status, 400, "{r}");
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

/// Tampered cookies are logged at info at most: no [warn]/[error] lines, no log flood.
#[test]
fn tampering_does_not_flood_the_log() {
    let ng = tamper_site();
    let v = new_session(ng.port, Req::get("/index.html"));
    let before = ng.error_log_lines();
    let mut conn = Conn::new(ng.port);
    for i in 0..2000usize {
        let mut t = v.clone().into_bytes();
        t[i % 45] = if t[i % 45] == b'A' { b'B' } else { b'A' };
        let r = conn.send(&Req::get("/index.html").sid(std::str::from_utf8(&t).unwrap()));
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "invalid", "{r}");
    }
    let new_lines = ng.error_log_since(before);
    let loud: Vec<&String> = new_lines
        .iter()
        .filter(|l| l.contains("[warn]") || l.contains("[error]") || l.contains("[crit]"))
        .collect();
    assert!(loud.is_empty(), "tampered cookies logged above info: {loud:?}");
    assert!(new_lines.len() <= 2100, "{} log lines for 2000 tampered cookies", new_lines.len());
    assert_valid(ng.port, Req::get("/index.html"), &v);
}
