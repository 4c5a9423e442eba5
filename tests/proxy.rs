//! The module in front of an upstream: `$session_id` reaches the app through
//! `proxy_set_header`, and an upstream that sets our cookie name never makes the client
//! receive two Set-Cookie headers for it.

mod common;

use common::*;

fn proxy_site() -> Nginx {
    Nginx::start(&site(
        &default_http(""),
        r#"
        location /app/ {
            sessions on;
            proxy_pass http://127.0.0.1:%%PORT%%/backend/;
            proxy_set_header X-Session-Id $session_id;
            proxy_set_header X-Session-Status $session_status;
        }
        location /backend/ {
            sessions off;
            return 200 "sid=$http_x_session_id status=$http_x_session_status cookie=$http_cookie\n";
        }
        location /evil/ {
            sessions on;
            proxy_pass http://127.0.0.1:%%PORT%%/evil-backend/;
        }
        location /evil-backend/ {
            sessions off;
            add_header Set-Cookie "SID=evil; Path=/" always;
            return 200 "evil\n";
        }
"#,
    ))
}

#[test]
fn session_id_reaches_upstream() {
    let ng = proxy_site();
    let r = ng.get("/app/x");
    assert_eq!(r.status, 200, "{r}");
    let c = r.one_cookie(SID);
    assert_eq!(r.st(), "new", "{r}");
    assert!(
        r.body_str().starts_with(&format!("sid={} status=new ", c.id())),
        "upstream saw {:?}",
        r.body_str()
    );
    let r = Req::get("/app/x").sid(&c.value).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(r.body_str().starts_with(&format!("sid={} status=valid ", c.id())), "{}", r.body_str());
    assert!(r.no_cookie(SID), "{r}");
}

#[test]
fn upstream_cookie_with_our_name_never_doubles() {
    let ng = proxy_site();
    let r = ng.get("/evil/x");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "new", "{r}");
    let cs = r.set_cookies(SID);
    assert_eq!(cs.len(), 1, "two Set-Cookie for our name: {r}");
    assert_cookie_format(&cs[0].value);
    let v = cs[0].value.clone();
    let r = Req::get("/evil/x").sid(&v).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert!(r.set_cookies(SID).len() <= 1, "two Set-Cookie for our name: {r}");
    assert_valid(ng.port, Req::get("/index.html"), &v);
}
