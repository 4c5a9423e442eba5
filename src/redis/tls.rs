//! TLS to Redis (`rediss://`) with NGINX's own SSL layer, on the event loop.
//!
//! - Configuration time: [`create_context`] makes one `SSL_CTX` with `ngx_ssl_create`, the
//!   CAs (`ngx_ssl_trusted_certificate`, or the system's), the client certificate
//!   (`ngx_ssl_certificate`) and the client session cache.
//! - Per connection, after the TCP connect: [`start`] tests the connect, creates the SSL
//!   connection (`ngx_ssl_create_connection`, SNI, the saved session) and runs
//!   `ngx_ssl_handshake`; if that needs more I/O, NGINX calls the caller's `resume` when it
//!   is over, which calls [`finish`]. `finish` checks the certificate: NGINX's verify
//!   callback never fails a handshake, so the chain (`SSL_get_verify_result`) and the name
//!   (`ngx_ssl_check_host`, `X509_check_ip_asc` for an IP) are checked after it, as
//!   `ngx_http_upstream_ssl_handshake` does.
//! - After the handshake `c->recv` / `c->send` are NGINX's SSL ones: reading and writing
//!   need no change. [`close_connection`] frees the SSL object and the connection's pool.
//!
//! The TLS session of the last handshake is kept per worker (in the context, which each
//! worker has its own copy of after fork) and offered on the next new connection, so a
//! new connection costs an abbreviated handshake.

use core::cell::UnsafeCell;
use core::ffi::{c_int, c_long, c_void, CStr};
use core::ptr;
use std::ffi::CString;

use ngx::ffi::{
    getsockopt, ngx_close_connection, ngx_conf_t, ngx_connection_error, ngx_connection_handler_pt,
    ngx_connection_t, ngx_create_pool, ngx_destroy_pool, ngx_int_t, ngx_log_t, ngx_palloc,
    ngx_pool_cleanup_add, ngx_ssl_certificate, ngx_ssl_check_host, ngx_ssl_cleanup_ctx,
    ngx_ssl_client_session_cache, ngx_ssl_create, ngx_ssl_create_connection, ngx_ssl_get_session,
    ngx_ssl_handshake, ngx_ssl_set_session, ngx_ssl_shutdown, ngx_ssl_t,
    ngx_ssl_trusted_certificate, ngx_str_t, ngx_tcp_nodelay, ngx_uint_t, NGX_SSL_TLSv1_2,
    NGX_SSL_TLSv1_3, SSL_CTX_ctrl, SSL_CTX_set_default_verify_paths, SSL_SESSION_free, SSL_ctrl,
    SSL_get1_peer_certificate, SSL_get_verify_result, SSL_get_version, SSL_session_reused,
    TLSEXT_NAMETYPE_host_name, X509_check_ip_asc, X509_free, X509_verify_cert_error_string,
    NGX_AGAIN, NGX_OK, NGX_SSL_CLIENT, SOL_SOCKET, SO_ERROR, SSL_CTRL_CLEAR_MODE, SSL_CTRL_MODE,
    SSL_CTRL_SET_TLSEXT_HOSTNAME, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, SSL_MODE_RELEASE_BUFFERS,
    SSL_SESSION, X509_V_OK,
};

use super::{worker, Failure, Upstream};

/// How many certificates deep a chain may be (OpenSSL's own default).
const VERIFY_DEPTH: ngx_int_t = 100;
/// Each TLS connection's pool: the SSL connection struct and the connection's log.
const CONN_POOL_SIZE: usize = 512;

/// `sessions_redis_ssl_*` as written (full paths, NUL-terminated, in the configuration
/// pool).
pub(crate) struct TlsOptions {
    pub(crate) verify: bool,
    pub(crate) trusted_certificate: Option<ngx_str_t>,
    /// The client certificate and its key (the configuration checks both or neither).
    pub(crate) certificate: Option<(ngx_str_t, ngx_str_t)>,
}

/// The SSL context, shared by every connection to Redis (and to the sentinels).
///
/// `ssl` is first: `ngx_ssl_create` stores its address in the `SSL_CTX`, so the context
/// lives at a fixed address, in the configuration pool ([`create_context`]).
#[repr(C)]
pub(crate) struct TlsContext {
    ssl: ngx_ssl_t,
    verify: bool,
    /// Per worker: the last TLS session of each server (by its address text), offered to
    /// the next new connection to it.
    sessions: UnsafeCell<Vec<(Vec<u8>, *mut SSL_SESSION)>>,
}

