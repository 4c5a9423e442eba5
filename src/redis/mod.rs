//! A Redis client on the NGINX event loop: per worker, a few keepalive connections made
//! with `ngx_event_connect_peer`, each carrying many commands at once (pipelined, replies
//! matched in order), NGINX timers for every wait, and a circuit breaker so that a dead
//! Redis costs one connection attempt per second per worker, not one per request. No
//! threads, no blocking calls.
//!
//! - this file: what callers use: [`Upstream`] (resolved at configuration time),
//!   [`execute`], [`Waiter`] and [`Failure`];
//! - `conn.rs`: one connection: its FIFO of pending replies, write, read, retry;
//! - `worker.rs`: the per-worker state: the pool of connections and the breaker.
//!
//! Callers hand over a command with a `Waiter`; the reply (or the failure) comes back
//! through the waiter's `done`, always from an event handler, never from `execute` itself.

mod conn;
mod worker;

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{ngx_msec_int_t, ngx_msec_t, ngx_str_t, sockaddr, socklen_t};

use crate::redis_flow::Reply;
use conn::Conn;

pub(crate) use worker::close_all;

/// Where and how to reach Redis, resolved at configuration time.
#[derive(Clone)]
pub(crate) struct Upstream {
    pub(crate) sockaddr: *mut sockaddr,
    pub(crate) socklen: socklen_t,
    pub(crate) name: ngx_str_t,
    /// `AUTH` / `SELECT` sent first on every new connection.
    pub(crate) setup: Vec<Vec<u8>>,
    /// The most one command may take as a whole: connect, write, the complete reply.
    pub(crate) timeout: ngx_msec_t,
    /// Connections per worker (at least one is opened, and closed when idle if 0).
    pub(crate) keepalive: usize,
    /// An idle pooled connection is closed after this long.
    pub(crate) keepalive_timeout: ngx_msec_t,
}

impl Upstream {
    fn name(&self) -> &str {
        core::str::from_utf8(self.name.as_bytes()).unwrap_or("redis")
    }

    /// The most the commands of one request may take together (SPEC: twice the timeout).
    pub(crate) fn request_budget(&self) -> ngx_msec_t {
        self.timeout.saturating_mul(2)
    }
}

/// Why a command got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The breaker is open: Redis failed recently.
    Down,
    Connect,
    Timeout,
    Closed,
    Protocol,
    /// `AUTH` or `SELECT` was refused.
    Setup,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Down => "down",
            Failure::Connect => "connection failed",
            Failure::Timeout => "timed out",
            Failure::Closed => "connection closed",
            Failure::Protocol => "protocol error",
            Failure::Setup => "AUTH or SELECT refused",
        }
    }
}

/// Called with the reply to a command (or why there is none), with the waiter's `data`.
pub(crate) type Done = unsafe fn(data: *mut c_void, reply: Result<Reply, Failure>);

/// The request side of a command in flight. It lives in request memory; when the request
/// goes away first, [`Waiter::cancel`] detaches it so that the reply is dropped.
///
/// Like `ngx_event_t`, it carries a `data` pointer for its owner: the callback gets that,
/// never a pointer derived from the waiter, so the owner keeps the right to all of itself.
pub(crate) struct Waiter {
    conn: *mut Conn,
    done: Done,
    data: *mut c_void,
    /// When the commands sent through this waiter must all be over (`ngx_current_msec`
    /// clock), if [`Waiter::limit_total`] was called.
    deadline: Option<ngx_msec_t>,
}

impl Waiter {
    pub(crate) const fn new(done: Done, data: *mut c_void) -> Self {
        Waiter { conn: ptr::null_mut(), done, data, deadline: None }
    }

    /// The commands sent through this waiter from now on take at most `budget` together:
    /// each one gets the timeout or what is left of the budget, whichever is less, and
    /// one started with nothing left fails at once as a timeout.
    ///
    /// # Safety
    /// `this` points to a live waiter.
    pub(crate) unsafe fn limit_total(this: *mut Waiter, budget: ngx_msec_t) {
        // SAFETY: the caller's contract.
        unsafe { (*this).deadline = Some(worker::now().wrapping_add(budget)) };
    }

    /// Forgets the command in flight: its reply will be read and dropped; the connection
    /// stays (closing it would cost the other commands on it, and a reconnect).
    ///
    /// # Safety
    /// `this` points to a live waiter.
    pub(crate) unsafe fn cancel(this: *mut Waiter) {
        // SAFETY: the caller's contract; a non-null `conn` is a live connection serving
        // this waiter (connections clear it before they go away).
        unsafe {
            let conn = (*this).conn;
            if conn.is_null() {
                return;
            }
            (*this).conn = ptr::null_mut();
            conn::tombstone(conn, this);
        }
    }

    /// Hands the outcome to the owner. The waiter is detached first: `done` may start the
    /// next command with it.
    ///
    /// # Safety
    /// `this` points to a live waiter that is not cancelled.
    unsafe fn complete(this: *mut Waiter, reply: Result<Reply, Failure>) {
        // SAFETY: the caller's contract.
        unsafe {
            (*this).conn = ptr::null_mut();
            let (done, data) = ((*this).done, (*this).data);
            done(data, reply);
        }
    }
}

/// Sends `command` and arranges for the waiter's `done` to be called with the reply. `Err`
/// means it could not even be started (and `done` will not be called).
///
/// # Safety
/// `upstream` outlives the worker's cycle; `waiter` stays valid until `done` is called
/// or it is cancelled.
pub(crate) unsafe fn execute(
    upstream: &Upstream,
    command: Vec<u8>,
    waiter: *mut Waiter,
) -> Result<(), Failure> {
    if !worker::admit() {
        return Err(Failure::Down);
    }
    // SAFETY: the caller's contract on `waiter`.
    let Some(deadline) = command_deadline(upstream, unsafe { (*waiter).deadline }) else {
        // The request's budget is spent: a timeout like any other (breaker included).
        worker::mark_down(upstream, Failure::Timeout.as_str());
        crate::metrics::with_worker(|w| w.redis_error());
        return Err(Failure::Timeout);
    };
    // SAFETY: the caller's contract on `upstream` and `waiter`; pooled connections are
    // live while listed.
    unsafe {
        let conn = match worker::pick(upstream.keepalive.max(1)) {
            Some(conn) => conn,
            None => conn::connect(upstream).inspect_err(|&f| {
                worker::mark_down(upstream, f.as_str());
                crate::metrics::with_worker(|w| w.redis_error());
            })?,
        };
        conn::enqueue(conn, command, waiter, deadline);
    }
    Ok(())
}

/// When a command starting now must be over: once the timeout has passed, or at the
/// request's deadline if that comes first. `None` when the request has no time left.
fn command_deadline(
    upstream: &Upstream,
    request_deadline: Option<ngx_msec_t>,
) -> Option<ngx_msec_t> {
    let now = worker::now();
    let mut budget = upstream.timeout;
    if let Some(deadline) = request_deadline {
        // The clock's difference read signed, as NGINX's timers do.
        let left = deadline.wrapping_sub(now) as ngx_msec_int_t;
        if left <= 0 {
            return None;
        }
        budget = budget.min(left as ngx_msec_t);
    }
    Some(now.wrapping_add(budget))
}
