//! `sessions_redis_timeout` bounds a whole command (connect, write, the complete reply),
//! however slowly Redis drips its answer, and the commands of one request together stay
//! within twice the timeout. Redis is a fake here (a std `TcpListener` on loopback) that
//! keeps sessions in a map and can send every reply one byte at a time.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const UNAVAILABLE: &str = "is unavailable";
const IDENTITY_KEY: &str = "ngx_sessions:identity";
/// What the fake hands out as the shared random identity: 32 bytes of secret, then a
/// 16-byte cookie name.
const FAKE_IDENTITY: &[u8; 48] = b"fake-redis-secret-0123456789abcdFakeRedisCookie1";
/// The key the module keeps its binding key under, and the fake's binding key.
const BINDING_KEY_KEY: &str = "ngx_sessions:binding_key";
const FAKE_BINDING_KEY: &[u8; 16] = b"fake-binding-key";
const FAKE_COOKIE_NAME: &str = "FakeRedisCookie1";
/// The timeout configured in every test here, and what a request may take in all.
const TIMEOUT: Duration = Duration::from_millis(500);
const REQUEST_LIMIT: Duration = Duration::from_millis(1600);

/// What the fake Redis does; shared with its connection threads.
#[derive(Default)]
struct FakeState {
    /// Milliseconds between two bytes of a reply (0: the whole reply at once).
    drip_ms: AtomicU64,
    /// The same for the reply to the identity script, when not 0.
    identity_drip_ms: AtomicU64,
    /// `SET ... NX` answers nil, as if every new ID were taken.
    ids_taken: AtomicBool,
    store: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    /// `SET` commands received.
    sets: AtomicUsize,
    /// Connections the client closed (NGINX closes a connection only when its command
    /// failed, or at shutdown).
    closed: AtomicUsize,
}

/// A Redis that understands the module's commands well enough for sessions to work,
/// and answers as slowly as it is told.
struct FakeRedis {
    port: u16,
    state: Arc<FakeState>,
}

impl FakeRedis {
    fn start() -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake Redis");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(FakeState::default());
        let shared = Arc::clone(&state);
        // The listener thread lives until the test process ends (connections only come
        // from the test's NGINX, which is gone by then).
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                thread::spawn(move || serve(stream, &state));
            }
        });
        FakeRedis { port, state }
    }

    fn drip(&self, ms: u64) {
        self.state.drip_ms.store(ms, Ordering::SeqCst);
    }

    fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// `sessions_redis` to the fake with a 500 ms timeout, plus `extra`.
    fn http(&self, extra: &str) -> String {
        format!(
            "sessions_redis redis://127.0.0.1:{};\n    sessions_redis_timeout {}ms;\n    {extra}",
            self.port,
            TIMEOUT.as_millis()
        )
    }
}

fn bulk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out
}

/// One connection: read a command, answer it (dripping as told), until the client closes.
fn serve(stream: TcpStream, state: &FakeState) {
    serve_commands(stream, state);
    state.closed.fetch_add(1, Ordering::SeqCst);
}

