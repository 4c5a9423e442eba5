//! Per request: the access-phase handler that evaluates the session once, the request
//! context that survives internal redirects, and the header filter that sets the cookie.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;

use ngx::ffi::{
    ngx_http_request_t, ngx_int_t, ngx_list_part_t, ngx_list_push, ngx_palloc,
    ngx_pool_cleanup_add, ngx_pool_cleanup_t, ngx_table_elt_t, ngx_time, NGX_DECLINED,
    NGX_ERROR, NGX_LOG_ERR, NGX_LOG_INFO,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf};
use ngx::ngx_log_error;

use crate::conf::{MainConf, Resolved};
use crate::cookie::{self, CookieCollector, Incoming, Signer};
use crate::session::{self, Client, Evaluation, Status};
use crate::shm::Locked;
use crate::Module;

/// What one main request learned about its session.
pub struct RequestCtx {
    pub eval: Evaluation,
    cookie_sent: bool,
}

/// The secret and cookie name that apply to a request.
pub struct Identity<'a> {
    pub signer: &'a Signer,
    pub name: &'a [u8],
}

/// Resolves `random` settings against the zone's random secret and name.
pub fn identity<'a>(res: &'a Resolved, mcf: &'a MainConf) -> Option<Identity<'a>> {
    let random = mcf.random.as_ref();
    let signer = match &res.signer {
        Some(s) => s,
        None => &random?.signer,
    };
    let name = match &res.name {
        Some(n) => n.as_slice(),
        None => &random?.name[..],
    };
    Some(Identity { signer, name })
}

/// Marks our context's pool cleanup so it can be found after an internal redirect,
/// which zeroes `r->ctx` (the way `ngx_http_realip_module` finds its context).
unsafe extern "C" fn ctx_cleanup(_data: *mut c_void) {}

/// The one address both the writer and the finder compare against.
static CTX_CLEANUP: unsafe extern "C" fn(*mut c_void) = ctx_cleanup;

fn is_ctx_cleanup(h: ngx::ffi::ngx_pool_cleanup_pt) -> bool {
    h.is_some_and(|h| h as usize == CTX_CLEANUP as usize)
}

/// The request's context, if the session was evaluated; survives internal redirects.
///
/// # Safety
/// `r` must be a live request.
pub unsafe fn get_ctx(r: *mut ngx_http_request_t) -> Option<&'static mut RequestCtx> {
    let index = crate::module_ctx_index();
    let slot = (*r).ctx.add(index);
    if !(*slot).is_null() {
        return Some(&mut *(*slot).cast::<RequestCtx>());
    }
    if (*r).internal() == 0 && (*r).filter_finalize() == 0 {
        return None;
    }
    let mut cln: *mut ngx_pool_cleanup_t = (*(*r).pool).cleanup;
    while !cln.is_null() {
        if is_ctx_cleanup((*cln).handler) {
            *slot = (*cln).data;
            return Some(&mut *(*cln).data.cast::<RequestCtx>());
        }
        cln = (*cln).next;
    }
    None
}

/// # Safety
/// `r` must be a live main request without a context yet.
unsafe fn set_ctx(r: *mut ngx_http_request_t, eval: Evaluation) -> bool {
    let cln = ngx_pool_cleanup_add((*r).pool, size_of::<RequestCtx>());
    if cln.is_null() {
        return false;
    }
    let ctx = (*cln).data.cast::<RequestCtx>();
    ctx.write(RequestCtx { eval, cookie_sent: false });
    (*cln).handler = Some(CTX_CLEANUP);
    *(*r).ctx.add(crate::module_ctx_index()) = ctx.cast();
    true
}

/// Calls `f` for every request header line (all `ngx_list_t` parts).
///
/// # Safety
/// `part` must be the first part of a live header list.
unsafe fn for_each_header(mut part: *const ngx_list_part_t, mut f: impl FnMut(&ngx_table_elt_t)) {
    while !part.is_null() {
        let elts = (*part).elts.cast::<ngx_table_elt_t>();
        for i in 0..(*part).nelts {
            f(&*elts.add(i));
        }
        part = (*part).next;
    }
}

