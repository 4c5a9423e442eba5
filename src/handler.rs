//! Per request: the access-phase handler that evaluates the session once, the request
//! context that survives internal redirects, and the header filter that sets the cookie.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;

use ngx::ffi::{
    ngx_event_t, ngx_http_request_t, ngx_int_t, ngx_list_part_t, ngx_list_push, ngx_palloc,
    ngx_pool_cleanup_add, ngx_pool_cleanup_t, ngx_table_elt_t, ngx_time, NGX_DECLINED, NGX_DONE,
    NGX_ERROR, NGX_LOG_ERR, NGX_LOG_INFO,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf};
use ngx::ngx_log_error;

use crate::conf::{MainConf, Resolved};
use crate::cookie::{self, CookieCollector, Incoming, Signer};
use crate::redis::Waiter;
use crate::redis_flow::{self, Flow, Reply, Step};
use crate::session::{self, Client, Evaluation, Status};
use crate::shm::{Locked, RandomIdentity};
use crate::Module;

/// What one main request learned about its session. `repr(C)` with the waiter first, so
/// that the Redis client's callback gets back to the context from the waiter.
#[repr(C)]
pub struct RequestCtx {
    waiter: Waiter,
    pub eval: Evaluation,
    cookie_sent: bool,
    /// A Redis command is in flight; the request is suspended.
    waiting: bool,
    request: *mut ngx_http_request_t,
    /// Posted to resume the request once the session is decided.
    resume: ngx_event_t,
    /// The Redis algorithm's state; `None` while the shared identity is being fetched.
    flow: Option<Flow>,
    /// What the cookies said, for the log line once the Redis path has decided.
    incoming: Incoming,
}

/// The secret and cookie name that apply to a request.
pub struct Identity<'a> {
    pub signer: &'a Signer,
    pub name: &'a [u8],
}

/// Per worker: the random secret and name adopted from Redis, and when (seconds).
static mut REDIS_IDENTITY: Option<(RandomIdentity, u64)> = None;

/// How often a worker re-reads the identity from Redis (and refreshes its TTL).
const IDENTITY_REFRESH: u64 = 3600;

fn redis_identity() -> Option<&'static (RandomIdentity, u64)> {
    // SAFETY: per-worker state, touched only from this worker's thread.
    unsafe { (*ptr::addr_of!(REDIS_IDENTITY)).as_ref() }
}

/// The random secret and name in force: with Redis, the cluster's; else the zone's.
fn random_identity(mcf: &MainConf) -> Option<&RandomIdentity> {
    match mcf.redis_upstream {
        Some(_) => redis_identity().map(|(i, _)| i),
        None => mcf.random.as_ref(),
    }
}

/// Resolves `random` settings against the random secret and name in force.
pub fn identity<'a>(res: &'a Resolved, mcf: &'a MainConf) -> Option<Identity<'a>> {
    let random = random_identity(mcf);
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
///
/// When the request goes away (finished, aborted, worker shutdown), the cleanup detaches a
/// command in flight and withdraws a posted resume event, so nothing refers to it after.
unsafe extern "C" fn ctx_cleanup(data: *mut c_void) {
    let ctx = data.cast::<RequestCtx>();
    (*ctx).waiter.cancel();
    if (*ctx).resume.posted() != 0 {
        ngx::ffi::ngx_delete_posted_event(ptr::addr_of_mut!((*ctx).resume));
    }
    ptr::drop_in_place(ctx);
}

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
unsafe fn set_ctx(r: *mut ngx_http_request_t, eval: Evaluation) -> Option<&'static mut RequestCtx> {
    let cln = ngx_pool_cleanup_add((*r).pool, size_of::<RequestCtx>());
    if cln.is_null() {
        return None;
    }
    let ctx = (*cln).data.cast::<RequestCtx>();
    ctx.write(RequestCtx {
        waiter: Waiter::new(redis_done),
        eval,
        cookie_sent: false,
        waiting: false,
        request: r,
        resume: core::mem::zeroed(),
        flow: None,
        incoming: Incoming::Absent,
    });
    (*cln).handler = Some(CTX_CLEANUP);
    *(*r).ctx.add(crate::module_ctx_index()) = ctx.cast();
    Some(&mut *ctx)
}

/// Calls `f` for every request header line (all `ngx_list_t` parts).
///
/// # Safety
/// `part` must be the first part of a live header list.
unsafe fn for_each_header(mut part: *mut ngx_list_part_t, mut f: impl FnMut(&mut ngx_table_elt_t)) {
    while !part.is_null() {
        let elts = (*part).elts.cast::<ngx_table_elt_t>();
        for i in 0..(*part).nelts {
            f(&mut *elts.add(i));
        }
        part = (*part).next;
    }
}

