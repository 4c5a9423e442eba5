//! What the module does to headers around the session (issue 8): an upstream's or
//! `add_header`'s `Set-Cookie` for our name never reaches the client (finding 2); a
//! response that carries our `Set-Cookie` is `Cache-Control: private` whatever `expires`
//! or the upstream said (finding 3); `sessions_pass_cookie off` keeps our cookie from the
//! upstream (finding 8); a cookieless cross-site request that is not a top-level GET/HEAD
//! navigation starts no session (finding 9, SPEC step 7).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// Locations of the test site, on top of [`site`]'s. `/backend/` stands for an
/// application: it echoes the `Cookie` header it got and answers with a `Set-Cookie` for
/// our name, another cookie, and a shared-cacheable `Cache-Control` in two lines.
const LOCATIONS: &str = r#"
        location /up/ {
            sessions on;
            proxy_pass http://127.0.0.1:%%PORT%%/backend/;
        }
        location /backend/ {
            sessions off;
            add_header Set-Cookie "SID=from-upstream; Path=/" always;
            add_header Set-Cookie "other=1; Path=/" always;
            add_header Cache-Control "public" always;
            add_header Cache-Control "s-maxage=600, max-age=30" always;
            return 200 "cookie=[$http_cookie]\n";
        }
        location /addh/ {
            sessions on;
            alias %%PREFIX%%/html/;
            add_header Set-Cookie " SID =from-add-header" always;
            add_header Cache-Control "public, max-age=60" always;
            add_header X-Status $session_status always;
            add_header X-Id $session_id always;
        }
        location /exp/ {
            sessions on;
            alias %%PREFIX%%/html/;
            expires 1h;
        }
"#;

fn headers_site(extra_http: &str) -> Nginx {
    Nginx::start(&site(&default_http(extra_http), LOCATIONS))
}

/// `Cache-Control` lines of a response.
fn cache_control(r: &Response) -> Vec<&str> {
    r.headers_all("Cache-Control")
}

// ---------------------------------------------------------------------------------------
// finding 2: Set-Cookie for our name
// ---------------------------------------------------------------------------------------

#[test]
fn upstream_set_cookie_for_our_name_never_passes() {
    let ng = headers_site("");
    let r = ng.get("/up/x");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    let ours = r.one_cookie(SID);
    assert_cookie_format(&ours.value);
    assert_eq!(r.set_cookies("other").len(), 1, "other cookies pass: {r}");

    // A valid session: we set nothing, and the upstream's cookie for our name is gone too.
    let r = Req::get("/up/x").sid(&ours.value).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(r.no_cookie(SID), "an upstream's Set-Cookie for our name passed: {r}");
    assert_eq!(r.set_cookies("other").len(), 1, "other cookies pass: {r}");
    assert_valid(ng.port, Req::get("/index.html"), &ours.value);
    ng.check_logs();
}

#[test]
fn add_header_set_cookie_for_our_name_never_passes() {
    let ng = headers_site("");
    let r = ng.get("/addh/index.html");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    // Exactly ours (" SID =..." is the cookie SID for a browser).
    let ours = r.one_cookie(SID);
    assert_cookie_format(&ours.value);
    assert!(
        r.headers_all("Set-Cookie").iter().all(|c| !c.contains("from-add-header")),
        "add_header's Set-Cookie for our name passed: {r}"
    );
    let r = Req::get("/addh/index.html").sid(&ours.value).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
    ng.check_logs();
}

#[test]
fn upstream_set_cookie_for_our_name_never_passes_when_the_store_fails() {
    let dead = free_port();
    let ng = headers_site(&format!("sessions_redis redis://127.0.0.1:{dead};"));
    for req in [Req::get("/up/x"), Req::get("/up/x").sid("A.B")] {
        let r = req.send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "error", "{r}");
        assert!(r.no_cookie(SID), "an upstream's Set-Cookie for our name passed: {r}");
        assert_eq!(r.set_cookies("other").len(), 1, "other cookies pass: {r}");
    }
    ng.check_logs();
}

