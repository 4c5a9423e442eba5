//! Random and configured secrets and names: shared by all workers, kept across reloads,
//! never logged (only a fingerprint); sessions survive a reload, not a restart.

mod common;

use common::*;
use std::collections::HashSet;

fn fingerprints(log: &str) -> Vec<String> {
    let key = "sessions: secret fingerprint ";
    log.lines()
        .filter_map(|l| l.find(key).map(|p| &l[p + key.len()..]))
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect::<String>())
        .collect()
}

fn assert_fingerprint_logged(ng: &Nginx) -> String {
    let log = ng.error_log();
    let fps = fingerprints(&log);
    assert!(!fps.is_empty(), "no `sessions: secret fingerprint <hex>` line in error.log:\n{log}");
    for fp in &fps {
        assert!(fp.len() >= 8, "fingerprint {fp:?} too short (needs hex)");
    }
    assert!(
        log.lines().any(|l| l.contains("sessions: secret fingerprint ") && l.contains("[notice]")),
        "fingerprint line is not a [notice]:\n{log}"
    );
    fps[0].clone()
}

/// Default (random) secret and name: one name and one secret for both workers, kept by a
/// reload; the fingerprint is logged, and the same before and after the reload.
#[test]
fn random_secret_and_name_shared_and_survive_reload() {
    let ng = Nginx::start(&site("", ""));
    let r = ng.get("/index.html");
    assert_eq!(r.st(), "new", "{r}");
    let set = r.headers_all("Set-Cookie");
    assert_eq!(set.len(), 1, "{r}");
    let c = SetCookie::parse(set[0]);
    let name = c.name.clone();
    assert!(is_token(&name), "random name {name:?} is not an RFC 6265 token");
    assert_ne!(name, SID);
    assert_cookie_format(&c.value);

    let mut pids = HashSet::new();
    let mut values = vec![c.value.clone()];
    for _ in 0..30 {
        let r = ng.get("/index.html");
        pids.insert(r.pid().to_string());
        assert_eq!(r.st(), "new", "{r}");
        let cs = r.set_cookies(&name);
        assert_eq!(cs.len(), 1, "all workers must use the same cookie name {name}: {r}");
        values.push(cs[0].value.clone());
    }
    // every session valid on every worker
    for v in &values {
        for _ in 0..2 {
            let r = Req::get("/index.html").cookie(&format!("{name}={v}")).send(ng.port);
            pids.insert(r.pid().to_string());
            assert_eq!(r.st(), "valid", "cookie from one worker rejected by another: {r}");
            assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
        }
    }
    assert_eq!(pids.len(), 2, "both workers should have answered: {pids:?}");
    let fp1 = assert_fingerprint_logged(&ng);

    ng.reload();
    let mut new_pids = HashSet::new();
    for v in &values {
        let r = Req::get("/index.html").cookie(&format!("{name}={v}")).send(ng.port);
        new_pids.insert(r.pid().to_string());
        assert_eq!(r.st(), "valid", "session lost by reload: {r}");
    }
    assert!(new_pids.is_disjoint(&pids), "answers came from old workers: {new_pids:?}");
    for _ in 0..6 {
        let r = ng.get("/index.html");
        assert_eq!(r.set_cookies(&name).len(), 1, "cookie name changed by reload: {r}");
    }
    let fps = fingerprints(&ng.error_log());
    assert!(fps.iter().all(|f| *f == fp1), "secret changed across reload: {fps:?}");
}

/// A configured secret never shows up in the log or in `nginx -t` output; a short one warns.
#[test]
fn configured_secret_is_never_logged() {
    let ng = Nginx::site("");
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);
    assert_fingerprint_logged(&ng);
    ng.reload();
    assert_valid(ng.port, Req::get("/index.html"), &v);
    let log = ng.error_log();
    assert!(!log.contains(SECRET), "secret in error.log");
    assert!(!log.contains(&SECRET[..16]), "part of the secret in error.log");

    let t = nginx_t_http(&site(&default_http(""), ""));
    t.assert_ok();
    assert!(!t.stderr.contains(SECRET), "secret in nginx -t output");
    assert!(!t.stderr.contains("[warn]"), "a 50-byte secret must not warn:\n{}", t.stderr);
}

