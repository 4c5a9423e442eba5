//! The header filter of main requests where sessions are on: removes every `Set-Cookie`
//! for our name that an upstream or `add_header` put there, whatever the session's
//! status; adds ours once when the session started or was renewed, and then keeps the
//! response out of shared caches (`Cache-Control: private`). It runs after
//! `ngx_http_headers_filter_module` (see `ngx_module_order` in lib.rs), so it sees what
//! `add_header` and `expires` wrote.

use core::cell::Cell;

use ngx::core::Status;
use ngx::ffi::{
    ngx_http_output_header_filter_pt, ngx_http_request_t, ngx_int_t, ngx_list_part_t,
    ngx_list_push, ngx_palloc, ngx_str_t, ngx_table_elt_t, NGX_LOG_ERR,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf};
use ngx::ngx_log_error;

use crate::cookie::{self, SessionId};
use crate::ctx::{self, RequestCtx};
use crate::data::{Applied, CookieChange, Data, Refused};
use crate::http;
use crate::identity::{self, Identity};
use crate::log::{self, debug_http};
use crate::metrics;
use crate::session::{self, Evaluation};
use crate::variables;
use crate::Module;
use sessions_core::metrics::DestroyReason;

/// The next filter in the chain, saved by [`install`].
struct Next(Cell<ngx_http_output_header_filter_pt>);

// SAFETY: written once at configuration time (single-threaded master), then only read by
// the worker's one thread.
unsafe impl Sync for Next {}

static NEXT_HEADER_FILTER: Next = Next(Cell::new(None));

/// Puts our filter at the top of the header filter chain (postconfiguration).
pub(crate) fn install() {
    // SAFETY: configuration time, single-threaded: nothing else reads or writes the top of
    // the chain meanwhile.
    unsafe {
        NEXT_HEADER_FILTER.0.set(ngx::ffi::ngx_http_top_header_filter);
        ngx::ffi::ngx_http_top_header_filter = Some(header_filter);
    }
}

unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: NGINX calls filters with a live request.
    if unsafe { (*r).main } == r {
        // SAFETY: live main request.
        match unsafe { main_response(r) } {
            Err(()) => return Status::NGX_ERROR.into(),
            // The Redis write holds the header; it passes it on when Redis answers.
            Ok(Header::Held) => return Status::NGX_OK.into(),
            Ok(Header::Pass) => {}
        }
    }
    // SAFETY: the request the filter was called with.
    unsafe { next_header_filter(r) }
}

/// Calls the rest of the header filter chain (also for a header held by the Redis write).
///
/// # Safety
/// `r` is a live request.
pub(crate) unsafe fn next_header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    match NEXT_HEADER_FILTER.0.get() {
        // SAFETY: the next filter of the chain, with the request it was meant for.
        Some(next) => unsafe { next(r) },
        None => Status::NGX_ERROR.into(),
    }
}

/// What becomes of the main request's header.
enum Header {
    /// On to the next filter.
    Pass,
    /// Held until the Redis write is done.
    Held,
}

/// The main request's response header. `Err` only when memory ran out.
///
/// # Safety
/// `r` is a live main request.
unsafe fn main_response(r: *mut ngx_http_request_t) -> Result<Header, ()> {
    // SAFETY: live request.
    let evaluated = unsafe { ctx::get(r) }.is_some();
    // SAFETY: the caller's contract; this borrow ends before the context is borrowed.
    let req = unsafe { &mut *r };
    // Sessions are on: evaluated here, or on in the location (answered before the access
    // phase, e.g. by `return`).
    if !evaluated && !Module::location_conf(req).is_some_and(|l| l.enabled()) {
        return Ok(Header::Pass);
    }
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return Ok(Header::Pass);
    };
    let Some(res) = scf.resolved.as_ref() else { return Ok(Header::Pass) };
    identity::with_name(res, mcf, |name| {
        // Never a Set-Cookie for our name but ours.
        // SAFETY: the response's header list is live; nothing else walks it meanwhile.
        unsafe {
            for_each_header_mut(&mut req.headers_out.headers.part, |h| {
                if h.hash != 0
                    && h.key.as_bytes().eq_ignore_ascii_case(b"set-cookie")
                    && http::sets_cookie(h.value.as_bytes(), name)
                {
                    debug_http!(req, "sessions: removing a Set-Cookie for our name");
                    // Filters skip headers with hash 0 (NGINX's way of deleting one).
                    h.hash = 0;
                }
            })
        }
    });
    if !evaluated {
        return Ok(Header::Pass);
    }
    // SAFETY: live main request with a context.
    if unsafe { respond(r) }? {
        return Ok(Header::Held);
    }
    // SAFETY: live request; the borrow ends inside.
    unsafe { ctx::with(r, |ctx| emit_cookie(r, ctx)) }.unwrap_or(Some(())).ok_or(())?;
    Ok(Header::Pass)
}

