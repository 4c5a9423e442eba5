//! The module's counters and their Prometheus text exposition (format 0.0.4).
//!
//! Every worker adds to its own block of counters ([`WorkerCounters`], one per worker
//! slot, cache-line aligned so that workers never write the same line): one relaxed atomic
//! add per event, no lock on the request path. A scrape sums the blocks ([`Counters::snapshot`])
//! and renders the sum with the table's gauges ([`render`]).
//!
//! The blocks live in shared memory: all-zero bytes are a valid, empty [`Counters`] (it is
//! nothing but `AtomicU64`s), so memory zeroed by the allocator is used as it is, and a
//! zone kept across reloads keeps its counts. Workers of the old and the new generation
//! may share a slot for a while after a reload; atomic adds keep both counts.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::session::Status;

/// Worker slots; a worker numbered beyond that shares a slot (atomics keep it exact).
pub const WORKER_SLOTS: usize = 64;

/// Upper bounds of the Redis round-trip histogram buckets, in microseconds (0.5 ms to
/// 1 s); a last bucket takes everything slower (`+Inf`).
pub const DURATION_BOUNDS_US: [u64; 11] =
    [500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];
const BUCKETS: usize = DURATION_BOUNDS_US.len() + 1;

/// The seven `$session_status` values, in the order they are rendered.
pub const STATUSES: [Status; 7] = [
    Status::New,
    Status::Valid,
    Status::Renewed,
    Status::Expired,
    Status::Invalid,
    Status::Mismatch,
    Status::Error,
];

fn status_index(status: Status) -> usize {
    match status {
        Status::New => 0,
        Status::Valid => 1,
        Status::Renewed => 2,
        Status::Expired => 3,
        Status::Invalid => 4,
        Status::Mismatch => 5,
        Status::Error => 6,
    }
}

/// Why a session was destroyed (`nginx_sessions_destroyed_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestroyReason {
    /// The client's address or User-Agent changed.
    Mismatch,
    /// `sessions_destroy this|all` destroyed the request's own session.
    Destroy,
    /// `sessions_destroy others|all` reached other sessions of the same subject.
    Subject,
}

impl DestroyReason {
    pub const ALL: [DestroyReason; 3] =
        [DestroyReason::Mismatch, DestroyReason::Destroy, DestroyReason::Subject];

