//! Redis Sentinel with real processes on loopback: a master, a replica (`--replicaof`) and
//! one sentinel (quorum 1, `down-after-milliseconds 1000`). The master is SIGKILLed: while
//! the sentinel promotes the replica every request is `valid` or `error` (nobody is logged
//! out), and shortly after the promotion sessions are `valid` again and new ones land on
//! the new master. Also: a first sentinel that is down, and configuration errors.

mod common;

use common::*;
use std::io::{BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const MASTER: &str = "m";

/// A master, its replica and a sentinel watching them.
struct Cluster {
    master: Redis,
    replica: Redis,
    sentinel_port: u16,
    sentinel: Child,
    _dir: TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let master = Redis::start();
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        // Replication up before the sentinel starts, so its first INFO lists the replica.
        poll_until("replication up", Duration::from_secs(10), || {
            replica.cmd(&["INFO", "replication"]).text().contains("master_link_status:up")
        });
        let dir = TempDir::new("sentinel");
        let sentinel_port = free_port();
        // The sentinel rewrites its configuration file: it lives in a directory of its own.
        let conf = dir.path.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 2000\n",
                dir.path.display(),
                master.port
            ),
        )
        .unwrap();
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server --sentinel");
        let cluster = Cluster { master, replica, sentinel_port, sentinel, _dir: dir };
        // The sentinel knows the replica (it can only promote one it knows).
        poll_until("the sentinel sees the replica", Duration::from_secs(15), || {
            cluster
                .sentinel_cmd(&["SENTINEL", "replicas", MASTER])
                .is_ok_and(|r| flat(&r).contains(&format!("127.0.0.1:{}", cluster.replica.port)))
        });
        cluster
    }

    fn sentinel_cmd(&self, args: &[&str]) -> std::io::Result<Resp> {
        let mut s = connect(self.sentinel_port, None)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        s.write_all(&out)?;
        read_resp(&mut BufReader::new(s))
    }

    /// The port the sentinel gives for the master.
    fn master_port(&self) -> Option<u16> {
        let r = self.sentinel_cmd(&["SENTINEL", "get-master-addr-by-name", MASTER]).ok()?;
        r.items().get(1)?.text().parse().ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}