impl TlsContext {
    /// The session saved for `peer`, if any (still owned by the context).
    fn session_for(&self, peer: &[u8]) -> *mut SSL_SESSION {
        // SAFETY: a worker is single-threaded and no reference to the list outlives a call.
        let sessions = unsafe { &*self.sessions.get() };
        sessions.iter().find(|(p, _)| p == peer).map_or(ptr::null_mut(), |&(_, s)| s)
    }

    /// Keeps `session` (one reference, now the context's) for `peer`, freeing the old one.
    fn save_session(&self, peer: &[u8], session: *mut SSL_SESSION) {
        // SAFETY: as in `session_for`.
        let sessions = unsafe { &mut *self.sessions.get() };
        match sessions.iter_mut().find(|(p, _)| p == peer) {
            // SAFETY: the old session is a reference the context owns.
            Some((_, old)) => unsafe { SSL_SESSION_free(core::mem::replace(old, session)) },
            None => sessions.push((peer.to_vec(), session)),
        }
    }
}

/// One server reached over TLS: the context and the name its certificate must carry (the
/// URL's host; with Sentinel, the address Sentinel gave). Cheap to clone.
#[derive(Clone)]
pub(crate) struct TlsPeer {
    context: *const TlsContext,
    /// The host, for SNI (names only: RFC 6066 forbids IP literals there) and the
    /// certificate check.
    host: CString,
    host_is_ip: bool,
}

impl TlsPeer {
    /// `context` comes from [`create_context`] and lives as long as the cycle.
    pub(crate) fn new(context: *const TlsContext, host: &str) -> Option<TlsPeer> {
        Some(TlsPeer {
            context,
            host: CString::new(host).ok()?,
            host_is_ip: host.parse::<std::net::IpAddr>().is_ok(),
        })
    }

    /// The same context for another server (with Sentinel: the master it named).
    pub(crate) fn for_host(&self, host: &str) -> Option<TlsPeer> {
        TlsPeer::new(self.context, host)
    }

    fn context(&self) -> &TlsContext {
        // SAFETY: the context lives in the cycle's pool, as long as the peer (`new`).
        unsafe { &*self.context }
    }
}

