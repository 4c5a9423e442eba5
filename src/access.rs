//! The access phase: evaluate the session of a main request once, from the shared-memory
//! table (synchronously) or from Redis (suspending the request until the reply, then
//! resuming it from a posted event).

use core::ffi::c_void;
use core::ptr;

use ngx::core::Status;
use ngx::ffi::{
    ngx_array_push, ngx_conf_t, ngx_event_t, ngx_http_handler_pt,
    ngx_http_phases_NGX_HTTP_ACCESS_PHASE as NGX_HTTP_ACCESS_PHASE, ngx_http_request_t, ngx_int_t,
    ngx_time, NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ALERT,
};
use ngx::http::{
    HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule,
};
use ngx::ngx_log_error;

use crate::conf::{MainConf, Resolved};
use crate::cookie::{CookieCollector, Incoming, VerifiedBy};
use crate::ctx::{self, RequestCtx};
use crate::data::Data;
use crate::fetch_metadata;
use crate::identity::{self, Identity};
use crate::log::{self, debug_http};
use crate::metrics;
use crate::pass_cookie;
use crate::redis::{self, Failure, Upstream};
use crate::redis_flow::{Flow, Reply, Step};
use crate::session::{self, Client, Evaluation};
use crate::Module;

/// Registers the access handler (postconfiguration).
pub(crate) fn install(cf: &mut ngx_conf_t) -> Result<(), ()> {
    let cmcf = NgxHttpCoreModule::main_conf_mut(cf).ok_or(())?;
    let handlers = &mut cmcf.phases[NGX_HTTP_ACCESS_PHASE as usize].handlers;
    // SAFETY: the phase's handler array is a live `ngx_array_t` of `ngx_http_handler_pt`.
    let slot = unsafe { ngx_array_push(handlers) }.cast::<ngx_http_handler_pt>();
    if slot.is_null() {
        return Err(());
    }
    // SAFETY: `slot` is a fresh element of that array.
    unsafe { slot.write(Some(access_handler)) };
    Ok(())
}

fn now_secs() -> u64 {
    ngx_time().max(0) as u64
}

/// Collects the request's cookies with our name and verifies them (no store access), with
/// the current secret, then the fallbacks.
fn incoming(r: &ngx_http_request_t, id: &Identity) -> (Incoming, VerifiedBy) {
    let mut cookies = CookieCollector::with_keys(id.keys(), id.name);
    // SAFETY: a live request's header list is a valid `ngx_list_t` of table elements.
    for (key, value) in unsafe { ngx::http::list_iterator(&r.headers_in.headers) } {
        if key.as_bytes().eq_ignore_ascii_case(b"cookie") {
            cookies.header(value.as_bytes());
        }
    }
    cookies.finish_with_key()
}

/// What the session is bound to: `$remote_addr` (after realip) and the User-Agent.
fn client<'r>(r: &'r ngx_http_request_t, id: &Identity) -> Client<'r> {
    // SAFETY: a live request has a live connection; `user_agent` is null or a header of it.
    let (addr, ua) =
        unsafe { ((*r.connection).addr_text.as_bytes(), r.headers_in.user_agent.as_ref()) };
    Client::new(id.binding_key, addr, ua.map(|h| h.value.as_bytes()).unwrap_or(b""))
}

/// What the cookies said, for debug lines (never the ID itself).
fn kind(incoming: Incoming) -> &'static str {
    match incoming {
        Incoming::Absent => "absent",
        Incoming::Invalid => "invalid",
        Incoming::Verified(_) => "verified",
    }
}

/// Access phase: evaluate the session of a main request once; once it is decided and the
/// request goes on, apply `sessions_pass_cookie off`.
unsafe extern "C" fn access_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: NGINX calls phase handlers with a live request.
    let rc = unsafe { evaluate(r) };
    if rc != Status::NGX_DECLINED.into() {
        return rc;
    }
    // SAFETY: as above.
    if unsafe { pass_cookie::apply(r) }.is_err() {
        return Status::NGX_ERROR.into();
    }
    // SAFETY: as above.
    unsafe { require(r) }
}

