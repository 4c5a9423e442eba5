//! The Redis store against a real `redis-server` (one per test, loopback, free port): key
//! names and TTLs, round trips, two NGINX instances sharing sessions and renewals, the
//! random identity shared through Redis, a stopped / killed / restarted Redis (status
//! `error`, no Set-Cookie, breaker, log lines), AUTH and SELECT, and bad URLs at `nginx -t`.

mod common;

use common::*;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufReader, Write};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const KEY_PREFIX: &str = "s:";
const IDENTITY_KEY: &str = "ngx_sessions:identity";
const BINDING_KEY: &str = "ngx_sessions:binding_key";
const UNAVAILABLE: &str = "is unavailable";
const AVAILABLE_AGAIN: &str = "is available again";

fn sleep_secs(s: f64) {
    thread::sleep(Duration::from_secs_f64(s));
}

/// `sessions_redis` to this fixture plus `extra`, with the test secret and name.
fn redis_http(redis: &Redis, extra: &str) -> String {
    default_http(&format!("sessions_redis redis://127.0.0.1:{};\n    {extra}", redis.port))
}

/// The standard site (2 workers) on Redis.
fn site_on(redis: &Redis, extra: &str) -> Nginx {
    Nginx::start(&site(&redis_http(redis, extra), ""))
}

/// All keys (KEYS * on db 0), sorted.
fn all_keys(redis: &Redis) -> Vec<String> {
    let mut v: Vec<String> = redis.cmd(&["KEYS", "*"]).items().iter().map(Resp::text).collect();
    v.sort();
    v
}

/// Session keys: every key but the identity and the binding key.
fn session_keys(redis: &Redis) -> Vec<String> {
    all_keys(redis).into_iter().filter(|k| k != IDENTITY_KEY && k != BINDING_KEY).collect()
}

/// Has every worker of `ng` make its first request, which also fetches the binding key,
/// so that command counts afterwards see only the sessions' own commands; the sessions
/// these requests started are deleted.
fn warm_up(redis: &Redis, ng: &Nginx) {
    let before = session_keys(redis);
    let mut pids = HashSet::new();
    for _ in 0..200 {
        if pids.len() == ng.workers {
            break;
        }
        let r = Req::get("/index.html").send(ng.port);
        assert_eq!(r.st(), "new", "{r}");
        pids.insert(r.pid().to_string());
    }
    assert_eq!(pids.len(), ng.workers, "not every worker answered: {pids:?}");
    for k in session_keys(redis).into_iter().filter(|k| !before.contains(k)) {
        redis.cmd(&["DEL", &k]);
    }
}

/// `s:<22 base64url characters>`.
fn assert_session_key(k: &str) {
    let suffix = k.strip_prefix(KEY_PREFIX).unwrap_or_else(|| panic!("foreign key {k:?}"));
    assert!(
        suffix.len() == 22
            && suffix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "key {k:?} is not s:<22 base64url>"
    );
}