fn serve_commands(stream: TcpStream, state: &FakeState) {
    let mut out = stream.try_clone().expect("clone the fake's socket");
    let mut input = BufReader::new(stream);
    while let Ok(Resp::Array(Some(items))) = read_resp(&mut input) {
        let args: Vec<Vec<u8>> = items.iter().map(Resp::bytes).collect();
        let (reply, identity) = answer(&args, state);
        let ms = match state.identity_drip_ms.load(Ordering::SeqCst) {
            d if identity && d > 0 => d,
            _ => state.drip_ms.load(Ordering::SeqCst),
        };
        let sent = if ms == 0 {
            out.write_all(&reply)
        } else {
            reply.iter().enumerate().try_for_each(|(i, b)| {
                if i > 0 {
                    thread::sleep(Duration::from_millis(ms));
                }
                out.write_all(&[*b])
            })
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The reply to one command, and whether it is the identity script's.
fn answer(args: &[Vec<u8>], state: &FakeState) -> (Vec<u8>, bool) {
    let name = args.first().map(|a| a.to_ascii_uppercase()).unwrap_or_default();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let mut store = state.store.lock().unwrap();
    match &name[..] {
        b"GET" => (store.get(&arg(1)).map_or(b"$-1\r\n".to_vec(), |v| bulk(v)), false),
        b"SET" => {
            state.sets.fetch_add(1, Ordering::SeqCst);
            if state.ids_taken.load(Ordering::SeqCst) {
                return (b"$-1\r\n".to_vec(), false);
            }
            store.insert(arg(1), arg(2));
            (b"+OK\r\n".to_vec(), false)
        }
        b"EXISTS" => {
            ((if store.contains_key(&arg(1)) { ":1\r\n" } else { ":0\r\n" }).into(), false)
        }
        // The shared-state script: the binding key, then the identity when it is asked for
        // (two keys). Only the identity's reply counts as "the identity script's".
        b"EVAL" if arg(3) == BINDING_KEY_KEY.as_bytes() => {
            let with_identity = arg(4) == IDENTITY_KEY.as_bytes();
            let mut value = FAKE_BINDING_KEY.to_vec();
            if with_identity {
                value.extend_from_slice(FAKE_IDENTITY);
            }
            (bulk(&value), with_identity)
        }
        // The replace script (DEL + SET NX, with 2 or 3 keys) answers like SET; the
        // compare-and-set, 1.
        b"EVAL" if String::from_utf8_lossy(&arg(1)).contains("'DEL'") => {
            let keys: usize = String::from_utf8_lossy(&arg(2)).parse().unwrap_or(2);
            store.insert(arg(4), arg(3 + keys));
            (b"+OK\r\n".to_vec(), false)
        }
        b"EVAL" => (b":1\r\n".to_vec(), false),
        _ => (b"-ERR unknown command\r\n".to_vec(), false),
    }
}

/// Sends `req` and times it; a request that gets no answer within the client's I/O
/// timeout fails the test.
fn timed(req: &Req, port: u16) -> (Response, Duration) {
    let t = Instant::now();
    let r = req.try_send(port).unwrap_or_else(|e| {
        panic!("no answer after {:?} (Redis timeout {TIMEOUT:?}): {e}", t.elapsed())
    });
    let took = t.elapsed();
    eprintln!("{} {}: {} after {took:?}", req.method, req.path, r.st());
    (r, took)
}

/// Answered `error` (no Set-Cookie) within the request limit.
fn assert_error_in_time(r: &Response, took: Duration) {
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "error", "{r}");
    assert!(r.headers_all("Set-Cookie").is_empty(), "no Set-Cookie on error: {r}");
    assert!(
        took < REQUEST_LIMIT,
        "answered after {took:?}: a {TIMEOUT:?} timeout allows at most {REQUEST_LIMIT:?}"
    );
}

/// Polls until `cond` holds (at most 5 s).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The breaker's log lines: one per worker at most, each for a timeout.
fn assert_timeout_lines(ng: &Nginx) {
    let log = ng.error_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(UNAVAILABLE)).collect();
    assert!(
        (1..=ng.workers).contains(&lines.len()),
        "one line per worker that saw the timeout:\n{log}"
    );
    for l in lines {
        assert!(l.contains("[error]") && l.contains("timed out"), "{l}");
    }
}

/// A returning client whose record drips in (48 bytes, 4.7 s at 100 ms a byte) is answered
/// `error` when the GET's 500 ms are up, however often a byte arrives; the connection is
/// closed mid-reply, and the next requests are served cleanly (never from a half-read
/// reply).
#[test]
fn dripping_reply_is_cut_at_the_timeout() {
    let redis = FakeRedis::start();
    let mut ng = Nginx::start(&site(&default_http(&redis.http("")), ""));
    ng.allow_log(UNAVAILABLE);
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);

    redis.drip(100);
    let (r, took) = timed(&Req::get("/index.html").sid(&v), ng.port);
    assert_error_in_time(&r, took);
    assert!(took >= TIMEOUT - Duration::from_millis(100), "did not wait for Redis: {took:?}");
    wait_for("NGINX to close the connection whose reply timed out", || redis.closed() >= 1);

    // Redis answers promptly again: after the breaker's retry interval the session is
    // valid on both workers (the one that timed out included); nothing in between is
    // anything but `error`.
    redis.drip(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut valid_on = HashSet::new();
    while valid_on.len() < ng.workers {
        let (r, took) = timed(&Req::get("/index.html").sid(&v), ng.port);
        assert!(took < REQUEST_LIMIT, "{took:?}: {r}");
        match r.st() {
            "valid" => {
                assert!(r.no_cookie(SID), "{r}");
                valid_on.insert(r.pid().to_string());
            }
            "error" => assert!(r.headers_all("Set-Cookie").is_empty(), "{r}"),
            _ => panic!("the timeout cost the client its session: {r}"),
        }
        assert!(Instant::now() < deadline, "not valid again on every worker: {r}");
        thread::sleep(Duration::from_millis(50));
    }
    assert_timeout_lines(&ng);
    ng.check_logs();
}

/// A fresh request with a random identity needs two round trips (the identity script,
/// then `SET NX`); every reply drips: `error` within the limit.
#[test]
fn fresh_request_with_two_round_trips_is_bounded() {
    let redis = FakeRedis::start();
    redis.drip(100);
    let mut ng = Nginx::start(&site(&redis.http(""), ""));
    ng.allow_log(UNAVAILABLE);
    let (r, took) = timed(&Req::get("/index.html"), ng.port);
    assert_error_in_time(&r, took);
    wait_for("NGINX to close the connection whose reply timed out", || redis.closed() >= 1);
    assert_timeout_lines(&ng);
    ng.check_logs();
}

/// Each reply arrives within the timeout (the identity in ~0.32 s, each `SET NX` "taken"
/// in ~0.4 s, so the module draws new IDs up to 4 times: 1.9 s in all): only the
/// request's deadline, twice the timeout, stops it. The second `SET` gets what is left
/// (~0.27 s) and is cut.
#[test]
fn commands_of_one_request_share_twice_the_timeout() {
    let redis = FakeRedis::start();
    redis.state.identity_drip_ms.store(6, Ordering::SeqCst);
    redis.state.ids_taken.store(true, Ordering::SeqCst);
    redis.drip(100);
    let mut ng = Nginx::start(&site(&redis.http(""), ""));
    ng.allow_log(UNAVAILABLE);
    let (r, took) = timed(&Req::get("/index.html"), ng.port);
    assert_error_in_time(&r, took);
    assert!(took >= 2 * TIMEOUT - Duration::from_millis(150), "gave up early: {took:?}");
    let sets = redis.state.sets.load(Ordering::SeqCst);
    assert_eq!(sets, 2, "SET commands within twice the timeout");
    wait_for("NGINX to close the connection whose reply timed out", || redis.closed() >= 1);
    assert_timeout_lines(&ng);

    // Redis is fine again: after the retry interval, new sessions start on it.
    redis.state.ids_taken.store(false, Ordering::SeqCst);
    redis.state.identity_drip_ms.store(0, Ordering::SeqCst);
    redis.drip(0);
    wait_for("a new session once Redis answers", || {
        let r = Req::get("/index.html").send(ng.port);
        assert!(["new", "error"].contains(&r.st()), "{r}");
        r.st() == "new" && r.set_cookies(FAKE_COOKIE_NAME).len() == 1
    });
    ng.check_logs();
}