/// Collects the request's cookies with our name and verifies them (no store access).
///
/// # Safety
/// `r` is a live request.
unsafe fn incoming(r: &ngx_http_request_t, id: &Identity) -> Incoming {
    let mut cookies = CookieCollector::new(id.signer, id.name);
    for_each_header(ptr::addr_of!(r.headers_in.headers.part).cast_mut(), |h| {
        if h.key.as_bytes().eq_ignore_ascii_case(b"cookie") {
            cookies.header(h.value.as_bytes());
        }
    });
    cookies.finish()
}

/// What the session is bound to: `$remote_addr` (after realip) and the User-Agent.
///
/// # Safety
/// `r` is a live request.
unsafe fn client(r: &ngx_http_request_t) -> Client {
    let addr = (*r.connection).addr_text.as_bytes();
    let ua = r.headers_in.user_agent.as_ref().map(|h| h.value.as_bytes()).unwrap_or(b"");
    Client::new(addr, ua)
}

fn now_secs() -> u64 {
    ngx_time().max(0) as u64
}

/// Access phase: evaluate the session of a main request once.
pub unsafe extern "C" fn access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: NGINX calls phase handlers with a live request.
    let req = unsafe { &mut *r };
    if req.main != r {
        return NGX_DECLINED as ngx_int_t;
    }
    // SAFETY: live request.
    if let Some(ctx) = unsafe { get_ctx(r) } {
        // Evaluated already (or, for a spurious run while suspended, still waiting).
        return if ctx.waiting { NGX_DONE as ngx_int_t } else { NGX_DECLINED as ngx_int_t };
    }
    if !Module::location_conf(req).is_some_and(|l| l.enabled()) {
        return NGX_DECLINED as ngx_int_t;
    }
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return NGX_DECLINED as ngx_int_t;
    };
    let (Some(res), false) = (scf.resolved.as_ref(), mcf.zone.is_null()) else {
        return NGX_DECLINED as ngx_int_t;
    };
    if let Some(upstream) = &mcf.redis_upstream {
        // SAFETY: live main request without a context.
        return unsafe { start_redis(r, res, mcf, upstream) };
    }
    let Some(id) = identity(res, mcf) else {
        return NGX_DECLINED as ngx_int_t;
    };
    // SAFETY: live request.
    let (incoming, client) = unsafe { (incoming(req, &id), client(req)) };
    let now = now_secs();

    // SAFETY: the zone is declared in this cycle and initialised before workers start.
    let eval = match unsafe { Locked::lock(mcf.zone) } {
        Some(mut locked) => {
            session::evaluate(locked.table(), incoming, id.signer, now, &res.policy, &client)
        }
        None => Evaluation::store_error(match incoming {
            Incoming::Verified(id) => Some(id),
            _ => None,
        }),
    };
    log_outcome(req.connection_log(), &eval, incoming);
    if eval.status == Status::Error {
        error_once(req.connection_log());
    }
    // SAFETY: live main request without a context (checked above).
    match unsafe { set_ctx(r, eval) } {
        Some(_) => NGX_DECLINED as ngx_int_t,
        None => NGX_ERROR as ngx_int_t,
    }
}