/// Calls per command since the last CONFIG RESETSTAT (`cmdstat_get:calls=1,...`).
fn command_calls(redis: &Redis) -> BTreeMap<String, u64> {
    let info = redis.cmd(&["INFO", "commandstats"]).text();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// `INFO stats` `total_connections_received`.
fn connections_received(redis: &Redis) -> u64 {
    let info = redis.cmd(&["INFO", "stats"]).text();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("no total_connections_received in INFO stats")
}

fn reset_stats(redis: &Redis) {
    assert_eq!(redis.cmd(&["CONFIG", "RESETSTAT"]), Resp::Simple("OK".into()));
}

/// base64url (no padding) → bytes.
fn b64url_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {s:?}"),
        }
    };
    let (mut acc, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in s.bytes() {
        acc = (acc << 6) | val(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A request during an outage: answered, `error`, no Set-Cookie at all.
fn assert_error(r: &Response) {
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "error", "{r}");
    assert!(r.headers_all("Set-Cookie").is_empty(), "no Set-Cookie during an outage: {r}");
}

/// Sends SIGCONT to redis-server when dropped, so that a failed assertion never leaves it
/// stopped.
struct Stopped<'a>(&'a Redis);

impl<'a> Stopped<'a> {
    fn stop(redis: &'a Redis) -> Stopped<'a> {
        redis.signal(libc::SIGSTOP);
        Stopped(redis)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

// ---------------------------------------------------------------------------------------
// keys, TTLs, round trips
// ---------------------------------------------------------------------------------------

#[test]
fn sessions_live_in_redis_under_hashed_keys_with_ttl() {
    let redis = Redis::start();
    let ng = site_on(
        &redis,
        "sessions_idling_timeout 300s;\n sessions_rolling_timeout 600s;\n sessions_absolute_timeout 3600s;",
    );
    assert!(all_keys(&redis).is_empty());
    warm_up(&redis, &ng);

    // a new client: exactly one SET (NX EX), nothing read
    reset_stats(&redis);
    let v = new_session(ng.port, Req::get("/index.html"));
    let calls = command_calls(&redis);
    assert_eq!(calls.get("set"), Some(&1), "new session = one SET: {calls:?}");
    for c in ["get", "eval", "del"] {
        assert_eq!(calls.get(c), None, "new session must not {c}: {calls:?}");
    }

    // a returning client: exactly one GET (within the touch interval: no write)
    reset_stats(&redis);
    assert_valid(ng.port, Req::get("/index.html"), &v);
    let calls = command_calls(&redis);
    assert_eq!(calls.get("get"), Some(&1), "returning client = one GET: {calls:?}");
    for c in ["set", "eval", "del"] {
        assert_eq!(calls.get(c), None, "a valid request must not {c}: {calls:?}");
    }
    // on both workers (fresh connections spread with reuseport)
    for _ in 0..6 {
        assert_valid(ng.port, Req::get("/index.html"), &v);
    }

    let keys = session_keys(&redis);
    assert_eq!(keys.len(), 1, "one session, one key: {keys:?}");
    let all = all_keys(&redis);
    assert!(
        all.len() == 2 && all.contains(&BINDING_KEY.to_string()),
        "one session key and the binding key (no identity key with a configured secret and name): {all:?}"
    );
    let key = &keys[0];
    assert_session_key(key);
    let id = id_of(&v);
    let raw_hex = hex(&b64url_decode(id));
    assert!(!key.contains(id), "the key holds the cookie's ID: {key}");
    assert!(!key.ends_with(&raw_hex), "the key is the raw ID in hex, not a hash: {key}");
    let value = redis.cmd(&["GET", key]).bytes();
    assert!(
        !value.windows(id.len()).any(|w| w == id.as_bytes()),
        "the record holds the cookie's ID in clear"
    );
    let ttl = redis.cmd(&["TTL", key]).int();
    assert!(
        (290..=300).contains(&ttl),
        "TTL of a fresh session must be ~ the idle timeout 300: {ttl}"
    );

    // a second client: a second, different key
    let v2 = new_session(ng.port, Req::get("/index.html").from("127.0.0.2"));
    assert_ne!(id_of(&v2), id);
    let keys = session_keys(&redis);
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in &keys {
        assert_session_key(k);
        assert!(!k.contains(id_of(&v2)));
        let ttl = redis.cmd(&["TTL", k]).int();
        assert!(ttl > 0 && ttl <= 300, "{k}: TTL {ttl}");
    }
    assert!(!all_keys(&redis).iter().any(|k| k == IDENTITY_KEY));

    // a forged cookie (right format, wrong MAC) is rejected without a lookup
    reset_stats(&redis);
    let forged = format!("{}.{}", id, "A".repeat(22));
    let r = Req::get("/index.html").sid(&forged).send(ng.port);
    assert_eq!(r.st(), "invalid", "{r}");
    let c = r.one_cookie(SID);
    assert_ne!(c.id(), id);
    let calls = command_calls(&redis);
    assert_eq!(calls.get("get"), None, "a cookie that fails verification costs no GET: {calls:?}");
    assert_eq!(calls.get("set"), Some(&1), "{calls:?}");
    // the session itself is untouched
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

/// The TTL is min(idle left, absolute left): after a touch 3 s into a 12 s session with a
/// 10 s idle timeout, the absolute timeout is the nearer one.
#[test]
fn ttl_is_capped_by_absolute_timeout() {
    let redis = Redis::start();
    let ng = site_on(
        &redis,
        "sessions_idling_timeout 10s;\n sessions_rolling_timeout 12s;\n sessions_absolute_timeout 12s;",
    );
    warm_up(&redis, &ng);
    let v = new_session(ng.port, Req::get("/index.html"));
    let keys = session_keys(&redis);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl = redis.cmd(&["TTL", &keys[0]]).int();
    assert!((9..=10).contains(&ttl), "fresh session: TTL = idle 10: {ttl}");
    sleep_secs(3.2);
    reset_stats(&redis);
    assert_valid(ng.port, Req::get("/index.html"), &v);
    let calls = command_calls(&redis);
    assert_eq!(calls.get("eval"), Some(&1), "past the touch interval: GET + EVAL: {calls:?}");
    let ttl = redis.cmd(&["TTL", &keys[0]]).int();
    assert!(
        ttl > 0 && ttl <= 9,
        "TTL after the touch must be the absolute time left (<= 9), not idle 10: {ttl}"
    );
    assert_eq!(session_keys(&redis), keys, "a touch keeps the key");
}

// ---------------------------------------------------------------------------------------
// two instances sharing one Redis
// ---------------------------------------------------------------------------------------

const ROLLING_2S: &str =
    "sessions_idling_timeout 60s;\n sessions_rolling_timeout 2s;\n sessions_absolute_timeout 120s;";

#[test]
fn two_instances_share_sessions_renewals_and_destruction() {
    let redis = Redis::start();
    let a = site_on(&redis, ROLLING_2S);
    let b = site_on(&redis, ROLLING_2S);
    warm_up(&redis, &a);
    warm_up(&redis, &b);

    let v = new_session(a.port, Req::get("/index.html"));
    for _ in 0..3 {
        assert_valid(b.port, Req::get("/index.html"), &v);
        assert_valid(a.port, Req::get("/index.html"), &v);
    }
    let v_b = new_session(b.port, Req::get("/index.html"));
    assert_valid(a.port, Req::get("/index.html"), &v_b);

    // renewal on A: one GET + one EVAL (compare-and-set writing old and successor)
    sleep_secs(2.3);
    reset_stats(&redis);
    let r = Req::get("/index.html").sid(&v).send(a.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "renewed", "rolling 2s passed: {r}");
    let succ = r.sid();
    assert_cookie_format(&succ);
    assert_ne!(id_of(&succ), id_of(&v));
    assert_eq!(r.id(), id_of(&succ), "{r}");
    // (calls made inside the script count too: its GET and two SETs)
    let calls = command_calls(&redis);
    assert_eq!(calls.get("eval"), Some(&1), "renewal = GET + EVAL: {calls:?}");
    assert_eq!(calls.get("get"), Some(&2), "renewal = GET + EVAL(GET, SET, SET): {calls:?}");
    assert_eq!(calls.get("set"), Some(&2), "renewal = GET + EVAL(GET, SET, SET): {calls:?}");

    // the successor is valid on B; the old cookie on B (within the grace) gets the same
    // successor
    assert_valid(b.port, Req::get("/index.html"), &succ);
    for _ in 0..3 {
        let r = Req::get("/index.html").sid(&v).send(b.port);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "renewed", "old ID within grace on B: {r}");
        assert_eq!(r.one_cookie(SID).id(), id_of(&succ), "B must hand out A's successor: {r}");
        assert_eq!(r.id(), id_of(&succ), "{r}");
    }
    assert_valid(a.port, Req::get("/index.html"), &succ);
    for k in session_keys(&redis) {
        assert_session_key(&k);
        let ttl = redis.cmd(&["TTL", &k]).int();
        assert!(ttl > 0 && ttl <= 60, "{k}: TTL {ttl} must be within the idle timeout 60");
    }

    // a mismatch on A destroys the session for B too
    let r = Req::get("/index.html").ua("another-agent/9").sid(&succ).send(a.port);
    assert_eq!(r.st(), "mismatch", "{r}");
    assert_ne!(r.one_cookie(SID).id(), id_of(&succ));
    let r = Req::get("/index.html").sid(&succ).send(b.port);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "invalid", "session destroyed on A must be dead on B: {r}");
    assert_ne!(r.one_cookie(SID).id(), id_of(&succ));
    // the other session is untouched (renewed: its rolling period passed too)
    let r = Req::get("/index.html").sid(&v_b).send(b.port);
    assert_eq!(r.st(), "renewed", "{r}");
}

/// The successor is destroyed (mismatch) within the grace of its predecessor: the old ID
/// must not answer `renewed` with the destroyed successor's ID. (The shared-memory store
/// does the same today: the verdict "already renewed" does not check that the successor
/// still exists.)
#[test]
fn destroyed_successor_is_not_handed_out_by_old_id() {
    let redis = Redis::start();
    let a = site_on(&redis, ROLLING_2S);
    let b = site_on(&redis, ROLLING_2S);
    let v = new_session(a.port, Req::get("/index.html"));
    sleep_secs(2.3);
    let r = Req::get("/index.html").sid(&v).send(a.port);
    assert_eq!(r.st(), "renewed", "{r}");
    let succ = r.sid();
    let r = Req::get("/index.html").ua("another-agent/9").sid(&succ).send(a.port);
    assert_eq!(r.st(), "mismatch", "{r}");
    // the original client, still within the 10 s grace, comes back with its old cookie
    let r = Req::get("/index.html").sid(&v).send(b.port);
    assert_eq!(r.status, 200, "{r}");
    assert_ne!(r.id(), id_of(&succ), "$session_id is the destroyed session's ID: {r}");
    assert_eq!(r.st(), "invalid", "{r}");
    assert_ne!(r.one_cookie(SID).id(), id_of(&succ), "destroyed successor handed out again: {r}");
}

/// Issue 8, finding 5: an old ID within its renewal grace that comes back from another
/// address is a mismatch, and destroys the whole session on every instance: its successor
/// too.
#[test]
fn old_id_within_grace_from_another_ip_destroys_the_successor() {
    let redis = Redis::start();
    let rolling_1s =
        "sessions_idling_timeout 60s;\n sessions_rolling_timeout 1s;\n sessions_absolute_timeout 120s;";
    let a = site_on(&redis, rolling_1s);
    let b = site_on(&redis, rolling_1s);
    let v = new_session(a.port, Req::get("/index.html").from("127.0.0.2"));
    sleep_secs(1.3);
    let r = Req::get("/index.html").from("127.0.0.2").sid(&v).send(a.port);
    assert_eq!(r.st(), "renewed", "rolling 1s passed: {r}");
    let succ = r.sid();

    let r = Req::get("/index.html").from("127.0.0.3").sid(&v).send(b.port);
    assert_eq!(r.st(), "mismatch", "old ID within its grace from another IP: {r}");
    let c = r.one_cookie(SID);
    assert_ne!(c.id(), id_of(&succ), "the successor was handed to another IP: {r}");
    assert_ne!(c.id(), id_of(&v), "{r}");

    for port in [a.port, b.port] {
        let r = Req::get("/index.html").from("127.0.0.2").sid(&succ).send(port);
        assert_eq!(r.st(), "invalid", "the successor must die with the session: {r}");
    }
    let r = Req::get("/index.html").from("127.0.0.2").sid(&v).send(a.port);
    assert_eq!(r.st(), "invalid", "{r}");
    // what is left: the session handed to 127.0.0.3 and those of the last requests
    assert_eq!(session_keys(&redis).len(), 4, "{:?}", session_keys(&redis));
    a.check_logs();
    b.check_logs();
}

#[test]
fn concurrent_renewal_across_instances_makes_one_successor() {
    let redis = Redis::start();
    let a = site_on(&redis, ROLLING_2S);
    let b = site_on(&redis, ROLLING_2S);
    let v = new_session(a.port, Req::get("/index.html"));
    assert_valid(b.port, Req::get("/index.html"), &v);
    sleep_secs(2.3);

    const N: usize = 20;
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let port = if i % 2 == 0 { a.port } else { b.port };
            let (b, v) = (barrier.clone(), v.clone());
            thread::spawn(move || {
                let req = Req::get("/index.html").sid(&v);
                let mut s = connect(port, None).unwrap();
                b.wait();
                s.write_all(&req.to_bytes(false)).unwrap();
                read_response(&mut BufReader::new(s), false).unwrap()
            })
        })
        .collect();
    let resps: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut succ = HashSet::new();
    for r in &resps {
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "renewed", "{r}");
        let c = r.one_cookie(SID);
        assert_cookie_format(&c.value);
        assert_eq!(r.id(), c.id(), "{r}");
        succ.insert(c.value);
    }
    assert_eq!(succ.len(), 1, "session forked into {succ:?}");
    let s = succ.into_iter().next().unwrap();
    assert_ne!(id_of(&s), id_of(&v));
    assert_valid(a.port, Req::get("/index.html"), &s);
    assert_valid(b.port, Req::get("/index.html"), &s);
    // exactly the old record and its successor
    assert_eq!(session_keys(&redis).len(), 2, "{:?}", session_keys(&redis));
}

