//! The Redis side of a response's session actions (`sessions_set`, `sessions_renew`,
//! `sessions_destroy`): the response header waits until Redis confirms the change.
//!
//! The header filter calls [`start`]: it sends the commit's script (the pure algorithm is
//! `sessions_core::redis_commit`) and holds the header (the filter returns `NGX_OK`
//! without calling the next one). Meanwhile [`body_filter`] keeps the response's body
//! chain links (the buffers themselves stay unconsumed, so their owner does not reuse
//! them) and marks the connection buffered, as `ngx_http_image_filter_module` does, so that
//! NGINX waits instead of finishing the request. When Redis answers, fails or times out
//! (`sessions_redis_timeout` for the whole commit), a posted event applies the outcome
//! (`filter::apply`: ctx, cookie, metrics, the one `[error]` of a refused change), passes
//! the header on, then the kept body, and posts the connection's write event, whose handler
//! (`ngx_http_writer` once the request was finalized) finishes the request.
//!
//! A client that goes away meanwhile: the request's pool cleanup cancels the command and
//! withdraws the posted event; nothing refers to the request afterwards.

use core::cell::Cell;
use core::ffi::c_void;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use ngx::core::Status;
use ngx::ffi::{
    ngx_alloc_chain_link, ngx_chain_t, ngx_event_t, ngx_http_output_body_filter_pt,
    ngx_http_request_t, ngx_int_t, ngx_pool_cleanup_add, ngx_time, NGX_LOG_ALERT,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};
use ngx::ngx_log_error;

use crate::cookie::Incoming;
use crate::ctx;
use crate::data::{Actions, Applied};
use crate::filter;
use crate::identity;
use crate::log::{self, debug_http};
use crate::redis::{self, Failure, Waiter};
use crate::redis_flow::Reply;
use crate::Module;
use sessions_core::redis_commit::{Commit, Step};

/// `ngx_connection_t.buffered` bit that keeps NGINX from finishing the request while the
/// header is held: `NGX_HTTP_IMAGE_BUFFERED`'s, the one `c->buffered` bit of the HTTP
/// filters that is not low-level (image_filter buffers a whole image body the same way).
const HELD_BUFFERED: u32 = 0x08;

/// The state of one held response, in the request's pool (freed by its cleanup).
pub(crate) struct Held {
    request: *mut ngx_http_request_t,
    commit: Commit,
    waiter: Waiter,
    /// Posted once the commit is over, to pass the response on from the request's side.
    release: ngx_event_t,
    /// The outcome, once known.
    applied: Option<Applied>,
    /// The body kept while the header is held: head of the chain and its last `next`.
    body: *mut ngx_chain_t,
    body_tail: *mut *mut ngx_chain_t,
    /// The header and body went on: the body filter passes everything through.
    released: bool,
}

/// The next body filter, saved by [`install`].
struct Next(Cell<ngx_http_output_body_filter_pt>);

// SAFETY: written once at configuration time (single-threaded master), then only read by
// the worker's one thread.
unsafe impl Sync for Next {}

static NEXT_BODY_FILTER: Next = Next(Cell::new(None));

/// Puts our body filter at the top of the body filter chain (postconfiguration).
pub(crate) fn install() {
    // SAFETY: configuration time, single-threaded: nothing else reads or writes the top of
    // the chain meanwhile.
    unsafe {
        NEXT_BODY_FILTER.0.set(ngx::ffi::ngx_http_top_body_filter);
        ngx::ffi::ngx_http_top_body_filter = Some(body_filter);
    }
}

/// # Safety
/// `r` is a live request, `body` its output (or null).
unsafe fn next_body_filter(r: *mut ngx_http_request_t, body: *mut ngx_chain_t) -> ngx_int_t {
    match NEXT_BODY_FILTER.0.get() {
        // SAFETY: the next filter of the chain, with the request it was meant for.
        Some(next) => unsafe { next(r, body) },
        None => Status::NGX_ERROR.into(),
    }
}

