//! Session data with the Redis store (issue 9 with Redis, issue 10 item 7): data read with
//! the session and shared by instances, carried by rolling renewal, the response header
//! held until Redis confirms a change, explicit renewal, destroy this/others/all across
//! instances (subject sets), `sessions_require` when Redis is dead, Redis paused during a
//! write, and a client that goes away while its response waits on Redis.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

/// An app behind `proxy_pass` (a unix socket of the same NGINX): answers 200 and echoes
/// `?app_user=` as `X-App-User`, the way a login endpoint names the user.
const APP: &str = r#"
    server {
        listen unix:%%PREFIX%%/app.sock;
        location / {
            add_header X-App-User $arg_app_user;
            return 200 "app\n";
        }
    }
"#;

/// The test site on Redis; `/slow-set` proxies to `slow_port` (a test's own upstream).
fn redis_site(redis: &Redis, slow_port: u16, extra: &str) -> String {
    redis_site_with(redis, slow_port, extra, "")
}

/// As [`redis_site`], with more directives in the test server.
fn redis_site_with(redis: &Redis, slow_port: u16, extra: &str, listen: &str) -> String {
    let body = format!(
        r#"
    sessions_secret {SECRET};
    sessions_name {SID};
    sessions_data_size 200;
    log_format slow "$status $body_bytes_sent";
    sessions_redis redis://127.0.0.1:{redis_port};
    {extra}
    {APP}
    server {{
        listen 127.0.0.1:%%PORT%% reuseport;
        {listen}
        sessions on;
        add_header X-Status $session_status always;
        add_header X-Pid $pid always;
        add_header X-User $session_data_user always;
        location / {{ proxy_pass http://unix:%%PREFIX%%/app.sock; }}
        location = /set {{
            sessions_set user $arg_user;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /static-set {{
            sessions_set user $arg_user;
            try_files /index.html =404;
        }}
        location = /setk {{
            {setk}
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /head-set {{
            sessions_set user $arg_user;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /login {{
            sessions_set user $upstream_http_x_app_user if=$upstream_http_x_app_user;
            sessions_set subject $upstream_http_x_app_user if=$upstream_http_x_app_user;
            sessions_renew if=$upstream_http_x_app_user;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /logout {{ sessions_destroy; proxy_pass http://unix:%%PREFIX%%/app.sock; }}
        location = /logout-others {{
            sessions_destroy others;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /logout-all {{
            sessions_destroy all;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location /private/ {{
            sessions_require $session_data_user;
            proxy_pass http://unix:%%PREFIX%%/app.sock;
        }}
        location = /slow-set {{
            sessions_set user paused;
            access_log %%PREFIX%%/logs/slow.log slow;
            proxy_pass http://127.0.0.1:{slow_port};
        }}
    }}
"#,
        redis_port = redis.port,
        listen = listen,
        setk = (0..10)
            .map(|i| format!("sessions_set k{i} $arg_k{i} if=$arg_k{i};"))
            .collect::<String>(),
    );
    main_conf(&body, 2)
}

fn start(redis: &Redis, extra: &str) -> Nginx {
    Nginx::start_template(&redis_site(redis, 9, extra), 2)
}

fn get(port: u16, path: &str, sid: &str) -> Response {
    Req::get(path).sid(sid).send(port)
}

/// A new session's cookie value.
fn begin(port: u16) -> String {
    let r = Req::get("/").send(port);
    assert_eq!((r.status, r.st()), (200, "new"), "{r}");
    r.sid()
}

/// Logs in through the app on `port`: the new cookie.
fn login(port: u16, sid: &str, user: &str) -> String {
    let r = get(port, &format!("/login?app_user={user}"), sid);
    assert_eq!(r.status, 200, "{r}");
    let new = r.sid();
    assert_ne!(id_of(&new), id_of(sid), "a login gives a new ID");
    new
}

fn user(port: u16, sid: &str) -> (String, String) {
    let r = get(port, "/", sid);
    (r.st().to_string(), r.header("X-User").unwrap_or("").to_string())
}

fn valid_as(port: u16, sid: &str, who: &str) {
    for _ in 0..4 {
        assert_eq!(user(port, sid), ("valid".to_string(), who.to_string()), "on {port}");
    }
}

#[test]
fn data_is_shared_by_instances_and_held_header_carries_it() {
    let redis = Redis::start();
    let (a, b) = (start(&redis, ""), start(&redis, ""));
    let sid = begin(a.port);
    let r = get(a.port, "/set?user=alice", &sid);
    assert_eq!((r.status, r.body_str().as_str()), (200, "app\n"), "{r}");
    assert!(r.no_cookie(SID), "a change keeps the ID: {r}");
    valid_as(b.port, &sid, "alice");
    valid_as(a.port, &sid, "alice");
    // A static file (no upstream) is held and released the same way.
    let r = get(b.port, "/static-set?user=bob", &sid);
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok\n"), "{r}");
    valid_as(a.port, &sid, "bob");
    // HEAD: no body goes out, the change is made.
    let r = Req::head("/head-set?user=carol").sid(&sid).send(a.port);
    assert_eq!((r.status, r.body_str().as_str()), (200, ""), "{r}");
    valid_as(b.port, &sid, "carol");
    // A new session gets its first data in its first response.
    let r = Req::get("/set?user=dave").send(b.port);
    assert_eq!(r.st(), "new", "{r}");
    valid_as(a.port, &r.sid(), "dave");
    // A keepalive connection goes on after a held response.
    let mut s = connect(a.port, None).unwrap();
    for who in ["eve", "frank"] {
        s.write_all(&Req::get(&format!("/set?user={who}")).sid(&sid).to_bytes(true)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&buf).ends_with("app\n") {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
        valid_as(b.port, &sid, who);
    }
    a.check_logs();
    b.check_logs();
}

#[test]
fn too_large_is_refused_with_one_error_and_concurrent_writers_all_land() {
    let redis = Redis::start();
    let (a, b) = (start(&redis, ""), start(&redis, ""));
    let sid = begin(a.port);
    get(a.port, "/set?user=alice", &sid);
    let before = a.error_log_lines();
    let r = get(a.port, &format!("/set?user={}", "x".repeat(300)), &sid);
    assert_eq!(r.status, 200, "the response goes on: {r}");
    let lines: Vec<String> =
        a.error_log_since(before).into_iter().filter(|l| l.contains("not changed")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("[error]") && lines[0].contains("sessions_data_size 200"),
        "{lines:?}"
    );
    valid_as(b.port, &sid, "alice");
    // Ten requests on two instances, each setting its own key of one session at once: the
    // script merges each into what Redis holds, none is lost.
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let (sid, port) = (sid.clone(), if i % 2 == 0 { a.port } else { b.port });
            thread::spawn(move || get(port, &format!("/setk?k{i}=v{i}"), &sid).status)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let key = redis
        .cmd(&["KEYS", "s:*"])
        .items()
        .iter()
        .map(|k| k.text())
        .find(|k| redis.cmd(&["GET", k]).bytes().windows(5).any(|w| w == b"alice"))
        .expect("the session's key");
    let value = redis.cmd(&["GET", &key]).bytes();
    for i in 0..10 {
        let entry = format!("k{i}");
        assert!(
            value.windows(entry.len()).any(|w| w == entry.as_bytes()),
            "k{i} lost: {}",
            String::from_utf8_lossy(&value)
        );
    }
    a.check_logs();
    b.check_logs();
}

#[test]
fn http2_streams_wait_for_redis_and_go_on() {
    let redis = Redis::start();
    // HTTP/1.1 and h2c (prior knowledge) on the same port.
    let ng = Nginx::start_template(&redis_site_with(&redis, 9, "", "http2 on;"), 2);
    let h2 = ng.port;
    let sid = begin(ng.port);
    // Two HTTP/2 requests at once, each holding its header until Redis confirms (curl
    // 7.88 drops the second of a `--parallel` pair that waits to multiplex, hence
    // `--parallel-immediate`).
    let out = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "--parallel", "--parallel-immediate"])
        .args(["--max-time", "5", "-A", UA])
        .args(["-H", &format!("Cookie: {SID}={sid}"), "-o", "/dev/null", "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}\\n"])
        .arg(format!("http://127.0.0.1:{h2}/setk?k1=a"))
        .arg(format!("http://127.0.0.1:{h2}/setk?k2=b"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().filter(|l| *l == "2 200").count(), 2, "{text}");
    let key = redis.cmd(&["KEYS", "s:*"]).items()[0].text();
    let value = redis.cmd(&["GET", &key]).bytes();
    for entry in [&b"k1\x01\x00a"[..], b"k2\x01\x00b"] {
        assert!(value.windows(entry.len()).any(|w| w == entry), "{value:?}");
    }
    ng.check_logs();
}

#[test]
fn rolling_renewal_keeps_data_and_the_old_id_reads_it() {
    let redis = Redis::start();
    let ng = start(&redis, "sessions_rolling_timeout 1s;");
    let sid = login(ng.port, &begin(ng.port), "alice");
    let deadline = Instant::now() + Duration::from_secs(5);
    let renewed = loop {
        let r = get(ng.port, "/", &sid);
        if r.st() == "renewed" {
            break r;
        }
        assert!(Instant::now() < deadline, "no renewal: {r}");
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(renewed.header("X-User"), Some("alice"), "{renewed}");
    let next = renewed.sid();
    // The old ID in its grace answers with the successor, and its data.
    let r = get(ng.port, "/", &sid);
    assert_eq!((r.st(), r.header("X-User")), ("renewed", Some("alice")), "{r}");
    assert_eq!(r.sid(), next);
    assert_eq!(user(ng.port, &next).1, "alice");
    // The subject's set lists the successor alone (the old ID, in its grace, left it).
    let sets = redis.cmd(&["KEYS", "u:*"]).items();
    assert_eq!(sets.len(), 1);
    let members = redis.cmd(&["SMEMBERS", &sets[0].text()]).items();
    assert_eq!(members.len(), 1, "{members:?}");
    let value = redis.cmd(&["GET", &members[0].text()]).bytes();
    assert!(value.windows(5).any(|w| w == b"alice"), "the member is the live successor");
    assert_eq!(redis.cmd(&["KEYS", "s:*"]).items().len(), 2, "successor and old ID in grace");
    ng.check_logs();
}

#[test]
fn login_renews_and_the_old_id_dies_at_once() {
    let redis = Redis::start();
    let (a, b) = (start(&redis, ""), start(&redis, ""));
    let old = begin(a.port);
    let new = login(a.port, &old, "alice");
    valid_as(b.port, &new, "alice");
    let r = get(b.port, "/", &old);
    assert_eq!(r.st(), "invalid", "no grace for an explicit renewal: {r}");
    assert_eq!(r.header("X-User").unwrap_or(""), "", "{r}");
    // Subject set: the new key only.
    let members = redis.cmd(&["KEYS", "u:*"]).items().len();
    assert_eq!(members, 1, "one subject set");
    a.check_logs();
    b.check_logs();
}

#[test]
fn destroy_this_others_all_across_instances() {
    let redis = Redis::start();
    let (a, b) = (start(&redis, ""), start(&redis, ""));
    let s1 = login(a.port, &begin(a.port), "alice");
    let s2 = login(b.port, &begin(b.port), "alice");
    let s3 = login(a.port, &begin(a.port), "alice");
    let bob = login(b.port, &begin(b.port), "bob");
    // others, from b: s2 stays, s1 and s3 go (made on a).
    let r = get(b.port, "/logout-others", &s2);
    assert!(r.no_cookie(SID), "{r}");
    valid_as(a.port, &s2, "alice");
    assert_eq!(user(a.port, &s1).0, "invalid");
    assert_eq!(user(b.port, &s3).0, "invalid");
    valid_as(a.port, &bob, "bob");
    // this: the cookie is expired.
    let r = get(a.port, "/logout", &bob);
    let c = r.one_cookie(SID);
    assert_eq!(c.attr("Max-Age"), Some("0"), "{r}");
    assert_eq!(user(b.port, &bob).0, "invalid");
    // all: from a new session of alice on a, s2 (made on b) goes too.
    let s4 = login(a.port, &begin(a.port), "alice");
    let r = get(a.port, "/logout-all", &s4);
    assert_eq!(r.one_cookie(SID).attr("Max-Age"), Some("0"), "{r}");
    assert_eq!(user(b.port, &s2).0, "invalid");
    assert_eq!(user(b.port, &s4).0, "invalid");
    a.check_logs();
    b.check_logs();
}

#[test]
fn a_write_racing_a_rolling_renewal_lands_on_the_successor() {
    let redis = Redis::start();
    let target = std::sync::Arc::new(std::sync::Mutex::new((0u16, String::new())));
    let renewed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (t, rn) = (target.clone(), renewed.clone());
    // While /slow-set's upstream answers, another request of the same cookie renews it.
    let (slow_port, upstream) = slow_upstream(move || {
        let (port, sid) = t.lock().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = get(port, "/", &sid);
            if r.st() == "renewed" {
                *rn.lock().unwrap() = r.sid();
                return;
            }
            assert!(Instant::now() < deadline, "no renewal: {r}");
            thread::sleep(Duration::from_millis(100));
        }
    });
    let ng =
        Nginx::start_template(&redis_site(&redis, slow_port, "sessions_rolling_timeout 1s;"), 2);
    let sid = begin(ng.port);
    *target.lock().unwrap() = (ng.port, sid.clone());
    let r = get(ng.port, "/slow-set", &sid);
    upstream.join().unwrap();
    assert_eq!(r.status, 200, "{r}");
    let next = renewed.lock().unwrap().clone();
    assert!(!next.is_empty());
    assert_eq!(user(ng.port, &next), ("valid".to_string(), "paused".to_string()));
    ng.check_logs();
}

#[test]
fn require_answers_503_when_redis_is_dead() {
    let mut redis = Redis::start();
    let mut ng = start(&redis, "sessions_redis_timeout 300ms;");
    let sid = login(ng.port, &begin(ng.port), "alice");
    assert_eq!(get(ng.port, "/private/x", &sid).status, 200);
    assert_eq!(Req::get("/private/x").send(ng.port).status, 401);
    redis.stop();
    let r = get(ng.port, "/private/x", &sid);
    assert_eq!((r.status, r.st()), (503, "error"), "{r}");
    // A change is not attempted with status error; the response goes on.
    let r = get(ng.port, "/set?user=x", &sid);
    assert_eq!((r.status, r.st()), (200, "error"), "{r}");
    ng.allow_log("is unavailable");
    ng.check_logs();
}

/// A one-shot upstream on a free port: reads a request, runs `before_answer`, answers 200.
fn slow_upstream(before_answer: impl FnOnce() + Send + 'static) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        before_answer();
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nslow\n");
    });
    (port, handle)
}

/// The `/slow-set` access log line, once written (at the end of the request).
fn slow_log(ng: &Nginx) -> String {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(ng.prefix.path.join("logs/slow.log")).unwrap_or_default();
        if !log.is_empty() || Instant::now() > deadline {
            return log.trim().to_string();
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn redis_paused_during_a_write_answers_in_time_with_one_error() {
    let redis = Redis::start();
    let redis_pid = redis.pid();
    let (slow_port, upstream) = slow_upstream(move || signal(redis_pid, libc::SIGSTOP));
    let mut ng =
        Nginx::start_template(&redis_site(&redis, slow_port, "sessions_redis_timeout 500ms;"), 2);
    let sid = begin(ng.port);
    get(ng.port, "/set?user=alice", &sid);
    let before = ng.error_log_lines();
    let t = Instant::now();
    let r = get(ng.port, "/slow-set", &sid);
    let took = t.elapsed();
    signal(redis_pid, libc::SIGCONT);
    upstream.join().unwrap();
    assert_eq!((r.status, r.body_str().as_str()), (200, "slow\n"), "{r}");
    assert!(took < Duration::from_millis(500 + 700), "held {took:?}");
    assert!(took >= Duration::from_millis(400), "not held at all? {took:?}");
    assert_eq!(slow_log(&ng), "200 5", "the response went on, body and all");
    let lines = ng.error_log_since(before);
    let errors: Vec<_> = lines.iter().filter(|l| l.contains("not changed")).collect();
    assert_eq!(errors.len(), 1, "{lines:?}");
    assert!(errors[0].contains("[error]"), "{}", errors[0]);
    // Redis is back: the session lives. The command sent before the timeout sat in
    // Redis's socket and ran on SIGCONT (a slow Redis may still apply a change reported
    // lost; the script is atomic either way).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (st, who) = user(ng.port, &sid);
        if st == "valid" {
            assert!(["alice", "paused"].contains(&who.as_str()), "{who}");
            break;
        }
        assert!(Instant::now() < deadline, "session not back: {st}");
        thread::sleep(Duration::from_millis(100));
    }
    ng.allow_log("is unavailable");
    ng.allow_log("is available again");
    ng.check_logs();
}

#[test]
fn a_client_that_leaves_while_its_response_waits_leaves_nothing_behind() {
    let redis = Redis::start();
    let redis_pid = redis.pid();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (slow_port, upstream) = slow_upstream(move || {
        signal(redis_pid, libc::SIGSTOP);
        let _ = tx.send(());
    });
    let mut ng =
        Nginx::start_template(&redis_site(&redis, slow_port, "sessions_redis_timeout 1s;"), 2);
    let sid = begin(ng.port);
    let mut s = connect(ng.port, None).unwrap();
    s.write_all(&Req::get("/slow-set").sid(&sid).to_bytes(false)).unwrap();
    rx.recv_timeout(IO_TIMEOUT).unwrap();
    upstream.join().unwrap();
    // The upstream answered; NGINX now waits on the paused Redis. Leave.
    thread::sleep(Duration::from_millis(100));
    drop(s);
    thread::sleep(Duration::from_millis(200));
    signal(redis_pid, libc::SIGCONT);
    // The workers are fine: every one answers with the session.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pids = std::collections::BTreeSet::new();
    while pids.len() < 2 {
        let r = get(ng.port, "/", &sid);
        if r.st() == "valid" {
            pids.insert(r.pid().to_string());
        }
        assert!(Instant::now() < deadline, "workers not answering: {r}");
    }
    // Its timeout passes with nothing left to run.
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(user(ng.port, &sid).0, "valid");
    // It ended while held: 499, nothing sent.
    assert_eq!(slow_log(&ng), "499 0");
    ng.allow_log("is unavailable");
    ng.allow_log("is available again");
    ng.allow_log("not changed");
    ng.check_logs();
}