/// The binding hashes are keyed by a random key kept in Redis (`SET NX`, TTL ~400 days),
/// adopted by every worker of every instance before it evaluates a request: sessions stay `valid`
/// across instances and across a reload, and the records say they are keyed (version 2).
#[test]
fn binding_key_is_shared_through_redis_and_kept_across_reloads() {
    let redis = Redis::start();
    let a = site_on(&redis, "");
    let b = site_on(&redis, "");
    assert!(all_keys(&redis).is_empty(), "nothing is written before the first request");
    let v = new_session(a.port, Req::get("/index.html").from("127.0.0.2"));
    let key = redis.cmd(&["GET", BINDING_KEY]).bytes();
    assert_eq!(key.len(), 16, "binding key: 16 bytes");
    assert_ne!(key, vec![0; 16]);
    let ttl = redis.cmd(&["TTL", BINDING_KEY]).int();
    assert!(ttl > 399 * 86400 && ttl <= 400 * 86400, "binding key TTL {ttl}");
    let record = redis.cmd(&["GET", &session_keys(&redis)[0]]).bytes();
    assert_eq!((record[0], record[1]), (3, 0), "a compact record (version 3), keyed hashes");
    for _ in 0..4 {
        for port in [a.port, b.port] {
            let r = Req::get("/index.html").from("127.0.0.2").sid(&v).send(port);
            assert!(["valid", "renewed"].contains(&r.st()), "on {port}: {r}");
        }
    }
    a.reload();
    b.reload();
    for port in [a.port, b.port, a.port, b.port] {
        let r = Req::get("/index.html").from("127.0.0.2").sid(&v).send(port);
        assert!(["valid", "renewed"].contains(&r.st()), "after a reload, on {port}: {r}");
    }
    assert_eq!(redis.cmd(&["GET", BINDING_KEY]).bytes(), key, "one key for all, kept");
    // the binding still binds
    let r = Req::get("/index.html").from("127.0.0.3").sid(&v).send(b.port);
    assert_eq!(r.st(), "mismatch", "{r}");
    a.check_logs();
    b.check_logs();
}

