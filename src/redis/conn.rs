//! One Redis connection: connect, the setup commands (`AUTH`, `SELECT`) on a fresh
//! connection, then the caller's command; write, read a whole reply, hand it over, and go
//! back to the keepalive pool. A connection is a `Box<Conn>` owned by whoever holds the
//! pointer: the pool while idle, the connection itself (its events) while busy.
//!
//! One timer bounds a command as a whole: the read event's, armed when the command starts
//! with its deadline and never re-armed by progress, so a Redis that drips its reply byte
//! by byte cannot stretch it. When it fires the connection is closed (a half-read reply
//! must never meet the next command).

use core::ptr;
use std::time::Instant;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_log_error_e_NGX_ERROR_ERR as NGX_ERROR_ERR,
    ngx_connection_t, ngx_del_timer, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t,
    ngx_exiting, ngx_handle_read_event, ngx_handle_write_event, ngx_msec_int_t, ngx_msec_t,
    ngx_peer_connection_t, NGX_AGAIN, NGX_OK,
};

use super::tls;
use super::worker::{self, cycle_log};
use super::{Failure, Upstream, Waiter};
use crate::redis_flow::{parse_reply, Parsed, Reply};

/// Bytes read per `recv` call.
const READ_CHUNK: usize = 4096;
/// Replies larger than this are not ours: the connection is dropped.
const MAX_REPLY: usize = 64 * 1024;

/// `[debug]` lines about the client, on the cycle's log.
macro_rules! debug {
    ($($arg:tt)+) => {
        ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Http, cycle_log(), $($arg)+);
    };
}

enum Phase {
    /// Sending setup command `i`, then the request's command.
    Setup(usize),
    Command,
}

pub(super) struct Conn {
    pc: ngx_peer_connection_t,
    upstream: *const Upstream,
    out: Vec<u8>,
    sent: usize,
    input: Vec<u8>,
    /// The request's command, kept to resend it once on a fresh connection.
    command: Vec<u8>,
    phase: Phase,
    waiter: *mut Waiter,
    /// Came from the keepalive pool (may have died while idle): retried once.
    reused: bool,
    /// The TCP handshake is still in progress: the first write event says it finished.
    connecting: bool,
    /// When the command in flight must be over (`ngx_current_msec` clock), setup and a
    /// retry on a fresh connection included.
    deadline: ngx_msec_t,
    /// When the caller's command began to be written, for the round-trip histogram (the
    /// cached millisecond clock is too coarse for it).
    sent_at: Option<Instant>,
}

/// Whether a pooled connection was closed by NGINX meanwhile.
///
/// # Safety
/// `conn` is live.
pub(super) unsafe fn is_dead(conn: *mut Conn) -> bool {
    // SAFETY: the caller's contract.
    unsafe { (*conn).pc.connection.is_null() }
}

/// Frees a connection whose socket is already closed.
///
/// # Safety
/// `conn` is live, closed, in no pool, and not used after.
pub(super) unsafe fn free(conn: *mut Conn) {
    // SAFETY: the caller's contract; `conn` came from `Box::into_raw` in `connect`.
    drop(unsafe { Box::from_raw(conn) });
}

/// Milliseconds until `deadline`; 0 once it has passed.
fn time_left(deadline: ngx_msec_t) -> ngx_msec_t {
    // The clock's difference read signed, as NGINX's timers do.
    (deadline.wrapping_sub(worker::now()) as ngx_msec_int_t).max(0) as ngx_msec_t
}

/// Starts the waiter's command on `conn` (fresh, or `reused` from the pool); it fails as
/// timed out unless its reply is in by `deadline`.
///
/// # Safety
/// `conn` is live and owned by the caller, with no timer set; `waiter` as in
/// [`super::execute`].
pub(super) unsafe fn start(
    conn: *mut Conn,
    command: Vec<u8>,
    waiter: *mut Waiter,
    reused: bool,
    deadline: ngx_msec_t,
) {
    // SAFETY: the caller's contract; the connection's events belong to it.
    unsafe {
        debug!("sessions redis: command on a {} connection", if reused { "pooled" } else { "new" });
        let c = (*conn).pc.connection;
        (*c).set_idle(0);
        (*(*c).read).handler = Some(on_read);
        (*(*c).write).handler = Some(on_write);
        (*conn).reused = reused;
        (*conn).waiter = waiter;
        (*waiter).conn = conn;
        (*conn).command = command;
        (*conn).input.clear();
        (*conn).phase = if reused { Phase::Command } else { Phase::Setup(0) };
        (*conn).deadline = deadline;
        load_next(conn);
        // The one timer of the command (handshake, setup, write, reply): see `on_read`.
        ngx::ffi::ngx_add_timer((*c).read, time_left(deadline));
        let wev = (*c).write;
        // While connecting, the write event fires when the handshake ends (or fails).
        if !(*conn).connecting {
            // Write from a posted event, not inline: the caller must never see `done`
            // before `execute` returns.
            (*wev).set_ready(1);
            ngx::ffi::ngx_post_event(wev, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events));
        }
    }
}

