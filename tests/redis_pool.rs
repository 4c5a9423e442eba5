//! The Redis connection pool against a real `redis-server`: idle connections closed after
//! `sessions_redis_keepalive_timeout`, and (pipelining) many clients served by a few
//! connections per worker, with clients that go away leaving the pooled connections open.

mod common;

use common::*;
use std::io::{BufReader, Write};
use std::thread;
use std::time::{Duration, Instant};

/// `sessions_redis` to this fixture plus `extra`, with the test secret and name.
fn redis_http(redis: &Redis, extra: &str) -> String {
    default_http(&format!("sessions_redis redis://127.0.0.1:{};\n    {extra}", redis.port))
}

/// Connections Redis has open, other than the one asking.
fn redis_clients(redis: &Redis) -> usize {
    let list = redis.cmd(&["CLIENT", "LIST"]).text();
    list.lines().filter(|l| !l.trim().is_empty() && !l.contains("cmd=client|list")).count()
}

/// `INFO stats` `total_connections_received`.
fn connections_received(redis: &Redis) -> u64 {
    let info = redis.cmd(&["INFO", "stats"]).text();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats has total_connections_received")
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; whether it held.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_connections_close_after_keepalive_timeout() {
    let redis = Redis::start();
    let ng = Nginx::start(&site(&redis_http(&redis, "sessions_redis_keepalive_timeout 1s;"), ""));
    let r = Req::get("/index.html").send(ng.port);
    assert_eq!(r.st(), "new", "{r}");
    assert!(redis_clients(&redis) >= 1, "the pooled connection is not open after a request");
    let started = Instant::now();
    assert!(
        wait_for(Duration::from_secs(3), || redis_clients(&redis) == 0),
        "pooled connections still open {:?} after a 1s keepalive timeout: {}",
        started.elapsed(),
        redis.cmd(&["CLIENT", "LIST"]).text()
    );
    // Sessions still work: a new connection is opened on demand.
    let again = Req::get("/index.html").sid(&r.sid()).send(ng.port);
    assert_eq!(again.st(), "valid", "{again}");
    ng.check_logs();
}

/// With the default (30 s), a connection is still there a little later.
#[test]
fn idle_connections_stay_within_keepalive_timeout() {
    let redis = Redis::start();
    let ng = Nginx::start(&site(&redis_http(&redis, ""), ""));
    let r = Req::get("/index.html").send(ng.port);
    assert_eq!(r.st(), "new", "{r}");
    let before = connections_received(&redis);
    thread::sleep(Duration::from_millis(1500));
    assert!(redis_clients(&redis) >= 1, "the pooled connection closed early");
    let again = Req::get("/index.html").sid(&r.sid()).send(ng.port);
    assert_eq!(again.st(), "valid", "{again}");
    // Only the worker that had no connection may have opened one (the fixture's own
    // INFO/CLIENT queries count too: 2 of them).
    assert!(connections_received(&redis) <= before + 3);
    ng.check_logs();
}

#[test]
fn bad_keepalive_timeout_fails_nginx_t() {
    for bad in [
        "sessions_redis_keepalive_timeout abc; # BAD",
        "sessions_redis_keepalive_timeout 0; # BAD",
        "sessions_redis_keepalive_timeout 1s;\n    sessions_redis_keepalive_timeout 2s; # BAD",
    ] {
        let t = nginx_t_http(&format!(
            "    sessions_secret {SECRET};\n    sessions_redis redis://127.0.0.1:1;\n    {bad}\n    \
             server {{\n        listen 127.0.0.1:%%PORT%%;\n        location / {{ sessions on; }}\n    }}\n"
        ));
        t.assert_emerg(Some(line_of(&t.conf_text, "# BAD")));
    }
    let t = nginx_t_http(&format!(
        "    sessions_secret {SECRET};\n    sessions_redis redis://127.0.0.1:1;\n    \
         sessions_redis_keepalive_timeout 90s;\n    \
         server {{\n        listen 127.0.0.1:%%PORT%%;\n        location / {{ sessions on; }}\n    }}\n"
    ));
    t.assert_ok();
}

/// Has every worker make a request (each opens its connection and fetches the binding
/// key), so that later counts see steady state only.
fn warm_up(ng: &Nginx) {
    let mut pids = std::collections::HashSet::new();
    for _ in 0..200 {
        if pids.len() == ng.workers {
            return;
        }
        let r = Req::get("/index.html").send(ng.port);
        assert_eq!(r.st(), "new", "{r}");
        pids.insert(r.pid().to_string());
    }
    panic!("not every worker answered: {pids:?}");
}

/// 64 concurrent clients, each its own session, against 2 connections per worker: every
/// request is `valid` and Redis sees no more than the pool's connections (pipelining), not
/// one per concurrent request.
#[test]
fn many_concurrent_clients_share_a_few_pipelined_connections() {
    const CLIENTS: usize = 64;
    const REQUESTS: usize = 20;
    let redis = Redis::start();
    let ng = Nginx::start(&site(&redis_http(&redis, "sessions_redis_keepalive 2;"), ""));
    warm_up(&ng);
    let before = connections_received(&redis);
    let port = ng.port;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let v = new_session(port, Req::get("/index.html"));
                for _ in 0..REQUESTS {
                    assert_valid(port, Req::get("/index.html"), &v);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    let opened = connections_received(&redis) - before;
    // 2 workers × 2 connections, plus this fixture's own INFO query, plus slack for a
    // connection that had to be reopened.
    assert!(opened <= 2 * 2 + 1 + 2, "{opened} Redis connections for {CLIENTS} clients");
    assert!(redis_clients(&redis) <= 2 * 2, "{}", redis.cmd(&["CLIENT", "LIST"]).text());
    ng.check_logs();
}

/// HTTP/2 clients that vanish while their commands wait on a busy Redis (`DEBUG SLEEP`):
/// the pooled connection stays open and serves the next requests, nothing is reopened.
/// (NGINX keeps a suspended stream until its access phase resumes, so the replies still
/// find their requests here; a request freed while waiting leaves a tombstone slot, whose
/// reply is dropped the same way, without closing the connection.)
#[test]
fn client_going_away_keeps_the_pooled_connection() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed: HTTP/2 abort test skipped");
        return;
    }
    let redis = Redis::start_with(&["--enable-debug-command", "yes"]);
    let http = redis_http(&redis, "sessions_redis_keepalive 1;\n    sessions_redis_timeout 3s;");
    let ng = Nginx::start(&site(&http, "http2 on;"));
    warm_up(&ng);
    let v = new_session(ng.port, Req::get("/index.html"));
    let before = connections_received(&redis);
    let port = redis.port;
    let sleeper = thread::spawn(move || {
        let mut s = connect(port, None).expect("connect to redis");
        s.write_all(b"DEBUG SLEEP 1\r\n").expect("DEBUG SLEEP");
        read_resp(&mut BufReader::new(s)).expect("DEBUG SLEEP reply")
    });
    // Give DEBUG SLEEP a head start (it blocks Redis as a whole).
    thread::sleep(Duration::from_millis(200));
    let url = format!("http://127.0.0.1:{}/index.html", ng.port);
    let cookie = format!("Cookie: {SID}={v}");
    let ua = format!("User-Agent: {UA}");
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--http2-prior-knowledge", "--max-time", "0.3"])
        .args(["-H", &cookie, "-H", &ua, "--parallel", &url, &url, &url, &url])
        .output()
        .expect("curl");
    assert!(!out.status.success(), "the streams should still be waiting on Redis");
    assert_eq!(sleeper.join().expect("DEBUG SLEEP"), Resp::Simple("OK".into()));
    for _ in 0..10 {
        assert_valid(ng.port, Req::get("/index.html"), &v);
    }
    // Only this test's own Redis connections: DEBUG SLEEP and the INFO query.
    let opened = connections_received(&redis) - before;
    assert_eq!(opened, 2, "NGINX opened {} Redis connections", opened - 2);
    ng.check_logs();
}

