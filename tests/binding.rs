//! Binding of a session to the client address and User-Agent; X-Forwarded-For is only
//! believed through the realip module.

mod common;

use common::*;

#[test]
fn ip_change_is_mismatch_and_destroys_session() {
    let ng = Nginx::site("");
    let v = new_session(ng.port, Req::get("/index.html").from("127.0.0.2"));
    assert_valid(ng.port, Req::get("/index.html").from("127.0.0.2"), &v);

    let r = Req::get("/index.html").from("127.0.0.3").sid(&v).send(ng.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "mismatch", "cookie replayed from another IP: {r}");
    let c = r.one_cookie(SID);
    assert_cookie_format(&c.value);
    assert_ne!(c.id(), id_of(&v), "{r}");
    assert_eq!(r.id(), c.id(), "{r}");

    // the hijacked session is destroyed: dead from the original address too
    let r = Req::get("/index.html").from("127.0.0.2").sid(&v).send(ng.port);
    assert_eq!(r.st(), "invalid", "destroyed session must stay dead: {r}");
    assert_ne!(r.one_cookie(SID).id(), id_of(&v));
    // the session handed to 127.0.0.3 is its own, valid there
    assert_valid(ng.port, Req::get("/index.html").from("127.0.0.3"), &c.value);
}

#[test]
fn ip_change_allowed_with_check_ip_off() {
    let ng = Nginx::site("sessions_check_ip off;");
    let v = new_session(ng.port, Req::get("/index.html").from("127.0.0.2"));
    for ip in ["127.0.0.3", "127.0.0.1", "127.0.0.2", "127.0.0.4"] {
        assert_valid(ng.port, Req::get("/index.html").from(ip), &v);
    }
    // the UA check is still on
    let r = Req::get("/index.html").from("127.0.0.3").ua("other/2").sid(&v).send(ng.port);
    assert_eq!(r.st(), "mismatch", "{r}");
}

#[test]
fn user_agent_change_is_mismatch() {
    let ng = Nginx::site("");
    let v = new_session(ng.port, Req::get("/index.html").ua("agent-A"));
    assert_valid(ng.port, Req::get("/index.html").ua("agent-A"), &v);
    let r = Req::get("/index.html").ua("agent-B").sid(&v).send(ng.port);
    assert_eq!(r.st(), "mismatch", "{r}");
    assert_ne!(r.one_cookie(SID).id(), id_of(&v));
    let r = Req::get("/index.html").ua("agent-A").sid(&v).send(ng.port);
    assert_eq!(r.st(), "invalid", "destroyed session must stay dead: {r}");

    // removing the User-Agent is a change too
    let v = new_session(ng.port, Req::get("/index.html").ua("agent-A"));
    let r = Req::get("/index.html").no_ua().sid(&v).send(ng.port);
    assert_eq!(r.st(), "mismatch", "UA removed: {r}");
    // and adding one to a session made without
    let v = new_session(ng.port, Req::get("/index.html").no_ua());
    assert_valid(ng.port, Req::get("/index.html").no_ua(), &v);
    let r = Req::get("/index.html").ua("agent-A").sid(&v).send(ng.port);
    assert_eq!(r.st(), "mismatch", "UA added: {r}");

    // a huge User-Agent works and binds like any other
    let big = "Z".repeat(6000);
    let v = new_session(ng.port, Req::get("/index.html").ua(&big));
    assert_valid(ng.port, Req::get("/index.html").ua(&big), &v);
    let r = Req::get("/index.html").ua(&big[1..]).sid(&v).send(ng.port);
    assert_eq!(r.st(), "mismatch", "{r}");
}

#[test]
fn user_agent_change_allowed_with_check_off() {
    let ng = Nginx::site("sessions_check_user_agent off;");
    let v = new_session(ng.port, Req::get("/index.html").ua("agent-A"));
    assert_valid(ng.port, Req::get("/index.html").ua("agent-B"), &v);
    assert_valid(ng.port, Req::get("/index.html").no_ua(), &v);
    // the IP check is still on
    let r = Req::get("/index.html").from("127.0.0.3").ua("agent-A").sid(&v).send(ng.port);
    assert_eq!(r.st(), "mismatch", "{r}");
}

#[test]
fn both_checks_off() {
    let ng = Nginx::site("sessions_check_ip off;\n sessions_check_user_agent off;");
    let v = new_session(ng.port, Req::get("/index.html").from("127.0.0.2").ua("A"));
    assert_valid(ng.port, Req::get("/index.html").from("127.0.0.5").ua("B"), &v);
}

