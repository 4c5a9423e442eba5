//! The Redis connection pool against a real `redis-server`: idle connections closed after
//! `sessions_redis_keepalive_timeout`, and (pipelining) many clients served by a few
//! connections per worker, with clients that go away leaving the pooled connections open.

mod common;

use common::*;
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