/// `sessions_require`, once the session is decided (here, after a Redis resume, and again
/// in the location an internal redirect leads to): every value neither empty nor `0`, or
/// 401 (`error=`); 503 when the store failed.
///
/// # Safety
/// `r` is a live request.
unsafe fn require(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: the caller's contract.
    let req = unsafe { &*r };
    let Some(require) = Module::location_conf(req).and_then(|l| l.data.require()) else {
        return Status::NGX_DECLINED.into();
    };
    // SAFETY: the main request of a live request is live.
    let status = unsafe { ctx::with(req.main, |ctx| ctx.eval.status) };
    if status == Some(session::Status::Error) {
        debug_http!(req, "sessions_require: store error, 503");
        return NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t;
    }
    // SAFETY: as above.
    match unsafe { require.satisfied(r) } {
        Some(true) => Status::NGX_DECLINED.into(),
        Some(false) => {
            debug_http!(req, "sessions_require: not satisfied, {}", require.error);
            require.error as ngx_int_t
        }
        None => Status::NGX_ERROR.into(),
    }
}

/// Evaluates the session of a main request once.
///
/// # Safety
/// `r` is a live request.
unsafe fn evaluate(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: NGINX calls phase handlers with a live request.
    let req = unsafe { &*r };
    if req.main != r {
        return Status::NGX_DECLINED.into();
    }
    // SAFETY: live request.
    if let Some(waiting) = unsafe { ctx::with(r, |ctx| ctx.waiting) } {
        // Evaluated already, or a spurious run while suspended: keep waiting for the
        // resume event, which alone lets the phases go on.
        debug_http!(
            req,
            "sessions: access phase again, {}",
            if waiting { "still waiting" } else { "decided" }
        );
        return if waiting { Status::NGX_DONE.into() } else { Status::NGX_DECLINED.into() };
    }
    if !Module::location_conf(req).is_some_and(|l| l.enabled()) {
        return Status::NGX_DECLINED.into();
    }
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return Status::NGX_DECLINED.into();
    };
    let (Some(res), true) = (scf.resolved.as_ref(), mcf.zone.is_set()) else {
        return Status::NGX_DECLINED.into();
    };
    if let Some(upstream) = &mcf.redis_upstream {
        // SAFETY: live main request without a context.
        return unsafe { start_redis(r, res, mcf, upstream) };
    }
    let mut data = Vec::new();
    let Some((eval, incoming)) = identity::with(res, mcf, |id| {
        let ((incoming, by), client) = (incoming(req, &id), client(req, &id));
        if fetch_metadata::held_back(req, res.samesite, incoming) {
            return (fetch_metadata::NO_SESSION, incoming);
        }
        let now = now_secs();
        let eval = match mcf.zone.lock() {
            Some(mut locked) => {
                let mut table = locked.table();
                let verifier = id.keys().verifier(by);
                let eval = session::evaluate_reading(
                    &mut table,
                    incoming,
                    verifier,
                    now,
                    &res.policy,
                    &client,
                    &mut data,
                )
                .resigned(incoming, by);
                let evictions = table.eviction_report(now);
                drop(locked);
                if let Some(report) = evictions {
                    log::evictions(log::request_log(req), mcf.zone.name(), &report, now);
                }
                eval
            }
            None => Evaluation::store_error(match incoming {
                Incoming::Verified(id) => Some(id),
                _ => None,
            }),
        };
        (eval, incoming)
    }) else {
        debug_http!(req, "sessions: no identity yet, not evaluated");
        return Status::NGX_DECLINED.into();
    };
    debug_http!(
        req,
        "sessions: shared memory says {} (cookie {})",
        eval.status.as_str(),
        kind(incoming)
    );
    log::outcome(log::request_log(req), &eval, incoming);
    metrics::evaluated(mcf, &eval);
    if eval.status == session::Status::Error {
        log::store_full(log::request_log(req));
    }
    // SAFETY: live main request without a context (checked above).
    match unsafe { ctx::create(r, eval, redis_done) } {
        Some(mut ctx) => {
            if !data.is_empty() {
                // The table holds only what `respond` wrote: a stored form.
                // SAFETY: just created; nothing else borrows it.
                unsafe { ctx.as_mut().data = Data::from_vec(data).unwrap_or_default() };
            }
            Status::NGX_DECLINED.into()
        }
        None => Status::NGX_ERROR.into(),
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
    upstream: &Upstream,
) -> ngx_int_t {
    // SAFETY: the caller's contract.
    let Some(ctx) = (unsafe { ctx::create(r, Evaluation::store_error(None), redis_done) }) else {
        return Status::NGX_ERROR.into();
    };
    let ctx = ctx.as_ptr();
    // Every command of this evaluation (identity, session, follow-ups) shares one budget.
    // SAFETY: the context was just created; its waiter is live.
    unsafe {
        redis::Waiter::limit_total(ptr::addr_of_mut!((*ctx).waiter), upstream.request_budget())
    };
    // SAFETY: `r` is live (the caller's contract).
    let req = unsafe { &*r };
    let sent = if identity::needs_fetch(res, now_secs()) {
        match identity::fetch_command(res, mcf) {
            Some(cmd) => {
                debug_http!(req, "sessions redis: fetching the binding key and identity");
                // SAFETY: the context lives until the request's pool goes, and its cleanup
                // cancels the command first; `upstream` lives in the configuration.
                unsafe { redis::execute(upstream, cmd.encode(), ptr::addr_of_mut!((*ctx).waiter)) }
                    .is_ok()
            }
            None => false,
        }
    } else {
        // SAFETY: a fresh context of a live request.
        unsafe { session_step(ctx, None) }
    };
    if !sent {
        // Decided without waiting (or Redis is down): no suspension.
        debug_http!(req, "sessions redis: decided without waiting");
        // SAFETY: the context was created above and lives as long as the request.
        metrics::evaluated(mcf, unsafe { &(*ctx).eval });
        return Status::NGX_DECLINED.into();
    }
    debug_http!(req, "sessions redis: request suspended");
    // SAFETY: the context and the request are live; the extra reference keeps the request
    // alive until `resume_request` gives it back.
    unsafe {
        (*ctx).waiting = true;
        let main = (*r).main;
        (*main).set_count((*main).count() + 1);
    }
    Status::NGX_DONE.into()
}