/// Puts the next command of the connection's sequence into the output buffer.
///
/// # Safety
/// `conn` is live.
unsafe fn load_next(conn: *mut Conn) {
    // SAFETY: the caller's contract; `upstream` lives as long as the cycle.
    let (conn, up) = unsafe { (&mut *conn, &*(*conn).upstream) };
    conn.out.clear();
    conn.sent = 0;
    match conn.phase {
        Phase::Setup(i) if i < up.setup.len() => conn.out.extend_from_slice(&up.setup[i]),
        _ => {
            conn.phase = Phase::Command;
            conn.out.extend_from_slice(&conn.command);
            conn.sent_at = Some(Instant::now());
        }
    }
}

/// Opens a new connection (the TCP handshake may still be in progress).
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
        command: Vec::new(),
        phase: Phase::Setup(0),
        waiter: ptr::null_mut(),
        reused: false,
        connecting: false,
        deadline: 0,
        sent_at: None,
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
    }
    Ok(conn)
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

/// Writes what is left of the output buffer, then waits for the reply.
///
/// # Safety
/// `conn` is live and busy.
unsafe fn flush(conn: *mut Conn) {
    // SAFETY: the caller's contract; `c` is the connection's live NGINX connection.
    unsafe {
        let c = (*conn).pc.connection;
        // `rediss://`: the TLS handshake comes first, then everything goes on as before
        // (`c.send` / `c.recv` are NGINX's SSL ones after it).
        if let Some(peer) = (*(*conn).upstream).tls.as_ref().filter(|_| (*c).ssl.is_null()) {
            match tls::start(c, &*(*conn).upstream, peer, Some(on_handshake)) {
                Ok(true) => set_handlers(c),
                Ok(false) => return,
                Err(f) => return fail(conn, f),
            }
        }
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
                let f = if (*conn).reused { Failure::Closed } else { Failure::Connect };
                fail(conn, f);
                return;
            }
        }
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
            fail(conn, Failure::Closed);
            return;
        }
        // The reply may already be there (edge-triggered events fire once).
        if (*(*c).read).ready() != 0 {
            read_reply(conn);
        }
    }
}

/// NGINX calls this when a TLS handshake that needed I/O is over (or timed out).
unsafe extern "C" fn on_handshake(c: *mut ngx_connection_t) {
    // SAFETY: NGINX calls this with a connection of ours on which `tls::start` began TLS.
    unsafe {
        let conn = (*c).data.cast::<Conn>();
        let up = &*(*conn).upstream;
        match up.tls.as_ref().map_or(Err(Failure::Tls), |peer| tls::finish(c, up, peer)) {
            Ok(()) => {
                set_handlers(c);
                flush(conn);
            }
            Err(f) => fail(conn, f),
        }
    }
}

/// Our handlers back on a connection's events (the TLS handshake borrowed them).
///
/// # Safety
/// `c` is a live connection of ours.
unsafe fn set_handlers(c: *mut ngx_connection_t) {
    // SAFETY: the caller's contract.
    unsafe {
        (*(*c).read).handler = Some(on_read);
        (*(*c).write).handler = Some(on_write);
    }
}

unsafe extern "C" fn on_read(rev: *mut ngx_event_t) {
    // SAFETY: NGINX calls this with the read event of a connection we made.
    unsafe {
        let conn = conn_of(rev);
        if (*rev).timedout() != 0 {
            // The command's deadline, whatever it was waiting for.
            let f = if (*conn).connecting { Failure::Connect } else { Failure::Timeout };
            fail(conn, f);
            return;
        }
        read_reply(conn);
    }
}

/// Reads until a whole reply is in, then acts on it.
///
/// # Safety
/// `conn` is live and busy.
unsafe fn read_reply(conn: *mut Conn) {
    // SAFETY: the caller's contract; `c` is the connection's live NGINX connection.
    unsafe {
        let c = (*conn).pc.connection;
        let Some(recv) = (*c).recv else {
            fail(conn, Failure::Closed);
            return;
        };
        loop {
            let mut chunk = [0u8; READ_CHUNK];
            let n = recv(c, chunk.as_mut_ptr(), chunk.len());
            if n > 0 {
                (*conn).input.extend_from_slice(&chunk[..n as usize]);
                if (*conn).input.len() > MAX_REPLY {
                    fail(conn, Failure::Protocol);
                    return;
                }
                continue;
            }
            if n == NGX_AGAIN as isize {
                break;
            }
            // EOF or an error before a whole reply: on a fresh connection that is Redis
            // refusing us (e.g. connection refused), on a pooled one a stale connection.
            fail(conn, if (*conn).reused { Failure::Closed } else { Failure::Connect });
            return;
        }
        match parse_reply(&(*conn).input) {
            Parsed::Incomplete => {
                if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
                    fail(conn, Failure::Closed);
                }
            }
            Parsed::Garbage => fail(conn, Failure::Protocol),
            Parsed::Complete(reply) => {
                (*conn).input.clear();
                on_reply(conn, reply);
            }
        }
    }
}

