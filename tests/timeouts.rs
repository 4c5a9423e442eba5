//! Idle, rolling and absolute timeouts with second-scale values, the renewal grace, and
//! renewal under concurrent requests. Timestamps have 1-second granularity: the waits
//! below keep a margin of at least 0.2 s past a boundary, and "still valid" checks stay
//! well inside their window.

mod common;

use common::*;
use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

fn sleep_secs(s: f64) {
    thread::sleep(Duration::from_secs_f64(s));
}

#[test]
fn idle_timeout_expires_session() {
    let ng = Nginx::site(
        "sessions_idling_timeout 2s;\n sessions_rolling_timeout 30s;\n sessions_absolute_timeout 60s;",
    );
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);
    sleep_secs(3.2);
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "expired", "idle 2s passed: {r}");
    let c = r.one_cookie(SID);
    assert_cookie_format(&c.value);
    assert_ne!(c.id(), id_of(&v), "{r}");
    assert_eq!(r.id(), c.id(), "{r}");
    // the new session works, the old one stays dead
    assert_valid(ng.port, Req::get("/index.html"), &c.value);
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert!(["expired", "invalid"].contains(&r.st()), "expired session came back: {r}");
    let c2 = r.one_cookie(SID);
    assert_ne!(c2.id(), id_of(&v));
}

#[test]
fn activity_keeps_session_alive() {
    let ng = Nginx::site(
        "sessions_idling_timeout 3s;\n sessions_rolling_timeout 60s;\n sessions_absolute_timeout 120s;",
    );
    let v = new_session(ng.port, Req::get("/index.html"));
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(5500) {
        sleep_secs(0.5);
        assert_valid(ng.port, Req::get("/index.html"), &v);
        n += 1;
    }
    assert!(n >= 8);
    // and then it idles out
    sleep_secs(4.2);
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.st(), "expired", "{r}");
}

#[test]
fn rolling_renewal_and_grace() {
    let ng = Nginx::site(
        "sessions_idling_timeout 30s;\n sessions_rolling_timeout 2s;\n sessions_absolute_timeout 60s;",
    );
    let v = new_session(ng.port, Req::get("/index.html"));
    let r0 = assert_valid(ng.port, Req::get("/index.html"), &v);
    let hash0 = r0.hash().to_string();
    sleep_secs(2.3);
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "renewed", "rolling 2s passed: {r}");
    let c = r.one_cookie(SID);
    assert_cookie_format(&c.value);
    assert_ne!(c.id(), id_of(&v), "renewal must change the ID: {r}");
    assert_eq!(r.id(), c.id(), "$session_id is the ID after renewal: {r}");
    assert_ne!(r.hash(), hash0, "$session_id_hash follows the ID: {r}");
    assert!(c.has("HttpOnly") && c.attr("Path") == Some("/"), "{}", c.raw);

    // the successor is valid and not renewed again right away
    assert_valid(ng.port, Req::get("/index.html"), &c.value);
    // the old ID within the grace answers with the same successor (several times)
    for _ in 0..4 {
        let r = Req::get("/index.html").sid(&v).send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        assert!(["renewed", "valid"].contains(&r.st()), "old ID within grace: {r}");
        let c2 = r.one_cookie(SID);
        assert_eq!(c2.id(), c.id(), "old ID within grace must give the same successor: {r}");
        assert_eq!(r.id(), c.id(), "{r}");
    }
    assert_valid(ng.port, Req::get("/index.html"), &c.value);
}

#[test]
fn old_id_dies_after_grace() {
    let ng = Nginx::site(
        "sessions_idling_timeout 60s;\n sessions_rolling_timeout 2s;\n sessions_absolute_timeout 120s;",
    );
    let v = new_session(ng.port, Req::get("/index.html"));
    sleep_secs(2.3);
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.st(), "renewed", "{r}");
    let succ = r.sid();
    // grace is 10 s
    sleep_secs(12.0);
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "invalid", "old ID must be dead after the grace: {r}");
    let c = r.one_cookie(SID);
    assert_ne!(c.id(), id_of(&succ), "the dead ID must not hand out the successor: {r}");
    assert_ne!(c.id(), id_of(&v));
    // the successor lives on (renewed again: its own rolling period passed)
    let r = Req::get("/index.html").sid(&succ).send(ng.port);
    assert!(["valid", "renewed"].contains(&r.st()), "successor lost: {r}");
}

