//! One pipelined Redis connection: connect, the setup commands (`AUTH`, `SELECT`) queued
//! ahead on a fresh connection, then any number of callers' commands in flight at once.
//! Redis answers in order, so the replies are matched to a FIFO of pending slots; a
//! cancelled waiter leaves its slot as a tombstone whose reply is read and dropped, so the
//! connection stays usable. A connection is a `Box<Conn>` listed in the worker's pool from
//! `connect` until `close`.
//!
//! One timer bounds every command as a whole: the read event's, armed for the earliest
//! deadline among the pending slots and never pushed back by progress, so a Redis that
//! drips its replies byte by byte cannot stretch them. When it fires, the connection and
//! every command on it fail (a half-read reply must never meet the next command). With
//! nothing pending, the same timer is the keepalive timeout.

use core::ptr;
use std::collections::VecDeque;
use std::time::Instant;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_log_error_e_NGX_ERROR_ERR as NGX_ERROR_ERR,
    ngx_connection_t, ngx_del_timer, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t,
    ngx_exiting, ngx_handle_read_event, ngx_handle_write_event, ngx_msec_int_t, ngx_msec_t,
    ngx_peer_connection_t, NGX_AGAIN, NGX_OK,
};

use super::worker::{self, cycle_log};
use super::{Failure, Upstream, Waiter};
use crate::redis_flow::{parse_reply_len, Parsed, Reply};

/// Bytes read per `recv` call.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read before the whole replies among them are handed over.
const READ_BATCH: usize = 256 * 1024;
/// An incomplete reply larger than this is not ours: the connection is dropped.
const MAX_REPLY: usize = 64 * 1024;

/// `[debug]` lines about the client, on the cycle's log.
macro_rules! debug {
    ($($arg:tt)+) => {
        ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Http, cycle_log(), $($arg)+);
    };
}

/// What one expected reply belongs to.
struct Slot {
    /// The caller's waiter; null for a setup command or once cancelled (a tombstone).
    waiter: *mut Waiter,
    /// `AUTH` / `SELECT`: an error reply means the connection is unusable.
    setup: bool,
    /// The command, kept to resend it once on a fresh connection (see `retry`).
    command: Vec<u8>,
    /// Queued on a connection that had answered before (it may have died while idle):
    /// retried once on a fresh connection if this one turns out closed.
    retry: bool,
    /// When its reply must be in (`ngx_current_msec` clock).
    deadline: ngx_msec_t,
    /// When it was queued, for the round-trip histogram (the cached millisecond clock is
    /// too coarse for it).
    queued_at: Instant,
}

pub(super) struct Conn {
    pc: ngx_peer_connection_t,
    upstream: *const Upstream,
    /// Commands not yet written; `sent` bytes of it are.
    out: Vec<u8>,
    sent: usize,
    /// Bytes received and not yet parsed.
    input: Vec<u8>,
    /// One slot per reply still expected, oldest first.
    pending: VecDeque<Slot>,
    /// The TCP handshake is still in progress: the first write event says it finished.
    connecting: bool,
    /// No reply has come on it yet: a failure is a failure to connect.
    fresh: bool,
}

impl Conn {
    /// Callers' commands in flight (tombstones and setup included: they occupy Redis too).
    pub(super) fn load(&self) -> usize {
        self.pending.len()
    }
}

/// Whether `a` comes before `b` on NGINX's wrapping millisecond clock.
fn before(a: ngx_msec_t, b: ngx_msec_t) -> bool {
    (a.wrapping_sub(b) as ngx_msec_int_t) < 0
}

/// Milliseconds until `deadline`; 0 once it has passed.
fn time_left(deadline: ngx_msec_t) -> ngx_msec_t {
    // The clock's difference read signed, as NGINX's timers do.
    (deadline.wrapping_sub(worker::now()) as ngx_msec_int_t).max(0) as ngx_msec_t
}