/// Creates the SSL context in the configuration pool; it is freed with the cycle. The error
/// says what failed (NGINX has logged OpenSSL's reason before).
pub(crate) fn create_context(
    cf: &mut ngx_conf_t,
    options: &TlsOptions,
) -> Result<*const TlsContext, String> {
    unsafe extern "C" fn cleanup(data: *mut c_void) {
        let context = data.cast::<TlsContext>();
        // SAFETY: `data` is the context written by `create_context`, dropped once, here;
        // `ngx_ssl_cleanup_ctx` frees an `SSL_CTX` (if it was made) as NGINX's modules do.
        unsafe {
            for (_, session) in (*(*context).sessions.get()).drain(..) {
                SSL_SESSION_free(session);
            }
            if !(*context).ssl.ctx.is_null() {
                ngx_ssl_cleanup_ctx(ptr::addr_of_mut!((*context).ssl).cast());
            }
            ptr::drop_in_place(context);
        }
    }
    // SAFETY: the configuration pool is live; the cleanup's data is a `TlsContext`, written
    // before the handler that reads it is set.
    let context = unsafe {
        let cln = ngx_pool_cleanup_add(cf.pool, core::mem::size_of::<TlsContext>());
        if cln.is_null() {
            return Err("out of memory".into());
        }
        let context = (*cln).data.cast::<TlsContext>();
        context.write(TlsContext {
            // SAFETY: `ngx_ssl_t` is a C struct for which all-zero is "unset".
            ssl: core::mem::zeroed(),
            verify: options.verify,
            sessions: UnsafeCell::new(Vec::new()),
        });
        (*cln).handler = Some(cleanup);
        &mut *context
    };
    let ssl = ptr::addr_of_mut!(context.ssl);
    context.ssl.log = cf.log;
    let protocols = (NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3) as ngx_uint_t;
    // SAFETY: `ssl` is zeroed and at its final address; NGINX's SSL library is initialised
    // (nginx.c calls `ngx_ssl_init` before reading the configuration).
    if unsafe { ngx_ssl_create(ssl, protocols, ptr::null_mut()) } != NGX_OK as ngx_int_t {
        return Err("cannot create the SSL context".into());
    }
    // Pipelining appends commands to the output buffer while a write waits for the socket:
    // the retried `SSL_write` may see the same bytes at a new address.
    let mode = SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER as c_long;
    // SAFETY: `ctx` was just created; `SSL_CTX_set_mode` is this call (a C macro).
    unsafe { SSL_CTX_ctrl(context.ssl.ctx, SSL_CTRL_MODE as c_int, mode, ptr::null_mut()) };
    // NGINX frees a connection's TLS buffers whenever they are empty (it holds thousands of
    // mostly idle client connections); a worker's few Redis connections are busy, and
    // freeing and reallocating ~34 KB per command costs more than keeping it.
    let release = SSL_MODE_RELEASE_BUFFERS as c_long;
    // SAFETY: as above (`SSL_CTX_clear_mode`).
    unsafe {
        SSL_CTX_ctrl(context.ssl.ctx, SSL_CTRL_CLEAR_MODE as c_int, release, ptr::null_mut())
    };
    if let Some((mut cert, mut key)) = options.certificate {
        // SAFETY: a live context; the paths are NUL-terminated strings in the pool.
        let rc = unsafe { ngx_ssl_certificate(cf, ssl, &mut cert, &mut key, ptr::null_mut()) };
        if rc != NGX_OK as ngx_int_t {
            return Err(format!(
                "cannot load the client certificate \"{}\" or its key \"{}\"",
                String::from_utf8_lossy(cert.as_bytes()),
                String::from_utf8_lossy(key.as_bytes())
            ));
        }
    }
    if options.verify {
        let mut cas = options.trusted_certificate.unwrap_or_default();
        // SAFETY: as above; an empty name only installs NGINX's verify callback.
        let rc = unsafe { ngx_ssl_trusted_certificate(cf, ssl, &mut cas, VERIFY_DEPTH) };
        if rc != NGX_OK as ngx_int_t {
            return Err(format!(
                "cannot load the CA certificates \"{}\"",
                String::from_utf8_lossy(cas.as_bytes())
            ));
        }
        // SAFETY: `ctx` was just created.
        if cas.len == 0 && unsafe { SSL_CTX_set_default_verify_paths(context.ssl.ctx) } != 1 {
            return Err("cannot load the system's CA certificates".into());
        }
    }
    // SAFETY: as above. New sessions reach the connection's `save_session`.
    if unsafe { ngx_ssl_client_session_cache(cf, ssl, 1) } != NGX_OK as ngx_int_t {
        return Err("cannot enable TLS session reuse".into());
    }
    Ok(context)
}

/// A TLS connection's log: the cycle's, plus " while TLS handshaking ..., redis: <addr>"
/// on NGINX's own lines (a failed handshake is logged by `ngx_ssl_handshake`). Also how
/// the session callback finds the peer and the context.
#[repr(C)]
struct ConnLog {
    log: ngx_log_t,
    peer: ngx_str_t,
    context: *const TlsContext,
}

const ACTION_HANDSHAKE: &CStr = c"TLS handshaking";

unsafe extern "C" fn log_handler(log: *mut ngx_log_t, buf: *mut u8, len: usize) -> *mut u8 {
    // SAFETY: NGINX calls this with our `ConnLog`'s log (`data` points to it) and a buffer
    // of `len` bytes.
    unsafe {
        let conn_log = &*(*log).data.cast::<ConnLog>();
        let mut text = Vec::new();
        if !(*log).action.is_null() {
            text.extend_from_slice(b" while ");
            text.extend_from_slice(CStr::from_ptr((*log).action).to_bytes());
        }
        text.extend_from_slice(b", redis: ");
        text.extend_from_slice(conn_log.peer.as_bytes());
        let n = text.len().min(len);
        ptr::copy_nonoverlapping(text.as_ptr(), buf, n);
        buf.add(n)
    }
}