/// Access phase: evaluate the session of a main request once.
pub unsafe extern "C" fn access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: NGINX calls phase handlers with a live request.
    let req = unsafe { &mut *r };
    if req.main != r {
        return NGX_DECLINED as ngx_int_t;
    }
    let enabled = Module::location_conf(req).is_some_and(|l| l.enabled());
    // SAFETY: live request.
    if !enabled || unsafe { get_ctx(r) }.is_some() {
        return NGX_DECLINED as ngx_int_t;
    }
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return NGX_DECLINED as ngx_int_t;
    };
    let (Some(res), false) = (scf.resolved.as_ref(), mcf.zone.is_null()) else {
        return NGX_DECLINED as ngx_int_t;
    };
    let Some(id) = identity(res, mcf) else {
        return NGX_DECLINED as ngx_int_t;
    };

    let mut cookies = CookieCollector::new(id.signer, id.name);
    // SAFETY: the request's header list is live for the request's lifetime.
    unsafe {
        for_each_header(&req.headers_in.headers.part, |h| {
            if h.key.as_bytes().eq_ignore_ascii_case(b"cookie") {
                cookies.header(h.value.as_bytes());
            }
        });
    }
    let incoming = cookies.finish();

    // SAFETY: `connection` and `user_agent` are live or null for the request's lifetime.
    let client = unsafe {
        let addr = (*req.connection).addr_text.as_bytes();
        let ua = req.headers_in.user_agent.as_ref().map(|h| h.value.as_bytes()).unwrap_or(b"");
        Client::new(addr, ua)
    };
    let now = ngx_time().max(0) as u64;

    // SAFETY: the zone is declared in this cycle and initialised before workers start.
    let eval = match unsafe { Locked::lock(mcf.zone) } {
        Some(mut table) => session::evaluate(&mut table, incoming, id.signer, now, &res.policy, &client),
        None => Evaluation {
            status: Status::Error,
            id: match incoming {
                Incoming::Verified(id) => Some(id),
                _ => None,
            },
            set_cookie: false,
        },
    };

    match eval.status {
        Status::Invalid if incoming == Incoming::Invalid => {
            ngx_log_error!(NGX_LOG_INFO, req.connection_log(), "sessions: rejected a session cookie that failed verification");
        }
        Status::Mismatch => {
            ngx_log_error!(NGX_LOG_INFO, req.connection_log(), "sessions: client address or User-Agent changed, session destroyed");
        }
        Status::Error => error_once(req.connection_log()),
        _ => {}
    }

    // SAFETY: live main request without a context (checked above).
    if !unsafe { set_ctx(r, eval) } {
        return NGX_ERROR as ngx_int_t;
    }
    NGX_DECLINED as ngx_int_t
}

/// The store could not take a session: one line per minute per worker, not per request.
fn error_once(log: *mut ngx::ffi::ngx_log_t) {
    static mut LAST: u64 = 0;
    let now = ngx_time().max(0) as u64;
    // SAFETY: workers are single-threaded; only this function touches `LAST`.
    unsafe {
        let last = ptr::addr_of_mut!(LAST);
        if now.saturating_sub(*last) >= 60 {
            *last = now;
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "sessions: the session store has no room even after eviction (zone too small?); requests go on without sessions"
            );
        }
    }
}

trait ConnectionLog {
    fn connection_log(&self) -> *mut ngx::ffi::ngx_log_t;
}

impl ConnectionLog for ngx_http_request_t {
    fn connection_log(&self) -> *mut ngx::ffi::ngx_log_t {
        // SAFETY: a live request has a live connection.
        unsafe { (*self.connection).log }
    }
}

pub static mut NEXT_HEADER_FILTER: ngx::ffi::ngx_http_output_header_filter_pt = None;

/// Adds our `Set-Cookie` once per main request, when a session started or renewed.
pub unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: NGINX calls filters with a live request.
    unsafe {
        if (*r).main == r {
            if let Some(ctx) = get_ctx(r) {
                if ctx.eval.set_cookie && !ctx.cookie_sent {
                    ctx.cookie_sent = true;
                    if set_cookie(r, &ctx.eval).is_none() {
                        return NGX_ERROR as ngx_int_t;
                    }
                }
            }
        }
        match *ptr::addr_of!(NEXT_HEADER_FILTER) {
            Some(next) => next(r),
            None => NGX_ERROR as ngx_int_t,
        }
    }
}

/// Writes the one `Set-Cookie` line: one buffer of the exact size, from the request pool.
///
/// # Safety
/// `r` is a live main request.
unsafe fn set_cookie(r: *mut ngx_http_request_t, eval: &Evaluation) -> Option<()> {
    let req = &mut *r;
    let Some(sid) = eval.id else { return Some(()) };
    let (mcf, scf) = (Module::main_conf(req)?, Module::server_conf(req)?);
    let res = scf.resolved.as_ref()?;
    let id = identity(res, mcf)?;
    let secure = match res.secure {
        cookie::Secure::On => true,
        cookie::Secure::Off => false,
        cookie::Secure::Auto => is_https(req),
    };
    let value = id.signer.seal(id.name, &sid);
    let len = cookie::set_cookie_len(id.name, &res.suffix, secure);
    let buf = ngx_palloc(req.pool, len).cast::<u8>();
    if buf.is_null() {
        return None;
    }
    let out = core::slice::from_raw_parts_mut(buf, len);
    let n = cookie::write_set_cookie(out, id.name, &value, &res.suffix, secure);

    // Never two Set-Cookie lines for our name: hide one an upstream may have sent.
    for_each_header(&req.headers_out.headers.part, |h| {
        if h.hash != 0
            && h.key.as_bytes().eq_ignore_ascii_case(b"set-cookie")
            && h.value.as_bytes().strip_prefix(id.name).is_some_and(|v| v.first() == Some(&b'='))
        {
            // Filters skip headers with hash 0 (NGINX's way of deleting one).
            ptr::from_ref(h).cast_mut().as_mut().map(|h| h.hash = 0);
        }
    });

    let h = ngx_list_push(&mut req.headers_out.headers).cast::<ngx_table_elt_t>();
    if h.is_null() {
        return None;
    }
    (*h).hash = 1;
    (*h).key = ngx::ngx_string!("Set-Cookie");
    (*h).value = ngx::ffi::ngx_str_t { len: n, data: buf };
    (*h).lowcase_key = c"set-cookie".as_ptr().cast_mut().cast();
    #[cfg(nginx1_23_0)]
    {
        (*h).next = ptr::null_mut();
    }
    Some(())
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