/// Arms `ev`'s timer for exactly `ms` (`ngx_add_timer` alone keeps a key that is within
/// 300 ms of the new one, which could fire a deadline early).
///
/// # Safety
/// `ev` is a live event.
unsafe fn arm(ev: *mut ngx_event_t, ms: ngx_msec_t) {
    // SAFETY: the caller's contract.
    unsafe {
        if (*ev).timer_set() != 0 {
            ngx_del_timer(ev);
        }
        ngx::ffi::ngx_add_timer(ev, ms);
    }
}

/// Opens a new connection (the TCP handshake may still be in progress), listed in the
/// worker's pool, with the setup commands queued.
///
/// # Safety
/// `upstream` lives as long as the cycle.
pub(super) unsafe fn connect(upstream: &Upstream) -> Result<*mut Conn, Failure> {
    debug!("sessions redis: connecting to {}", upstream.name());
    let conn = Box::into_raw(Box::new(Conn {
        // SAFETY: `ngx_peer_connection_t` is a C struct for which all-zero is "unset".
        pc: unsafe { core::mem::zeroed() },
        upstream,
        out: Vec::new(),
        sent: 0,
        input: Vec::new(),
        pending: VecDeque::new(),
        connecting: false,
        fresh: true,
    }));
    // SAFETY: `conn` was just allocated; the address and name live in the configuration.
    unsafe {
        let pc = &mut (*conn).pc;
        pc.sockaddr = upstream.sockaddr;
        pc.socklen = upstream.socklen;
        pc.name = ptr::addr_of!(upstream.name).cast_mut();
        pc.get = Some(ngx_event_get_peer);
        pc.log = cycle_log();
        pc.set_log_error(NGX_ERROR_ERR);
        let rc = ngx_event_connect_peer(pc);
        if rc != NGX_OK as isize && rc != NGX_AGAIN as isize {
            if !pc.connection.is_null() {
                ngx_close_connection(pc.connection);
            }
            drop(Box::from_raw(conn));
            return Err(Failure::Connect);
        }
        (*conn).connecting = rc == NGX_AGAIN as isize;
        let c = pc.connection;
        (*c).data = conn.cast();
        (*(*c).read).handler = Some(on_read);
        (*(*c).write).handler = Some(on_write);
        // Setup goes first; its slots take the deadline of the first command behind them.
        for cmd in &upstream.setup {
            (*conn).out.extend_from_slice(cmd);
            (*conn).pending.push_back(Slot {
                waiter: ptr::null_mut(),
                setup: true,
                command: Vec::new(),
                retry: false,
                deadline: 0,
                queued_at: Instant::now(),
            });
        }
        if !(*conn).connecting {
            // Connected at once: nothing else will start the writing (see `enqueue`).
            ngx::ffi::ngx_post_event((*c).write, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events));
        }
        worker::add_conn(conn);
    }
    Ok(conn)
}

/// Queues the waiter's command on `conn`; it fails as timed out unless its reply is in by
/// `deadline`. The write happens from a posted event, never here: the caller must never
/// see `done` before `execute` returns.
///
/// # Safety
/// `conn` is live; `waiter` as in [`super::execute`].
pub(super) unsafe fn enqueue(
    conn: *mut Conn,
    command: Vec<u8>,
    waiter: *mut Waiter,
    deadline: ngx_msec_t,
) {
    // SAFETY: the caller's contract; the connection's events belong to it.
    unsafe {
        let c = (*conn).pc.connection;
        (*c).set_idle(0);
        (*waiter).conn = conn;
        let retry = !(*conn).fresh;
        // Nothing but setup pending: the timer is the keepalive one, or none yet.
        let first = (*conn).pending.iter().all(|s| s.setup);
        if first {
            for slot in (*conn).pending.iter_mut() {
                slot.deadline = deadline;
            }
        }
        // A write already waits (posted, or for the socket) unless the buffer was empty.
        let write_pending = !(*conn).out.is_empty();
        (*conn).out.extend_from_slice(&command);
        (*conn).pending.push_back(Slot {
            waiter,
            setup: false,
            command: if retry { command } else { Vec::new() },
            retry,
            deadline,
            queued_at: Instant::now(),
        });
        let rev = (*c).read;
        // The keepalive timer (nothing was pending) or a later deadline gives way.
        if first || (*rev).timer_set() == 0 || before(deadline, (*rev).timer.key) {
            arm(rev, time_left(deadline));
        }
        let wev = (*c).write;
        // While connecting, the write event fires when the handshake ends (or fails).
        if !(*conn).connecting && !write_pending && (*wev).posted() == 0 {
            ngx::ffi::ngx_post_event(wev, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events));
        }
    }
}