/// Starts applying `actions` in Redis. `Ok(true)`: a command is in flight and the header
/// is held (the filter returns `NGX_OK` without calling the next header filter);
/// `Ok(false)`: the outcome is applied already (nothing to write, or Redis could not even
/// be asked) and the response goes on; `Err`: memory ran out.
///
/// # Safety
/// `r` is a live main request with a context.
pub(crate) unsafe fn start(r: *mut ngx_http_request_t, actions: &Actions) -> Result<bool, ()> {
    // SAFETY: the caller's contract.
    let req = unsafe { &*r };
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return Ok(false);
    };
    let (Some(res), Some(upstream)) = (scf.resolved.as_ref(), mcf.redis_upstream.as_ref()) else {
        return Ok(false);
    };
    // SAFETY: the caller's contract; the borrow ends inside.
    let found = unsafe {
        ctx::with(r, |ctx| {
            let stored = ctx.flow.as_ref().and_then(|f| f.stored().cloned())?;
            Some((stored, ctx.incoming, ctx.verified_by))
        })
    };
    let Some(Some((stored, incoming, by))) = found else { return Ok(false) };
    // Another request of the same cookie may renew it meanwhile (rolling renewal): the
    // write then follows to the successor it derives, as the flow would.
    let successor = match incoming {
        Incoming::Verified(cookie_id) if cookie_id == stored.id => {
            identity::with(res, mcf, |id| id.keys().verifier(by).successor(&stored.id))
        }
        _ => None,
    };
    let now = ngx_time().max(0) as u64;
    let (commit, step) =
        Commit::start(&stored, actions, mcf.data_size(), now, &res.policy, successor);
    let cmd = match step {
        Step::Done(applied) => {
            debug_http!(req, "sessions redis: nothing to write");
            // SAFETY: the caller's contract.
            return unsafe { apply(r, applied) }.ok_or(());
        }
        Step::Send(cmd) => cmd,
    };
    // SAFETY: the request pool is live; the cleanup's data is fresh memory of the size of a
    // `Held`, written before anything can read it.
    let held = unsafe {
        let cln = ngx_pool_cleanup_add(req.pool, size_of::<Held>());
        if cln.is_null() {
            return Err(());
        }
        let held = (*cln).data.cast::<Held>();
        held.write(Held {
            request: r,
            commit,
            waiter: Waiter::new(commit_done, held.cast()),
            release: core::mem::zeroed(),
            applied: None,
            body: ptr::null_mut(),
            body_tail: ptr::null_mut(),
            released: false,
        });
        (*held).body_tail = ptr::addr_of_mut!((*held).body);
        (*cln).handler = Some(held_cleanup);
        held
    };
    // SAFETY: `held` is live until the request's pool goes; its cleanup cancels the command
    // first. `upstream` lives in the configuration.
    let sent = unsafe {
        let waiter = ptr::addr_of_mut!((*held).waiter);
        Waiter::limit_total(waiter, upstream.timeout);
        redis::execute(upstream, cmd.encode(), waiter)
    };
    if sent.is_err() {
        // SAFETY: `held` is live; no command is in flight.
        let applied = unsafe { (*held).commit.failed() };
        // SAFETY: the caller's contract.
        return unsafe { apply(r, applied) }.ok_or(());
    }
    debug_http!(req, "sessions redis: response header held until Redis confirms");
    // SAFETY: the caller's contract; the request's connection is live.
    unsafe {
        ctx::with(r, |ctx| ctx.held = NonNull::new(held));
        let c = req.connection;
        (*c).set_buffered((*c).buffered() | HELD_BUFFERED);
    }
    Ok(true)
}

/// `filter::apply` on the request's context.
///
/// # Safety
/// `r` is a live main request.
unsafe fn apply(r: *mut ngx_http_request_t, applied: Applied) -> Option<bool> {
    // SAFETY: the caller's contract; the borrow ends inside.
    unsafe { ctx::with(r, |ctx| filter::apply(r, ctx, applied)) }.unwrap_or(Some(()))?;
    Some(false)
}

/// Cancels the command in flight and withdraws the posted release when the request goes
/// away (finished, aborted, worker shutdown); then drops the state.
unsafe extern "C" fn held_cleanup(data: *mut c_void) {
    let held = data.cast::<Held>();
    // SAFETY: `data` is the `Held` written by `start`, dropped exactly once, here.
    unsafe {
        Waiter::cancel(ptr::addr_of_mut!((*held).waiter));
        let release = ptr::addr_of_mut!((*held).release);
        if (*release).posted() != 0 {
            ngx::ffi::ngx_delete_posted_event(release);
        }
        ptr::drop_in_place(held);
    }
}