    pub fn as_str(self) -> &'static str {
        match self {
            DestroyReason::Mismatch => "mismatch",
            DestroyReason::Destroy => "destroy",
            DestroyReason::Subject => "subject",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a worker knows of Redis: it has not talked to it yet, or how its last exchange went.
const REDIS_UNKNOWN: u64 = 0;
const REDIS_UP: u64 = 1;
const REDIS_DOWN: u64 = 2;

/// One worker's counters. Only that worker adds to them (and, for a while after a reload,
/// the old worker of the same number); scrapes read them.
#[repr(C, align(64))]
#[derive(Default)]
pub struct WorkerCounters {
    requests: [AtomicU64; 7],
    renewals: AtomicU64,
    destroyed: [AtomicU64; 3],
    redis_errors: AtomicU64,
    /// Round trips per bucket (not cumulative: the scrape accumulates).
    redis_duration: [AtomicU64; BUCKETS],
    redis_duration_sum_us: AtomicU64,
    redis_state: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl WorkerCounters {
    /// A main request whose session was evaluated: its status, and what it did.
    pub fn evaluated(&self, status: Status, renewal: bool) {
        add(&self.requests[status_index(status)], 1);
        if renewal {
            add(&self.renewals, 1);
        }
        if status == Status::Mismatch {
            self.destroyed(DestroyReason::Mismatch, 1);
        }
    }

    /// `n` sessions destroyed for `reason`.
    pub fn destroyed(&self, reason: DestroyReason, n: u64) {
        add(&self.destroyed[reason.index()], n);
    }

    /// A Redis command answered after `micros`.
    pub fn redis_round_trip(&self, micros: u64) {
        let bucket = DURATION_BOUNDS_US.iter().position(|&b| micros <= b).unwrap_or(BUCKETS - 1);
        add(&self.redis_duration[bucket], 1);
        add(&self.redis_duration_sum_us, micros);
    }

    /// A Redis command that failed (no reply, or an error reply).
    pub fn redis_error(&self) {
        add(&self.redis_errors, 1);
    }

    /// How this worker's last exchange with Redis went.
    pub fn redis_up(&self, up: bool) {
        self.redis_state.store(if up { REDIS_UP } else { REDIS_DOWN }, Relaxed);
    }
}

/// The counters of every worker slot.
#[repr(C)]
pub struct Counters {
    workers: [WorkerCounters; WORKER_SLOTS],
}

impl Default for Counters {
    fn default() -> Self {
        Counters { workers: core::array::from_fn(|_| WorkerCounters::default()) }
    }
}

impl Counters {
    /// The block of the worker numbered `worker` (`ngx_worker`).
    pub fn worker(&self, worker: usize) -> &WorkerCounters {
        &self.workers[worker % WORKER_SLOTS]
    }

    /// Forgets what workers knew of Redis (the counts stay): after a reload, the workers of
    /// the old generation are gone, and a slot no new worker uses must not keep their view.
    pub fn forget_redis_states(&self) {
        for w in &self.workers {
            w.redis_state.store(REDIS_UNKNOWN, Relaxed);
        }
    }

    /// The sum over all workers.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        let get = |c: &AtomicU64| c.load(Relaxed);
        let (mut any_up, mut any_down) = (false, false);
        for w in &self.workers {
            for (sum, c) in s.requests.iter_mut().zip(&w.requests) {
                *sum = sum.wrapping_add(get(c));
            }
            s.renewals = s.renewals.wrapping_add(get(&w.renewals));
            for (sum, c) in s.destroyed.iter_mut().zip(&w.destroyed) {
                *sum = sum.wrapping_add(get(c));
            }
            s.redis_errors = s.redis_errors.wrapping_add(get(&w.redis_errors));
            for (sum, c) in s.redis_duration.iter_mut().zip(&w.redis_duration) {
                *sum = sum.wrapping_add(get(c));
            }
            s.redis_duration_sum_us =
                s.redis_duration_sum_us.wrapping_add(get(&w.redis_duration_sum_us));
            match get(&w.redis_state) {
                REDIS_UP => any_up = true,
                REDIS_DOWN => any_down = true,
                _ => {}
            }
        }
        s.redis_up = match (any_down, any_up) {
            (true, _) => Some(false),
            (false, true) => Some(true),
            (false, false) => None,
        };
        s
    }
}

/// The counters summed over workers, at one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Indexed like [`STATUSES`].
    pub requests: [u64; 7],
    pub renewals: u64,
    /// Indexed like [`DestroyReason::ALL`].
    pub destroyed: [u64; 3],
    pub redis_errors: u64,
    /// Round trips per bucket of [`DURATION_BOUNDS_US`], then the slower ones.
    pub redis_duration: [u64; BUCKETS],
    pub redis_duration_sum_us: u64,
    /// The minimum over the workers that have talked to Redis; `None` when none has.
    pub redis_up: Option<bool>,
}

impl Snapshot {
    pub fn requests(&self, status: Status) -> u64 {
        self.requests[status_index(status)]
    }

    pub fn destroyed(&self, reason: DestroyReason) -> u64 {
        self.destroyed[reason.index()]
    }
}

/// The shared-memory table at scrape time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableGauges {
    pub stored: u64,
    pub capacity: u64,
}

