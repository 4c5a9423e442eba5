//! Basic session life: new → valid, cookie format and attributes, where sessions are not
//! evaluated (`sessions off`, `return`), internal redirects / error_page / subrequests
//! evaluating once, and how the Cookie header is parsed.

mod common;

use common::*;
use std::collections::HashSet;

#[test]
fn new_session_then_valid() {
    let ng = Nginx::site("");
    let r = ng.get("/index.html");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body_str(), "ok\n");
    assert_eq!(r.st(), "new", "{r}");
    let c = r.one_cookie(SID);
    assert_cookie_format(&c.value);
    assert_eq!(r.id(), c.id(), "$session_id must be the cookie's ID part: {r}");
    let hash = r.hash().to_string();
    assert!(
        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "$session_id_hash should be 16 hex characters (README): {r}"
    );
    assert!(!hash.contains(c.id()) && hash != c.value, "$session_id_hash leaks the ID: {r}");

    // default attributes
    assert!(c.has("HttpOnly"), "{}", c.raw);
    assert_eq!(c.attr("Path"), Some("/"), "{}", c.raw);
    assert!(c.attr("SameSite").is_some_and(|v| v.eq_ignore_ascii_case("Lax")), "{}", c.raw);
    for absent in ["Secure", "Domain", "Expires", "Max-Age"] {
        assert!(!c.has(absent), "unexpected {absent} in {}", c.raw);
    }
    for a in ["HttpOnly", "Path", "SameSite"] {
        assert_eq!(c.count(a), 1, "attribute {a} repeated in {}", c.raw);
    }

    // the cookie works on fresh connections (both workers), the hash is stable
    for _ in 0..12 {
        let r2 = assert_valid(ng.port, Req::get("/index.html"), &c.value);
        assert_eq!(r2.hash(), hash, "hash not stable for the same ID");
        assert_eq!(r2.body_str(), "ok\n");
    }
    // and on one keep-alive connection
    let mut conn = Conn::new(ng.port);
    for _ in 0..5 {
        let r3 = conn.send(&Req::get("/index.html").sid(&c.value));
        assert_eq!(r3.st(), "valid", "{r3}");
        assert!(r3.no_cookie(SID), "{r3}");
    }
}

/// Collects IDs from `n` cookie-less requests on fresh connections; checks that no ID is
/// handed out twice and that no two IDs share an 8-character (48-bit) prefix or suffix
/// (a sign of workers sharing random-generator state), before looking at anything else.
fn collect_new_ids(ng: &Nginx, n: usize) -> Vec<Response> {
    let resps: Vec<Response> = (0..n).map(|_| ng.get("/index.html")).collect();
    let mut pre: std::collections::HashMap<String, (String, String)> = Default::default();
    let mut suf: std::collections::HashMap<String, (String, String)> = Default::default();
    for r in &resps {
        for c in r.set_cookies(SID) {
            let id = c.id().to_string();
            let me = (id.clone(), r.pid().to_string());
            for (map, key) in
                [(&mut pre, id[..8].to_string()), (&mut suf, id[id.len() - 8..].to_string())]
            {
                if let Some((other, pid)) = map.insert(key, me.clone()) {
                    panic!(
                        "session IDs {other} (worker {pid}) and {id} (worker {}) share 48 bits: \
                         the workers' random generators are not independent",
                        r.pid()
                    );
                }
            }
        }
    }
    let errors: Vec<&Response> = resps.iter().filter(|r| r.st() == "error").collect();
    assert!(
        errors.is_empty(),
        "{} of {n} cookie-less requests got $session_status=error, first: {}",
        errors.len(),
        errors[0]
    );
    resps
}

#[test]
fn ids_unique_and_well_formed() {
    let ng = Nginx::site("");
    let resps = collect_new_ids(&ng, 200);
    let mut hashes = HashSet::new();
    let mut pids = HashSet::new();
    for r in &resps {
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "new", "{r}");
        let c = r.one_cookie(SID);
        assert_cookie_format(&c.value);
        assert!(hashes.insert(r.hash().to_string()), "duplicate $session_id_hash {}", r.hash());
        pids.insert(r.pid().to_string());
    }
    assert_eq!(pids.len(), 2, "expected both workers to answer (reuseport): {pids:?}");
}