/// Applies the response's session actions (once per main request, where the session was
/// evaluated and is usable). Returns whether the Redis write holds the header.
///
/// # Safety
/// `r` is a live main request with a context.
unsafe fn respond(r: *mut ngx_http_request_t) -> Result<bool, ()> {
    // SAFETY: the caller's contract.
    let req = unsafe { &*r };
    let Some(lcf) = Module::location_conf(req).filter(|l| l.data.has_actions()) else {
        return Ok(false);
    };
    // SAFETY: the caller's contract; the borrow ends inside.
    let due = unsafe {
        ctx::with(r, |ctx| {
            let due = !ctx.actions_done && ctx.eval.status != session::Status::Error;
            ctx.actions_done = true;
            // Held back by Fetch Metadata: no session, nothing to change.
            ctx.eval.id.filter(|_| due)
        })
    };
    let Some(Some(id)) = due else { return Ok(false) };
    // Values are computed with no borrow of the context: they may read `$session_*`.
    // SAFETY: the caller's contract.
    let Some(actions) = (unsafe { lcf.data.actions(r) }) else { return Err(()) };
    if actions.is_empty() {
        return Ok(false);
    }
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return Ok(false);
    };
    let Some(res) = scf.resolved.as_ref() else { return Ok(false) };
    if mcf.redis_upstream.is_some() {
        // SAFETY: the caller's contract.
        return unsafe { crate::redis_commit::start(r, &actions) };
    }
    let now = ngx::ffi::ngx_time().max(0) as u64;
    let applied = match mcf.zone.lock() {
        Some(mut locked) => {
            let mut table = locked.table();
            session::respond(&mut table, id, &actions, mcf.data_size(), now, &res.policy)
        }
        None => Applied::unchanged(id, Data::new(), Some(Refused::Store)),
    };
    // SAFETY: the caller's contract; the borrow ends inside.
    unsafe { ctx::with(r, |ctx| apply(r, ctx, applied)) }.unwrap_or(Some(())).ok_or(())?;
    Ok(false)
}

/// Turns what a response's actions did into the request's state and response: the context's
/// ID and data (what `$session_*` read from now on), our `Set-Cookie` (the new ID, or the
/// expiring one; never two), the metrics of destroyed sessions, and one `[error]` line when
/// the data changes were refused. Both stores end here (Redis when its write is done).
/// `None` only when memory ran out.
///
/// # Safety
/// `r` is a live main request and `ctx` its context.
pub(crate) unsafe fn apply(
    r: *mut ngx_http_request_t,
    ctx: &mut RequestCtx,
    applied: Applied,
) -> Option<()> {
    // SAFETY: the caller's contract.
    let req = unsafe { &*r };
    let old_id = ctx.eval.id;
    if let (Some(refused), Some(id)) = (applied.refused, old_id) {
        refused_line(req, id, refused);
    }
    match applied.cookie {
        CookieChange::Keep => {}
        CookieChange::Set(id) => {
            ctx.eval.id = Some(id);
            ctx.eval.set_cookie = true;
        }
        CookieChange::Expire => {
            ctx.eval.set_cookie = false;
            ctx.expire_cookie = true;
        }
    }
    ctx.eval.id = applied.id;
    let changed = ctx.data != applied.data;
    ctx.data = applied.data;
    metrics::with_worker(|w| {
        if applied.destroyed_this {
            w.destroyed(DestroyReason::Destroy, 1);
        }
        if applied.destroyed_others > 0 {
            w.destroyed(DestroyReason::Subject, applied.destroyed_others as u64);
        }
    });
    if changed {
        // SAFETY: the caller's contract.
        unsafe { variables::forget_data(r) };
    }
    // SAFETY: as above.
    unsafe { emit_cookie(r, ctx) }
}

