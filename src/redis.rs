//! A Redis client on the NGINX event loop: per worker, a pool of keepalive connections
//! made with `ngx_event_connect_peer`, NGINX timers for every wait, one command in flight
//! per connection, and a circuit breaker so that a dead Redis costs one connection attempt
//! per second per worker, not one per request. No threads, no blocking calls.
//!
//! Callers hand over a command with a `Waiter`; the reply (or the failure) comes back
//! through `Waiter::done`, always from an event handler, never from `execute` itself.

use core::ptr;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_log_error_e_NGX_ERROR_ERR as NGX_ERROR_ERR,
    ngx_connection_t, ngx_current_msec, ngx_del_timer, ngx_event_connect_peer, ngx_event_get_peer,
    ngx_event_t, ngx_exiting, ngx_handle_read_event, ngx_handle_write_event, ngx_log_t, ngx_msec_t,
    ngx_peer_connection_t, ngx_str_t, sockaddr, socklen_t, NGX_AGAIN, NGX_LOG_ERR, NGX_LOG_NOTICE,
    NGX_OK,
};
use ngx::ngx_log_error;

use crate::redis_flow::{parse_reply, Parsed, Reply};

/// How long a worker waits before trying a Redis that failed again.
const RETRY_INTERVAL: ngx_msec_t = 1000;
/// Bytes read per `recv` call.
const READ_CHUNK: usize = 4096;
/// Replies larger than this are not ours: the connection is dropped.
const MAX_REPLY: usize = 64 * 1024;

/// Where and how to reach Redis, resolved at configuration time.
#[derive(Clone)]
pub struct Upstream {
    pub sockaddr: *mut sockaddr,
    pub socklen: socklen_t,
    pub name: ngx_str_t,
    /// `AUTH` / `SELECT` sent on every new connection.
    pub setup: Vec<Vec<u8>>,
    pub timeout: ngx_msec_t,
    pub keepalive: usize,
}

/// Why a command got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
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

/// The request side of a command in flight. It lives in request memory; when the request
/// goes away first, `cancel` detaches it so that the reply is dropped.
pub struct Waiter {
    conn: *mut Conn,
    pub done: unsafe fn(*mut Waiter, Result<Reply, Failure>),
}

impl Waiter {
    pub const fn new(done: unsafe fn(*mut Waiter, Result<Reply, Failure>)) -> Self {
        Waiter { conn: ptr::null_mut(), done }
    }

    /// Forgets the command in flight; its connection is closed (its reply would be
    /// stale), not returned to the pool.
    pub fn cancel(&mut self) {
        if self.conn.is_null() {
            return;
        }
        // SAFETY: a non-null `conn` is a live connection serving this waiter.
        unsafe {
            (*self.conn).waiter = ptr::null_mut();
            close(self.conn);
        }
        self.conn = ptr::null_mut();
    }
}

enum Phase {
    /// Sending setup command `i`, then the request's command.
    Setup(usize),
    Command,
}

struct Conn {
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
}

/// Per-worker client state. Workers are single-threaded; only event handlers and request
/// handlers of this worker touch it.
struct Worker {
    idle: Vec<*mut Conn>,
    down: bool,
    retry_at: ngx_msec_t,
}

static mut WORKER: Worker = Worker { idle: Vec::new(), down: false, retry_at: 0 };

fn worker() -> &'static mut Worker {
    // SAFETY: see `Worker`: one thread per worker process, no reentrancy across awaits.
    unsafe { &mut *ptr::addr_of_mut!(WORKER) }
}

fn now() -> ngx_msec_t {
    // SAFETY: NGINX updates the cached time on the worker's own thread.
    unsafe { ngx_current_msec }
}

fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: `ngx_cycle` is valid in a worker.
    unsafe { (*ngx::ffi::ngx_cycle).log }
}

/// Sends `command` and arranges for `waiter.done` to be called with the reply. `Err` means
/// it could not even be started (and `done` will not be called).
///
/// # Safety
/// `upstream` outlives the worker's cycle; `waiter` stays valid until `done` is called
/// or it is cancelled.
pub unsafe fn execute(
    upstream: &Upstream,
    command: Vec<u8>,
    waiter: *mut Waiter,
) -> Result<(), Failure> {
    let w = worker();
    if w.down && now() < w.retry_at {
        return Err(Failure::Down);
    }
    if w.down {
        // Half-open: this request probes; the others keep failing fast meanwhile.
        w.retry_at = now().wrapping_add(RETRY_INTERVAL);
    }
    while let Some(conn) = w.idle.pop() {
        if (*conn).pc.connection.is_null() {
            drop(Box::from_raw(conn));
            continue;
        }
        start_on(conn, command, waiter, true);
        return Ok(());
    }
    let conn = connect(upstream).inspect_err(|&f| mark_down(upstream, f.as_str()))?;
    start_on(conn, command, waiter, false);
    Ok(())
}