/// New workers after a reload must not repeat each other's (or the old workers') IDs.
#[test]
fn ids_unique_after_reload() {
    let ng = Nginx::site("");
    let mut all: HashSet<String> =
        collect_new_ids(&ng, 20).iter().map(|r| r.id().to_string()).collect();
    for _ in 0..2 {
        ng.reload();
        for r in collect_new_ids(&ng, 20) {
            assert_eq!(r.st(), "new", "{r}");
            assert!(all.insert(r.id().to_string()), "ID {} repeated after reload", r.id());
        }
    }
}

#[test]
fn cookie_attributes_domain_secure_strict() {
    let ng = Nginx::site(
        "sessions_cookie_domain example.test;\n sessions_cookie_secure on;\n \
         sessions_cookie_samesite strict;",
    );
    let r = ng.get("/index.html");
    let c = r.one_cookie(SID);
    assert_eq!(c.attr("Domain"), Some("example.test"), "{}", c.raw);
    assert!(c.has("Secure"), "{}", c.raw);
    assert!(c.has("HttpOnly"), "{}", c.raw);
    assert_eq!(c.attr("Path"), Some("/"), "{}", c.raw);
    assert!(c.attr("SameSite").is_some_and(|v| v.eq_ignore_ascii_case("Strict")), "{}", c.raw);
    assert!(!c.has("Expires") && !c.has("Max-Age"), "{}", c.raw);
    // the attributes do not change how the cookie is read back
    assert_valid(ng.port, Req::get("/index.html"), &c.value);
}

#[test]
fn cookie_attributes_samesite_none_path_secure_off() {
    let ng = Nginx::site("sessions_cookie_samesite none;\n sessions_cookie_secure on;");
    let c = ng.get("/index.html").one_cookie(SID);
    assert!(c.attr("SameSite").is_some_and(|v| v.eq_ignore_ascii_case("None")), "{}", c.raw);
    assert!(c.has("Secure"), "{}", c.raw);
    drop(ng);

    let ng = Nginx::site("sessions_cookie_secure off;\n sessions_cookie_path /app;");
    let c = ng.get("/index.html").one_cookie(SID);
    assert!(!c.has("Secure"), "{}", c.raw);
    assert_eq!(c.attr("Path"), Some("/app"), "{}", c.raw);
    assert!(c.has("HttpOnly"), "{}", c.raw);
    assert!(!c.has("Domain"), "{}", c.raw);
}

#[test]
fn host_prefix_name_is_accepted_with_path_slash() {
    let ng = Nginx::start(&site(
        &format!(
            "sessions_secret {SECRET};\n sessions_name __Host-sid;\n sessions_cookie_secure on;"
        ),
        "",
    ));
    let r = ng.get("/index.html");
    assert_eq!(r.st(), "new", "{r}");
    let c = r.one_cookie("__Host-sid");
    assert!(c.has("Secure") && !c.has("Domain"), "{}", c.raw);
    assert_eq!(c.attr("Path"), Some("/"), "{}", c.raw);
    let r = Req::get("/index.html").cookie(&format!("__Host-sid={}", c.value)).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    // exact, case-sensitive name match
    let r = Req::get("/index.html").cookie(&format!("__HOST-sid={}", c.value)).send(ng.port);
    assert_eq!(r.st(), "new", "a differently-cased name must not be ours: {r}");
}

#[test]
fn sessions_off_and_return_have_no_session() {
    let ng = Nginx::site("");
    let v = new_session(ng.port, Req::get("/index.html"));
    for req in
        [Req::get("/off/"), Req::get("/off/").sid(&v), Req::get("/ret"), Req::get("/ret").sid(&v)]
    {
        let r = req.send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        assert!(r.headers_all("Set-Cookie").is_empty(), "no cookie expected: {r}");
        assert!(r.header("X-Id").is_none(), "$session_id must be empty: {r}");
        assert!(r.header("X-Status").is_none(), "$session_status must be empty: {r}");
        assert!(r.header("X-Hash").is_none(), "$session_id_hash must be empty: {r}");
    }
    // the session was not touched by those requests
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

#[test]
fn head_request_gets_cookie() {
    let ng = Nginx::site("");
    let r = Req::head("/index.html").send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    let v = r.sid();
    let r = Req::head("/index.html").sid(&v).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(r.no_cookie(SID), "{r}");
}

/// `GET /` → index module → internal redirect to /index.html.
#[test]
fn index_internal_redirect_evaluates_once() {
    let ng = Nginx::site("");
    let r = ng.get("/");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body_str(), "ok\n");
    assert_eq!(r.st(), "new", "{r}");
    let c = r.one_cookie(SID);
    assert_eq!(r.id(), c.id(), "{r}");
    let r = Req::get("/").sid(&c.value).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
    assert_eq!(r.id(), c.id());
}

