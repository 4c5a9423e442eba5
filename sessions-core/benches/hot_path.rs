//! Micro-benchmark of the per-request hot path of a returning client, without NGINX:
//! finding and verifying our cookie, hashing the client binding, and the state machine's
//! decision. `make bench` runs it with short settings and puts the numbers in its table;
//! by hand: `cargo bench -p sessions-core --bench hot_path`.
//!
//! The benchmark names below are read back by `bench/bench.py` (from
//! `$CRITERION_HOME/<name>/new/estimates.json`): keep them in sync.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sessions_core::cookie::{CookieCollector, Incoming, SessionId, Signer};
use sessions_core::session::{self, BindingKey, Client, Policy, Record, Verdict};

const SECRET: &[u8] = b"bench secret: 32+ bytes, not random, never in production";
const NAME: &[u8] = b"sid";
/// A typical desktop browser User-Agent (110 bytes).
const UA: &[u8] =
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0.484 Safari/537.36";
const ADDR: &[u8] = b"203.0.113.57";
/// "Now" for the state machine (seconds since the epoch).
const NOW: u64 = 1_750_000_000;
/// The module's defaults: idle 30m, rolling 1h, absolute 1d, both bindings checked.
const POLICY: Policy =
    Policy { idle: 1800, rolling: 3600, absolute: 86400, check_ip: true, check_user_agent: true };

/// A realistic `Cookie` header: analytics and app cookies around ours.
fn cookie_header(value: &[u8]) -> Vec<u8> {
    let mut h = b"_ga=GA1.2.1523409876.1749990000; _gid=GA1.2.908172635.1749990000; theme=dark; lang=en-US; "
        .to_vec();
    h.extend_from_slice(NAME);
    h.push(b'=');
    h.extend_from_slice(value);
    h.extend_from_slice(b"; csrftoken=Zx8f3kLqP0aB7cD9eF1gH2iJ4kL6mN8o");
    h
}

/// The record of a session that started 10 minutes ago and was last seen 30 s ago:
/// alive, not due for renewal, no `last_seen` write (the common case).
fn live_record(client: &Client) -> Record {
    Record { last_seen: NOW - 30, ..Record::new(NOW - 600, client) }
}

fn collect(signer: &Signer, header: &[u8]) -> Incoming {
    let mut c = CookieCollector::new(signer, NAME);
    c.header(header);
    c.finish()
}

fn benches(c: &mut Criterion) {
    assert_eq!(UA.len(), 110);
    let signer = Signer::new(SECRET);
    let id = SessionId::random();
    let value = signer.seal(NAME, &id);
    let header = cookie_header(&value);
    let key = BindingKey([0x5a; 16]);
    let client = Client::new(&key, ADDR, UA);
    let rec = live_record(&client);

    // Sanity: each benchmark measures the path it claims, not an early exit.
    assert_eq!(collect(&signer, &header), Incoming::Verified(id));
    assert_eq!(session::decide(&rec, NOW, &POLICY, &client), Verdict::Valid { touch: false });

    c.bench_function("cookie_collector", |b| {
        b.iter(|| collect(black_box(&signer), black_box(&header)))
    });
    c.bench_function("client_new", |b| {
        b.iter(|| Client::new(black_box(&key), black_box(ADDR), black_box(UA)))
    });
    c.bench_function("decide", |b| {
        b.iter(|| {
            session::decide(black_box(&rec), black_box(NOW), black_box(&POLICY), black_box(&client))
        })
    });
    c.bench_function("store_key", |b| b.iter(|| black_box(&id).store_key()));
    // The three together, as one returning request does them (the table lookup between
    // verification and decision is NGINX shared memory and not part of this crate).
    c.bench_function("hot_path", |b| {
        b.iter(|| {
            let incoming = collect(black_box(&signer), black_box(&header));
            let client = Client::new(black_box(&key), black_box(ADDR), black_box(UA));
            match incoming {
                Incoming::Verified(_) => session::decide(black_box(&rec), NOW, &POLICY, &client),
                _ => Verdict::Dead,
            }
        })
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