/// Everything one scrape shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scrape {
    pub counters: Snapshot,
    /// Records the shared-memory table evicted since the zone was made.
    pub evictions: u64,
    /// The table's gauges, when sessions are kept in shared memory.
    pub table: Option<TableGauges>,
    /// Sessions are kept in Redis: its series are shown.
    pub redis: bool,
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Seconds from microseconds, as Prometheus reads them: `0.0005`, `1`, `12.000034`.
fn seconds(micros: u64) -> String {
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Appends one metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition (format 0.0.4) of one scrape.
pub fn render(s: &Scrape) -> String {
    let c = &s.counters;
    let mut out = String::with_capacity(4096);
    let o = &mut out;

    family(
        o,
        "nginx_sessions_requests_total",
        "counter",
        "Main requests whose session was evaluated, by $session_status.",
    );
    for (status, n) in STATUSES.iter().zip(c.requests) {
        let _ = writeln!(o, "nginx_sessions_requests_total{{status=\"{}\"}} {n}", status.as_str());
    }

    family(
        o,
        "nginx_sessions_renewals_total",
        "counter",
        "Session IDs renewed after the rolling timeout.",
    );
    let _ = writeln!(o, "nginx_sessions_renewals_total {}", c.renewals);

    family(
        o,
        "nginx_sessions_destroyed_total",
        "counter",
        "Sessions destroyed: client address or User-Agent changed (mismatch), sessions_destroy (destroy), or with their subject (subject).",
    );
    for (reason, n) in DestroyReason::ALL.iter().zip(c.destroyed) {
        let _ = writeln!(o, "nginx_sessions_destroyed_total{{reason=\"{}\"}} {n}", reason.as_str());
    }

    family(
        o,
        "nginx_sessions_evictions_total",
        "counter",
        "Live sessions pushed out of the shared-memory zone for want of room.",
    );
    let _ = writeln!(o, "nginx_sessions_evictions_total {}", s.evictions);

    if let Some(t) = s.table {
        family(o, "nginx_sessions_stored", "gauge", "Session records in the shared-memory zone.");
        let _ = writeln!(o, "nginx_sessions_stored {}", t.stored);
        family(
            o,
            "nginx_sessions_capacity",
            "gauge",
            "Session records the shared-memory zone can hold.",
        );
        let _ = writeln!(o, "nginx_sessions_capacity {}", t.capacity);
    }

    if s.redis {
        family(
            o,
            "nginx_sessions_redis_up",
            "gauge",
            "1 when the last exchange of every worker with Redis succeeded; absent until a worker has talked to Redis.",
        );
        if let Some(up) = c.redis_up {
            let _ = writeln!(o, "nginx_sessions_redis_up {}", u8::from(up));
        }
        family(
            o,
            "nginx_sessions_redis_errors_total",
            "counter",
            "Redis commands that failed: no reply in time, connection lost or refused, or an error reply.",
        );
        let _ = writeln!(o, "nginx_sessions_redis_errors_total {}", c.redis_errors);
        let name = "nginx_sessions_redis_duration_seconds";
        family(o, name, "histogram", "Round-trip time of Redis commands that got a reply.");
        let mut cumulative = 0u64;
        for (i, n) in c.redis_duration.iter().enumerate() {
            cumulative = cumulative.wrapping_add(*n);
            let le = DURATION_BOUNDS_US.get(i).map_or_else(|| "+Inf".to_string(), |&b| seconds(b));
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(o, "{name}_sum {}", seconds(c.redis_duration_sum_us));
        let _ = writeln!(o, "{name}_count {cumulative}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn zeroed_memory_is_an_empty_block() {
        // The glue hands zeroed shared memory over as `Counters`: check the layout.
        assert_eq!(core::mem::size_of::<WorkerCounters>() % 64, 0);
        assert_eq!(core::mem::align_of::<WorkerCounters>(), 64);
        assert_eq!(core::mem::size_of::<Counters>(), WORKER_SLOTS * 256);
        let c = Counters::default();
        assert_eq!(c.snapshot(), Snapshot::default());
    }

    #[test]
    fn workers_are_summed() {
        let c = Counters::default();
        c.worker(0).evaluated(Status::New, false);
        c.worker(1).evaluated(Status::New, false);
        c.worker(1).evaluated(Status::Renewed, true);
        c.worker(0).evaluated(Status::Renewed, false);
        c.worker(1).evaluated(Status::Mismatch, false);
        c.worker(0).destroyed(DestroyReason::Subject, 3);
        // Worker 64 shares slot 0.
        c.worker(WORKER_SLOTS).evaluated(Status::Valid, false);
        let s = c.snapshot();
        assert_eq!(s.requests(Status::New), 2);
        assert_eq!(s.requests(Status::Renewed), 2);
        assert_eq!(s.requests(Status::Valid), 1);
        assert_eq!(s.requests(Status::Mismatch), 1);
        assert_eq!(s.requests(Status::Error), 0);
        assert_eq!(s.renewals, 1);
        assert_eq!(s.destroyed(DestroyReason::Mismatch), 1);
        assert_eq!(s.destroyed(DestroyReason::Subject), 3);
        assert_eq!(s.destroyed(DestroyReason::Destroy), 0);
    }

    #[test]
    fn redis_up_is_the_minimum_over_workers_that_talked() {
        let c = Counters::default();
        assert_eq!(c.snapshot().redis_up, None);
        c.worker(3).redis_up(true);
        assert_eq!(c.snapshot().redis_up, Some(true));
        c.worker(5).redis_up(false);
        assert_eq!(c.snapshot().redis_up, Some(false));
        c.worker(5).redis_up(true);
        assert_eq!(c.snapshot().redis_up, Some(true));
        c.worker(5).redis_up(false);
        c.forget_redis_states();
        assert_eq!(c.snapshot().redis_up, None);
    }

    #[test]
    fn round_trips_fall_in_their_buckets() {
        let c = Counters::default();
        for us in [0, 500, 501, 1_000_000, 1_000_001, 7_000_000] {
            c.worker(2).redis_round_trip(us);
        }
        let s = c.snapshot();
        assert_eq!(s.redis_duration[0], 2, "0 and 500 µs are <= 0.0005 s");
        assert_eq!(s.redis_duration[1], 1);
        assert_eq!(s.redis_duration[10], 1, "exactly 1 s is <= 1");
        assert_eq!(s.redis_duration[11], 2);
        assert_eq!(s.redis_duration_sum_us, 9_001_002);
    }

    #[test]
    fn seconds_are_written_shortest() {
        assert_eq!(seconds(500), "0.0005");
        assert_eq!(seconds(2_500), "0.0025");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(12_000_034), "12.000034");
        assert_eq!(seconds(0), "0");
    }

    fn scrape(table: Option<TableGauges>, redis: bool) -> Scrape {
        let c = Counters::default();
        c.worker(0).evaluated(Status::New, false);
        c.worker(1).evaluated(Status::Invalid, false);
        c.worker(1).evaluated(Status::Renewed, true);
        c.worker(0).redis_round_trip(700);
        c.worker(0).redis_round_trip(2_000_000);
        c.worker(1).redis_error();
        c.worker(1).redis_up(true);
        Scrape { counters: c.snapshot(), evictions: 4, table, redis }
    }

    #[test]
    fn shared_memory_exposition() {
        let text = render(&scrape(Some(TableGauges { stored: 17, capacity: 1000 }), false));
        for status in STATUSES {
            let series = format!("nginx_sessions_requests_total{{status=\"{}\"}}", status.as_str());
            let want = match status {
                Status::New | Status::Invalid | Status::Renewed => "1",
                _ => "0",
            };
            assert_eq!(sample(&text, &series), Some(want), "{series}\n{text}");
        }
        assert_eq!(sample(&text, "nginx_sessions_renewals_total"), Some("1"));
        for reason in ["mismatch", "destroy", "subject"] {
            let series = format!("nginx_sessions_destroyed_total{{reason=\"{reason}\"}}");
            assert_eq!(sample(&text, &series), Some("0"), "{text}");
        }
        assert_eq!(sample(&text, "nginx_sessions_evictions_total"), Some("4"));
        assert_eq!(sample(&text, "nginx_sessions_stored"), Some("17"));
        assert_eq!(sample(&text, "nginx_sessions_capacity"), Some("1000"));
        assert!(!text.contains("redis"), "no Redis series without Redis:\n{text}");
    }

    #[test]
    fn redis_exposition() {
        let text = render(&scrape(None, true));
        assert!(!text.contains("nginx_sessions_stored"), "{text}");
        assert_eq!(sample(&text, "nginx_sessions_redis_up"), Some("1"));
        assert_eq!(sample(&text, "nginx_sessions_redis_errors_total"), Some("1"));
        let h = "nginx_sessions_redis_duration_seconds";
        assert_eq!(sample(&text, &format!("{h}_bucket{{le=\"0.0005\"}}")), Some("0"));
        assert_eq!(sample(&text, &format!("{h}_bucket{{le=\"0.001\"}}")), Some("1"));
        assert_eq!(sample(&text, &format!("{h}_bucket{{le=\"1\"}}")), Some("1"));
        assert_eq!(sample(&text, &format!("{h}_bucket{{le=\"+Inf\"}}")), Some("2"));
        assert_eq!(sample(&text, &format!("{h}_count")), Some("2"));
        assert_eq!(sample(&text, &format!("{h}_sum")), Some("2.0007"));
        // Buckets are cumulative and in order.
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{h}_bucket")))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), DURATION_BOUNDS_US.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");

        // Before any worker talked to Redis, the gauge has no sample (but its family lines).
        let none = Scrape {
            counters: Snapshot { redis_up: None, ..Snapshot::default() },
            evictions: 0,
            table: None,
            redis: true,
        };
        let text = render(&none);
        assert!(text.contains("# TYPE nginx_sessions_redis_up gauge"), "{text}");
        assert_eq!(sample(&text, "nginx_sessions_redis_up"), None, "{text}");
    }

    /// Every sample belongs to a family announced by `# HELP` and `# TYPE` before it, and
    /// every line is a comment or `name{labels} value`.
    #[test]
    fn exposition_is_well_formed() {
        let text = render(&scrape(Some(TableGauges { stored: 1, capacity: 2 }), true));
        assert!(text.ends_with('\n'));
        let mut typed: Vec<(String, String)> = Vec::new();
        let mut helped: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert_eq!(helped.last().map(String::as_str), Some(name), "HELP before TYPE");
                typed.push((name.to_string(), kind.to_string()));
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let (family, kind) = typed.last().unwrap();
            let ok = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(family.as_str())),
                _ => name == family,
            };
            assert!(ok, "{line} outside its family {family}");
            assert!(name.starts_with("nginx_sessions_"), "{line}");
        }
        assert_eq!(typed.len(), 9, "{text}");
    }
}