#[test]
fn try_files_evaluates_once() {
    let ng = Nginx::site("");
    for path in ["/tf/x", "/named/x"] {
        let r = ng.get(path);
        assert_eq!(r.status, 200, "{path}: {r}");
        assert_eq!(r.body_str(), "ok\n", "{path}");
        assert_eq!(r.st(), "new", "{path}: {r}");
        let c = r.one_cookie(SID);
        assert_eq!(r.id(), c.id(), "{path}: {r}");
        let r = Req::get(path).sid(&c.value).send(ng.port);
        assert_eq!(r.st(), "valid", "{path}: {r}");
        assert!(r.headers_all("Set-Cookie").is_empty(), "{path}: {r}");
        assert_valid(ng.port, Req::get("/index.html"), &c.value);
    }
}

#[test]
fn error_page_evaluates_once() {
    let ng = Nginx::site("");
    let r = ng.get("/ep/missing");
    assert_eq!(r.status, 404, "{r}");
    assert_eq!(r.body_str(), "err\n");
    assert_eq!(r.st(), "new", "{r}");
    let c = r.one_cookie(SID);
    assert_eq!(r.id(), c.id(), "{r}");
    let r = Req::get("/ep/missing").sid(&c.value).send(ng.port);
    assert_eq!(r.status, 404, "{r}");
    assert_eq!(r.st(), "valid", "{r}");
    assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
    assert_valid(ng.port, Req::get("/index.html"), &c.value);
}

/// SSI: the main page and its `include virtual` subrequest see the same session; one cookie.
#[test]
fn subrequest_sees_main_session() {
    let ng = Nginx::site("");
    let r = ng.get("/ssi/");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    let c = r.one_cookie(SID);
    let body = r.body_str();
    assert!(body.contains(&format!("main=new:{}|", c.id())), "main part wrong: {body:?}");
    assert!(body.contains(&format!("sub=new:{}|", c.id())), "subrequest part wrong: {body:?}");
    assert!(body.ends_with("|end\n"), "{body:?}");

    let r = Req::get("/ssi/").sid(&c.value).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
    let body = r.body_str();
    assert!(body.contains(&format!("main=valid:{}|", c.id())), "{body:?}");
    assert!(body.contains(&format!("sub=valid:{}|", c.id())), "{body:?}");
}