/// A whole reply: the next setup command, or the caller's answer.
///
/// # Safety
/// `conn` is live and busy.
unsafe fn on_reply(conn: *mut Conn, reply: Reply) {
    // SAFETY: the caller's contract; `upstream` lives as long as the cycle.
    unsafe {
        let up = &*(*conn).upstream;
        match (*conn).phase {
            Phase::Setup(i) => {
                if let Reply::Error(e) = &reply {
                    worker::mark_down(up, &format!("AUTH or SELECT refused: {e}"));
                    fail(conn, Failure::Setup);
                    return;
                }
                (*conn).phase = Phase::Setup(i + 1);
                load_next(conn);
                flush(conn);
            }
            Phase::Command => {
                let round_trip = (*conn).sent_at.take().map(|t| t.elapsed());
                crate::metrics::with_worker(|w| {
                    if let Some(d) = round_trip {
                        w.redis_round_trip(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
                    }
                    if matches!(reply, Reply::Error(_)) {
                        w.redis_error();
                    }
                });
                // Errors that say Redis cannot serve anyone (auth, read-only replica,
                // out of memory, loading) open the breaker like a dead connection.
                match &reply {
                    Reply::Error(e) if is_server_failure(e) => worker::mark_down(up, e),
                    _ => worker::mark_up(up),
                }
                let waiter = core::mem::replace(&mut (*conn).waiter, ptr::null_mut());
                release(conn);
                if !waiter.is_null() {
                    Waiter::complete(waiter, Ok(reply));
                }
            }
        }
    }
}

/// A failure on a connection: retried once on a fresh connection if the connection came
/// from the pool (it may have died while idle), else reported.
///
/// # Safety
/// `conn` is live and busy; it is gone after.
unsafe fn fail(conn: *mut Conn, f: Failure) {
    // SAFETY: the caller's contract; the waiter, if any, is live (a cancelled waiter
    // cleared `conn.waiter` first).
    unsafe {
        debug!("sessions redis: {}", f.as_str());
        let waiter = core::mem::replace(&mut (*conn).waiter, ptr::null_mut());
        let (reused, deadline) = ((*conn).reused, (*conn).deadline);
        let command = core::mem::take(&mut (*conn).command);
        let upstream = &*(*conn).upstream;
        close(conn);
        if waiter.is_null() {
            return;
        }
        // The retry is the same command: same deadline, and only while time is left.
        if reused && matches!(f, Failure::Closed | Failure::Protocol) && time_left(deadline) > 0 {
            if let Ok(fresh) = connect(upstream) {
                start(fresh, command, waiter, false, deadline);
                return;
            }
        }
        if f != Failure::Protocol {
            worker::mark_down(upstream, f.as_str());
        }
        crate::metrics::with_worker(|w| w.redis_error());
        Waiter::complete(waiter, Err(f));
    }
}

/// Back to the keepalive pool, or closed when the pool is full or the worker exits.
///
/// # Safety
/// `conn` is live, busy and no longer serving a waiter.
unsafe fn release(conn: *mut Conn) {
    // SAFETY: the caller's contract.
    unsafe {
        let c = (*conn).pc.connection;
        let keep = (*(*conn).upstream).keepalive;
        if (*(*c).read).timer_set() != 0 {
            ngx_del_timer((*c).read);
        }
        if ngx_exiting != 0 || (*(*c).read).ready() != 0 {
            close(conn);
            return;
        }
        (*c).set_idle(1);
        (*(*c).read).handler = Some(on_idle_read);
        (*(*c).write).handler = Some(on_idle_write);
        if let Err(conn) = worker::push_idle(conn, keep) {
            close(conn);
        }
    }
}

/// Redis sends nothing unasked: data, EOF or NGINX closing idle connections (graceful
/// shutdown sets `close`) all end an idle connection.
unsafe extern "C" fn on_idle_read(rev: *mut ngx_event_t) {
    // SAFETY: NGINX calls this with the read event of a pooled connection of ours.
    unsafe {
        let conn = conn_of(rev);
        debug!("sessions redis: idle connection closed");
        close(conn);
    }
}

unsafe extern "C" fn on_idle_write(_wev: *mut ngx_event_t) {}

/// Called by a cancelled waiter: the reply would be stale, so the connection goes.
///
/// # Safety
/// `conn` is live and busy serving the waiter being cancelled.
pub(super) unsafe fn detach_and_close(conn: *mut Conn) {
    // SAFETY: the caller's contract.
    unsafe {
        (*conn).waiter = ptr::null_mut();
        close(conn);
    }
}

/// Closes the socket, takes the connection out of the pool and frees it.
///
/// # Safety
/// `conn` is live; it is gone after.
pub(super) unsafe fn close(conn: *mut Conn) {
    worker::remove_idle(conn);
    // SAFETY: the caller's contract; a non-null `pc.connection` is ours to close.
    unsafe {
        let c = (*conn).pc.connection;
        if !c.is_null() {
            tls::close_connection(c);
            (*conn).pc.connection = ptr::null_mut();
        }
        free(conn);
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
