//! Session data with the shared-memory store (issue 9): `sessions_set` / `sessions_renew` /
//! `sessions_destroy` applied when the response header goes out, `$session_data_<key>`,
//! `sessions_require`, `sessions_data_size`, and their configuration errors.

mod common;

use common::*;
use std::thread;

/// An app behind `proxy_pass` (a unix socket of the same NGINX): answers 200 and echoes
/// `?app_user=` as `X-App-User`, the way a login endpoint names the user.
const APP: &str = r#"
    server {
        listen unix:%%PREFIX%%/app.sock;
        location / {
            add_header X-App-User $arg_app_user;
            return 200 "app\n";
        }
        location = /nf { return 404; }
    }
"#;

/// The test site: every location answers through the app, so that the final location is
/// the one whose directives apply. `X-User` / `X-Role` show the data as the request found
/// it (`add_header` runs before the module's filter).
fn data_site(http_extra: &str) -> String {
    let body = format!(
        r#"
    sessions_secret {SECRET};
    sessions_name {SID};
    sessions_data_size 200;
    log_format data "$session_data_user|$session_data_role|$session_status";
    map $status $failed {{ "~^[45]" 1; default ""; }}
    {http_extra}
    {APP}
    server {{
        listen 127.0.0.1:%%PORT%% reuseport;
        sessions on;
        add_header X-Status $session_status always;
        add_header X-Id $session_id always;
        add_header X-Pid $pid always;
        add_header X-User $session_data_user always;
        add_header X-Role $session_data_role always;
        add_header X-Code $session_data_code$session_data_failed always;
        location / {{ proxy_pass http://unix:%%PREFIX%%/app.sock; }}
        location = /set {{
            sessions_set user $arg_user;
            sessions_set role $arg_role if=$arg_role;
            access_log %%PREFIX%%/logs/data.log data;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /app-login {{
            sessions_set user $upstream_http_x_app_user if=$upstream_http_x_app_user;
            sessions_set subject $upstream_http_x_app_user if=$upstream_http_x_app_user;
            sessions_renew if=$upstream_http_x_app_user;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /big {{
            sessions_set big $arg_v;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /renew {{
            sessions_renew if=$arg_r;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /logout {{ sessions_destroy; proxy_pass http://unix:%%PREFIX%%/app.sock; }}
        location = /logout-others {{
            sessions_destroy others;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /logout-all {{
            sessions_destroy all if=$arg_go;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /metrics {{ sessions_metrics; }}
        location = /nf {{
            sessions_set code $status;
            sessions_set failed yes if=$failed;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /ret {{ sessions_set user returned; return 200 "ret\n"; }}
        location /private/ {{
            sessions_require $session_data_user;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location /admin/ {{
            sessions_require $session_data_user $session_data_role error=403;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location /app/ {{
            sessions_require $session_data_user;
            error_page 401 = @login;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location @login {{
            sessions_set tried 1;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
    }}
"#
    );
    main_conf(&body, 2)
}

fn start(http_extra: &str) -> Nginx {
    Nginx::start_template(&data_site(http_extra), 2)
}

/// A new session's cookie value.
fn begin(ng: &Nginx) -> String {
    let r = ng.get("/");
    assert_eq!((r.status, r.st()), (200, "new"), "{r}");
    r.sid()
}

fn get(ng: &Nginx, path: &str, sid: &str) -> Response {
    Req::get(path).sid(sid).send(ng.port)
}

/// Reads the data of the session on fresh connections until both workers have answered
/// (bounded).
fn assert_data(ng: &Nginx, sid: &str, user: &str, role: &str) {
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = get(ng, "/", sid);
        assert_eq!(r.st(), "valid", "{r}");
        // add_header leaves out empty values.
        let (u, ro) = (r.header("X-User").unwrap_or(""), r.header("X-Role").unwrap_or(""));
        assert_eq!((u, ro), (user, role), "{r}");
        pids.insert(r.pid().to_string());
        if pids.len() == 2 {
            return;
        }
    }
    panic!("one worker answered 40 fresh connections: {pids:?}");
}

#[test]
fn set_read_unset_and_if() {
    let ng = start("");
    let sid = begin(&ng);
    let r = get(&ng, "/set?user=alice&role=admin", &sid);
    assert_eq!(r.status, 200, "{r}");
    assert!(r.no_cookie(SID), "a change keeps the ID: {r}");
    assert_data(&ng, &sid, "alice", "admin");
    // `if=` false: role is left alone; user changes.
    get(&ng, "/set?user=bob", &sid);
    assert_data(&ng, &sid, "bob", "admin");
    // An empty value removes the key.
    get(&ng, "/set?user=&role=x", &sid);
    assert_data(&ng, &sid, "", "x");
    // The access log sees the data after the response's changes, even though add_header
    // read it before.
    let log = std::fs::read_to_string(ng.prefix.path.join("logs/data.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines, ["alice|admin|valid", "bob|admin|valid", "|x|valid"], "{log}");
    ng.check_logs();
}

#[test]
fn values_and_conditions_are_computed_at_response_time() {
    let ng = start("");
    let sid = begin(&ng);
    assert_eq!(get(&ng, "/nf", &sid).status, 404);
    let r = get(&ng, "/", &sid);
    assert_eq!(r.header("X-Code"), Some("404yes"), "$status and a map of it: {r}");
    ng.check_logs();
}

#[test]
fn a_new_session_is_stored_with_its_first_data() {
    let ng = start("");
    let r = Req::get("/set?user=carol").send(ng.port);
    assert_eq!(r.st(), "new", "{r}");
    let sid = r.sid();
    assert_data(&ng, &sid, "carol", "");
    ng.check_logs();
}

#[test]
fn a_return_before_access_changes_nothing() {
    let ng = start("");
    let sid = begin(&ng);
    get(&ng, "/set?user=alice", &sid);
    let r = get(&ng, "/ret", &sid);
    assert_eq!(r.body_str(), "ret\n");
    assert!(r.no_cookie(SID), "{r}");
    assert_data(&ng, &sid, "alice", "");
    ng.check_logs();
}

#[test]
fn too_large_is_refused_with_one_error_line() {
    let ng = start("");
    let sid = begin(&ng);
    get(&ng, "/set?user=alice", &sid);
    let before = ng.error_log_lines();
    let r = get(&ng, &format!("/big?v={}", "x".repeat(300)), &sid);
    assert_eq!(r.status, 200, "the response goes on: {r}");
    let lines: Vec<String> =
        ng.error_log_since(before).into_iter().filter(|l| l.contains("not changed")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("[error]"), "{}", lines[0]);
    assert!(lines[0].contains("would exceed sessions_data_size 200"), "{}", lines[0]);
    assert!(!lines[0].contains(&sid), "no session ID in logs: {}", lines[0]);
    assert_data(&ng, &sid, "alice", "");
    // Within the limit it is taken.
    get(&ng, &format!("/big?v={}", "x".repeat(100)), &sid);
    assert_data(&ng, &sid, "alice", "");
    ng.check_logs();
}

#[test]
fn login_renews_from_an_upstream_header_and_the_old_id_dies_at_once() {
    let ng = start("");
    let old = begin(&ng);
    // The app says nothing: no renewal, nothing set.
    let r = get(&ng, "/app-login", &old);
    assert!(r.no_cookie(SID), "{r}");
    let r = get(&ng, "/app-login?app_user=alice", &old);
    assert_eq!(r.status, 200, "{r}");
    let new = r.sid();
    assert_ne!(id_of(&new), id_of(&old));
    assert_data(&ng, &new, "alice", "");
    let r = get(&ng, "/", &old);
    assert_eq!(r.st(), "invalid", "the old ID is dead: {r}");
    assert_eq!(r.header("X-User"), None, "{r}");
    ng.check_logs();
}

#[test]
fn requests_racing_a_login_with_the_old_id_never_reach_the_new_session() {
    let ng = start("");
    let old = begin(&ng);
    let port = ng.port;
    let racers: Vec<_> = (0..10)
        .map(|_| {
            let old = old.clone();
            thread::spawn(move || Req::get("/").sid(&old).send(port))
        })
        .collect();
    let login = get(&ng, "/app-login?app_user=alice", &old);
    let new = login.sid();
    for t in racers {
        let r = t.join().unwrap();
        assert_ne!(r.header("X-User"), Some("alice"), "{r}");
        for c in r.set_cookies(SID) {
            assert_ne!(id_of(&c.value), id_of(&new), "the new ID leaked: {r}");
        }
    }
    assert_eq!(get(&ng, "/", &old).st(), "invalid");
    assert_data(&ng, &new, "alice", "");
    ng.check_logs();
}

#[test]
fn explicit_renewal_if() {
    let ng = start("");
    let sid = begin(&ng);
    get(&ng, "/set?user=dave", &sid);
    let r = get(&ng, "/renew?r=0", &sid);
    assert!(r.no_cookie(SID), "if=0 is false: {r}");
    let r = get(&ng, "/renew?r=1", &sid);
    let new = r.sid();
    assert_eq!(r.set_cookies(SID).len(), 1, "{r}");
    assert_data(&ng, &new, "dave", "");
    ng.check_logs();
}

fn login(ng: &Nginx, user: &str) -> String {
    let sid = begin(ng);
    get(ng, &format!("/app-login?app_user={user}"), &sid).sid()
}

/// A series' value from `sessions_metrics`.
fn metric(ng: &Nginx, series: &str) -> u64 {
    let body = ng.get("/metrics").body_str();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{body}"))
}

#[test]
fn destroy_this_others_all() {
    let ng = start("");
    let (a1, a2, a3, bob) =
        (login(&ng, "alice"), login(&ng, "alice"), login(&ng, "alice"), login(&ng, "bob"));
    // this: the cookie expires with the same Path, the session is gone.
    let r = get(&ng, "/logout", &a3);
    let c = r.one_cookie(SID);
    assert_eq!(
        (c.value.as_str(), c.attr("Max-Age"), c.attr("Path")),
        ("", Some("0"), Some("/")),
        "{r}"
    );
    assert!(r.header("Cache-Control").is_some_and(|v| v.contains("private")), "{r}");
    assert_eq!(get(&ng, "/", &a3).st(), "invalid");
    // others: a2 goes, a1 and bob stay.
    let r = get(&ng, "/logout-others", &a1);
    assert!(r.no_cookie(SID), "{r}");
    assert_eq!(get(&ng, "/", &a2).st(), "invalid");
    assert_data(&ng, &a1, "alice", "");
    assert_data(&ng, &bob, "bob", "");
    // all, with if=: false first, then true.
    let a4 = login(&ng, "alice");
    get(&ng, "/logout-all", &a1);
    assert_data(&ng, &a1, "alice", "");
    let r = get(&ng, "/logout-all?go=1", &a1);
    assert_eq!(r.one_cookie(SID).attr("Max-Age"), Some("0"), "{r}");
    for sid in [&a1, &a4] {
        assert_eq!(get(&ng, "/", sid).st(), "invalid");
    }
    assert_data(&ng, &bob, "bob", "");
    let destroyed = |reason: &str| {
        metric(&ng, &format!("nginx_sessions_destroyed_total{{reason=\"{reason}\"}}"))
    };
    assert_eq!((destroyed("destroy"), destroyed("subject")), (2, 2));
    ng.check_logs();
}

#[test]
fn require_answers_401_403_and_error_page_login() {
    let ng = start("");
    let sid = begin(&ng);
    assert_eq!(get(&ng, "/private/x", &sid).status, 401);
    assert_eq!(get(&ng, "/admin/x", &sid).status, 403);
    // Without a cookie: a new session, 401, and its cookie once.
    let r = Req::get("/private/x").send(ng.port);
    assert_eq!(r.status, 401, "{r}");
    assert_eq!(r.set_cookies(SID).len(), 1, "{r}");
    get(&ng, "/set?user=alice", &sid);
    assert_eq!(get(&ng, "/private/x", &sid).status, 200);
    assert_eq!(get(&ng, "/admin/x", &sid).status, 403);
    get(&ng, "/set?user=alice&role=0", &sid);
    assert_eq!(get(&ng, "/admin/x", &sid).status, 403, "\"0\" is not enough");
    get(&ng, "/set?user=alice&role=admin", &sid);
    assert_eq!(get(&ng, "/admin/x", &sid).status, 200);

    // error_page 401 = @login: the named location answers, the session evaluated once
    // (one cookie, status new), and its sessions_set applies.
    let r = Req::get("/app/x").send(ng.port);
    assert_eq!((r.status, r.body_str().as_str()), (200, "app\n"), "{r}");
    assert_eq!(r.set_cookies(SID).len(), 1, "{r}");
    let fresh = r.sid();
    let r = get(&ng, "/", &fresh);
    assert_eq!(r.st(), "valid", "{r}");
    ng.check_logs();
}

#[test]
fn data_survives_a_reload() {
    let mut ng = start("");
    let sid = begin(&ng);
    get(&ng, "/set?user=erin", &sid);
    let conf = data_site("");
    ng.rewrite_conf(&conf);
    ng.reload();
    assert_data(&ng, &sid, "erin", "");
    ng.stop();
}

#[test]
fn data_follows_a_rolling_renewal() {
    let ng = start("sessions_rolling_timeout 1s;");
    let sid = begin(&ng);
    get(&ng, "/set?user=frank", &sid);
    // Poll until the rolling timeout renews the ID (bounded).
    let mut renewed = None;
    for _ in 0..300 {
        let r = get(&ng, "/", &sid);
        if r.st() == "renewed" {
            assert_eq!(r.header("X-User"), Some("frank"), "{r}");
            renewed = Some(r.sid());
            break;
        }
        thread::sleep(std::time::Duration::from_millis(20));
    }
    let next = renewed.expect("renewed within 6s");
    assert_data(&ng, &next, "frank", "");
    ng.check_logs();
}

#[test]
fn config_errors() {
    for (bad, marker) in [
        ("sessions_set User x;", "sessions_set User"),
        ("sessions_set a-b x;", "sessions_set a-b"),
        ("sessions_set a x unless=$a;", "unless="),
        ("sessions_data_size 65k;", "sessions_data_size"),
        ("sessions_require $a error=404;", "error=404"),
        ("sessions_require error=401;", "sessions_require error"),
        ("sessions_destroy everything;", "sessions_destroy"),
        ("sessions_renew; sessions_renew;", "sessions_renew"),
    ] {
        let body = format!("    sessions_secret {SECRET};\n    {bad}\n");
        let t = nginx_t_http(&body);
        let line = line_of(&t.conf_text, marker);
        t.assert_emerg(Some(line));
    }
    nginx_t_http(&format!(
        "    sessions_secret {SECRET};\n    sessions_data_size 0;\n    sessions_set a $arg_a if=$arg_b;\n    sessions_set b \"\";\n    sessions_renew if=$arg_r;\n    sessions_destroy all if=$arg_d;\n    sessions_require $arg_a error=403;\n"
    ))
    .assert_ok();
}

// ---------------------------------------------------------------------------------------
// nginx-conf/login.conf and nginx-conf/antibot.conf, run as shipped
// ---------------------------------------------------------------------------------------

/// Starts a shipped config with its two servers (8080, 8081) moved to free ports.
fn run_shipped(name: &str) -> Nginx {
    let prefix = TempDir::new("shipped");
    std::os::unix::fs::symlink(root().join("build/modules"), prefix.path.join("modules")).unwrap();
    let text = std::fs::read_to_string(root().join("nginx-conf").join(name)).unwrap();
    let (front, app) = (free_port(), free_port());
    let text = text
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{front}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{app}"));
    let conf = prefix.path.join("conf").join(name);
    std::fs::write(&conf, text).unwrap();
    Nginx::start_file(prefix, conf, front, 2, &["-g", "daemon off;"])
}

/// A form POST with a session cookie (`name=value`).
fn post_form(port: u16, path: &str, cookie: &str, form: &str) -> Response {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {UA}\r\nCookie: {cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{form}",
        form.len()
    );
    raw(port, req.as_bytes())
}

#[test]
fn shipped_login_conf() {
    let ng = run_shipped("login.conf");
    let name = "app_session";
    let cookie = |v: &str| format!("{name}={v}");
    let r = ng.get("/account/");
    assert_eq!((r.status, r.header("Location")), (303, Some("/login")), "{r}");
    let anon = r.one_cookie(name).value;
    // A wrong password: no renewal, nothing stored.
    let r = post_form(ng.port, "/login", &cookie(&anon), "user=alice&password=nope");
    assert!(r.set_cookies(name).is_empty(), "{r}");
    assert_eq!(Req::get("/account/").cookie(&cookie(&anon)).send(ng.port).status, 303);
    // The right one: a new ID, X-User hidden from the browser.
    let r = post_form(ng.port, "/login", &cookie(&anon), "user=alice&password=demo");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.header("X-User").is_none(), "{r}");
    let alice = r.one_cookie(name).value;
    assert_ne!(id_of(&alice), id_of(&anon));
    let r = Req::get("/account/").cookie(&cookie(&alice)).send(ng.port);
    assert_eq!((r.status, r.body_str().as_str()), (200, "page /account/ for \"alice\"\n"), "{r}");
    // The ID known before the login is dead.
    assert_eq!(Req::get("/account/").cookie(&cookie(&anon)).send(ng.port).status, 303);
    // A second device of alice's, then "log out everywhere" from the first.
    let other = ng.get("/").one_cookie(name).value;
    let other = post_form(ng.port, "/login", &cookie(&other), "user=alice&password=demo")
        .one_cookie(name)
        .value;
    let r = Req::get("/logout-everywhere").cookie(&cookie(&alice)).send(ng.port);
    assert_eq!(r.one_cookie(name).attr("Max-Age"), Some("0"), "{r}");
    for sid in [&alice, &other] {
        assert_eq!(Req::get("/account/").cookie(&cookie(sid)).send(ng.port).status, 303);
    }
    ng.check_logs();
}

#[test]
fn shipped_antibot_conf() {
    let ng = run_shipped("antibot.conf");
    let name = "guard";
    let r = ng.get("/page");
    assert_eq!(r.status, 200, "{r}");
    assert!(r.body_str().contains("/challenge?answer="), "{r}");
    let sid = r.one_cookie(name).value;
    let cookie = format!("{name}={sid}");
    let answer = r.body_str().split("answer=").nth(1).unwrap()[..16].to_string();
    // A wrong answer changes nothing.
    let r = Req::get("/challenge?answer=0000000000000000").cookie(&cookie).send(ng.port);
    assert!(r.set_cookies(name).is_empty(), "{r}");
    assert!(Req::get("/page").cookie(&cookie).send(ng.port).body_str().contains("answer="));
    // The right one: trusted, under a new ID.
    let r = Req::get(&format!("/challenge?answer={answer}")).cookie(&cookie).send(ng.port);
    assert_eq!(r.status, 303, "{r}");
    let human = r.one_cookie(name).value;
    let r = Req::get("/page").cookie(&format!("{name}={human}")).send(ng.port);
    assert_eq!(r.body_str(), "the site: /page\n", "{r}");
    ng.check_logs();
}

#[test]
fn demo_conf_logs_in_and_out() {
    let prefix = TempDir::new("demo");
    std::os::unix::fs::symlink(root().join("build/modules"), prefix.path.join("modules")).unwrap();
    let port = free_port();
    let text = std::fs::read_to_string(root().join("nginx-conf/demo.conf")).unwrap();
    let conf = prefix.path.join("conf/demo.conf");
    std::fs::write(&conf, text.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))).unwrap();
    let ng = Nginx::start_file(prefix, conf, port, 2, &["-g", "daemon off;"]);
    let name = "demo_session";
    let r = ng.get("/");
    assert!(r.body_str().contains("<code>demo_session</code>"), "the cookie's name: {r}");
    assert!(r.body_str().contains("same session under a new ID"), "{r}");
    let anon = r.one_cookie(name).value;
    let r = Req::get("/login?name=alice").cookie(&format!("{name}={anon}")).send(port);
    assert_eq!(r.status, 303, "{r}");
    let alice = r.one_cookie(name).value;
    assert_ne!(id_of(&alice), id_of(&anon));
    let r = Req::get("/note?note=hi").cookie(&format!("{name}={alice}")).send(port);
    assert!(r.set_cookies(name).is_empty(), "{r}");
    let page = Req::get("/").cookie(&format!("{name}={alice}")).send(port).body_str();
    assert!(page.contains("logged in as: <b>alice</b>"), "{page}");
    assert!(page.contains("note: <b>hi</b>"), "{page}");
    assert!(page.contains("data-started=\"1"), "the session's start is known: {page}");
    // Markup never reaches the page.
    Req::get("/note?note=%3Cscript%3E").cookie(&format!("{name}={alice}")).send(port);
    let page = Req::get("/").cookie(&format!("{name}={alice}")).send(port).body_str();
    assert!(!page.contains("<script>alert") && page.contains("note: <b></b>"), "{page}");
    assert_eq!(ng.get("/favicon.ico").status, 204);
    let r = Req::get("/logout").cookie(&format!("{name}={alice}")).send(port);
    assert_eq!(r.one_cookie(name).attr("Max-Age"), Some("0"), "{r}");
    ng.check_logs();
}

/// With `state=`, a stop and start keep each session's data and the subject index.
#[test]
fn data_and_subjects_survive_a_restart_with_a_state_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("data-state");
    let sub = dir.path.join("state");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
    let extra = format!("sessions_zone keep:1m state={};", sub.join("s.state").display());
    let mut ng = start(&extra);
    let (a1, a2, bob) = (login(&ng, "alice"), login(&ng, "alice"), login(&ng, "bob"));
    get(&ng, "/set?user=alice&role=admin", &a1);
    // The master writes the file once its workers have exited: wait for it to go (10 s).
    ng.signal(libc::SIGQUIT);
    let pid = ng.master_pid();
    let exited = (0..500).any(|_| {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(true);
        if !gone {
            thread::sleep(std::time::Duration::from_millis(20));
        }
        gone
    });
    assert!(exited, "the master did not exit on QUIT");
    ng.stop();
    let ng = start(&extra);
    assert_data(&ng, &a1, "alice", "admin");
    assert_data(&ng, &a2, "alice", "");
    assert_data(&ng, &bob, "bob", "");
    // The subject index came back: a1 logs alice out everywhere else.
    get(&ng, "/logout-others", &a1);
    assert_eq!(get(&ng, "/", &a2).st(), "invalid");
    assert_data(&ng, &a1, "alice", "admin");
    assert_data(&ng, &bob, "bob", "");
    ng.check_logs();
}