/// The `[error]` line of refused data changes.
fn refused_line(req: &ngx_http_request_t, id: SessionId, refused: Refused) {
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return;
    };
    let Some(res) = scf.resolved.as_ref() else { return };
    let hash = identity::with(res, mcf, |ident| ident.signer.log_hash(&id));
    let hash = hash.as_ref().map_or("?", |h| core::str::from_utf8(h).unwrap_or("?"));
    let log = log::request_log(req);
    let why = match refused {
        Refused::TooLarge(t) => {
            format!("{} bytes would exceed sessions_data_size {}", t.size, t.limit)
        }
        Refused::Gone => "the session is gone".to_string(),
        Refused::Store => "the session store failed or has no room".to_string(),
    };
    ngx_log_error!(NGX_LOG_ERR, log, "sessions: data of session {} not changed: {}", hash, why);
}

/// Adds our `Set-Cookie` once, when the session started or got a new ID (or the expiring
/// one when it was destroyed), and then keeps the response out of shared caches.
///
/// # Safety
/// `r` is a live main request and `ctx` its context.
unsafe fn emit_cookie(r: *mut ngx_http_request_t, ctx: &mut RequestCtx) -> Option<()> {
    if ctx.cookie_sent {
        return Some(());
    }
    let eval = ctx.eval;
    let (set, expire) = (eval.set_cookie && eval.id.is_some(), ctx.expire_cookie);
    if !set && !expire {
        return Some(());
    }
    ctx.cookie_sent = true;
    // SAFETY: the caller's contract; nothing else borrows the request meanwhile.
    let req = unsafe { &mut *r };
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return Some(());
    };
    let Some(res) = scf.resolved.as_ref() else { return Some(()) };
    let secure = match res.secure {
        cookie::Secure::On => true,
        cookie::Secure::Off => false,
        cookie::Secure::Auto => is_https(req),
    };
    identity::with(res, mcf, |id| {
        if expire {
            // SAFETY: the caller's contract.
            unsafe { expire_cookie(req, id.name, &res.suffix, secure) }?;
        } else {
            // SAFETY: the caller's contract.
            unsafe { set_cookie(req, &eval, &id, &res.suffix, secure) }?;
        }
        // SAFETY: as above.
        unsafe { make_private(req) }
    })
    .unwrap_or(Some(()))
}

/// Writes `Set-Cookie: <name>=; Max-Age=0` with our Path and Domain.
///
/// # Safety
/// `req` is a live main request.
unsafe fn expire_cookie(
    req: &mut ngx_http_request_t,
    name: &[u8],
    suffix: &[u8],
    secure: bool,
) -> Option<()> {
    let line = cookie::expire_cookie(name, suffix, secure);
    // SAFETY: the request pool is live.
    let value = unsafe { ngx_str_t::from_bytes(req.pool, &line) }?;
    debug_http!(req, "sessions: adding an expiring Set-Cookie");
    // SAFETY: the caller's contract.
    let h = unsafe { push_header(req, ngx::ngx_string!("Set-Cookie"), c"set-cookie") }?;
    h.value = value;
    Some(())
}

/// Writes the one `Set-Cookie` line: one buffer of the exact size, from the request pool.
///
/// # Safety
/// `req` is a live main request.
unsafe fn set_cookie(
    req: &mut ngx_http_request_t,
    eval: &Evaluation,
    id: &Identity,
    suffix: &[u8],
    secure: bool,
) -> Option<()> {
    let Some(sid) = eval.id else { return Some(()) };
    let value = id.signer.seal(id.name, &sid);
    let len = cookie::set_cookie_len(id.name, suffix, secure);
    // SAFETY: the request pool is live; the buffer is checked and fully written below.
    let buf = unsafe { ngx_palloc(req.pool, len) }.cast::<u8>();
    if buf.is_null() {
        return None;
    }
    // SAFETY: `buf` holds `len` bytes, uninitialised but written before being read.
    let out = unsafe { core::slice::from_raw_parts_mut(buf, len) };
    let n = cookie::write_set_cookie(out, id.name, &value, suffix, secure);
    debug_http!(req, "sessions: adding Set-Cookie ({} bytes)", n);
    // SAFETY: the caller's contract.
    let h = unsafe { push_header(req, ngx::ngx_string!("Set-Cookie"), c"set-cookie") }?;
    h.value = ngx_str_t { len: n, data: buf };
    Some(())
}

