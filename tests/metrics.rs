//! `sessions_metrics`: exact counts after a known sequence of requests spread over both
//! workers, kept across `nginx -s reload`; the shared-memory gauges and evictions; Redis
//! up / down, errors and round trips against a real redis-server that the test kills; the
//! endpoint's methods and content type; configuration errors.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

const METRICS: &str = "location = /metrics { sessions_metrics; }";
const STATUSES: [&str; 7] = ["new", "valid", "renewed", "expired", "invalid", "mismatch", "error"];

/// One scrape, as `series -> value` (`name{labels}` as written).
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let r = Req::get("/metrics").send(port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("Content-Type"), Some("text/plain; version=0.0.4"), "{r}");
    assert!(r.no_cookie(SID), "a scrape starts no session: {r}");
    assert_eq!(r.st(), "", "a scrape is not evaluated: {r}");
    let text = r.body_str();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(out.insert(series.to_string(), value).is_none(), "{series} twice:\n{text}");
    }
    for family in ["requests_total", "renewals_total", "destroyed_total", "evictions_total"] {
        let name = format!("nginx_sessions_{family}");
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} counter\n")), "no TYPE for {name}:\n{text}");
    }
    out
}

fn requests(m: &BTreeMap<String, f64>, status: &str) -> u64 {
    value(m, &format!("nginx_sessions_requests_total{{status=\"{status}\"}}"))
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> u64 {
    let v = m.get(series).unwrap_or_else(|| panic!("no {series} in {m:#?}"));
    *v as u64
}

/// Counts by status, expected or scraped.
fn by_status(counts: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let mut m: BTreeMap<String, u64> = STATUSES.iter().map(|s| (s.to_string(), 0)).collect();
    for (s, n) in counts {
        *m.get_mut(*s).unwrap() += n;
    }
    m
}

fn scraped_statuses(m: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    STATUSES.iter().map(|s| (s.to_string(), requests(m, s))).collect()
}

#[test]
fn counts_are_exact_over_workers_and_kept_after_reload() {
    let http = default_http("sessions_rolling_timeout 2s;");
    let conf = main_conf(&site(&http, METRICS), 2);
    let ng = Nginx::start_template(&conf, 2);
    let p = ng.port;

    // Nothing yet, every status present.
    let m = scrape(p);
    assert_eq!(scraped_statuses(&m), by_status(&[]));
    for reason in ["mismatch", "destroy", "subject"] {
        assert_eq!(value(&m, &format!("nginx_sessions_destroyed_total{{reason=\"{reason}\"}}")), 0);
    }

    // New sessions on fresh connections until both workers have started some.
    let mut sids = Vec::new();
    let mut pids = BTreeSet::new();
    while sids.len() < 6 || pids.len() < 2 {
        assert!(sids.len() < 200, "requests never reached the second worker");
        let r = Req::get("/index.html").send(p);
        assert_eq!(r.st(), "new", "{r}");
        pids.insert(r.pid().to_string());
        sids.push(r.sid());
    }
    let new = sids.len() as u64;
    for v in &sids {
        assert_valid(p, Req::get("/index.html"), v);
    }
    for bad in ["garbage", "AAAA.BBBB", &format!("{}x", sids[0])] {
        let r = Req::get("/index.html").sid(bad).send(p);
        assert_eq!(r.st(), "invalid", "{r}");
    }
    for v in &sids[1..3] {
        let r = Req::get("/index.html").from("127.0.0.3").sid(v).send(p);
        assert_eq!(r.st(), "mismatch", "{r}");
    }
    // Past the rolling timeout: one renewal, then the old ID in its grace is answered
    // with the same successor (status renewed, no second renewal).
    thread::sleep(Duration::from_millis(2300));
    let r1 = Req::get("/index.html").sid(&sids[0]).send(p);
    let r2 = Req::get("/index.html").sid(&sids[0]).send(p);
    assert_eq!((r1.st(), r2.st()), ("renewed", "renewed"), "{r1}\n{r2}");
    assert_eq!(r1.sid(), r2.sid());

    let expected =
        by_status(&[("new", new), ("valid", new), ("invalid", 3), ("mismatch", 2), ("renewed", 2)]);
    let m = scrape(p);
    assert_eq!(scraped_statuses(&m), expected, "{m:#?}");
    assert_eq!(value(&m, "nginx_sessions_renewals_total"), 1);
    assert_eq!(value(&m, "nginx_sessions_destroyed_total{reason=\"mismatch\"}"), 2);
    assert_eq!(value(&m, "nginx_sessions_destroyed_total{reason=\"destroy\"}"), 0);
    assert_eq!(value(&m, "nginx_sessions_destroyed_total{reason=\"subject\"}"), 0);
    assert_eq!(value(&m, "nginx_sessions_evictions_total"), 0);
    // Records: each new session, each invalid request's replacement, a mismatch destroys
    // one and starts one, the renewal adds the successor (the old ID lives on in its grace).
    assert_eq!(value(&m, "nginx_sessions_stored"), new + 3 + 1);
    assert!(value(&m, "nginx_sessions_capacity") > 10_000, "{m:#?}");
    assert!(!m.keys().any(|k| k.contains("redis")), "no Redis series without Redis: {m:#?}");

    // Scrapes count nothing.
    assert_eq!(scrape(p), m);

    // A reload keeps the counts; the new workers add to them.
    ng.reload();
    assert_eq!(scrape(p), m);
    let r = Req::get("/index.html").send(p);
    assert_eq!(r.st(), "new", "{r}");
    let after = scrape(p);
    assert_eq!(requests(&after, "new"), new + 1);
    assert_eq!(value(&after, "nginx_sessions_stored"), new + 5);
    ng.check_logs();
}

#[test]
fn endpoint_answers_get_and_head_only() {
    let conf = main_conf(&site(&default_http(""), METRICS), 2);
    let ng = Nginx::start_template(&conf, 2);
    let head = Req::head("/metrics").send(ng.port);
    assert_eq!(head.status, 200, "{head}");
    assert_eq!(head.header("Content-Type"), Some("text/plain; version=0.0.4"), "{head}");
    assert!(head.body.is_empty(), "{head}");
    let get = Req::get("/metrics").send(ng.port);
    assert_eq!(head.header("Content-Length"), Some(get.body.len().to_string().as_str()));
    for method in ["POST", "PUT", "DELETE"] {
        let r = Req { method: method.into(), ..Req::get("/metrics") }
            .header("Content-Length", "0")
            .send(ng.port);
        assert_eq!(r.status, 405, "{method}: {r}");
    }
    ng.check_logs();
}

/// A zone too small for the traffic: the table fills, every further new session evicts
/// exactly one record, and the gauges and the counter say so.
#[test]
fn stored_capacity_and_evictions() {
    let conf = main_conf(&site(&default_http("sessions_zone small:64k;"), METRICS), 2);
    let ng = Nginx::start_template(&conf, 2);
    let capacity = value(&scrape(ng.port), "nginx_sessions_capacity");
    assert!((100..2000).contains(&capacity), "capacity {capacity} of a 64k zone");
    let mut conn = Conn::new(ng.port);
    let n = capacity + 50;
    for _ in 0..n {
        let r = conn.send(&Req::get("/index.html"));
        assert_eq!(r.st(), "new", "{r}");
    }
    let m = scrape(ng.port);
    assert_eq!(value(&m, "nginx_sessions_stored"), capacity, "{m:#?}");
    assert_eq!(value(&m, "nginx_sessions_evictions_total"), n - capacity, "{m:#?}");
    assert_eq!(requests(&m, "new"), n);
    ng.check_logs();
}

/// `sessions_metrics` without any `sessions on`: no zone, zeros.
#[test]
fn without_sessions_everything_is_zero() {
    let http = "types { text/html html; }\n".to_string();
    let server = format!(
        "server {{ listen 127.0.0.1:%%PORT%% reuseport; root %%PREFIX%%/html; {METRICS} }}"
    );
    let ng = Nginx::start_template(&main_conf(&format!("{http}{server}"), 2), 2);
    let m = scrape(ng.port);
    assert_eq!(scraped_statuses(&m), by_status(&[]));
    assert_eq!(value(&m, "nginx_sessions_evictions_total"), 0);
    ng.check_logs();
}

/// Sends requests on fresh connections until `done` says so; returns their statuses.
fn until(port: u16, what: &str, mut done: impl FnMut(&Response) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        let r = Req::get("/index.html").send(port);
        assert_eq!(r.status, 200, "{r}");
        seen.push(r.st().to_string());
        if done(&r) {
            return seen;
        }
        assert!(Instant::now() < deadline, "never {what}: {seen:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_up_down_errors_and_round_trips() {
    let mut redis = Redis::start();
    let http = default_http(&format!("sessions_redis redis://127.0.0.1:{};", redis.port));
    let ng = Nginx::start_template(&main_conf(&site(&http, METRICS), 2), 2);
    let p = ng.port;

    // Before any exchange: the family is there, the gauge has no sample yet.
    let m = scrape(p);
    assert!(!m.contains_key("nginx_sessions_redis_up"), "{m:#?}");
    assert_eq!(value(&m, "nginx_sessions_redis_errors_total"), 0);
    assert!(!m.contains_key("nginx_sessions_stored"), "no table gauges with Redis: {m:#?}");

    let mut pids = BTreeSet::new();
    let mut new = 0;
    while new < 4 || pids.len() < 2 {
        assert!(new < 200, "requests never reached the second worker");
        let r = Req::get("/index.html").send(p);
        assert_eq!(r.st(), "new", "{r}");
        pids.insert(r.pid().to_string());
        new += 1;
    }
    let m = scrape(p);
    assert_eq!(value(&m, "nginx_sessions_redis_up"), 1, "{m:#?}");
    assert_eq!(value(&m, "nginx_sessions_redis_errors_total"), 0);
    assert_eq!(requests(&m, "new"), new);
    let h = "nginx_sessions_redis_duration_seconds";
    let count = value(&m, &format!("{h}_count"));
    // One SET NX per new session, plus one fetch of the cluster's binding key by each
    // worker on its first request (the secret and name are configured: no identity).
    let fetches = pids.len() as u64;
    assert_eq!(count, new + fetches, "round trips for {new} new sessions: {m:#?}");
    assert_eq!(value(&m, &format!("{h}_bucket{{le=\"+Inf\"}}")), count);
    assert!(m[&format!("{h}_sum")] > 0.0, "{m:#?}");

    // Redis dies: requests answer "error", the gauge drops, errors are counted.
    redis.stop();
    let statuses = until(p, "an error status", |r| r.st() == "error");
    let errors = statuses.iter().filter(|s| *s == "error").count() as u64;
    let m = scrape(p);
    assert_eq!(value(&m, "nginx_sessions_redis_up"), 0, "{m:#?}");
    assert!(value(&m, "nginx_sessions_redis_errors_total") >= 1, "{m:#?}");
    assert_eq!(requests(&m, "error"), errors, "{m:#?}");
    assert_eq!(requests(&m, "new"), new + (statuses.len() as u64 - errors));

    // Redis is back: once both workers have talked to it again, the gauge is 1 again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        Req::get("/index.html").send(p);
        if scrape(p).get("nginx_sessions_redis_up") == Some(&1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "redis_up never came back: {:#?}", scrape(p));
        thread::sleep(Duration::from_millis(100));
    }
    ng.check_logs();
}

#[test]
fn bad_placement_and_arguments_fail_nginx_t() {
    let location = |d: &str| {
        format!(
            "server {{ listen 127.0.0.1:%%PORT%%; location / {{ sessions on; }}\n \
             location = /metrics {{\n {d}\n }} }}"
        )
    };
    for (body, why) in [
        (location("sessions_metrics on; # BAD"), "invalid number of arguments"),
        (location("sessions_metrics;\n sessions_metrics; # BAD"), "is duplicate"),
        (
            "server { listen 127.0.0.1:%%PORT%%;\n sessions_metrics; # BAD\n }".to_string(),
            "is not allowed here",
        ),
        ("sessions_metrics; # BAD".to_string(), "is not allowed here"),
    ] {
        let t = nginx_t_http(&body);
        t.assert_emerg(Some(line_of(&t.conf_text, "# BAD")));
        assert!(t.stderr.contains(why), "expected {why:?}:\n{}", t.stderr);
        assert!(t.stderr.contains("\"sessions_metrics\""), "{}", t.stderr);
    }
    nginx_t_http(&location("sessions_metrics;")).assert_ok();
}