unsafe fn start_on(conn: *mut Conn, command: Vec<u8>, waiter: *mut Waiter, reused: bool) {
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
    load_next(conn);
    let wev = (*c).write;
    if (*conn).connecting {
        // The write event fires when the handshake ends (or fails); bound the wait.
        ngx::ffi::ngx_add_timer(wev, (*(*conn).upstream).timeout);
    } else {
        // Write from a posted event, not inline: the caller must never see `done`
        // before `execute` returns.
        (*wev).set_ready(1);
        ngx::ffi::ngx_post_event(wev, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events));
    }
}

/// Puts the next command of the connection's sequence into the output buffer.
unsafe fn load_next(conn: *mut Conn) {
    let up = &*(*conn).upstream;
    (*conn).out.clear();
    (*conn).sent = 0;
    match (*conn).phase {
        Phase::Setup(i) if i < up.setup.len() => (*conn).out.extend_from_slice(&up.setup[i]),
        _ => {
            (*conn).phase = Phase::Command;
            let cmd = core::mem::take(&mut (*conn).command);
            (*conn).out.extend_from_slice(&cmd);
            (*conn).command = cmd;
        }
    }
}

unsafe fn connect(upstream: &Upstream) -> Result<*mut Conn, Failure> {
    let conn = Box::into_raw(Box::new(Conn {
        pc: core::mem::zeroed(),
        upstream,
        out: Vec::new(),
        sent: 0,
        input: Vec::new(),
        command: Vec::new(),
        phase: Phase::Setup(0),
        waiter: ptr::null_mut(),
        reused: false,
        connecting: false,
    }));
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
    Ok(conn)
}

unsafe fn conn_of(ev: *mut ngx_event_t) -> *mut Conn {
    let c = (*ev).data.cast::<ngx_connection_t>();
    (*c).data.cast::<Conn>()
}

unsafe extern "C" fn on_write(wev: *mut ngx_event_t) {
    let conn = conn_of(wev);
    if (*wev).timedout() != 0 {
        let f = if (*conn).connecting { Failure::Connect } else { Failure::Timeout };
        fail(conn, f);
        return;
    }
    (*conn).connecting = false;
    flush(conn);
}

unsafe fn flush(conn: *mut Conn) {
    let c = (*conn).pc.connection;
    let up = &*(*conn).upstream;
    let Some(send) = (*c).send else {
        fail(conn, Failure::Closed);
        return;
    };
    while (*conn).sent < (*conn).out.len() {
        let out = &(*conn).out;
        let rest = &out[(*conn).sent..];
        let n = send(c, rest.as_ptr().cast_mut(), rest.len());
        if n > 0 {
            (*conn).sent += n as usize;
        } else if n == NGX_AGAIN as isize {
            if (*(*c).write).timer_set() == 0 {
                ngx::ffi::ngx_add_timer((*c).write, up.timeout);
            }
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
    if (*(*c).write).timer_set() != 0 {
        ngx_del_timer((*c).write);
    }
    ngx::ffi::ngx_add_timer((*c).read, up.timeout);
    if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
        fail(conn, Failure::Closed);
        return;
    }
    // The reply may already be there (edge-triggered events fire once).
    if (*(*c).read).ready() != 0 {
        read_reply(conn);
    }
}

unsafe extern "C" fn on_read(rev: *mut ngx_event_t) {
    let conn = conn_of(rev);
    if (*rev).timedout() != 0 {
        fail(conn, Failure::Timeout);
        return;
    }
    read_reply(conn);
}

unsafe fn read_reply(conn: *mut Conn) {
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
            if (*(*c).read).timer_set() != 0 {
                ngx_del_timer((*c).read);
            }
            (*conn).input.clear();
            match (*conn).phase {
                Phase::Setup(i) => {
                    if let Reply::Error(e) = &reply {
                        mark_down(&*(*conn).upstream, &format!("AUTH or SELECT refused: {e}"));
                        fail(conn, Failure::Setup);
                        return;
                    }
                    (*conn).phase = Phase::Setup(i + 1);
                    load_next(conn);
                    flush(conn);
                }
                Phase::Command => {
                    // Errors that say Redis cannot serve anyone (auth, read-only replica,
                    // out of memory, loading) open the breaker like a dead connection.
                    match &reply {
                        Reply::Error(e) if is_server_failure(e) => mark_down(&*(*conn).upstream, e),
                        _ => mark_up(&*(*conn).upstream),
                    }
                    let waiter = (*conn).waiter;
                    (*conn).waiter = ptr::null_mut();
                    release(conn);
                    if !waiter.is_null() {
                        (*waiter).conn = ptr::null_mut();
                        ((*waiter).done)(waiter, Ok(reply));
                    }
                }
            }
        }
    }
}