#[test]
fn x_forwarded_for_ignored_without_realip() {
    let ng = Nginx::site("");
    let v = new_session(ng.port, Req::get("/index.html").from("127.0.0.2"));
    // a legitimate client adding a random XFF keeps its session
    assert_valid(
        ng.port,
        Req::get("/index.html").from("127.0.0.2").header("X-Forwarded-For", "192.0.2.77"),
        &v,
    );
    // the attacker claims the victim's address in XFF: still a mismatch
    let r = Req::get("/index.html")
        .from("127.0.0.3")
        .header("X-Forwarded-For", "127.0.0.2")
        .header("X-Real-IP", "127.0.0.2")
        .sid(&v)
        .send(ng.port);
    assert_eq!(r.st(), "mismatch", "XFF must not be believed without realip: {r}");
}

#[test]
fn realip_address_is_bound() {
    let ng = Nginx::site("set_real_ip_from 127.0.0.0/8;\n real_ip_header X-Forwarded-For;");
    let v = new_session(
        ng.port,
        Req::get("/index.html").from("127.0.0.2").header("X-Forwarded-For", "192.0.2.1"),
    );
    // same XFF from another proxy address: same client
    assert_valid(
        ng.port,
        Req::get("/index.html").from("127.0.0.3").header("X-Forwarded-For", "192.0.2.1"),
        &v,
    );
    // other client address behind the same proxy: mismatch
    let r = Req::get("/index.html")
        .from("127.0.0.2")
        .header("X-Forwarded-For", "192.0.2.2")
        .sid(&v)
        .send(ng.port);
    assert_eq!(r.st(), "mismatch", "realip address changed: {r}");
}

#[test]
fn realip_untrusted_source_is_not_believed() {
    let ng = Nginx::site("set_real_ip_from 127.0.0.2;\n real_ip_header X-Forwarded-For;");
    let v = new_session(
        ng.port,
        Req::get("/index.html").from("127.0.0.2").header("X-Forwarded-For", "192.0.2.1"),
    );
    // 127.0.0.3 is not a trusted proxy: its XFF is ignored, the address is 127.0.0.3
    let r = Req::get("/index.html")
        .from("127.0.0.3")
        .header("X-Forwarded-For", "192.0.2.1")
        .sid(&v)
        .send(ng.port);
    assert_eq!(r.st(), "mismatch", "{r}");
}

/// Issue 8, finding 5: an old ID within its renewal grace that comes back from another
/// address is a mismatch, and destroys the whole session: its successor too.
#[test]
fn old_id_within_grace_from_another_ip_destroys_the_successor() {
    let ng = Nginx::site(
        "sessions_idling_timeout 60s;\n sessions_rolling_timeout 1s;\n sessions_absolute_timeout 120s;",
    );
    let v = new_session(ng.port, Req::get("/index.html").from("127.0.0.2"));
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let r = Req::get("/index.html").from("127.0.0.2").sid(&v).send(ng.port);
    assert_eq!(r.st(), "renewed", "rolling 1s passed: {r}");
    let succ = r.sid();

    let r = Req::get("/index.html").from("127.0.0.3").sid(&v).send(ng.port);
    assert_eq!(r.st(), "mismatch", "old ID within its grace from another IP: {r}");
    let c = r.one_cookie(SID);
    assert_ne!(c.id(), id_of(&succ), "the successor was handed to another IP: {r}");
    assert_ne!(c.id(), id_of(&v), "{r}");

    let r = Req::get("/index.html").from("127.0.0.2").sid(&succ).send(ng.port);
    assert_eq!(r.st(), "invalid", "the successor must die with the session: {r}");
    let r = Req::get("/index.html").from("127.0.0.2").sid(&v).send(ng.port);
    assert_eq!(r.st(), "invalid", "{r}");
    ng.check_logs();
}

/// The binding hashes are keyed by a random key kept in the zone: like the random secret,
/// it survives a reload, so sessions stay `valid` (and still bound) across one.
#[test]
fn sessions_keep_their_binding_across_a_reload() {
    let ng = Nginx::site("");
    let v = new_session(ng.port, Req::get("/index.html").from("127.0.0.2").ua("agent-A"));
    assert_valid(ng.port, Req::get("/index.html").from("127.0.0.2").ua("agent-A"), &v);
    ng.reload();
    for _ in 0..4 {
        assert_valid(ng.port, Req::get("/index.html").from("127.0.0.2").ua("agent-A"), &v);
    }
    let r = Req::get("/index.html").from("127.0.0.2").ua("agent-B").sid(&v).send(ng.port);
    assert_eq!(r.st(), "mismatch", "{r}");
    ng.check_logs();
}