// ---------------------------------------------------------------------------------------
// finding 3: a response with our Set-Cookie is private
// ---------------------------------------------------------------------------------------

#[test]
fn set_cookie_with_expires_is_private() {
    let ng = headers_site("");
    let r = ng.get("/exp/index.html");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    let v = r.sid();
    assert_eq!(cache_control(&r), ["private, max-age=3600"], "{r}");
    // Without our Set-Cookie, `expires` is left alone.
    let r = Req::get("/exp/index.html").sid(&v).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert_eq!(cache_control(&r), ["max-age=3600"], "{r}");
    ng.check_logs();
}

#[test]
fn set_cookie_with_a_public_upstream_is_private() {
    let ng = headers_site("");
    let r = ng.get("/up/x");
    assert_eq!(r.st(), "new", "{r}");
    let v = r.sid();
    assert_eq!(cache_control(&r), ["private, max-age=30"], "{r}");
    let r = Req::get("/up/x").sid(&v).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert_eq!(cache_control(&r), ["public", "s-maxage=600, max-age=30"], "{r}");

    // add_header's Cache-Control, and none at all.
    let r = ng.get("/addh/index.html");
    assert_eq!(r.st(), "new", "{r}");
    assert_eq!(cache_control(&r), ["private, max-age=60"], "{r}");
    let r = ng.get("/index.html");
    assert_eq!(r.st(), "new", "{r}");
    assert_eq!(cache_control(&r), ["private"], "{r}");
    let r = Req::get("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(cache_control(&r).is_empty(), "{r}");
    ng.check_logs();
}

// ---------------------------------------------------------------------------------------
// finding 9: a cookieless cross-site request that is not a top-level GET/HEAD navigation
// starts no session (SPEC step 7)
// ---------------------------------------------------------------------------------------

const HELD_BACK: &str = "request without a session cookie: no session started";

fn post(path: &str) -> Req {
    Req { method: "POST".into(), ..Req::get(path) }
}

/// Fetch Metadata as a browser sends it.
fn fetch(req: Req, site: &str, mode: &str) -> Req {
    req.header("Sec-Fetch-Site", site).header("Sec-Fetch-Mode", mode)
}

fn held_back_lines(ng: &Nginx) -> usize {
    ng.error_log().lines().filter(|l| l.contains(HELD_BACK)).count()
}

/// The request started no session: `new`, empty `$session_id`, no Set-Cookie at all.
fn assert_no_session(r: &Response) {
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    assert_eq!(r.id(), "", "{r}");
    assert!(r.no_cookie(SID), "a cross-site request started a session: {r}");
}

/// The request started a session: `new` and our Set-Cookie.
fn assert_new_session(r: &Response) -> String {
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    let v = r.sid();
    assert_eq!(r.id(), id_of(&v), "{r}");
    v
}

/// Every case of SPEC step 7 on one instance; returns the cookie of a session started by
/// a same-site request.
fn check_fetch_metadata(ng: &Nginx) -> String {
    let port = ng.port;
    // The attack: another site's auto-submitted form (a cross-site POST navigation).
    let before = held_back_lines(ng);
    assert_no_session(&fetch(post("/up/x"), "cross-site", "navigate").send(port));
    assert_eq!(held_back_lines(ng), before + 1, "one info line per held-back request");
    let line = ng.error_log().lines().rev().find(|l| l.contains(HELD_BACK)).unwrap().to_string();
    assert!(line.contains("[info]") && line.contains("cross-site navigate request"), "{line}");
    // Cross-site subresources and fetches, and header values in another case.
    assert_no_session(&fetch(Req::get("/up/x"), "cross-site", "no-cors").send(port));
    assert_no_session(&fetch(Req::get("/up/x"), "cross-site", "cors").send(port));
    assert_no_session(&fetch(post("/up/x"), "Cross-Site", "NAVIGATE").send(port));
    assert_no_session(&post("/up/x").header("Sec-Fetch-Site", "cross-site").send(port));

    // A top-level GET or HEAD navigation from another site (a link) starts a session.
    assert_new_session(&fetch(Req::get("/up/x"), "cross-site", "navigate").send(port));
    let r = fetch(Req::head("/index.html"), "cross-site", "navigate").send(port);
    assert_eq!(r.st(), "new", "{r}");
    assert_eq!(r.set_cookies(SID).len(), 1, "{r}");
    // Same site, same origin, typed URLs, no Fetch Metadata: a session.
    for site in ["same-site", "same-origin", "none"] {
        assert_new_session(&fetch(post("/up/x"), site, "cors").send(port));
    }
    let v = assert_new_session(&post("/up/x").send(port));

    // A visitor who has a session keeps it on a cross-site request that carries the
    // cookie (SameSite=None-like browsers, or a cross-site GET navigation).
    let r = fetch(post("/up/x"), "cross-site", "navigate").sid(&v).send(port);
    assert_eq!(r.st(), "valid", "{r}");
    assert_eq!(r.id(), id_of(&v), "{r}");
    assert!(r.no_cookie(SID), "{r}");
    // A cross-site request with a bad cookie is not "without a session cookie".
    let r = fetch(post("/up/x"), "cross-site", "navigate").sid("bogus").send(port);
    assert_eq!(r.st(), "invalid", "{r}");
    r.sid();
    v
}

#[test]
fn cross_site_requests_start_no_session_shared_memory() {
    let ng = headers_site("");
    let v = check_fetch_metadata(&ng);
    assert_valid(ng.port, Req::get("/index.html"), &v);
    ng.check_logs();
}

#[test]
fn cross_site_requests_start_no_session_redis() {
    let redis = Redis::start();
    let ng = headers_site(&format!("sessions_redis redis://127.0.0.1:{};", redis.port));
    // Session records only: the cluster's binding key (and identity) may be made by any
    // worker's first request, held back or not; they are not session state.
    let keys = |redis: &Redis| -> usize { redis.cmd(&["KEYS", "s:*"]).items().len() };
    ng.get("/off/index.html");
    let before = keys(&redis);
    for _ in 0..3 {
        assert_no_session(&fetch(post("/up/x"), "cross-site", "navigate").send(ng.port));
    }
    assert_eq!(keys(&redis), before, "a held-back request stored something");
    let v = check_fetch_metadata(&ng);
    assert_valid(ng.port, Req::get("/index.html"), &v);
    ng.check_logs();
}

/// With `SameSite=None` the browser sends the cookie cross-site, so a cookieless
/// cross-site request had none to hold back: it starts a session as usual.
#[test]
fn samesite_none_starts_sessions_cross_site() {
    let ng = headers_site("sessions_cookie_samesite none; sessions_cookie_secure on;");
    let r = fetch(post("/up/x"), "cross-site", "navigate").send(ng.port);
    assert_eq!(r.st(), "new", "{r}");
    assert_eq!(r.set_cookies(SID).len(), 1, "{r}");
    assert_eq!(held_back_lines(&ng), 0);
    ng.check_logs();
}

// ---------------------------------------------------------------------------------------
// finding 8: sessions_pass_cookie off
// ---------------------------------------------------------------------------------------

/// A backend on a free loopback port that answers every request with the request's raw
/// header block as its body: exactly what the upstream received.
struct EchoBackend {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoBackend {
    fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    head.len()
                );
                let _ = conn.write_all(reply.as_bytes());
                let _ = conn.write_all(&head);
            }
        });
        EchoBackend { port, stop, thread: Some(thread) }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `Cookie` lines the upstream received (values, in order).