/// A reply's strings, space-separated (arrays flattened).
fn flat(r: &Resp) -> String {
    match r {
        Resp::Array(Some(items)) => items.iter().map(flat).collect::<Vec<_>>().join(" "),
        Resp::Simple(s) | Resp::Error(s) => s.clone(),
        Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Resp::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

fn poll_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn dbsize(redis: &Redis) -> i64 {
    redis.cmd(&["DBSIZE"]).int()
}

/// The site on Redis through Sentinel; the URL's host and port are unused.
fn site_with(sentinels: &str, extra: &str) -> Nginx {
    Nginx::start(&site(
        &default_http(&format!(
            "sessions_redis redis://192.0.2.1:1/0;\n    sessions_redis_sentinel {MASTER} {sentinels};\n    {extra}"
        )),
        "",
    ))
}

/// Waits until every worker has found the master (requests answer `new`, not `error`),
/// then deletes the sessions that took.
fn until_ready(ng: &Nginx, redis: &Redis) {
    let mut pids = std::collections::HashSet::new();
    poll_until("every worker answers new", Duration::from_secs(10), || {
        let r = Req::get("/index.html").send(ng.port);
        if r.st() == "new" {
            pids.insert(r.pid().to_string());
        } else {
            assert_eq!(r.st(), "error", "{r}");
        }
        pids.len() == ng.workers
    });
    let _ = redis;
}

/// A new session's cookie value.
fn new_session(ng: &Nginx) -> String {
    let r = Req::get("/index.html").send(ng.port);
    assert_eq!(r.st(), "new", "{r}");
    r.set_cookies(SID).first().expect("a Set-Cookie").value.clone()
}

#[test]
fn failover_logs_nobody_out_and_sessions_follow_the_new_master() {
    failover_with("");
}

/// Without pooled connections, the master's death shows as a failed connect, not as a
/// closed connection: it must start the lookup too.
#[test]
fn failover_without_pooled_connections() {
    failover_with("sessions_redis_keepalive 0;");
}

fn failover_with(extra: &str) {
    let mut cluster = Cluster::start();
    let mut ng = site_with(&format!("127.0.0.1:{}", cluster.sentinel_port), extra);
    until_ready(&ng, &cluster.master);

    let cookies: Vec<String> = (0..12).map(|_| new_session(&ng)).collect();
    for c in &cookies {
        let r = Req::get("/index.html").sid(c).send(ng.port);
        assert_eq!(r.st(), "valid", "{r}");
    }
    // Everything is on the replica before the master dies.
    let acked = cluster.master.cmd(&["WAIT", "1", "5000"]).int();
    assert_eq!(acked, 1, "the replica did not acknowledge the writes");
    let old_port = cluster.master.port;
    let new_port = cluster.replica.port;

    let killed = Instant::now();
    cluster.master.stop();
    let mut promoted: Option<Instant> = None;
    let mut first_valid: Option<Instant> = None;
    let mut back: Option<Instant> = None;
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut valid_in_a_row = 0;
    let deadline = killed + Duration::from_secs(40);
    let mut i = 0;
    while back.is_none() {
        assert!(Instant::now() < deadline, "sessions did not come back: {statuses:?}");
        let c = &cookies[i % cookies.len()];
        i += 1;
        let r = Req::get("/index.html").sid(c).send(ng.port);
        assert!(
            r.st() == "valid" || r.st() == "error",
            "a session was lost during the failover: {r}"
        );
        *statuses.entry(r.st().to_string()).or_default() += 1;
        if promoted.is_none() && cluster.master_port() == Some(new_port) {
            promoted = Some(Instant::now());
        }
        // Back once both workers (any run of requests on fresh connections) say valid.
        if r.st() == "valid" && promoted.is_some() {
            first_valid.get_or_insert_with(Instant::now);
            valid_in_a_row += 1;
            if valid_in_a_row >= 10 {
                back = Some(Instant::now());
            }
        } else {
            valid_in_a_row = 0;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let promoted = promoted.unwrap();
    let back = back.unwrap();
    let after_promotion = back.saturating_duration_since(promoted);
    eprintln!(
        "failover: kill -> promotion {:?}, kill -> first valid {:?}, kill -> 10 valid in a row {:?} ({:?} after the promotion); statuses {statuses:?}",
        promoted - killed,
        first_valid.map(|t| t - killed),
        back - killed,
        after_promotion
    );
    assert!(
        after_promotion <= Duration::from_secs(2),
        "sessions came back {after_promotion:?} after the promotion"
    );
    assert_ne!(old_port, new_port);

    // Every session is still there, and new ones land on the new master.
    for c in &cookies {
        let r = Req::get("/index.html").sid(c).send(ng.port);
        assert_eq!(r.st(), "valid", "{r}");
    }
    let before = dbsize(&cluster.replica);
    for _ in 0..5 {
        new_session(&ng);
    }
    assert_eq!(dbsize(&cluster.replica), before + 5, "new sessions are not on the new master");
    let log = ng.error_log();
    assert!(
        log.contains(&format!("is at 127.0.0.1:{new_port} (was 127.0.0.1:{old_port})")),
        "{log}"
    );
    ng.stop();
}

#[test]
fn switchover_readonly_old_master_is_left_and_its_pooled_connections_dropped() {
    let cluster = Cluster::start();
    let mut ng = site_with(&format!("127.0.0.1:{}", cluster.sentinel_port), "");
    until_ready(&ng, &cluster.master);
    let cookies: Vec<String> = (0..6).map(|_| new_session(&ng)).collect();
    // Pooled connections to the master exist in both workers.
    for c in &cookies {
        assert_eq!(Req::get("/index.html").sid(c).send(ng.port).st(), "valid");
    }
    assert_eq!(cluster.master.cmd(&["WAIT", "1", "5000"]).int(), 1);
    // A graceful switchover: the old master stays up, as a read-only replica, so only its
    // READONLY answers (not a broken connection) say that the master moved.
    // Right after start the sentinel may not have a fresh enough view of the replica yet
    // (NOGOODSLAVE): ask again until it accepts.
    poll_until("the sentinel accepts the failover", Duration::from_secs(20), || {
        let r = cluster.sentinel_cmd(&["SENTINEL", "FAILOVER", MASTER]).unwrap();
        assert!(!r.is_error() || flat(&r).contains("NOGOODSLAVE"), "{r:?}");
        !r.is_error()
    });
    let new_port = cluster.replica.port;
    poll_until("the sentinel names the new master", Duration::from_secs(20), || {
        cluster.master_port() == Some(new_port)
    });
    poll_until("the old master is a replica", Duration::from_secs(20), || {
        // It drops its clients as it changes role: a reset connection is "not yet".
        let role = cluster.master.pipeline(&[&["ROLE"]]).ok();
        role.is_some_and(|r| flat(&r[0]).starts_with("slave"))
    });
    // Reads still work on the old master, now a replica: a worker notices the move at
    // its first write there (READONLY: that request answers `error`), then finds the new
    // master. New sessions land there, never on the read-only old one; existing sessions
    // are `valid` or `error` throughout.
    let before = dbsize(&cluster.replica);
    let (mut news, mut new_in_a_row, mut i) = (0, 0, 0);
    poll_until("new sessions on the new master", Duration::from_secs(10), || {
        let c = &cookies[i % cookies.len()];
        i += 1;
        let r = Req::get("/index.html").sid(c).send(ng.port);
        assert!(r.st() == "valid" || r.st() == "error", "{r}");
        let r = Req::get("/index.html").send(ng.port);
        match r.st() {
            "new" => (news, new_in_a_row) = (news + 1, new_in_a_row + 1),
            "error" => new_in_a_row = 0,
            _ => panic!("{r}"),
        }
        new_in_a_row >= 12
    });
    assert_eq!(dbsize(&cluster.replica), before + news, "a new session is not on the new master");
    for c in &cookies {
        assert_eq!(Req::get("/index.html").sid(c).send(ng.port).st(), "valid");
    }
    let log = ng.error_log();
    assert!(log.contains(&format!("is at 127.0.0.1:{new_port}")), "{log}");
    ng.stop();
}

#[test]
fn a_dead_first_sentinel_costs_nothing_but_its_turn() {
    let cluster = Cluster::start();
    let dead = free_port();
    // A sentinel that does not know the master's name counts as failed too.
    let dir = TempDir::new("sentinel-unaware");
    let unaware_port = free_port();
    let conf = dir.path.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!("port {unaware_port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n", dir.path.display()),
    )
    .unwrap();
    let mut unaware = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server --sentinel");
    poll_until("the unaware sentinel listens", Duration::from_secs(10), || {
        connect(unaware_port, None).is_ok()
    });
    let sentinels =
        format!("127.0.0.1:{dead} 127.0.0.1:{unaware_port} 127.0.0.1:{}", cluster.sentinel_port);
    let mut ng = site_with(&sentinels, "");
    until_ready(&ng, &cluster.master);
    let before = dbsize(&cluster.master);
    let c = new_session(&ng);
    let r = Req::get("/index.html").sid(&c).send(ng.port);
    assert_eq!(r.st(), "valid", "{r}");
    assert_eq!(dbsize(&cluster.master), before + 1, "the session is not on the master");
    let log = ng.error_log();
    let found = format!("sentinel 127.0.0.1:{} says the Redis master", cluster.sentinel_port);
    assert!(log.contains(&found), "{log}");
    assert!(log.contains(&format!("is at 127.0.0.1:{}", cluster.master.port)), "{log}");
    // New workers (a reload) find the master again; the session goes on.
    ng.reload();
    until_ready(&ng, &cluster.master);
    assert_eq!(Req::get("/index.html").sid(&c).send(ng.port).st(), "valid");
    ng.stop();
    let _ = unaware.kill();
    let _ = unaware.wait();
}

/// A DNS server on loopback that answers every `A` question with 127.0.0.1 (and every
/// other question with no answer); counts the questions.
struct FakeDns {
    port: u16,
    questions: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeDns {
    fn start() -> FakeDns {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let questions = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (questions.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                if n < 12 {
                    continue;
                }
                q.fetch_add(1, Ordering::Relaxed);
                // The question: labels up to the root, then QTYPE and QCLASS.
                let mut end = 12;
                while end < n && buf[end] != 0 {
                    end += 1 + buf[end] as usize;
                }
                let qend = (end + 5).min(n);
                let is_a = end + 2 < n && buf[end + 1] == 0 && buf[end + 2] == 1;
                let mut out = buf[..2].to_vec();
                out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
                out.extend_from_slice(&buf[12..qend]);
                if is_a {
                    out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
                }
                let _ = socket.send_to(&out, from);
            }
        });
        FakeDns { port, questions, stop, thread: Some(thread) }
    }

    fn questions(&self) -> usize {
        self.questions.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn host_names_from_sentinels_are_resolved_with_the_http_resolver() {
    let master = Redis::start();
    let dir = TempDir::new("sentinel-names");
    let sentinel_port = free_port();
    let conf = dir.path.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
             sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n\
             sentinel monitor {MASTER} localhost {} 1\n",
            dir.path.display(),
            master.port
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server --sentinel");
    let cluster_sentinel = |args: &[&str]| -> Option<Resp> {
        let mut s = connect(sentinel_port, None).ok()?;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        s.write_all(&out).ok()?;
        read_resp(&mut BufReader::new(s)).ok()
    };
    poll_until("the sentinel names the master by host name", Duration::from_secs(10), || {
        cluster_sentinel(&["SENTINEL", "get-master-addr-by-name", MASTER])
            .is_some_and(|r| flat(&r).starts_with("localhost "))
    });
    let http = |extra: &str| {
        site(
            &default_http(&format!(
                "sessions_redis redis://127.0.0.1/0;\n    \
                 sessions_redis_sentinel {MASTER} 127.0.0.1:{sentinel_port};\n    {extra}"
            )),
            "",
        )
    };

    // Without a resolver: one log line per failed lookup series, requests answer error.
    let mut ng = Nginx::start(&http(""));
    poll_until("the log says why", Duration::from_secs(10), || {
        ng.error_log().contains("gave the host name \"localhost\"")
    });
    assert_eq!(Req::get("/index.html").send(ng.port).st(), "error");
    // Lookups are retried every 250 ms: let a few go by, the line is not repeated.
    thread::sleep(Duration::from_millis(800));
    let lines = ng.error_log().matches("no \"resolver\" is set at the http level").count();
    assert!((1..=ng.workers).contains(&lines), "{lines} lines:\n{}", ng.error_log());
    ng.stop();

    // With one: the name is resolved and the master confirmed.
    let dns = FakeDns::start();
    let mut ng = Nginx::start(&http(&format!("resolver 127.0.0.1:{} ipv6=off;", dns.port)));
    until_ready(&ng, &master);
    let before = dbsize(&master);
    let c = new_session(&ng);
    assert_eq!(Req::get("/index.html").sid(&c).send(ng.port).st(), "valid");
    assert_eq!(dbsize(&master), before + 1);
    assert!(dns.questions() >= 1, "the resolver was not asked");
    let log = ng.error_log();
    assert!(log.contains(&format!("is at 127.0.0.1:{}", master.port)), "{log}");
    ng.stop();
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}

#[test]
fn sentinel_credentials_and_the_url_database_apply() {
    let master = Redis::start_with(&["--requirepass", "datapw"]);
    let dir = TempDir::new("sentinel-auth");
    let sentinel_port = free_port();
    let conf = dir.path.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndaemonize no\ndir {}\nrequirepass sentpw\n\
             sentinel monitor {MASTER} 127.0.0.1 {} 1\nsentinel auth-pass {MASTER} datapw\n",
            dir.path.display(),
            master.port
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server --sentinel");
    poll_until("the sentinel answers", Duration::from_secs(10), || {
        connect(sentinel_port, None).is_ok()
    });
    let mut ng = Nginx::start(&site(
        &default_http(&format!(
            "sessions_redis redis://:datapw@localhost/3;\n    \
             sessions_redis_sentinel {MASTER} 127.0.0.1:{sentinel_port};\n    \
             sessions_redis_sentinel_password sentpw;"
        )),
        "",
    ));
    until_ready(&ng, &master);
    let c = new_session(&ng);
    assert_eq!(Req::get("/index.html").sid(&c).send(ng.port).st(), "valid");
    // A wrong sentinel password: the lookup fails, and the log line says why.
    let mut bad = Nginx::start(&site(
        &default_http(&format!(
            "sessions_redis redis://:datapw@localhost/3;\n    \
             sessions_redis_sentinel {MASTER} 127.0.0.1:{sentinel_port};\n    \
             sessions_redis_sentinel_password wrong;"
        )),
        "",
    ));
    poll_until("the failed lookup is logged", Duration::from_secs(10), || {
        bad.error_log().contains("no sentinel gave a reachable master")
    });
    let log = bad.error_log();
    assert!(log.contains(&format!("(last: 127.0.0.1:{sentinel_port}: WRONGPASS")), "{log}");
    assert_eq!(Req::get("/index.html").send(bad.port).st(), "error");
    bad.stop();
    let keys = master.pipeline(&[&["AUTH", "datapw"], &["SELECT", "3"], &["DBSIZE"]]).unwrap();
    assert!(keys[2].int() >= 2, "nothing in database 3: {keys:?}");
    ng.stop();
    let _ = sentinel.kill();
    let _ = sentinel.wait();
}

fn conf_with(directives: &str) -> String {
    default_http(&format!(
        "{directives}\n    server {{ listen 127.0.0.1:%%PORT%%; location / {{ sessions on; }} }}"
    ))
}

#[test]
fn bad_sentinel_directives_fail_nginx_t() {
    let url = "sessions_redis redis://127.0.0.1;";
    for bad in [
        format!("{url}\n    sessions_redis_sentinel m;"),
        format!("{url}\n    sessions_redis_sentinel m 127.0.0.1:0;"),
        format!("{url}\n    sessions_redis_sentinel m 127.0.0.1:x;"),
        format!("{url}\n    sessions_redis_sentinel m 127.0.0.1;\n    sessions_redis_sentinel m 127.0.0.1;"),
        format!("{url}\n    sessions_redis_sentinel m 127.0.0.1;\n    sessions_redis_sentinel_username u;"),
        format!("{url}\n    sessions_redis_sentinel_password p;"),
        "sessions_redis_sentinel m 127.0.0.1;".to_string(),
        "sessions_redis off;\n    sessions_redis_sentinel m 127.0.0.1;".to_string(),
    ] {
        let t = nginx_t_http(&conf_with(&bad));
        t.assert_emerg(None);
        assert!(t.stderr.contains("sessions_redis_sentinel"), "{bad}:\n{}", t.stderr);
    }
    // The URL's host is not resolved with Sentinel; the sentinels are.
    nginx_t_http(&conf_with(
        "sessions_redis redis://no-such-host.invalid:1/2;\n    \
         sessions_redis_sentinel m 127.0.0.1 [::1]:26380 127.0.0.2:26379;\n    \
         sessions_redis_sentinel_username u;\n    sessions_redis_sentinel_password p;",
    ))
    .assert_ok();
}
