//! The module's own log lines: the secret fingerprints at start, the per-request outcomes
//! worth an `[info]`, and the lines that are rate limited so that a failing store cannot
//! flood the error log. Debug lines (`error_log ... debug`) are written where the decision
//! is taken, with [`debug_http!`].

use core::cell::Cell;

use ngx::ffi::{
    ngx_http_request_t, ngx_log_t, ngx_time, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_NOTICE,
    NGX_LOG_WARN,
};
use ngx::ngx_log_error;

use crate::cookie::Incoming;
use crate::session::{Evaluation, Status};
use crate::table::EvictionReport;

/// `ngx_log_debug_http!` for a raw request: one `[debug]` line on the request's connection
/// log, compiled out unless NGINX was configured `--with-debug`.
macro_rules! debug_http {
    ($r:expr, $($arg:tt)+) => {
        if ngx::log::DEBUG {
            let log = $crate::log::request_log($r);
            ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Http, log, $($arg)+);
        }
    };
}
pub(crate) use debug_http;

/// The request's connection log.
pub(crate) fn request_log(r: &ngx_http_request_t) -> *mut ngx_log_t {
    // SAFETY: a live request has a live connection.
    unsafe { (*r.connection).log }
}

/// One `[notice]` line per secret at start, so that operators can tell whether two
/// instances share a secret without ever seeing it.
pub(crate) fn fingerprint(log: *mut ngx_log_t, fp: &[u8; 16], kind: &str) {
    if log.is_null() {
        return;
    }
    ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "sessions: secret fingerprint {} ({})",
        core::str::from_utf8(fp).unwrap_or("?"),
        kind
    );
}

/// The `[info]` lines of a decided request: a forged or stale cookie, a changed client.
pub(crate) fn outcome(log: *mut ngx_log_t, eval: &Evaluation, incoming: Incoming) {
    match eval.status {
        Status::Invalid if incoming == Incoming::Invalid => {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "sessions: rejected a session cookie that failed verification"
            );
        }
        Status::Mismatch => {
            ngx_log_error!(
                NGX_LOG_INFO,
                log,
                "sessions: client address or User-Agent changed, session destroyed"
            );
        }
        _ => {}
    }
}

/// At most one line per interval per worker.
struct RateLimit {
    last: Cell<u64>,
}

// SAFETY: a worker process runs its event loop on one thread; only that thread touches
// the limiter's cell.
unsafe impl Sync for RateLimit {}

impl RateLimit {
    const fn new() -> Self {
        RateLimit { last: Cell::new(0) }
    }

    /// Whether a line may be written now (and, if so, records that it was).
    fn allow(&self, interval: u64) -> bool {
        let now = ngx_time().max(0) as u64;
        if now.saturating_sub(self.last.get()) < interval {
            return false;
        }
        self.last.set(now);
        true
    }
}

/// The store could not take a session: one line per minute per worker, not per request.
pub(crate) fn store_full(log: *mut ngx_log_t) {
    static LIMIT: RateLimit = RateLimit::new();
    if LIMIT.allow(60) {
        ngx_log_error!(
            NGX_LOG_ERR,
            log,
            "sessions: the session store has no room even after eviction (zone too small?); requests go on without sessions"
        );
    }
}

/// Eviction pressure on a shared-memory zone: live sessions pushed out for want of room.
/// The table hands out a report at most once per minute for the whole zone.
pub(crate) fn evictions(log: *mut ngx_log_t, zone: &[u8], report: &EvictionReport, now: u64) {
    ngx_log_error!(
        NGX_LOG_WARN,
        log,
        "sessions: zone \"{}\" evicted {} sessions in the last {}s; the most recently used of them had been idle {}s (zone too small for the traffic?)",
        String::from_utf8_lossy(zone),
        report.evictions,
        now.saturating_sub(report.since),
        report.min_idle_age
    );
}