// ---------------------------------------------------------------------------------------
// random secret and name shared through Redis
// ---------------------------------------------------------------------------------------

/// Our (one) Set-Cookie of a response whose cookie name is not known in advance.
fn only_cookie(r: &Response) -> SetCookie {
    let v = r.headers_all("Set-Cookie");
    assert_eq!(v.len(), 1, "expected exactly one Set-Cookie: {r}");
    SetCookie::parse(v[0])
}

fn shared_fingerprints(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("(random, shared through Redis)"))
        .map(|l| {
            assert!(l.contains("[notice]"), "{l}");
            let rest = &l[l.find("secret fingerprint ").expect(l) + "secret fingerprint ".len()..];
            rest.split_whitespace().next().unwrap().to_string()
        })
        .collect()
}

#[test]
fn random_identity_is_shared_through_redis() {
    let redis = Redis::start();
    let body = site(&format!("sessions_redis redis://127.0.0.1:{};", redis.port), "");
    let a = Nginx::start(&body);
    let b = Nginx::start(&body);
    assert!(all_keys(&redis).is_empty(), "nothing is written before the first request");

    let r = Req::get("/index.html").send(a.port);
    assert_eq!((r.status, r.st()), (200, "new"), "{r}");
    let ca = only_cookie(&r);
    assert!(is_token(&ca.name) && ca.name != SID, "{}", ca.raw);
    assert_cookie_format(&ca.value);

    // B (any worker) uses the same name, and A's cookie is valid there
    for _ in 0..4 {
        let r = Req::get("/index.html").send(b.port);
        assert_eq!(r.st(), "new", "{r}");
        assert_eq!(only_cookie(&r).name, ca.name, "B must adopt A's cookie name: {r}");
    }
    let cookie = format!("{}={}", ca.name, ca.value);
    for port in [b.port, a.port, b.port, a.port, b.port] {
        let r = Req::get("/index.html").cookie(&cookie).send(port);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "valid", "A's cookie must be valid on {port}: {r}");
        assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
        assert_eq!(r.id(), ca.id(), "{r}");
    }

    // the identity key: 48 bytes, TTL ~400 days
    let ident = redis.cmd(&["GET", IDENTITY_KEY]);
    assert_eq!(ident.bytes().len(), 48, "identity = 32-byte secret + 16-byte name");
    let ttl = redis.cmd(&["TTL", IDENTITY_KEY]).int();
    assert!(ttl > 399 * 86400 && ttl <= 400 * 86400, "identity TTL {ttl}");
    for k in session_keys(&redis) {
        assert_session_key(&k);
    }

    // the fingerprint notice, identical on both instances; the secret itself never logged
    let (la, lb) = (a.error_log(), b.error_log());
    let (fa, fb) = (shared_fingerprints(&la), shared_fingerprints(&lb));
    assert!(!fa.is_empty(), "no shared fingerprint notice on A:\n{la}");
    assert!(!fb.is_empty(), "no shared fingerprint notice on B:\n{lb}");
    let all: HashSet<&String> = fa.iter().chain(fb.iter()).collect();
    assert_eq!(all.len(), 1, "instances disagree on the secret: {fa:?} {fb:?}");
    let secret_hex = hex(&ident.bytes()[..32]);
    for log in [&la, &lb] {
        assert!(!log.to_ascii_lowercase().contains(&secret_hex), "the secret is in the log");
    }
}

