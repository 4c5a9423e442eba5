//! The per-request state: what one main request learned about its session, kept in the
//! request pool from the access phase to the end of the request, across internal
//! redirects. Per-request state goes here (one field each); the access phase fills it,
//! the filter and the variables read it.
//!
//! Ownership: the context is written once into a pool cleanup's data. Everything that
//! refers to it holds a raw pointer derived from that one allocation (`r->ctx`, the
//! cleanup, the Redis waiter's `data`, the resume event's `data`); references to it are
//! short borrows that end before control returns to NGINX.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use ngx::ffi::{ngx_event_t, ngx_http_request_t, ngx_pool_cleanup_add, ngx_pool_cleanup_t};
use ngx::http::HttpModule;

use crate::cookie::{Incoming, VerifiedBy};
use crate::data::Data;
use crate::redis::{Done, Waiter};
use crate::redis_flow::Flow;
use crate::session::Evaluation;
use crate::Module;

/// What one main request learned about its session.
pub(crate) struct RequestCtx {
    pub(crate) eval: Evaluation,
    /// Our `Set-Cookie` was added to the response.
    pub(crate) cookie_sent: bool,
    /// The request is suspended on Redis, from the access handler's `NGX_DONE` until
    /// the resume event runs (not until the reply: phases may run in between).
    pub(crate) waiting: bool,
    pub(crate) request: *mut ngx_http_request_t,
    /// The Redis command in flight, if any.
    pub(crate) waiter: Waiter,
    /// Posted to resume the request once the session is decided.
    pub(crate) resume: ngx_event_t,
    /// The Redis algorithm's state; `None` while the shared identity is being fetched.
    pub(crate) flow: Option<Flow>,
    /// What the cookies said, for the log line once the Redis path has decided.
    pub(crate) incoming: Incoming,
    /// Which secret verified the cookie: what the Redis path derives successors with.
    pub(crate) verified_by: VerifiedBy,
    /// The session's data as this request sees it (`$session_data_*`): read with the
    /// session, replaced by what the response's actions made of it.
    pub(crate) data: Data,
    /// The response's actions (`sessions_set`, `sessions_renew`, `sessions_destroy`) were
    /// applied (or attempted): once per main request.
    pub(crate) actions_done: bool,
    /// The response expires our cookie (`sessions_destroy this|all`).
    pub(crate) expire_cookie: bool,
}

/// Detaches a command in flight and withdraws a posted resume event, so that nothing
/// refers to the context after the request goes away (finished, aborted, worker shutdown);
/// then drops it. Also marks the cleanup as ours, so that the context can be found after
/// an internal redirect, which zeroes `r->ctx` (the way `ngx_http_realip_module` finds
/// its context).
unsafe extern "C" fn ctx_cleanup(data: *mut c_void) {
    let ctx = data.cast::<RequestCtx>();
    // SAFETY: `data` is the context written by `create`, dropped exactly once, here.
    unsafe {
        Waiter::cancel(ptr::addr_of_mut!((*ctx).waiter));
        let resume = ptr::addr_of_mut!((*ctx).resume);
        if (*resume).posted() != 0 {
            ngx::ffi::ngx_delete_posted_event(resume);
        }
        ptr::drop_in_place(ctx);
    }
}

/// The one address both the writer and the finder compare against.
static CTX_CLEANUP: unsafe extern "C" fn(*mut c_void) = ctx_cleanup;

fn is_ctx_cleanup(h: ngx::ffi::ngx_pool_cleanup_pt) -> bool {
    h.is_some_and(|h| h as usize == CTX_CLEANUP as usize)
}

fn ctx_index() -> usize {
    Module::module().ctx_index
}

/// The request's context, if the session was evaluated; survives internal redirects.
///
/// # Safety
/// `r` must be a live request.
pub(crate) unsafe fn get(r: *mut ngx_http_request_t) -> Option<NonNull<RequestCtx>> {
    // SAFETY: the caller's contract; `r->ctx` has a slot per module, and a non-null slot
    // of ours (or the data of our cleanup) is a context written by `create`.
    unsafe {
        let slot = (*r).ctx.add(ctx_index());
        if let Some(ctx) = NonNull::new(*slot) {
            return Some(ctx.cast());
        }
        if (*r).internal() == 0 && (*r).filter_finalize() == 0 {
            return None;
        }
        let mut cln: *mut ngx_pool_cleanup_t = (*(*r).pool).cleanup;
        while !cln.is_null() {
            if is_ctx_cleanup((*cln).handler) {
                *slot = (*cln).data;
                return NonNull::new((*cln).data.cast());
            }
            cln = (*cln).next;
        }
        None
    }
}

/// Runs `f` with the request's context, if any. `f` must not start or complete Redis
/// commands (those reach the context through their own pointer).
///
/// # Safety
/// `r` must be a live request.
pub(crate) unsafe fn with<R>(
    r: *mut ngx_http_request_t,
    f: impl FnOnce(&mut RequestCtx) -> R,
) -> Option<R> {
    // SAFETY: the caller's contract; the borrow ends with `f`, and nothing else touches the
    // context meanwhile (one thread; Redis callbacks run from event handlers, not from `f`).
    unsafe { get(r).map(|mut ctx| f(ctx.as_mut())) }
}

/// Creates the context of a main request that has none yet. `done` receives the Redis
/// replies, with the context as its data.
///
/// # Safety
/// `r` must be a live main request without a context.
pub(crate) unsafe fn create(
    r: *mut ngx_http_request_t,
    eval: Evaluation,
    done: Done,
) -> Option<NonNull<RequestCtx>> {
    // SAFETY: the caller's contract; the cleanup's data is fresh pool memory of the size of
    // a context, written before anything can read it.
    unsafe {
        let cln = ngx_pool_cleanup_add((*r).pool, size_of::<RequestCtx>());
        if cln.is_null() {
            return None;
        }
        let ctx = (*cln).data.cast::<RequestCtx>();
        ctx.write(RequestCtx {
            eval,
            cookie_sent: false,
            waiting: false,
            request: r,
            waiter: Waiter::new(done, ctx.cast()),
            resume: core::mem::zeroed(),
            flow: None,
            incoming: Incoming::Absent,
            verified_by: VerifiedBy::Current,
            data: Data::new(),
            actions_done: false,
            expire_cookie: false,
        });
        (*cln).handler = Some(CTX_CLEANUP);
        *(*r).ctx.add(ctx_index()) = ctx.cast();
        NonNull::new(ctx)
    }
}