#[test]
fn absolute_timeout_ends_session_despite_activity() {
    let ng = Nginx::site(
        "sessions_idling_timeout 3s;\n sessions_rolling_timeout 1s;\n sessions_absolute_timeout 4s;",
    );
    let start = Instant::now();
    let mut v = new_session(ng.port, Req::get("/index.html"));
    let mut seen = Vec::new();
    let mut expired_at = None;
    while start.elapsed() < Duration::from_secs(9) {
        sleep_secs(0.8);
        let t = start.elapsed().as_secs_f64();
        let r = Req::get("/index.html").sid(&v).send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        seen.push((t, r.st().to_string()));
        match r.st() {
            "valid" => assert!(r.no_cookie(SID), "{r}"),
            "renewed" => v = r.sid(),
            "expired" => {
                let c = r.one_cookie(SID);
                assert_ne!(c.id(), id_of(&v));
                expired_at = Some(t);
                break;
            }
            other => panic!("unexpected status {other} at {t:.1}s: {r} (seen {seen:?})"),
        }
    }
    let t = expired_at.unwrap_or_else(|| panic!("never expired: {seen:?}"));
    assert!((3.0..=6.5).contains(&t), "absolute 4s expiry at {t:.1}s: {seen:?}");
    let renewals = seen.iter().filter(|(_, s)| s == "renewed").count();
    assert!(renewals >= 1, "rolling 1s should have renewed: {seen:?}");
}

/// 20 concurrent requests with the same old cookie after the rolling timeout, over both
/// workers: all succeed and exactly one successor ID is handed out.
#[test]
fn concurrent_renewal_makes_one_successor() {
    let ng = Nginx::site(
        "sessions_idling_timeout 60s;\n sessions_rolling_timeout 2s;\n sessions_absolute_timeout 120s;",
    );
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);
    sleep_secs(2.3);
    let port = ng.port;
    let barrier = Arc::new(Barrier::new(20));
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let b = barrier.clone();
            let v = v.clone();
            thread::spawn(move || {
                // connect first, then release all requests together
                let req = Req::get("/index.html").sid(&v);
                let mut s = connect(port, None).unwrap();
                b.wait();
                use std::io::Write;
                s.write_all(&req.to_bytes(false)).unwrap();
                let mut r = std::io::BufReader::new(s);
                read_response(&mut r, false).unwrap()
            })
        })
        .collect();
    let resps: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut succ = HashSet::new();
    let mut renewed = 0;
    for r in &resps {
        assert_eq!(r.status, 200, "{r}");
        assert!(["renewed", "valid"].contains(&r.st()), "{r}");
        if r.st() == "renewed" {
            renewed += 1;
        }
        let cs = r.set_cookies(SID);
        assert_eq!(cs.len(), 1, "each request with the old ID must get the successor: {r}");
        succ.insert(cs[0].id().to_string());
        assert_eq!(r.id(), cs[0].id(), "{r}");
    }
    assert_eq!(succ.len(), 1, "session forked into {succ:?}");
    assert!(renewed >= 1, "no response says renewed");
    let s = succ.into_iter().next().unwrap();
    assert_ne!(s, id_of(&v));
    let succ_value = resps[0].one_cookie(SID).value;
    assert_valid(ng.port, Req::get("/index.html"), &succ_value);
    // the old ID still maps to the same successor
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.one_cookie(SID).id(), s, "{r}");
}

/// The successor keeps the bindings of the session: replayed from another address it is a
/// mismatch.
#[test]
fn renewal_keeps_bindings() {
    let ng = Nginx::site(
        "sessions_idling_timeout 60s;\n sessions_rolling_timeout 2s;\n sessions_absolute_timeout 120s;",
    );
    let v = new_session(ng.port, Req::get("/index.html").from("127.0.0.2").ua("agent-A"));
    sleep_secs(2.3);
    let r = Req::get("/index.html").from("127.0.0.2").ua("agent-A").sid(&v).send(ng.port);
    assert_eq!(r.st(), "renewed", "{r}");
    let succ = r.sid();
    assert_valid(ng.port, Req::get("/index.html").from("127.0.0.2").ua("agent-A"), &succ);
    let r = Req::get("/index.html").from("127.0.0.3").ua("agent-A").sid(&succ).send(ng.port);
    assert_eq!(r.st(), "mismatch", "successor lost the IP binding: {r}");
    let r = Req::get("/index.html").from("127.0.0.2").ua("agent-A").sid(&succ).send(ng.port);
    assert_eq!(r.st(), "invalid", "{r}");
}