fn log_outcome(log: *mut ngx::ffi::ngx_log_t, eval: &Evaluation, incoming: Incoming) {
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

/// Starts the Redis path: fetch the shared identity if it is needed and not known (or
/// stale), else the session algorithm. Suspends the request when a command is in flight.
///
/// # Safety
/// `r` is a live main request without a context.
unsafe fn start_redis(
    r: *mut ngx_http_request_t,
    res: &Resolved,
    mcf: &MainConf,
    upstream: &crate::redis::Upstream,
) -> ngx_int_t {
    let placeholder = Evaluation::store_error(None);
    let Some(ctx) = set_ctx(r, placeholder) else {
        return NGX_ERROR as ngx_int_t;
    };
    let needs_identity = res.signer.is_none() || res.name.is_none();
    let stale =
        redis_identity().is_none_or(|(_, at)| now_secs().saturating_sub(*at) >= IDENTITY_REFRESH);
    let sent = if needs_identity && stale {
        match &mcf.random {
            Some(local) => {
                let mut proposal = [0u8; redis_flow::IDENTITY_LEN];
                proposal[..32].copy_from_slice(&local.secret);
                proposal[32..].copy_from_slice(&local.name);
                let cmd = redis_flow::Command::Identity { proposal }.encode();
                crate::redis::execute(upstream, cmd, &mut ctx.waiter).is_ok()
            }
            None => false,
        }
    } else {
        session_step(ctx, None)
    };
    if !sent {
        // Decided without waiting (or Redis is down): no suspension.
        return NGX_DECLINED as ngx_int_t;
    }
    ctx.waiting = true;
    (*(*r).main).set_count((*(*r).main).count() + 1);
    NGX_DONE as ngx_int_t
}

/// Advances the session algorithm with `reply` (or starts it). Returns whether a command
/// is now in flight; otherwise `ctx.eval` holds the decision.
///
/// # Safety
/// `ctx.request` is live.
unsafe fn session_step(
    ctx: &mut RequestCtx,
    reply: Option<Result<Reply, crate::redis::Failure>>,
) -> bool {
    let req = &*ctx.request;
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return false;
    };
    let (Some(res), Some(upstream)) = (scf.resolved.as_ref(), mcf.redis_upstream.as_ref()) else {
        return false;
    };
    let Some(id) = identity(res, mcf) else {
        // The shared secret or name could not be had: nothing to verify with.
        ctx.eval = Evaluation::store_error(None);
        return false;
    };
    let step = match (ctx.flow.as_mut(), reply) {
        (None, _) => {
            let incoming = incoming(req, &id);
            ctx.incoming = incoming;
            let (flow, step) = Flow::start(incoming, now_secs(), &res.policy, &client(req));
            ctx.flow = Some(flow);
            step
        }
        (Some(flow), Some(Ok(reply))) => flow.on_reply(reply, id.signer),
        (Some(flow), _) => Step::Done(flow.failed()),
    };
    match step {
        Step::Done(eval) => {
            ctx.eval = eval;
            log_outcome(req.connection_log(), &eval, ctx.incoming);
            false
        }
        Step::Send(cmd) => {
            if crate::redis::execute(upstream, cmd.encode(), &mut ctx.waiter).is_ok() {
                return true;
            }
            if let Some(flow) = ctx.flow.as_mut() {
                ctx.eval = flow.failed();
            }
            false
        }
    }
}

/// The Redis client's callback: a reply (or failure) for the command in flight.
unsafe fn redis_done(waiter: *mut Waiter, reply: Result<Reply, crate::redis::Failure>) {
    // SAFETY: the waiter is the first field of a live `RequestCtx` (repr(C)); a cancelled
    // waiter is never called back.
    let ctx = &mut *waiter.cast::<RequestCtx>();
    if ctx.flow.is_none() {
        // The identity fetch answered.
        if let Ok(Reply::Bulk(v)) = &reply {
            adopt_identity(v, (*ctx.request).connection_log());
        }
    }
    let identity_reply = ctx.flow.is_none();
    if session_step(ctx, if identity_reply { None } else { Some(reply) }) {
        return;
    }
    ctx.waiting = false;
    let ev = &mut ctx.resume;
    ev.handler = Some(resume_request);
    ev.data = ctx.request.cast();
    ev.log = (*ctx.request).connection_log();
    // Resume from a posted event, not from inside the Redis connection's handler.
    ngx::ffi::ngx_post_event(ev, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events));
}

/// Takes the secret and name that Redis holds for the cluster.
fn adopt_identity(value: &[u8], log: *mut ngx::ffi::ngx_log_t) {
    let Some((secret, name)) = redis_flow::parse_identity(value) else {
        ngx_log_error!(NGX_LOG_ERR, log, "sessions: the identity kept in Redis is malformed; delete \"{}\" to let it be made again", redis_flow::IDENTITY_KEY);
        return;
    };
    let changed = redis_identity().is_none_or(|(i, _)| i.secret != secret || i.name != name);
    if changed {
        crate::shm::log_fingerprint(
            log,
            &cookie::fingerprint(&secret),
            "random, shared through Redis",
        );
    }
    // SAFETY: per-worker state, this worker's thread.
    unsafe {
        *ptr::addr_of_mut!(REDIS_IDENTITY) = Some((RandomIdentity::new(secret, name), now_secs()));
    }
}

/// Runs the suspended request's phases again; the access handler then finds the
/// decision in the context and lets the request go on.
unsafe extern "C" fn resume_request(ev: *mut ngx_event_t) {
    let r = (*ev).data.cast::<ngx_http_request_t>();
    let c = (*r).connection;
    let main = (*r).main;
    (*main).set_count((*main).count().saturating_sub(1));
    ngx::ffi::ngx_http_core_run_phases(r);
    ngx::ffi::ngx_http_run_posted_requests(c);
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
    for_each_header(&mut req.headers_out.headers.part, |h| {
        if h.hash != 0
            && h.key.as_bytes().eq_ignore_ascii_case(b"set-cookie")
            && h.value.as_bytes().strip_prefix(id.name).is_some_and(|v| v.first() == Some(&b'='))
        {
            // Filters skip headers with hash 0 (NGINX's way of deleting one).
            h.hash = 0;
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