/// NGINX calls this when the server sends a new session (end of a TLS 1.2 handshake, or a
/// TLS 1.3 ticket read later).
unsafe extern "C" fn save_session(c: *mut ngx_connection_t) {
    // SAFETY: NGINX calls this with one of our TLS connections, whose log is a `ConnLog`.
    unsafe {
        let conn_log = &*(*c).log.cast::<ConnLog>();
        let session = ngx_ssl_get_session(c);
        if !session.is_null() {
            (*conn_log.context).save_session(conn_log.peer.as_bytes(), session);
        }
    }
}

/// The TCP connect's outcome (a refused connect shows here, not as a TLS error).
///
/// # Safety
/// `c` is a live connection.
unsafe fn test_connect(c: *mut ngx_connection_t) -> Result<(), Failure> {
    let mut err: c_int = 0;
    let mut len = core::mem::size_of::<c_int>() as ngx::ffi::socklen_t;
    // SAFETY: the caller's contract; `err` and `len` are valid for writes.
    unsafe {
        let rc = getsockopt(
            (*c).fd,
            SOL_SOCKET as c_int,
            SO_ERROR as c_int,
            ptr::addr_of_mut!(err).cast(),
            &mut len,
        );
        if rc == -1 {
            err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        }
        if err != 0 {
            ngx_connection_error(c, err, c"connect() failed".as_ptr().cast_mut());
            return Err(Failure::Connect);
        }
    }
    Ok(())
}

/// Starts TLS on a connection whose TCP connect was started: `Ok(true)` when the
/// handshake (and the certificate check) is over, `Ok(false)` when it goes on, in which
/// case NGINX calls `resume(c)` when it is over (or the read event's timer fired), and
/// `resume` calls [`finish`].
///
/// `address` is the text of the address connected to (the session key and the log's
/// "redis: ..."); `peer` the name the certificate must carry.
///
/// # Safety
/// `c` is a live connection to `up` without TLS; `up` and `address` outlive it.
pub(super) unsafe fn start(
    c: *mut ngx_connection_t,
    up: &Upstream,
    peer: &TlsPeer,
    address: ngx_str_t,
    resume: ngx_connection_handler_pt,
) -> Result<bool, Failure> {
    let peer_name = address;
    // SAFETY: the caller's contract; everything allocated here lives in the connection's
    // own pool, destroyed by `close_connection`.
    unsafe {
        test_connect(c)?;
        // The client's last handshake message and the first command go out back to back:
        // Nagle would hold the second until the first is acknowledged.
        if ngx_tcp_nodelay(c) != NGX_OK as ngx_int_t {
            return Err(Failure::Connect);
        }
        if (*c).pool.is_null() {
            (*c).pool = ngx_create_pool(CONN_POOL_SIZE, (*c).log);
            if (*c).pool.is_null() {
                return Err(Failure::Connect);
            }
        }
        let conn_log = ngx_palloc((*c).pool, core::mem::size_of::<ConnLog>()).cast::<ConnLog>();
        if conn_log.is_null() {
            return Err(Failure::Connect);
        }
        let mut log = *(*c).log;
        log.handler = Some(log_handler);
        log.data = conn_log.cast();
        log.action = ACTION_HANDSHAKE.as_ptr().cast_mut();
        log.connection = (*c).number;
        conn_log.write(ConnLog { log, peer: peer_name, context: peer.context });
        let log = ptr::addr_of_mut!((*conn_log).log);
        (*c).log = log;
        (*(*c).read).log = log;
        (*(*c).write).log = log;
        (*(*c).pool).log = log;

        let context = peer.context();
        let ssl = ptr::addr_of!(context.ssl).cast_mut();
        if ngx_ssl_create_connection(ssl, c, NGX_SSL_CLIENT as ngx_uint_t) != NGX_OK as ngx_int_t {
            return Err(Failure::Tls);
        }
        let sc = (*(*c).ssl).connection;
        if !peer.host_is_ip {
            let name = peer.host.as_ptr().cast_mut().cast::<c_void>();
            let cmd = SSL_CTRL_SET_TLSEXT_HOSTNAME as c_int;
            if SSL_ctrl(sc, cmd, TLSEXT_NAMETYPE_host_name as c_long, name) != 1 {
                return Err(Failure::Tls);
            }
        }
        (*(*c).ssl).save_session = Some(save_session);
        if ngx_ssl_set_session(c, context.session_for(peer_name.as_bytes())) != NGX_OK as ngx_int_t
        {
            return Err(Failure::Tls);
        }
        match ngx_ssl_handshake(c) {
            rc if rc == NGX_AGAIN as ngx_int_t => {
                (*(*c).ssl).handler = resume;
                Ok(false)
            }
            rc if rc == NGX_OK as ngx_int_t => finish(c, up, peer).map(|()| true),
            // NGINX has logged why (with this connection's log: "while TLS handshaking").
            _ => Err(Failure::Tls),
        }
    }
}