/// SPEC step 6: a response with our `Set-Cookie` is never stored by a shared cache. The
/// `Cache-Control` lines (an upstream's, `expires`, `add_header`) become one, with
/// `private` added and `public` / `s-maxage` removed; one is created if there was none.
///
/// # Safety
/// `req` is a live main request.
unsafe fn make_private(req: &mut ngx_http_request_t) -> Option<()> {
    let mut existing: Option<Vec<u8>> = None;
    let mut first: *mut ngx_table_elt_t = core::ptr::null_mut();
    // SAFETY: the response's header list is live; nothing else walks it meanwhile.
    unsafe {
        for_each_header_mut(&mut req.headers_out.headers.part, |h| {
            if h.hash == 0 || !h.key.as_bytes().eq_ignore_ascii_case(b"cache-control") {
                return;
            }
            let joined = existing.get_or_insert_with(Vec::new);
            if !joined.is_empty() {
                joined.push(b',');
            }
            joined.extend_from_slice(h.value.as_bytes());
            if first.is_null() {
                first = h;
            } else {
                h.hash = 0;
            }
        })
    };
    let value = http::private_cache_control(existing.as_deref());
    // SAFETY: the request pool is live.
    let value = unsafe { ngx_str_t::from_bytes(req.pool, &value) }?;
    // SAFETY: null or an element of the live header list.
    let h = match unsafe { first.as_mut() } {
        Some(h) => h,
        // SAFETY: the caller's contract.
        None => unsafe { push_header(req, ngx::ngx_string!("Cache-Control"), c"cache-control") }?,
    };
    h.value = value;
    #[cfg(nginx1_23_0)]
    {
        h.next = core::ptr::null_mut();
    }
    let h: *mut ngx_table_elt_t = h;
    // The lines are one now; `headers_out.cache_control` is what NGINX's own filters read.
    #[cfg(nginx1_23_0)]
    {
        req.headers_out.cache_control = h;
    }
    #[cfg(not(nginx1_23_0))]
    {
        // Before 1.23.0: an array of pointers to the lines.
        let lines = &mut req.headers_out.cache_control;
        if lines.nelts > 0 && !lines.elts.is_null() {
            // SAFETY: a live array of `ngx_table_elt_t *` with at least one element.
            unsafe { lines.elts.cast::<*mut ngx_table_elt_t>().write(h) };
            lines.nelts = 1;
        }
    }
    debug_http!(req, "sessions: Cache-Control made private");
    Some(())
}

/// Appends a response header line; its value is for the caller to set.
///
/// # Safety
/// `req` is a live request; `lowcase_key` is `key` in lower case.
unsafe fn push_header<'r>(
    req: &'r mut ngx_http_request_t,
    key: ngx_str_t,
    lowcase_key: &'static core::ffi::CStr,
) -> Option<&'r mut ngx_table_elt_t> {
    // SAFETY: the response's header list is live.
    let h = unsafe { ngx_list_push(&mut req.headers_out.headers) }.cast::<ngx_table_elt_t>();
    // SAFETY: a fresh element of that list, or null.
    let h = unsafe { h.as_mut() }?;
    h.hash = 1;
    h.key = key;
    h.value = ngx_str_t { len: 0, data: core::ptr::null_mut() };
    h.lowcase_key = lowcase_key.as_ptr().cast_mut().cast();
    #[cfg(nginx1_23_0)]
    {
        h.next = core::ptr::null_mut();
    }
    Some(h)
}

/// Calls `f` for every header line of a list, mutably (`NgxListIterator` only lends them).
///
/// # Safety
/// `part` must be the first part of a live header list, not otherwise borrowed.
pub(crate) unsafe fn for_each_header_mut(
    mut part: *mut ngx_list_part_t,
    mut f: impl FnMut(&mut ngx_table_elt_t),
) {
    // SAFETY: the caller's contract: each part holds `nelts` table elements.
    unsafe {
        while !part.is_null() {
            let elts = (*part).elts.cast::<ngx_table_elt_t>();
            for i in 0..(*part).nelts {
                f(&mut *elts.add(i));
            }
            part = (*part).next;
        }
    }
}

fn is_https(req: &ngx_http_request_t) -> bool {
    #[cfg(ngx_feature = "http_ssl")]
    {
        // SAFETY: a live request has a live connection.
        unsafe { !(*req.connection).ssl.is_null() }
    }
    #[cfg(not(ngx_feature = "http_ssl"))]
    {
        let _ = req;
        false
    }
}