/// The Redis client's callback for the commit's command.
unsafe fn commit_done(data: *mut c_void, reply: Result<Reply, Failure>) {
    let held = data.cast::<Held>();
    // SAFETY: a waiter's callback only runs while it is not cancelled, that is while its
    // `Held` (and so its request) is live.
    let step = unsafe {
        match reply {
            Ok(reply) => (*held).commit.on_reply(reply),
            Err(_) => Step::Done((*held).commit.failed()),
        }
    };
    let applied = match step {
        Step::Done(applied) => applied,
        Step::Send(cmd) => {
            // SAFETY: as above; the request's configuration outlives it.
            let sent = unsafe {
                let req = &*(*held).request;
                match Module::main_conf(req).and_then(|m| m.redis_upstream.as_ref()) {
                    Some(upstream) => {
                        redis::execute(upstream, cmd.encode(), ptr::addr_of_mut!((*held).waiter))
                            .is_ok()
                    }
                    None => false,
                }
            };
            if sent {
                return;
            }
            // SAFETY: as above; no command is in flight.
            unsafe { (*held).commit.failed() }
        }
    };
    // Pass the response on from a posted event, not from inside the Redis connection's
    // handler. The cleanup withdraws the event if the request goes first.
    // SAFETY: as above.
    unsafe {
        (*held).applied = Some(applied);
        let ev = ptr::addr_of_mut!((*held).release);
        (*ev).handler = Some(release);
        (*ev).data = held.cast();
        (*ev).log = log::request_log(&*(*held).request);
        ngx::ffi::ngx_post_event(ev, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events));
    }
}

/// Applies the outcome, passes the held header and body on, and lets the request's write
/// handler finish it.
unsafe extern "C" fn release(ev: *mut ngx_event_t) {
    // SAFETY: the event is the `Held`'s own, posted by `commit_done` with it as data, and
    // withdrawn by its cleanup: the `Held` and its request are live.
    unsafe {
        let held = (*ev).data.cast::<Held>();
        let r = (*held).request;
        let c = (*r).connection;
        (*held).released = true;
        (*c).set_buffered((*c).buffered() & !HELD_BUFFERED);
        if let Some(applied) = (*held).applied.take() {
            if apply(r, applied).is_none() {
                (*c).set_error(1);
            }
        }
        debug_http!(&*r, "sessions redis: passing the held response on");
        let mut rc = filter::next_header_filter(r);
        let body = core::mem::replace(&mut (*held).body, ptr::null_mut());
        (*held).body_tail = ptr::addr_of_mut!((*held).body);
        if rc == Status::NGX_ERROR.into() || rc > Status::NGX_OK.into() || (*r).header_only() != 0 {
            // No body goes out (HEAD, 204, 304, or the header failed): the kept buffers are
            // consumed, so that their owner may reuse or free them.
            consume(body);
        } else if !body.is_null() {
            rc = next_body_filter(r, body);
        }
        if rc == Status::NGX_ERROR.into() {
            (*c).set_error(1);
        }
        // The request may be finalized already (waiting in `ngx_http_writer` because the
        // connection was buffered), or still producing its body: either way, its write
        // handler goes on from here.
        let wev = (*c).write;
        if wev.is_null() {
            ngx_log_error!(
                NGX_LOG_ALERT,
                (*c).log,
                "sessions: a held response without a write event"
            );
            return;
        }
        if (*wev).posted() == 0 {
            ngx::ffi::ngx_post_event(wev, ptr::addr_of_mut!(ngx::ffi::ngx_posted_events));
        }
    }
}

/// Marks every buffer of `chain` as sent.
///
/// # Safety
/// `chain` is null or a live chain of live buffers.
unsafe fn consume(mut chain: *mut ngx_chain_t) {
    // SAFETY: the caller's contract.
    unsafe {
        while !chain.is_null() {
            let b = (*chain).buf;
            if !b.is_null() {
                (*b).pos = (*b).last;
                (*b).file_pos = (*b).file_last;
            }
            chain = (*chain).next;
        }
    }
}

/// Keeps a held response's body (links of our own to the same buffers) until the header
/// goes on; everything else passes through.
unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, body: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: NGINX calls filters with a live request; the context lookup is a slot read.
    let held = unsafe {
        if (*r).main != r {
            None
        } else {
            ctx::with(r, |ctx| ctx.held).flatten()
        }
    };
    let Some(held) = held.map(NonNull::as_ptr) else {
        // SAFETY: the request the filter was called with.
        return unsafe { next_body_filter(r, body) };
    };
    // SAFETY: a `Held` in the context is live as long as the request (its cleanup runs
    // when the pool goes).
    unsafe {
        if (*held).released {
            return next_body_filter(r, body);
        }
        let mut link = body;
        while !link.is_null() {
            let own = ngx_alloc_chain_link((*r).pool);
            if own.is_null() {
                return Status::NGX_ERROR.into();
            }
            (*own).buf = (*link).buf;
            (*own).next = ptr::null_mut();
            *(*held).body_tail = own;
            (*held).body_tail = ptr::addr_of_mut!((*own).next);
            link = (*link).next;
        }
    }
    // SAFETY: the request the filter was called with.
    let req = unsafe { &*r };
    debug_http!(req, "sessions redis: body kept while the header is held");
    Status::NGX_OK.into()
}