/// Forgets `waiter`'s command: its slot stays as a tombstone, its reply is dropped.
///
/// # Safety
/// `conn` is live and has a slot of `waiter`.
pub(super) unsafe fn tombstone(conn: *mut Conn, waiter: *mut Waiter) {
    // SAFETY: the caller's contract.
    unsafe {
        if let Some(slot) = (*conn).pending.iter_mut().find(|s| s.waiter == waiter) {
            slot.waiter = ptr::null_mut();
            slot.command = Vec::new();
        }
    }
}

/// # Safety
/// `ev` is an event of one of our connections.
unsafe fn conn_of(ev: *mut ngx_event_t) -> *mut Conn {
    // SAFETY: the caller's contract: `data` of our events is the connection, whose `data`
    // is our `Conn` (set in `connect`).
    unsafe {
        let c = (*ev).data.cast::<ngx_connection_t>();
        (*c).data.cast::<Conn>()
    }
}

unsafe extern "C" fn on_write(wev: *mut ngx_event_t) {
    // SAFETY: NGINX calls this with the write event of a connection we made.
    unsafe {
        let conn = conn_of(wev);
        (*conn).connecting = false;
        flush(conn);
    }
}

/// Writes what is left of the output buffer.
///
/// # Safety
/// `conn` is live; it may be gone after.
unsafe fn flush(conn: *mut Conn) {
    // SAFETY: the caller's contract; `c` is the connection's live NGINX connection.
    unsafe {
        let c = (*conn).pc.connection;
        let Some(send) = (*c).send else {
            fail(conn, Failure::Closed);
            return;
        };
        while (*conn).sent < (*conn).out.len() {
            let rest = &(&(*conn).out)[(*conn).sent..];
            let n = send(c, rest.as_ptr().cast_mut(), rest.len());
            if n > 0 {
                (*conn).sent += n as usize;
            } else if n == NGX_AGAIN as isize {
                if ngx_handle_write_event((*c).write, 0) != NGX_OK as isize {
                    fail(conn, Failure::Closed);
                }
                return;
            } else {
                fail(conn, if (*conn).fresh { Failure::Connect } else { Failure::Closed });
                return;
            }
        }
        (*conn).out.clear();
        (*conn).sent = 0;
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
            fail(conn, Failure::Closed);
        }
    }
}

unsafe extern "C" fn on_read(rev: *mut ngx_event_t) {
    // SAFETY: NGINX calls this with the read event of a connection we made.
    unsafe {
        let conn = conn_of(rev);
        let c = (*conn).pc.connection;
        if (*rev).timedout() != 0 {
            (*rev).set_timedout(0);
            if (*conn).pending.is_empty() {
                debug!("sessions redis: idle connection closed (keepalive timeout)");
                close(conn);
            } else if let Some(at) = earliest_deadline(conn).filter(|&d| time_left(d) > 0) {
                // Not due yet (a slot that set it went): wait for the earliest still here.
                arm(rev, time_left(at));
            } else {
                // A command's deadline, whatever it was waiting for.
                fail(conn, if (*conn).connecting { Failure::Connect } else { Failure::Timeout });
            }
            return;
        }
        if (*c).close() != 0 && (*conn).pending.is_empty() {
            // NGINX closing idle connections (graceful shutdown).
            close(conn);
            return;
        }
        read_replies(conn);
    }
}

/// The earliest deadline among the pending slots.
///
/// # Safety
/// `conn` is live.
unsafe fn earliest_deadline(conn: *mut Conn) -> Option<ngx_msec_t> {
    // SAFETY: the caller's contract.
    unsafe {
        (*conn).pending.iter().map(|s| s.deadline).reduce(|a, b| if before(b, a) { b } else { a })
    }
}