#[test]
fn cookie_header_parsing() {
    let ng = Nginx::site("");
    let v = new_session(ng.port, Req::get("/index.html"));
    let valid_forms = [
        vec![format!("a=1; {SID}={v}; b=2")],
        vec![format!("a=1;{SID}={v};b=2")],
        vec![format!("{SID}={v}")],
        vec!["a=1".to_string(), format!("b=2; {SID}={v}")],
        vec![format!("{SID}={v}"), "a=1; b=2".to_string()],
        vec![format!("x={SID}; {SID}={v}")],
    ];
    for lines in valid_forms {
        let mut req = Req::get("/index.html");
        for l in &lines {
            req = req.cookie(l);
        }
        let r = req.send(ng.port);
        assert_eq!(r.status, 200, "{lines:?}: {r}");
        assert_eq!(r.st(), "valid", "Cookie lines {lines:?} carry our cookie: {r}");
        assert!(r.no_cookie(SID), "{lines:?}: {r}");
    }

    // not our cookie: comma is no separator, names are exact and case-sensitive
    let not_ours = [
        format!("other=1, {SID}={v}"),
        format!("sid={v}"),
        format!("{SID}x={v}"),
        format!("x{SID}={v}"),
        format!("OTHER={v}"),
        format!("a=\"{SID}={v}\""),
    ];
    for line in not_ours {
        let r = Req::get("/index.html").cookie(&line).send(ng.port);
        assert_eq!(r.status, 200, "{line}: {r}");
        assert!(
            r.st() == "new" || r.st() == "invalid",
            "Cookie: {line} must not yield the session: {r}"
        );
        let c = r.one_cookie(SID);
        assert_ne!(c.id(), id_of(&v), "{line}: {r}");
    }
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

/// A session is per server configuration: a second server block with another name and
/// secret does not accept the first one's cookie, even under its own name.
#[test]
fn cookie_not_valid_under_other_name_or_secret() {
    let body = format!(
        r#"
    types {{ text/html html; }}
    sessions_secret {SECRET};
    sessions_name {SID};
    server {{
        listen 127.0.0.1:%%PORT%%;
        server_name a.test;
        root %%PREFIX%%/html;
        add_header X-Status $session_status always;
        location / {{ sessions on; }}
    }}
    server {{
        listen 127.0.0.1:%%PORT%%;
        server_name b.test;
        root %%PREFIX%%/html;
        sessions_secret other-secret-other-secret-other-secret-000;
        sessions_name OTHER;
        add_header X-Status $session_status always;
        location / {{ sessions on; }}
    }}
"#
    );
    let ng = Nginx::start(&body);
    let v = Req::get("/index.html").host("a.test").send(ng.port).sid();
    // server a accepts it
    let r = Req::get("/index.html").host("a.test").sid(&v).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    // server b: our name is not its name → no cookie of its own came in
    let r = Req::get("/index.html").host("b.test").sid(&v).send(ng.port);
    assert_eq!(r.st(), "new", "server b must not see server a's cookie: {r}");
    assert_eq!(r.set_cookies("OTHER").len(), 1, "{r}");
    assert!(r.no_cookie(SID), "{r}");
    // the value under b's name: signed with another secret → invalid
    let r = Req::get("/index.html").host("b.test").cookie(&format!("OTHER={v}")).send(ng.port);
    assert_eq!(r.st(), "invalid", "a cookie signed with another secret must fail: {r}");
    assert_eq!(r.set_cookies("OTHER").len(), 1, "{r}");
    // still fine on server a
    let r = Req::get("/index.html").host("a.test").sid(&v).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
}

/// `sessions on|off` inherits http → server → location.
#[test]
fn sessions_directive_inheritance() {
    let ng = Nginx::start(&format!(
        r#"
    types {{ text/html html; }}
    sessions_secret {SECRET};
    sessions_name {SID};
    sessions on;
    server {{
        listen 127.0.0.1:%%PORT%%;
        root %%PREFIX%%/html;
        add_header X-Status $session_status always;
        location / {{ }}
        location /off/ {{ sessions off; }}
    }}
"#
    ));
    let r = ng.get("/index.html");
    assert_eq!(r.st(), "new", "http-level `sessions on` not inherited: {r}");
    assert_eq!(r.set_cookies(SID).len(), 1, "{r}");
    let r = ng.get("/off/");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.header("X-Status").is_none() && r.headers_all("Set-Cookie").is_empty(), "{r}");
}

/// Read in the rewrite phase (`set`), the variables are empty; read later (add_header)
/// they show the session: they must not be cached from the early read.
#[test]
fn variables_read_before_access_phase_are_empty() {
    let ng = Nginx::site("");
    let r = ng.get("/early/index.html");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body_str(), "early\n");
    assert_eq!(r.header("X-Early"), Some("[|]"), "variables read in the rewrite phase: {r}");
    assert_eq!(r.st(), "new", "variable cached from its rewrite-phase read? {r}");
    let c = r.one_cookie(SID);
    assert_eq!(r.id(), c.id(), "{r}");
    let r = Req::get("/early/index.html").sid(&c.value).send(ng.port);
    assert_eq!(r.header("X-Early"), Some("[|]"), "{r}");
    assert_eq!(r.st(), "valid", "{r}");
    assert_eq!(r.id(), c.id(), "{r}");
}
