//! Shared-memory flood: a small zone, sessions in use, then a flood of cookie-less clients
//! that never come back. In-use sessions survive, no 5xx, no log flood, new sessions still
//! start afterwards.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

const FLOOD: usize = 30_000;
const THREADS: usize = 4;

#[test]
fn zone_flood_keeps_sessions_in_use() {
    let ng = Nginx::site("sessions_zone flood:1m;");

    // 20 sessions, each used twice (confirmed), from two client addresses
    let mut sessions = Vec::new();
    for i in 0..20 {
        let ip = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
        let v = new_session(ng.port, Req::get("/index.html").from(ip));
        assert_valid(ng.port, Req::get("/index.html").from(ip), &v);
        assert_valid(ng.port, Req::get("/index.html").from(ip), &v);
        sessions.push((ip, v));
    }
    let log_before = ng.error_log_lines();

    let port = ng.port;
    let deadline = Instant::now() + Duration::from_secs(120);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut conn = Conn::from(port, "127.0.0.9");
                let req = Req::get("/index.html");
                let mut new = 0usize;
                let mut ids = std::collections::HashSet::new();
                let mut first = String::new();
                for i in 0..FLOOD / THREADS {
                    assert!(Instant::now() < deadline, "flood thread {t} too slow at {i}");
                    let r = conn.send(&req);
                    assert!(r.status < 500, "5xx during flood: {r}");
                    assert_eq!(r.status, 200, "{r}");
                    if r.st() == "new" && r.set_cookies(SID).len() == 1 {
                        new += 1;
                    }
                    if i % 100 == 0 {
                        ids.insert(r.id().to_string());
                    }
                    if i == 0 {
                        first = r.sid();
                    }
                }
                (new, ids.len(), first)
            })
        })
        .collect();
    let mut total_new = 0;
    let mut firsts = Vec::new();
    for h in handles {
        let (n, distinct, first) = h.join().unwrap();
        total_new += n;
        assert!(distinct > 1);
        firsts.push(first);
    }
    assert_eq!(total_new, FLOOD, "every cookie-less request must start a session");

    // the sessions in use survived the flood
    for (ip, v) in &sessions {
        let r = Req::get("/index.html").from(ip).sid(v).send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "valid", "session in use was pushed out by the flood: {r}");
    }
    // the flood really filled the zone: the oldest never-returned sessions were evicted
    let evicted = firsts
        .iter()
        .filter(|v| Req::get("/index.html").from("127.0.0.9").sid(v).send(ng.port).st() != "valid")
        .count();
    assert!(evicted > 0, "no flood session was evicted: 30000 sessions fit in 1m?");
    // new sessions still work after the flood
    for _ in 0..5 {
        let v = new_session(ng.port, Req::get("/index.html"));
        assert_valid(ng.port, Req::get("/index.html"), &v);
    }
    let added = ng.error_log_since(log_before);
    assert!(
        added.len() <= 30,
        "error.log grew by {} lines during the flood:\n{}",
        added.len(),
        added.join("\n")
    );
}

/// A full zone keeps serving: more sessions than fit, each confirmed once, no 5xx.
#[test]
fn full_zone_keeps_serving() {
    let ng = Nginx::site("sessions_zone tiny:128k;");
    let mut conn = Conn::new(ng.port);
    let mut last = Vec::new();
    for i in 0..6000 {
        let r = conn.send(&Req::get("/index.html"));
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "new", "{r}");
        let v = r.sid();
        if i >= 5990 {
            last.push(v);
        }
    }
    // the most recent sessions are there
    for v in &last {
        assert_valid(ng.port, Req::get("/index.html"), v);
    }
}

/// A worker killed with SIGKILL in the middle of traffic (possibly holding the zone's
/// lock): the master respawns it, nothing deadlocks, sessions survive, new ones start.
#[test]
fn worker_killed_under_load_recovers() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut ng = Nginx::site("sessions_zone crash:1m;");
    ng.allow_log("exited on signal 9");
    ng.allow_log("was locked by");
    let sessions: Vec<String> = (0..10)
        .map(|_| {
            let v = new_session(ng.port, Req::get("/index.html"));
            assert_valid(ng.port, Req::get("/index.html"), &v);
            v
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let port = ng.port;
    let load: Vec<_> = (0..3)
        .map(|i| {
            let (stop, ok) = (stop.clone(), ok.clone());
            let v = sessions[i].clone();
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    // fresh connections; the killed worker's connections may fail
                    let req = if i == 0 {
                        Req::get("/index.html").sid(&v)
                    } else {
                        Req::get("/index.html")
                    };
                    if let Ok(r) = req.try_send(port) {
                        assert!(r.status < 500, "5xx around a worker crash: {r}");
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(300));
    let before = ng.worker_pids();
    let victim = *before.iter().next().unwrap();
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = ng.worker_pids();
        if now.len() == ng.workers && !now.contains(&victim) {
            break;
        }
        assert!(Instant::now() < deadline, "worker {victim} not respawned: {now:?}");
        thread::sleep(Duration::from_millis(20));
    }
    let ok_at_respawn = ok.load(Ordering::SeqCst);
    // traffic keeps flowing after the respawn
    let t = Instant::now();
    while ok.load(Ordering::SeqCst) < ok_at_respawn + 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "traffic stalled after the respawn");
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    for h in load {
        h.join().unwrap();
    }
    for v in &sessions {
        assert_valid(ng.port, Req::get("/index.html"), v);
    }
    for _ in 0..10 {
        let v = new_session(ng.port, Req::get("/index.html"));
        assert_valid(ng.port, Req::get("/index.html"), &v);
    }
}

/// Issue 8, finding 1: clients that return each cookie once used to fill the whole table
/// with "in use" records, after which every newcomer was evicted by the next one. In-use
/// records now hold at most 80 % of the zone, so a newcomer outlives a fifth of its
/// capacity of newer arrivals; the evictions are reported in one `[warn]` line.
#[test]
fn clients_returning_each_cookie_once_do_not_lock_newcomers_out() {
    let ng = Nginx::site("sessions_zone small:32k;");
    let mut conn = Conn::from(ng.port, "127.0.0.9");
    for _ in 0..450 {
        let r = conn.send(&Req::get("/index.html"));
        assert_eq!(r.st(), "new", "{r}");
        let r = conn.send(&Req::get("/index.html").sid(&r.sid()));
        assert_eq!(r.st(), "valid", "{r}");
    }
    let a = new_session(ng.port, Req::get("/index.html"));
    for _ in 0..5 {
        new_session(ng.port, Req::get("/index.html"));
    }
    assert_valid(ng.port, Req::get("/index.html"), &a);

    let log = ng.error_log();
    let reports: Vec<&str> =
        log.lines().filter(|l| l.contains("sessions: zone \"small\" evicted")).collect();
    assert_eq!(reports.len(), 1, "one eviction report in the first minute:\n{log}");
    let line = reports[0];
    assert!(line.contains("[warn]"), "{line}");
    assert!(line.contains(" sessions in the last ") && line.contains(" had been idle "), "{line}");
    assert!(line.contains("idle") && line.contains("(zone too small for the traffic?)"), "{line}");
    ng.check_logs();
}