/// Reads what Redis sent, hands over every whole reply in order, then waits for more (or
/// idles).
///
/// # Safety
/// `conn` is live; it may be gone after.
unsafe fn read_replies(conn: *mut Conn) {
    // SAFETY: the caller's contract; `c` is the connection's live NGINX connection. No
    // reference into `*conn` is held across `on_reply`, which runs callers' code.
    unsafe {
        let c = (*conn).pc.connection;
        let Some(recv) = (*c).recv else {
            fail(conn, Failure::Closed);
            return;
        };
        let mut ended = false;
        loop {
            // Read until the socket is drained (or a batch is in), then hand over what is
            // whole: a batch bounds the buffer whatever Redis sends.
            let mut batch_full = false;
            loop {
                let input = &mut (*conn).input;
                if input.len() >= READ_BATCH {
                    batch_full = true;
                    break;
                }
                input.reserve(READ_CHUNK);
                let spare = input.spare_capacity_mut();
                let n = recv(c, spare.as_mut_ptr().cast(), spare.len());
                if n > 0 {
                    // SAFETY: `recv` initialised `n` bytes of the spare capacity.
                    input.set_len(input.len() + n as usize);
                    continue;
                }
                if n != NGX_AGAIN as isize {
                    // EOF or an error.
                    ended = true;
                }
                break;
            }
            let mut used = 0;
            while !(*conn).pending.is_empty() {
                let (parsed, len) = parse_reply_len(&(&(*conn).input)[used..]);
                match parsed {
                    Parsed::Incomplete => break,
                    Parsed::Garbage => {
                        fail(conn, Failure::Protocol);
                        return;
                    }
                    Parsed::Complete(reply) => {
                        used += len;
                        if !on_reply(conn, reply) {
                            return;
                        }
                    }
                }
            }
            (*conn).input.drain(..used);
            if (*conn).input.len() > MAX_REPLY
                || ((*conn).pending.is_empty() && !(*conn).input.is_empty())
            {
                // Too large to be ours, or a reply nobody asked for.
                fail(conn, Failure::Protocol);
                return;
            }
            if !batch_full {
                break;
            }
        }
        if ended {
            if (*conn).pending.is_empty() {
                debug!("sessions redis: connection closed by Redis");
                close(conn);
            } else {
                // On a fresh connection that is Redis refusing us (e.g. connection
                // refused), on an established one a connection that died.
                fail(conn, if (*conn).fresh { Failure::Connect } else { Failure::Closed });
            }
            return;
        }
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
            fail(conn, Failure::Closed);
            return;
        }
        match earliest_deadline(conn) {
            Some(at) => {
                // Only when the deadline it waits for is no longer the earliest.
                if (*(*c).read).timer_set() == 0 || (*(*c).read).timer.key != at {
                    arm((*c).read, time_left(at));
                }
            }
            None => idle(conn),
        }
    }
}

/// Nothing pending: the connection waits for the next command, closed after the keepalive
/// timeout (at once with `sessions_redis_keepalive 0` or when the worker exits).
///
/// # Safety
/// `conn` is live with nothing pending; it may be gone after.
unsafe fn idle(conn: *mut Conn) {
    // SAFETY: the caller's contract.
    unsafe {
        let c = (*conn).pc.connection;
        let up = &*(*conn).upstream;
        if ngx_exiting != 0 || up.keepalive == 0 {
            close(conn);
            return;
        }
        // Marked idle, NGINX's graceful shutdown closes it through `on_read`.
        (*c).set_idle(1);
        arm((*c).read, up.keepalive_timeout);
    }
}