/// A failure on a connection: retried once on a fresh connection if the connection came
/// from the pool (it may have died while idle), else reported.
unsafe fn fail(conn: *mut Conn, f: Failure) {
    let waiter = (*conn).waiter;
    let reused = (*conn).reused;
    let command = core::mem::take(&mut (*conn).command);
    let upstream = (*conn).upstream;
    (*conn).waiter = ptr::null_mut();
    close(conn);
    if waiter.is_null() {
        return;
    }
    (*waiter).conn = ptr::null_mut();
    if reused && matches!(f, Failure::Closed | Failure::Protocol) {
        if let Ok(fresh) = connect(&*upstream) {
            start_on(fresh, command, waiter, false);
            return;
        }
    }
    if f != Failure::Protocol {
        mark_down(&*upstream, f.as_str());
    }
    ((*waiter).done)(waiter, Err(f));
}

/// Back to the keepalive pool, or closed when the pool is full or the worker exits.
unsafe fn release(conn: *mut Conn) {
    let w = worker();
    let c = (*conn).pc.connection;
    let keep = (*(*conn).upstream).keepalive;
    if ngx_exiting != 0 || w.idle.len() >= keep || (*(*c).read).ready() != 0 {
        close(conn);
        return;
    }
    (*c).set_idle(1);
    (*(*c).read).handler = Some(on_idle_read);
    (*(*c).write).handler = Some(on_idle_write);
    w.idle.push(conn);
}

/// Redis sends nothing unasked: data, EOF or NGINX closing idle connections (graceful
/// shutdown sets `close`) all end an idle connection.
unsafe extern "C" fn on_idle_read(rev: *mut ngx_event_t) {
    let conn = conn_of(rev);
    let w = worker();
    w.idle.retain(|&p| p != conn);
    close(conn);
}

unsafe extern "C" fn on_idle_write(_wev: *mut ngx_event_t) {}

unsafe fn close(conn: *mut Conn) {
    let c = (*conn).pc.connection;
    if !c.is_null() {
        ngx_close_connection(c);
        (*conn).pc.connection = ptr::null_mut();
    }
    let w = worker();
    if w.idle.contains(&conn) {
        w.idle.retain(|&p| p != conn);
    }
    drop(Box::from_raw(conn));
}

/// Closes the idle pool (worker exit).
pub fn close_idle() {
    let w = worker();
    while let Some(conn) = w.idle.pop() {
        // SAFETY: pooled connections are live and owned by the pool.
        unsafe { close(conn) };
    }
}

fn upstream_name(up: &Upstream) -> &str {
    core::str::from_utf8(up.name.as_bytes()).unwrap_or("redis")
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

/// Opens the breaker; one log line when the state changes, not one per request.
fn mark_down(up: &Upstream, reason: &str) {
    let w = worker();
    w.retry_at = now().wrapping_add(RETRY_INTERVAL);
    if !w.down {
        w.down = true;
        ngx_log_error!(
            NGX_LOG_ERR,
            cycle_log(),
            "sessions: Redis at {} is unavailable ({}); sessions answer \"error\" and retries are limited to one per {}ms",
            upstream_name(up),
            reason,
            RETRY_INTERVAL
        );
    }
}

fn mark_up(up: &Upstream) {
    let w = worker();
    if w.down {
        w.down = false;
        ngx_log_error!(
            NGX_LOG_NOTICE,
            cycle_log(),
            "sessions: Redis at {} is available again",
            upstream_name(up)
        );
    }
}