/// A stalled Redis (SIGSTOP) with many commands pipelined on one connection per worker:
/// the earliest deadline fails the connection and every command on it, so every request
/// answers `error` within about the timeout (none hangs behind another's deadline), and
/// once Redis runs again sessions are `valid` again without a reload.
#[test]
fn stalled_redis_fails_every_pipelined_command_then_recovers() {
    const CLIENTS: usize = 16;
    let redis = Redis::start();
    let http = redis_http(&redis, "sessions_redis_keepalive 1;\n    sessions_redis_timeout 500ms;");
    let mut ng = Nginx::start(&site(&http, ""));
    ng.allow_log("is unavailable");
    warm_up(&ng);
    let v = new_session(ng.port, Req::get("/index.html"));
    redis.signal(libc::SIGSTOP);
    let port = ng.port;
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let v = v.clone();
            thread::spawn(move || {
                let r = Req::get("/index.html").sid(&v).send(port);
                (r.status, r.st().to_string())
            })
        })
        .collect();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join()).collect();
    let took = started.elapsed();
    redis.signal(libc::SIGCONT);
    for a in &answers {
        let (status, st) = a.as_ref().expect("a client failed");
        assert_eq!((*status, st.as_str()), (200, "error"), "{answers:?}");
    }
    // Twice the timeout is the most a request may wait (its budget), plus slack.
    assert!(took < Duration::from_millis(2500), "requests took {took:?}");
    assert!(
        wait_for(Duration::from_secs(5), || {
            let r = Req::get("/index.html").sid(&v).send(ng.port);
            assert!(matches!(r.st(), "valid" | "error"), "the session must survive: {r}");
            r.st() == "valid"
        }),
        "never valid again"
    );
    ng.check_logs();
}

/// `sessions_redis_keepalive 0`: one connection at a time, closed as soon as nothing is
/// pending.
#[test]
fn keepalive_zero_closes_idle_connections_at_once() {
    let redis = Redis::start();
    let ng = Nginx::start(&site(&redis_http(&redis, "sessions_redis_keepalive 0;"), ""));
    let v = new_session(ng.port, Req::get("/index.html"));
    for _ in 0..3 {
        assert_valid(ng.port, Req::get("/index.html"), &v);
    }
    assert!(
        wait_for(Duration::from_secs(2), || redis_clients(&redis) == 0),
        "connections left open: {}",
        redis.cmd(&["CLIENT", "LIST"]).text()
    );
    ng.check_logs();
}