/// Advances the session algorithm with `reply` (or starts it). Returns whether a command
/// is now in flight; otherwise the context's `eval` holds the decision.
///
/// The context is reached through `ctx` field by field: the waiter inside it is handed to
/// the Redis client, so no reference to the whole context may be live across `execute`.
///
/// # Safety
/// `ctx` is a live context (created by [`ctx::create`]) of a live request, with no command
/// in flight.
unsafe fn session_step(ctx: *mut RequestCtx, reply: Option<Result<Reply, Failure>>) -> bool {
    // SAFETY: the caller's contract.
    let req = unsafe { &*(*ctx).request };
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return false;
    };
    let (Some(res), Some(upstream)) = (scf.resolved.as_ref(), mcf.redis_upstream.as_ref()) else {
        return false;
    };
    let step = identity::with(res, mcf, |id| {
        // SAFETY: the caller's contract; these borrows cover the flow, the incoming cookie
        // and which secret verified it only, and end with this closure.
        let (flow, incoming_slot, by_slot) = unsafe {
            (
                &mut *ptr::addr_of_mut!((*ctx).flow),
                &mut *ptr::addr_of_mut!((*ctx).incoming),
                &mut *ptr::addr_of_mut!((*ctx).verified_by),
            )
        };
        match (flow.as_mut(), reply) {
            (None, _) => {
                let (incoming, by) = incoming(req, &id);
                (*incoming_slot, *by_slot) = (incoming, by);
                if fetch_metadata::held_back(req, res.samesite, incoming) {
                    return Step::Done(fetch_metadata::NO_SESSION);
                }
                let (started, step) =
                    Flow::start(incoming, now_secs(), &res.policy, &client(req, &id));
                *flow = Some(started);
                step
            }
            (Some(flow), Some(Ok(reply))) => {
                flow.on_reply(reply, id.keys().verifier(*by_slot), &client(req, &id))
            }
            (Some(flow), _) => Step::Done(flow.failed()),
        }
    });
    let Some(step) = step else {
        // The shared secret or name could not be had: nothing to verify with.
        debug_http!(req, "sessions redis: no identity, store error");
        // SAFETY: the caller's contract.
        unsafe { (*ctx).eval = Evaluation::store_error(None) };
        return false;
    };
    match step {
        Step::Done(eval) => {
            // SAFETY: the caller's contract.
            let (eval, incoming) = unsafe {
                let eval = eval.resigned((*ctx).incoming, (*ctx).verified_by);
                (*ctx).eval = eval;
                // The data was read with the record (one GET): the final session's.
                if let Some(data) = (*ctx).flow.as_ref().and_then(Flow::data) {
                    (*ctx).data = data.clone();
                }
                (eval, (*ctx).incoming)
            };
            debug_http!(
                req,
                "sessions redis: decided {} (cookie {})",
                eval.status.as_str(),
                kind(incoming)
            );
            log::outcome(log::request_log(req), &eval, incoming);
            false
        }
        Step::Send(cmd) => {
            debug_http!(req, "sessions redis: sending a command");
            // SAFETY: the waiter is reached from the context's own pointer and stays valid
            // until its reply or the context's cleanup, which cancels it.
            let waiter = unsafe { ptr::addr_of_mut!((*ctx).waiter) };
            // SAFETY: as above; `upstream` lives in the configuration.
            if unsafe { redis::execute(upstream, cmd.encode(), waiter) }.is_ok() {
                return true;
            }
            // SAFETY: the caller's contract; the command was not started.
            unsafe {
                if let Some(flow) = (*ctx).flow.as_mut() {
                    (*ctx).eval = flow.failed();
                }
            }
            false
        }
    }
}