// ---------------------------------------------------------------------------------------
// a stopped, killed, restarted Redis
// ---------------------------------------------------------------------------------------

#[test]
fn stopped_redis_answers_error_within_timeout_and_recovers() {
    let redis = Redis::start();
    let http = redis_http(&redis, "sessions_redis_timeout 500ms;");
    let mut ng = Nginx::start_template(&main_conf(&site(&http, ""), 1), 1);
    ng.allow_log(UNAVAILABLE);
    let v = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &v);

    {
        let _stopped = Stopped::stop(&redis);

        // the pooled connection times out: error, no Set-Cookie, within ~0.5 s
        let t = Instant::now();
        let r = Req::get("/index.html").sid(&v).send(ng.port);
        let took = t.elapsed();
        assert_error(&r);
        assert!(took < Duration::from_secs(2), "request took {took:?} with a 500ms timeout");
        assert!(took >= Duration::from_millis(400), "answered before the timeout: {took:?}");
        // breaker open: the next ones fail at once, new clients get no cookie either
        for req in [Req::get("/index.html").sid(&v), Req::get("/index.html")] {
            let t = Instant::now();
            let r = req.send(ng.port);
            assert_error(&r);
            assert!(t.elapsed() < Duration::from_millis(300), "breaker open: {:?}", t.elapsed());
        }

        // after the retry interval one request probes and hangs up to the timeout; the
        // single worker keeps serving meanwhile
        sleep_secs(1.2);
        let port = ng.port;
        let v2 = v.clone();
        let hanging = thread::spawn(move || {
            let t = Instant::now();
            let r = Req::get("/index.html").sid(&v2).send(port);
            (r, t.elapsed())
        });
        sleep_secs(0.1);
        let t = Instant::now();
        let r = Req::get("/off/").send(ng.port);
        let took_off = t.elapsed();
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.body_str(), "off\n");
        assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
        let (r, took) = hanging.join().unwrap();
        assert_error(&r);
        assert!(took < Duration::from_secs(2), "probe took {took:?}");
        // it really was waiting on Redis while /off/ was served
        assert!(took >= Duration::from_millis(400), "the probe did not wait: {took:?}");
        assert!(
            took_off < Duration::from_millis(300),
            "sessions-off request blocked {took_off:?} behind a request waiting on Redis (probe took {took:?})"
        );
    } // SIGCONT

    // the breaker closes; the cookie used during the outage is valid again
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let r = Req::get("/index.html").sid(&v).send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        seen.push(r.st().to_string());
        match r.st() {
            "valid" => {
                assert!(r.no_cookie(SID), "{r}");
                break;
            }
            "error" => assert!(r.headers_all("Set-Cookie").is_empty(), "{r}"),
            _ => panic!("the outage logged the client out: {r} (seen {seen:?})"),
        }
        assert!(Instant::now() < deadline, "never valid again after SIGCONT: {seen:?}");
        thread::sleep(Duration::from_millis(100));
    }
    assert_valid(ng.port, Req::get("/index.html"), &v);
    let log = ng.error_log();
    assert_eq!(count_lines(&log, UNAVAILABLE), 1, "one worker, one outage:\n{log}");
    assert_eq!(count_lines(&log, AVAILABLE_AGAIN), 1, "one worker, one recovery:\n{log}");
    let up = log.lines().find(|l| l.contains(AVAILABLE_AGAIN)).unwrap();
    assert!(up.contains("[notice]"), "{up}");
    let down = log.lines().find(|l| l.contains(UNAVAILABLE)).unwrap();
    assert!(down.contains("[error]") && down.contains("timed out"), "{down}");
}

