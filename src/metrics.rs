//! `sessions_metrics;`: the module's counters in the Prometheus text format, and the few
//! calls that feed them. The counters live in the session zone (one block per worker,
//! `sessions_core::metrics`), so they are summed over workers and survive reloads; the
//! request path adds to its own worker's block with relaxed atomics, without the zone's
//! lock.
//!
//! Without a session zone (no `sessions on` anywhere and no `sessions_zone`) nothing is
//! counted and the endpoint shows zeros.

use core::ptr;

use ngx::core::Status;
use ngx::ffi::{
    ngx_alloc_chain_link, ngx_create_temp_buf, ngx_cycle, ngx_http_discard_request_body,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_worker,
    NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_NOT_ALLOWED, NGX_HTTP_OK,
};
use ngx::http::HttpModuleMainConf;

use crate::conf::MainConf;
use crate::session::Evaluation;
use crate::shm::SharedZone;
use crate::Module;
use sessions_core::metrics::{self, Scrape, TableGauges, WorkerCounters};

/// This worker's block of counters in `zone`.
fn worker_block(zone: &SharedZone) -> Option<&WorkerCounters> {
    // SAFETY: NGINX sets `ngx_worker` once, before the worker serves anything, on the
    // worker's own (only) thread.
    let worker = unsafe { ngx_worker };
    Some(zone.counters()?.worker(worker))
}

/// A main request whose session was decided (once per request, whatever the store).
pub(crate) fn evaluated(mcf: &MainConf, eval: &Evaluation) {
    if let Some(w) = worker_block(&mcf.zone) {
        w.evaluated(eval.status, eval.renewal);
    }
}

/// Runs `f` with this worker's counters in the current cycle's zone, for code that has no
/// configuration at hand (the Redis client, from its event handlers).
pub(crate) fn with_worker(f: impl FnOnce(&WorkerCounters)) {
    // SAFETY: `ngx_cycle` is the worker's live cycle; its main configuration (and the zone
    // it maps) lives as long as the cycle, beyond this call.
    let mcf = unsafe { ngx_cycle.as_ref().and_then(Module::main_conf) };
    if let Some(w) = mcf.and_then(|mcf| worker_block(&mcf.zone)) {
        f(w);
    }
}

/// The exposition of everything the zone holds now.
fn scrape(mcf: &MainConf) -> String {
    let counters = mcf.zone.counters().map(|c| c.snapshot()).unwrap_or_default();
    let (mut evictions, mut table) = (0, None);
    if let Some(mut locked) = mcf.zone.lock() {
        let t = locked.table();
        evictions = t.evictions_total();
        table = Some(TableGauges { stored: t.len() as u64, capacity: t.capacity() as u64 });
    }
    let redis = mcf.redis_upstream.is_some();
    // With Redis the zone's table holds nothing: its gauges would only mislead.
    let table = if redis { None } else { table };
    metrics::render(&Scrape { counters, evictions, table, redis })
}

/// Makes the location answer with the metrics (`sessions_metrics`).
pub(crate) fn install_handler(clcf: &mut ngx::ffi::ngx_http_core_loc_conf_t) {
    clcf.handler = Some(handler);
}

/// The content handler of a `sessions_metrics` location: GET and HEAD only.
unsafe extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: NGINX calls content handlers with a live request.
    let req = unsafe { &mut *r };
    if req.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }
    // SAFETY: as above.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != Status::NGX_OK.into() {
        return rc;
    }
    let Some(mcf) = Module::main_conf(req) else { return Status::NGX_ERROR.into() };
    let body = scrape(mcf);
    req.headers_out.status = NGX_HTTP_OK as usize;
    req.headers_out.content_length_n = body.len() as i64;
    let ctype = metrics::CONTENT_TYPE;
    req.headers_out.content_type_len = ctype.len();
    req.headers_out.content_type.len = ctype.len();
    req.headers_out.content_type.data = ctype.as_ptr().cast_mut();
    req.headers_out.content_type_lowcase = ptr::null_mut();
    // SAFETY: the request is live; NGINX only reads the content type (a static string).
    let rc = unsafe { ngx_http_send_header(r) };
    if rc == Status::NGX_ERROR.into() || rc > Status::NGX_OK.into() || req.header_only() != 0 {
        return rc;
    }
    // SAFETY: the request's pool is live; the buffer has room for the body, and the chain
    // link and buffer live in the pool until the request ends.
    unsafe {
        let buf = ngx_create_temp_buf(req.pool, body.len().max(1));
        let out = ngx_alloc_chain_link(req.pool);
        if buf.is_null() || out.is_null() {
            return Status::NGX_ERROR.into();
        }
        ptr::copy_nonoverlapping(body.as_ptr(), (*buf).pos, body.len());
        (*buf).last = (*buf).pos.add(body.len());
        (*buf).set_last_buf(u32::from(req.main == r));
        (*buf).set_last_in_chain(1);
        (*out).buf = buf;
        (*out).next = ptr::null_mut();
        ngx_http_output_filter(r, out)
    }
}