#[test]
fn short_secret_warns() {
    let short = "shortsecret-1234";
    let t = nginx_t_http(&site(&format!("sessions_secret {short};\n sessions_name {SID};"), ""));
    t.assert_ok();
    assert!(t.stderr.contains("[warn]"), "a 16-byte secret must warn:\n{}", t.stderr);
    assert!(!t.stderr.contains(short), "secret in nginx -t output:\n{}", t.stderr);

    let ng = Nginx::start(&site(&format!("sessions_secret {short};\n sessions_name {SID};"), ""));
    let log = ng.error_log();
    assert!(log.contains("[warn]"), "no [warn] for a short secret:\n{log}");
    assert!(!log.contains(short), "secret in error.log:\n{log}");
    // it still works
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

/// Shared-memory sessions live as long as the zone: kept across a reload with an explicit
/// zone, gone after a restart (same secret → cookie verifies but the ID is unknown).
#[test]
fn explicit_zone_survives_reload_not_restart() {
    let http = site(&default_http("sessions_zone store:2m;"), "");
    let ng = Nginx::start(&http);
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);
    ng.reload();
    assert_valid(ng.port, Req::get("/index.html"), &v);
    ng.reload();
    assert_valid(ng.port, Req::get("/index.html"), &v);
    drop(ng);

    let ng2 = Nginx::start(&http);
    let r = Req::get("/index.html").sid(&v).send(ng2.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "invalid", "a session of a stopped nginx must be unknown: {r}");
    assert_ne!(r.one_cookie(SID).id(), id_of(&v));
}

/// Fixation: a correctly signed cookie whose ID was never issued by this nginx (made by
/// another instance with the same secret) is not adopted; a new ID is issued and the
/// foreign ID stays unknown.
#[test]
fn foreign_signed_id_is_not_adopted() {
    let a = Nginx::site("");
    let b = Nginx::site("");
    let v = new_session(a.port, Req::get("/index.html"));
    for _ in 0..2 {
        let r = Req::get("/index.html").sid(&v).send(b.port);
        assert_eq!(r.st(), "invalid", "{r}");
        assert_ne!(r.one_cookie(SID).id(), id_of(&v), "{r}");
    }
    assert_valid(a.port, Req::get("/index.html"), &v);
}

/// Another secret → the same cookie fails verification.
#[test]
fn different_secret_rejects_cookie() {
    let a = Nginx::site("");
    let b = Nginx::start(&site(
        &format!("sessions_secret another-secret-another-secret-another-1;\n sessions_name {SID};"),
        "",
    ));
    let v = new_session(a.port, Req::get("/index.html"));
    let r = Req::get("/index.html").sid(&v).send(b.port);
    assert_eq!(r.st(), "invalid", "{r}");
    let fa = fingerprints(&a.error_log());
    let fb = fingerprints(&b.error_log());
    assert!(!fa.is_empty() && !fb.is_empty());
    assert_ne!(fa[0], fb[0], "different secrets, same fingerprint");
}

/// Reload under traffic: no 5xx, no session lost.
#[test]
fn reload_under_traffic() {
    let ng = Nginx::site("");
    let v = new_session(ng.port, Req::get("/index.html"));
    let port = ng.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let v2 = v.clone();
    let h = std::thread::spawn(move || {
        let mut n = 0;
        while !s2.load(std::sync::atomic::Ordering::SeqCst) && n < 20_000 {
            let r = Req::get("/index.html").sid(&v2).send(port);
            assert_eq!(r.status, 200, "{r}");
            assert_eq!(r.st(), "valid", "{r}");
            n += 1;
        }
        n
    });
    for _ in 0..4 {
        ng.reload();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = h.join().unwrap();
    assert!(n > 0);
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

/// Reload with a different zone size starts an empty table (README); reload with another
/// secret rejects the old cookies. No crash either way.
#[test]
fn reload_with_changed_zone_or_secret() {
    let ng = Nginx::start(&site(&default_http("sessions_zone store:1m;"), ""));
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);

    ng.rewrite_conf(&main_conf(&site(&default_http("sessions_zone store:2m;"), ""), 2));
    ng.reload();
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "invalid", "a resized zone starts empty: {r}");
    let w = r.sid();
    assert_valid(ng.port, Req::get("/index.html"), &w);

    ng.rewrite_conf(&main_conf(
        &site(
            &format!(
                "sessions_secret rotated-secret-rotated-secret-rotated-01;\n sessions_name {SID};\n \
                 sessions_zone store:2m;"
            ),
            "",
        ),
        2,
    ));
    ng.reload();
    let r = Req::get("/index.html").sid(&w).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "invalid", "cookie signed with the old secret: {r}");
    let x = r.sid();
    assert_valid(ng.port, Req::get("/index.html"), &x);
}