#[test]
fn killed_redis_then_restarted_recovers_without_reload() {
    let mut redis = Redis::start();
    let mut ng = site_on(&redis, "sessions_redis_timeout 1s;");
    ng.allow_log(UNAVAILABLE);
    let old = new_session(ng.port, Req::get("/index.html"));
    assert_valid(ng.port, Req::get("/index.html"), &old);
    let workers = ng.worker_pids();

    redis.stop();
    for i in 0..10 {
        let req =
            if i % 2 == 0 { Req::get("/index.html").sid(&old) } else { Req::get("/index.html") };
        let t = Instant::now();
        let r = req.send(ng.port);
        assert_error(&r);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "refused connection took {:?}",
            t.elapsed()
        );
    }

    redis.restart();
    // without a reload: the breaker lets a probe through and a new client gets a session
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fresh = None;
    while fresh.is_none() {
        let r = Req::get("/index.html").send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        match r.st() {
            "new" => fresh = Some(r.sid()),
            "error" => assert!(r.headers_all("Set-Cookie").is_empty(), "{r}"),
            other => panic!("unexpected status {other}: {r}"),
        }
        assert!(fresh.is_some() || Instant::now() < deadline, "no session 5 s after restart");
        thread::sleep(Duration::from_millis(100));
    }
    assert_valid(ng.port, Req::get("/index.html"), &fresh.unwrap());

    // the old session was in the lost data: invalid, with a new cookie (on whichever
    // worker; one whose breaker is still open answers error)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = Req::get("/index.html").sid(&old).send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        if r.st() == "error" {
            assert!(r.headers_all("Set-Cookie").is_empty(), "{r}");
            assert!(Instant::now() < deadline, "still error 5 s after restart");
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert_eq!(r.st(), "invalid", "session lost with Redis's data: {r}");
        let c = r.one_cookie(SID);
        assert_ne!(c.id(), id_of(&old));
        assert_valid(ng.port, Req::get("/index.html"), &c.value);
        break;
    }
    assert_eq!(ng.worker_pids(), workers, "no worker was replaced");
}

/// Redis restarted between two requests: the pooled connections are dead, the next
/// requests still succeed (no `error`, no reload).
#[test]
fn restart_between_requests_is_invisible() {
    let mut redis = Redis::start();
    let ng = site_on(&redis, "");
    // fill both workers' pools
    for _ in 0..6 {
        new_session(ng.port, Req::get("/index.html"));
    }
    redis.restart();
    for _ in 0..8 {
        let r = Req::get("/index.html").send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.st(), "new", "a dead pooled connection must be replaced transparently: {r}");
    }
    let log = ng.error_log();
    assert_eq!(count_lines(&log, UNAVAILABLE), 0, "{log}");
}

#[test]
fn dead_redis_costs_few_attempts_and_few_log_lines() {
    let mut redis = Redis::start();
    let mut ng = site_on(&redis, "");
    ng.allow_log(UNAVAILABLE);
    let v = new_session(ng.port, Req::get("/index.html"));
    redis.stop();

    let skip = ng.error_log_lines();
    let t = Instant::now();
    // 50 requests over ~2.5 s: each worker's breaker lets a probe through every second
    for i in 0..50 {
        let req =
            if i % 2 == 0 { Req::get("/index.html").sid(&v) } else { Req::get("/index.html") };
        assert_error(&req.send(ng.port));
        thread::sleep(Duration::from_millis(50));
    }
    let secs = t.elapsed().as_secs_f64();
    let lines = ng.error_log_since(skip);
    let text = lines.join("\n");
    let down = count_lines(&text, UNAVAILABLE);
    assert!(
        (1..=2 * ng.workers).contains(&down),
        "{down} 'unavailable' lines for 50 requests:\n{text}"
    );
    // one connection attempt per worker per second at most (NGINX logs each refused one)
    let attempts = lines.iter().filter(|l| l.contains("Connection refused")).count();
    let max = ng.workers * (secs.ceil() as usize + 1);
    assert!(
        (1..=max).contains(&attempts),
        "{attempts} connection attempts in {secs:.1}s (max {max}):\n{text}"
    );
    assert!(lines.len() <= 4 * max, "log flooded ({} lines in {secs:.1}s):\n{text}", lines.len());

    // back: sequential traffic goes over pooled connections, not one connection each
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut v = loop {
        let r = Req::get("/index.html").send(ng.port);
        if r.st() == "new" {
            break r.sid();
        }
        assert_error(&r);
        assert!(Instant::now() < deadline, "no recovery 5 s after restart");
        thread::sleep(Duration::from_millis(100));
    };
    // both workers up again
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ok = 0;
    while ok < 8 {
        let r = Req::get("/index.html").sid(&v).send(ng.port);
        match r.st() {
            "valid" => ok += 1,
            "error" => {
                ok = 0;
                thread::sleep(Duration::from_millis(100));
            }
            _ => panic!("{r}"),
        }
        assert!(Instant::now() < deadline, "a worker did not recover");
    }
    let before = connections_received(&redis);
    let mut conn = Conn::new(ng.port);
    for i in 0..50 {
        let r = if i % 5 == 0 {
            let r = Req::get("/index.html").send(ng.port);
            assert_eq!(r.st(), "new", "{r}");
            v = r.sid();
            r
        } else {
            conn.send(&Req::get("/index.html").sid(&v))
        };
        assert_eq!(r.status, 200, "{r}");
    }
    // minus the INFO connection itself
    let new_conns = connections_received(&redis) - before - 1;
    assert!(
        new_conns <= 2 * ng.workers as u64,
        "{new_conns} new Redis connections for 50 requests"
    );
    let log = ng.error_log();
    assert!(count_lines(&log, AVAILABLE_AGAIN) >= 1, "{log}");
}