fn upstream_cookies(r: &Response) -> Vec<String> {
    r.body_str()
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

fn pass_cookie_site(echo: &EchoBackend, extra_http: &str) -> Nginx {
    let locations = format!(
        r#"
        location /nopass/ {{
            sessions on;
            sessions_pass_cookie off;
            proxy_pass http://127.0.0.1:{echo}/;
            proxy_set_header X-Session-Id $session_id;
            add_header X-Status $session_status always;
            add_header X-Id $session_id always;
            add_header X-Front-Cookie "[$http_cookie]" always;
        }}
        location /pass/ {{
            sessions on;
            proxy_pass http://127.0.0.1:{echo}/;
        }}
"#,
        echo = echo.port
    );
    Nginx::start(&site(&default_http(extra_http), &locations))
}

fn check_pass_cookie_off(ng: &Nginx) {
    let port = ng.port;
    let v = new_session(port, Req::get("/nopass/x"));
    let id = id_of(&v).to_string();

    // Only our cookie: the header is dropped, the session still evaluated.
    let r = Req::get("/nopass/x").sid(&v).send(port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(upstream_cookies(&r).is_empty(), "upstream got our cookie: {}", r.body_str());
    assert_eq!(
        r.body_str().matches(&id).count(),
        1,
        "the session ID reached the upstream outside X-Session-Id: {}",
        r.body_str()
    );
    assert!(r.body_str().contains(&format!("X-Session-Id: {id}\r\n")), "{}", r.body_str());
    assert_eq!(r.header("X-Front-Cookie"), Some("[]"), "{r}");
    assert!(r.body_str().contains(&format!("User-Agent: {UA}\r\n")), "{}", r.body_str());

    // Other cookies kept byte for byte, around ours and in another header line.
    let r = Req::get("/nopass/x")
        .cookie(&format!("a=1; {SID}={v}; b=\"x,y\";c=3"))
        .header("X-Custom", "kept")
        .cookie(&format!("{SID}={v}"))
        .cookie(&format!("d=4; {SID}=other"))
        .send(port);
    assert_eq!(r.st(), "valid", "exactly one value with our name verifies: {r}");
    assert_eq!(upstream_cookies(&r), ["a=1; b=\"x,y\";c=3", "d=4"], "{}", r.body_str());
    assert!(r.body_str().contains("X-Custom: kept\r\n"), "{}", r.body_str());
    assert_eq!(r.header("X-Front-Cookie"), Some("[a=1; b=\"x,y\";c=3; d=4]"), "{r}");

    let r = Req::get("/nopass/x").cookie(&format!("{SID}={v}; z=9")).send(port);
    assert_eq!(r.st(), "valid", "{r}");
    assert_eq!(upstream_cookies(&r), ["z=9"], "{}", r.body_str());
    let r = Req::get("/nopass/x").cookie("SIDX=1; sid=2").send(port);
    assert_eq!(upstream_cookies(&r), ["SIDX=1; sid=2"], "not our name: {}", r.body_str());

    // Where it is on (the default), the upstream gets the header as sent.
    let r = Req::get("/pass/x").cookie(&format!("a=1; {SID}={v}")).send(port);
    assert_eq!(r.st(), "valid", "{r}");
    assert_eq!(upstream_cookies(&r), [format!("a=1; {SID}={v}")], "{}", r.body_str());
}

#[test]
fn pass_cookie_off_keeps_our_cookie_from_the_upstream() {
    let echo = EchoBackend::start();
    let ng = pass_cookie_site(&echo, "");
    check_pass_cookie_off(&ng);
    ng.check_logs();
}

/// With Redis the request is suspended and resumed; the cookie goes once it is decided,
/// and also when the store fails (the cookie is ours whatever the status).
#[test]
fn pass_cookie_off_with_redis() {
    let echo = EchoBackend::start();
    let mut redis = Redis::start();
    let ng = pass_cookie_site(&echo, &format!("sessions_redis redis://127.0.0.1:{};", redis.port));
    check_pass_cookie_off(&ng);
    let v = new_session(ng.port, Req::get("/nopass/x"));
    redis.stop();
    let r = Req::get("/nopass/x").cookie(&format!("{SID}={v}; k=1")).send(ng.port);
    assert_eq!(r.st(), "error", "{r}");
    assert_eq!(upstream_cookies(&r), ["k=1"], "{}", r.body_str());
    ng.check_logs();
}
