//! Per-worker client state: the connection pool and the circuit breaker. Workers are
//! single-threaded; it is only reached through [`with_worker`], whose borrow ends with
//! the closure, so no two borrows of it ever overlap.

use core::cell::UnsafeCell;

use ngx::ffi::{ngx_current_msec, ngx_log_t, ngx_msec_t, NGX_LOG_ERR, NGX_LOG_NOTICE};
use ngx::ngx_log_error;

use super::conn::{self, Conn};
use super::Upstream;

/// How long a worker waits before trying a Redis that failed again.
const RETRY_INTERVAL: ngx_msec_t = 1000;

struct Worker {
    /// Every open connection, busy or idle.
    conns: Vec<*mut Conn>,
    down: bool,
    retry_at: ngx_msec_t,
}

struct WorkerCell(UnsafeCell<Worker>);

// SAFETY: a worker process runs its event loop on one thread; only that thread touches it.
unsafe impl Sync for WorkerCell {}

static WORKER: WorkerCell =
    WorkerCell(UnsafeCell::new(Worker { conns: Vec::new(), down: false, retry_at: 0 }));

/// Runs `f` with the worker's state. `f` must not call back into this module (the
/// closures below only touch the fields), so the borrow is unique while it lives.
fn with_worker<R>(f: impl FnOnce(&mut Worker) -> R) -> R {
    // SAFETY: single-threaded worker, and no `with_worker` call nests in another (every
    // closure passed here is a few field operations), so this is the only borrow.
    f(unsafe { &mut *WORKER.0.get() })
}

pub(super) fn now() -> ngx_msec_t {
    // SAFETY: NGINX updates the cached time on the worker's own thread.
    unsafe { ngx_current_msec }
}

pub(super) fn cycle_log() -> *mut ngx_log_t {
    ngx::log::ngx_cycle_log().as_ptr()
}

/// Whether a command may be tried now: not while the breaker is open. After the retry
/// interval, one request probes (half-open); the others keep failing fast meanwhile.
pub(super) fn admit() -> bool {
    with_worker(|w| {
        if !w.down {
            return true;
        }
        if now() < w.retry_at {
            return false;
        }
        w.retry_at = now().wrapping_add(RETRY_INTERVAL);
        true
    })
}

/// The connection for the next command: an idle one, else none while fewer than `limit`
/// are open (the caller opens one), else the one with the fewest commands in flight.
pub(super) fn pick(limit: usize) -> Option<*mut Conn> {
    with_worker(|w| {
        // SAFETY: listed connections are live (`close` unlists them before freeing).
        let least = w.conns.iter().copied().min_by_key(|&c| unsafe { (*c).load() })?;
        // SAFETY: as above.
        if unsafe { (*least).load() } == 0 || w.conns.len() >= limit {
            return Some(least);
        }
        None
    })
}

/// Lists a new connection.
pub(super) fn add_conn(conn: *mut Conn) {
    with_worker(|w| w.conns.push(conn));
}

/// Unlists `conn`, if it is listed.
pub(super) fn remove_conn(conn: *mut Conn) {
    with_worker(|w| w.conns.retain(|&p| p != conn));
}

/// Closes every connection (worker exit: no request is left to call back).
pub(crate) fn close_all() {
    while let Some(conn) = with_worker(|w| w.conns.last().copied()) {
        // SAFETY: listed connections are live; `close` unlists it.
        unsafe { conn::close(conn) };
    }
}

/// Opens the breaker; one log line when the state changes, not one per request.
pub(super) fn mark_down(up: &Upstream, reason: &str) {
    crate::metrics::with_worker(|w| w.redis_up(false));
    let opened = with_worker(|w| {
        w.retry_at = now().wrapping_add(RETRY_INTERVAL);
        !core::mem::replace(&mut w.down, true)
    });
    if opened {
        ngx_log_error!(
            NGX_LOG_ERR,
            cycle_log(),
            "sessions: Redis at {} is unavailable ({}); sessions answer \"error\" and retries are limited to one per {}ms",
            up.name(),
            reason,
            RETRY_INTERVAL
        );
    }
}

/// Closes the breaker after a good reply.
pub(super) fn mark_up(up: &Upstream) {
    crate::metrics::with_worker(|w| w.redis_up(true));
    if with_worker(|w| core::mem::replace(&mut w.down, false)) {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            cycle_log(),
            "sessions: Redis at {} is available again",
            up.name()
        );
    }
}