/// One reply, for the oldest slot. Returns whether the connection is still there.
///
/// # Safety
/// `conn` is live and has a pending slot.
unsafe fn on_reply(conn: *mut Conn, reply: Reply) -> bool {
    // SAFETY: the caller's contract; `upstream` lives as long as the cycle.
    unsafe {
        let up = &*(*conn).upstream;
        (*conn).fresh = false;
        let Some(slot) = (*conn).pending.pop_front() else {
            return true;
        };
        if slot.setup {
            if let Reply::Error(e) = &reply {
                worker::mark_down(up, &format!("AUTH or SELECT refused: {e}"));
                fail(conn, Failure::Setup);
                return false;
            }
            return true;
        }
        let round_trip = slot.queued_at.elapsed();
        crate::metrics::with_worker(|w| {
            w.redis_round_trip(u64::try_from(round_trip.as_micros()).unwrap_or(u64::MAX));
            if matches!(reply, Reply::Error(_)) {
                w.redis_error();
            }
        });
        // Errors that say Redis cannot serve anyone (auth, read-only replica, out of
        // memory, loading) open the breaker like a dead connection.
        match &reply {
            Reply::Error(e) if is_server_failure(e) => worker::mark_down(up, e),
            _ => worker::mark_up(up),
        }
        if !slot.waiter.is_null() {
            // The callback may queue more commands, on this connection too; it never
            // closes one.
            Waiter::complete(slot.waiter, Ok(reply));
        }
        true
    }
}

/// A failure on a connection: it is closed, and every command on it fails with `f`, but
/// those queued on a connection that had answered before (it may have died while idle)
/// are retried once on a fresh connection, while they have time left.
///
/// # Safety
/// `conn` is live; it is gone after.
unsafe fn fail(conn: *mut Conn, f: Failure) {
    // SAFETY: the caller's contract; the waiters of the slots are live (a cancelled
    // waiter cleared its slot first); `upstream` lives as long as the cycle. The `Conn`
    // outlives the callbacks below: a waiter cancelled by one of them still finds its
    // slot here to clear, and nothing else reaches the connection once it left the pool.
    unsafe {
        debug!("sessions redis: {}", f.as_str());
        let upstream = &*(*conn).upstream;
        close_socket(conn);
        // Retries first: they call nobody back.
        if matches!(f, Failure::Closed | Failure::Protocol) {
            let mut fresh: Option<*mut Conn> = None;
            for slot in (*conn).pending.iter_mut() {
                if slot.waiter.is_null() || !slot.retry || time_left(slot.deadline) == 0 {
                    continue;
                }
                let target = match fresh {
                    Some(target) => target,
                    None => match connect(upstream) {
                        Ok(target) => *fresh.insert(target),
                        Err(_) => break,
                    },
                };
                enqueue(target, core::mem::take(&mut slot.command), slot.waiter, slot.deadline);
                slot.waiter = ptr::null_mut();
            }
        }
        if f != Failure::Protocol && (*conn).pending.iter().any(|s| !s.waiter.is_null()) {
            worker::mark_down(upstream, f.as_str());
        }
        while let Some(slot) = (*conn).pending.pop_front() {
            if !slot.waiter.is_null() {
                crate::metrics::with_worker(|w| w.redis_error());
                Waiter::complete(slot.waiter, Err(f));
            }
        }
        drop(Box::from_raw(conn));
    }
}

/// Closes the socket, takes the connection out of the pool and frees it. The waiters of
/// its slots, if any, must have been dealt with.
///
/// # Safety
/// `conn` is live; it is gone after.
pub(super) unsafe fn close(conn: *mut Conn) {
    // SAFETY: the caller's contract; `conn` came from `Box::into_raw` in `connect`.
    unsafe {
        close_socket(conn);
        drop(Box::from_raw(conn));
    }
}

/// Closes the socket and takes the connection out of the pool; the `Conn` stays.
///
/// # Safety
/// `conn` is live.
unsafe fn close_socket(conn: *mut Conn) {
    worker::remove_conn(conn);
    // SAFETY: the caller's contract; a non-null `pc.connection` is ours to close.
    unsafe {
        let c = (*conn).pc.connection;
        if !c.is_null() {
            ngx_close_connection(c);
            (*conn).pc.connection = ptr::null_mut();
        }
    }
}

/// Error replies that concern every command, not just this one.
fn is_server_failure(error: &str) -> bool {
    const CODES: [&str; 9] = [
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "READONLY",
        "OOM",
        "MISCONF",
        "LOADING",
        "MASTERDOWN",
        "BUSY",
    ];
    let code = error.split(' ').next().unwrap_or("");
    CODES.contains(&code)
}