// ---------------------------------------------------------------------------------------
// AUTH and SELECT
// ---------------------------------------------------------------------------------------

const PASSWORD: &str = "s3cr3t-pw-Quokka";

#[test]
fn auth_and_database_from_url() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]);
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/3", redis.port);
    let ng = Nginx::start(&site(&default_http(&format!("sessions_redis {url};")), ""));
    let v = new_session(ng.port, Req::get("/index.html"));
    for _ in 0..4 {
        assert_valid(ng.port, Req::get("/index.html"), &v);
    }

    let r = redis
        .pipeline(&[
            &["AUTH", PASSWORD],
            &["SELECT", "3"],
            &["KEYS", "*"],
            &["SELECT", "0"],
            &["KEYS", "*"],
        ])
        .unwrap();
    assert_eq!(r[0], Resp::Simple("OK".into()));
    assert_eq!(r[1], Resp::Simple("OK".into()));
    let db3: Vec<String> = r[2].items().iter().map(Resp::text).collect();
    assert_eq!(db3.len(), 2, "the session and the binding key must be in db 3: {db3:?}");
    assert!(db3.contains(&BINDING_KEY.to_string()), "{db3:?}");
    db3.iter().filter(|k| *k != BINDING_KEY).for_each(|k| assert_session_key(k));
    assert!(r[4].items().is_empty(), "nothing in db 0: {:?}", r[4]);
    // unauthenticated clients get nothing
    assert!(redis.cmd(&["KEYS", "*"]).is_error());

    // a user name too (the ACL user "default")
    let url = format!("redis://default:{PASSWORD}@127.0.0.1:{}/3", redis.port);
    let ng2 = Nginx::start(&site(&default_http(&format!("sessions_redis {url};")), ""));
    assert_valid(ng2.port, Req::get("/index.html"), &v);

    for log in [ng.error_log(), ng2.error_log()] {
        assert!(!log.contains(PASSWORD), "the password is in the log:\n{log}");
    }
}

#[test]
fn wrong_password_or_database_is_error_not_5xx() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]);
    let good = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let ng = Nginx::start(&site(&default_http(&format!("sessions_redis {good};")), ""));
    let v = new_session(ng.port, Req::get("/index.html"));

    let wrong = "wr0ng-pw-Wombat";
    for url in [
        format!("redis://:{wrong}@127.0.0.1:{}", redis.port),
        format!("redis://:{PASSWORD}@127.0.0.1:{}/99", redis.port),
    ] {
        let mut bad = Nginx::start(&site(&default_http(&format!("sessions_redis {url};")), ""));
        bad.allow_log(UNAVAILABLE);
        for i in 0..10 {
            let req =
                if i % 2 == 0 { Req::get("/index.html").sid(&v) } else { Req::get("/index.html") };
            let t = Instant::now();
            let r = req.send(bad.port);
            assert_error(&r);
            assert!(t.elapsed() < Duration::from_secs(1), "{url}: {:?}", t.elapsed());
        }
        let log = bad.error_log();
        let down = count_lines(&log, UNAVAILABLE);
        assert!((1..=2 * bad.workers).contains(&down), "{url}: {down} unavailable lines:\n{log}");
        let refused = count_lines(&log, "AUTH");
        assert!((1..=4 * bad.workers).contains(&refused), "{url}: {refused} AUTH lines:\n{log}");
        assert!(
            !log.contains(wrong) && !log.contains(PASSWORD),
            "a password is in the log:\n{log}"
        );
        bad.stop();
    }
    // the good instance was never disturbed
    assert_valid(ng.port, Req::get("/index.html"), &v);
}