/// The Redis client's callback: a reply (or failure) for the command in flight. `data` is
/// the context, as given to its waiter by [`ctx::create`].
unsafe fn redis_done(data: *mut c_void, reply: Result<Reply, Failure>) {
    let ctx = data.cast::<RequestCtx>();
    // SAFETY: a waiter's callback only runs while it is not cancelled, that is while its
    // context (and so its request) is live.
    let (r, identity_reply) = unsafe { ((*ctx).request, (*ctx).flow.is_none()) };
    // SAFETY: as above.
    let req = unsafe { &*r };
    if identity_reply {
        debug_http!(
            req,
            "sessions redis: identity reply {}",
            if reply.is_ok() { "received" } else { "failed" }
        );
        if let Ok(Reply::Bulk(v)) = &reply {
            identity::adopt(v, now_secs(), log::request_log(req));
        }
    }
    // SAFETY: as above; the command that answered is no longer in flight.
    if unsafe { session_step(ctx, if identity_reply { None } else { Some(reply) }) } {
        return;
    }
    if let Some(mcf) = Module::main_conf(req) {
        // SAFETY: as above; nothing else borrows the context meanwhile.
        metrics::evaluated(mcf, unsafe { &(*ctx).eval });
    }
    // Decided. Resume from a posted event, not from inside the Redis connection's handler;
    // the request stays `waiting` until then, so that a phase run in between (a write
    // event on the client connection) still finds it suspended.
    // SAFETY: as above; the cleanup withdraws the event if the request goes first.
    unsafe {
        let ev = ptr::addr_of_mut!((*ctx).resume);
        (*ev).handler = Some(resume_request);
        (*ev).data = ctx.cast();
        (*ev).log = log::request_log(req);
        ngx::ffi::ngx_post_event(ev, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events));
    }
}

/// Gives back the reference taken when suspending and runs the request's phases again;
/// the access handler then finds the decision in the context and lets the request go on.
unsafe extern "C" fn resume_request(ev: *mut ngx_event_t) {
    // SAFETY: the event is the context's own `resume`, posted by `redis_done` with the
    // context as data; it is withdrawn by the cleanup, so the context is live.
    unsafe {
        let ctx = (*ev).data.cast::<RequestCtx>();
        let r = (*ctx).request;
        (*ctx).waiting = false;
        let main = (*r).main;
        let c = (*r).connection;
        let count = (*main).count();
        if count == 0 {
            // Our reference is gone: something else finalized the request. Leave it be.
            ngx_log_error!(
                NGX_LOG_ALERT,
                (*c).log,
                "sessions: resumed a request that holds no reference"
            );
            return;
        }
        debug_http!(&*r, "sessions redis: resuming the request");
        (*main).set_count(count - 1);
        ngx::ffi::ngx_http_core_run_phases(r);
        ngx::ffi::ngx_http_run_posted_requests(c);
    }
}