/// After `ngx_ssl_handshake` is over: whether it succeeded and the server's certificate is
/// acceptable. A refused certificate opens the breaker with the reason (its one log line).
///
/// # Safety
/// `c` is a live connection to `up` on which [`start`] began TLS.
pub(super) unsafe fn finish(
    c: *mut ngx_connection_t,
    up: &Upstream,
    peer: &TlsPeer,
) -> Result<(), Failure> {
    // SAFETY: the caller's contract: `c.ssl` is set.
    unsafe {
        (*(*c).log).action = ptr::null_mut();
        if (*(*c).ssl).handshaked() == 0 {
            let timed_out = (*(*c).read).timedout() != 0 || (*(*c).write).timedout() != 0;
            return Err(if timed_out { Failure::Timeout } else { Failure::Tls });
        }
        let sc = (*(*c).ssl).connection;
        // One [info] line per new connection (pooled connections make them rare): whether
        // the worker's saved session spared a full handshake.
        ngx::ngx_log_error!(
            ngx::ffi::NGX_LOG_INFO,
            (*c).log,
            "sessions: TLS handshake with Redis done ({}, {})",
            CStr::from_ptr(SSL_get_version(sc)).to_string_lossy(),
            if SSL_session_reused(sc) == 1 { "session resumed" } else { "new session" }
        );
        if !peer.context().verify {
            return Ok(());
        }
        let rc = SSL_get_verify_result(sc);
        if rc != X509_V_OK as c_long {
            let why = CStr::from_ptr(X509_verify_cert_error_string(rc)).to_string_lossy();
            worker::mark_down(up, &format!("TLS certificate verify failed: {why}"));
            return Err(Failure::Tls);
        }
        let matches = if peer.host_is_ip {
            let cert = SSL_get1_peer_certificate(sc);
            let ok = !cert.is_null() && X509_check_ip_asc(cert, peer.host.as_ptr(), 0) == 1;
            if !cert.is_null() {
                X509_free(cert);
            }
            ok
        } else {
            let host = peer.host.as_bytes();
            let mut name = ngx_str_t { len: host.len(), data: host.as_ptr().cast_mut() };
            ngx_ssl_check_host(c, &mut name) == NGX_OK as ngx_int_t
        };
        if !matches {
            let host = peer.host.to_string_lossy();
            worker::mark_down(up, &format!("TLS certificate does not match \"{host}\""));
            return Err(Failure::Tls);
        }
        Ok(())
    }
}

/// Whether TLS is on for `c` (the handshake started).
///
/// # Safety
/// `c` is a live connection.
pub(super) unsafe fn is_on(c: *mut ngx_connection_t) -> bool {
    // SAFETY: the caller's contract.
    unsafe { !(*c).ssl.is_null() }
}

/// Closes a connection of ours, TLS or not: the SSL object is freed without waiting for the
/// server's close_notify (nothing more is read from it), then the connection's pool.
///
/// # Safety
/// `c` is a live connection; it is gone after.
pub(super) unsafe fn close_connection(c: *mut ngx_connection_t) {
    // SAFETY: the caller's contract.
    unsafe {
        if !(*c).ssl.is_null() {
            (*(*c).ssl).set_no_wait_shutdown(1);
            (*(*c).ssl).set_no_send_shutdown(1);
            // Both flags set: a quiet shutdown that never waits, then `SSL_free`.
            let _ = ngx_ssl_shutdown(c);
        }
        let pool = (*c).pool;
        ngx_close_connection(c);
        if !pool.is_null() {
            ngx_destroy_pool(pool);
        }
    }
}