/// Redis wants a password and the URL has none: every command is answered `-NOAUTH`.
/// Requests must still get `error` (they do), and the operator must learn why from the
/// log, once, with retries limited like any other outage.
#[test]
fn missing_password_is_logged_once() {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]);
    let mut ng = site_on(&redis, "");
    ng.allow_log(UNAVAILABLE);
    for _ in 0..20 {
        assert_error(&Req::get("/index.html").send(ng.port));
    }
    let log = ng.error_log();
    let lines = log.lines().filter(|l| l.contains("[error]") && l.contains("Redis")).count();
    assert!(
        (1..=2 * ng.workers).contains(&lines),
        "{lines} Redis error lines for 20 refused requests:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------
// nginx -t
// ---------------------------------------------------------------------------------------

fn conf_body(http: &str) -> String {
    format!(
        r#"
    types {{ text/html html; }}
    sessions_secret {SECRET};
{http}
    server {{
        listen 127.0.0.1:%%PORT%%;
        root %%PREFIX%%/html;
        location / {{ sessions on; }}
    }}
"#
    )
}

#[test]
fn bad_redis_directives_fail_nginx_t_with_line() {
    for bad in [
        "sessions_redis http://127.0.0.1:6379; # BAD",
        "sessions_redis redis://127.0.0.1:0; # BAD",
        "sessions_redis redis://127.0.0.1:65536; # BAD",
        "sessions_redis redis://127.0.0.1:port; # BAD",
        "sessions_redis redis://; # BAD",
        "sessions_redis redis://127.0.0.1/abc; # BAD",
        "sessions_redis redis://:@127.0.0.1; # BAD",
        "sessions_redis redis://127.0.0.1 redis://127.0.0.2; # BAD",
        "sessions_redis redis://127.0.0.1;\n    sessions_redis redis://127.0.0.1; # BAD",
        "sessions_redis_timeout abc; # BAD",
        "sessions_redis_keepalive -1; # BAD",
        "sessions_redis_keepalive many; # BAD",
    ] {
        let t = nginx_t_http(&conf_body(bad));
        t.assert_emerg(Some(line_of(&t.conf_text, "# BAD")));
    }
    // only in http{}
    let t = nginx_t_http(&format!(
        "    sessions_secret {SECRET};\n    server {{\n        listen 127.0.0.1:%%PORT%%;\n        \
         sessions_redis redis://127.0.0.1; # BAD\n        location / {{ sessions on; }}\n    }}\n"
    ));
    t.assert_emerg(Some(line_of(&t.conf_text, "# BAD")));

    // the password is never echoed
    let t = nginx_t_http(&conf_body("sessions_redis redis://u:Hush-Hush-77@127.0.0.1:0; # BAD"));
    t.assert_emerg(Some(line_of(&t.conf_text, "# BAD")));
    assert!(!t.stderr.contains("Hush-Hush-77"), "password echoed:\n{}", t.stderr);
}

#[test]
fn good_redis_directives_pass_nginx_t_without_redis() {
    // nginx -t resolves the host but never connects (nothing listens on these ports)
    let port = free_port();
    for good in [
        format!("sessions_redis redis://127.0.0.1:{port};"),
        format!("sessions_redis redis://localhost:{port}/2;\n    sessions_redis_timeout 250ms;"),
        format!(
            "sessions_redis redis://user:pw@127.0.0.1:{port}/15;\n    sessions_redis_keepalive 0;"
        ),
        "sessions_redis redis://:pw@127.0.0.1;\n    sessions_redis_keepalive 1024;".to_string(),
    ] {
        nginx_t_http(&conf_body(&good)).assert_ok();
    }
    // nginx-conf/cluster-redis.conf is checked by tests/config.rs (all shipped configs)
}

// ---------------------------------------------------------------------------------------
// requests that go away while waiting on Redis
// ---------------------------------------------------------------------------------------

/// Clients that hang up while their request waits on a stalled Redis, and a graceful
/// shutdown with requests still waiting: every request ends (the Redis timer resumes it),
/// the worker exits, and NGINX finds no leaked connection (`open socket ... left` would be
/// an `[alert]`, which the harness rejects).
#[test]
fn requests_that_go_away_while_waiting_leave_nothing_behind() {
    let redis = Redis::start();
    let http = redis_http(&redis, "sessions_redis_timeout 1s;");
    let mut ng = Nginx::start_template(&main_conf(&site(&http, ""), 1), 1);
    ng.allow_log(UNAVAILABLE);
    let v = new_session(ng.port, Req::get("/index.html"));
    let _stopped = Stopped::stop(&redis);

    // Ten clients send their request and hang up at once.
    for _ in 0..10 {
        let mut s = connect(ng.port, None).unwrap();
        s.write_all(&Req::get("/index.html").sid(&v).to_bytes(false)).unwrap();
        drop(s);
    }
    // One client stays, and NGINX is asked to stop while its request waits.
    let port = ng.port;
    let v2 = v.clone();
    let waiting = thread::spawn(move || Req::get("/index.html").sid(&v2).try_send(port));
    sleep_secs(0.2);
    let t = Instant::now();
    ng.stop();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "graceful stop took {took:?}");
    // The staying client got an answer (the session could not be checked: error), not a
    // reset, unless the breaker had already answered it at once.
    let r = waiting.join().unwrap().expect("the waiting request got no response");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.st(), "error", "{r}");
}

/// HTTP/2: a client sends several streams on one connection and vanishes while they wait
/// on a stalled Redis. NGINX finalizes the streams; nothing may crash or leak, and the
/// worker goes on serving sessions once Redis is back.
#[test]
fn http2_client_vanishing_while_waiting_leaves_nothing_behind() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed: HTTP/2 abort test skipped");
        return;
    }
    let redis = Redis::start();
    let http = redis_http(&redis, "sessions_redis_timeout 1s;");
    let mut ng = Nginx::start_template(&main_conf(&site(&http, "http2 on;"), 1), 1);
    ng.allow_log(UNAVAILABLE);
    let v = new_session(ng.port, Req::get("/index.html"));
    {
        let _stopped = Stopped::stop(&redis);
        let url = format!("http://127.0.0.1:{}/index.html", ng.port);
        let cookie = format!("Cookie: {SID}={v}");
        let ua = format!("User-Agent: {UA}");
        let t = Instant::now();
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--http2-prior-knowledge", "--max-time", "0.3"])
            .args(["-H", &cookie, "-H", &ua, "--parallel", &url, &url, &url])
            .output()
            .expect("curl");
        assert!(!out.status.success(), "the streams should still be waiting on Redis");
        assert!(t.elapsed() < Duration::from_secs(3), "curl did not give up: {:?}", t.elapsed());
    } // SIGCONT

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = Req::get("/index.html").sid(&v).send(ng.port);
        assert_eq!(r.status, 200, "{r}");
        if r.st() == "valid" {
            break;
        }
        assert_eq!(r.st(), "error", "the session must survive: {r}");
        assert!(Instant::now() < deadline, "never valid again: {r}");
        thread::sleep(Duration::from_millis(100));
    }
    ng.stop();
}
