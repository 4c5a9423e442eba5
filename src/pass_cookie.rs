//! `sessions_pass_cookie off`: once the session is decided, our cookie is removed from the
//! request's `Cookie` header(s), so the upstream (and `$http_cookie`) never sees the
//! session ID; other cookies are kept byte for byte, a header left empty is dropped.
//!
//! NGINX 1.28 keeps request headers in the list `r->headers_in.headers`, which the proxy
//! modules copy, plus pointers into it (`r->headers_in.cookie` and its `next` chain,
//! `host`, `user_agent`, ...). A header whose value changes is rewritten in place. One
//! that must go cannot be unlinked from the list without moving the elements after it,
//! which would leave those pointers aimed at other headers; so the list is rebuilt in new
//! memory without it: the old elements stay where they are (the pointers into them stay
//! valid and keep their values), and the cookie chain is linked anew over the new list.

use core::mem::size_of;
use core::ptr;

use ngx::ffi::{ngx_http_request_t, ngx_list_part_t, ngx_palloc, ngx_str_t, ngx_table_elt_t};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf};

use crate::ctx;
use crate::filter::for_each_header_mut;
use crate::http::{self, StrippedCookie};
use crate::identity;
use crate::log::debug_http;
use crate::Module;

/// Applies `sessions_pass_cookie off` to a main request whose session is decided (the
/// access handler calls it whenever it lets the request go on). Idempotent. `Err` only
/// when memory ran out.
///
/// # Safety
/// `r` is a live request.
pub(crate) unsafe fn apply(r: *mut ngx_http_request_t) -> Result<(), ()> {
    // SAFETY: the caller's contract.
    let req = unsafe { &mut *r };
    if req.main != r || Module::location_conf(req).is_none_or(|l| l.pass_cookie()) {
        return Ok(());
    }
    // SAFETY: live request; only decided sessions qualify.
    if unsafe { ctx::with(r, |ctx| ctx.waiting) } != Some(false) {
        return Ok(());
    }
    let (Some(mcf), Some(scf)) = (Module::main_conf(req), Module::server_conf(req)) else {
        return Ok(());
    };
    let Some(res) = scf.resolved.as_ref() else { return Ok(()) };
    // Without a known name (a random one not fetched yet) there is nothing to look for.
    let name = identity::with_name(res, mcf, <[u8]>::to_vec).unwrap_or_default();
    if name.is_empty() {
        return Ok(());
    }
    // SAFETY: the caller's contract.
    unsafe { strip(req, &name) }
}

/// Removes every `name=...` pair from the request's `Cookie` headers.
///
/// # Safety
/// `req` is a live request whose header list nothing else borrows.
unsafe fn strip(req: &mut ngx_http_request_t, name: &[u8]) -> Result<(), ()> {
    let pool = req.pool;
    let mut removed: Vec<*const ngx_table_elt_t> = Vec::new();
    let mut total = 0usize;
    let mut failed = false;
    // SAFETY: the request's header list is live; nothing else walks it meanwhile.
    unsafe {
        for_each_header_mut(&mut req.headers_in.headers.part, |h| {
            total += 1;
            if !h.key.as_bytes().eq_ignore_ascii_case(b"cookie") {
                return;
            }
            match http::strip_cookie(h.value.as_bytes(), name) {
                StrippedCookie::Unchanged => {}
                StrippedCookie::Replaced(v) => match ngx_str_t::from_bytes(pool, &v) {
                    Some(v) => h.value = v,
                    None => failed = true,
                },
                StrippedCookie::Removed => removed.push(ptr::from_ref(h)),
            }
        })
    };
    if failed {
        return Err(());
    }
    if removed.is_empty() {
        return Ok(());
    }
    debug_http!(req, "sessions: removing {} Cookie header(s) left empty", removed.len());
    // SAFETY: as above; `removed` holds elements of this list.
    unsafe { rebuild_without(req, total, &removed) }
}

/// Replaces the request's header list with a copy that lacks `removed`, and links the
/// `Cookie` chain over the copy.
///
/// # Safety
/// `req` is a live request; its header list holds `total` elements, `removed` among them.
unsafe fn rebuild_without(
    req: &mut ngx_http_request_t,
    total: usize,
    removed: &[*const ngx_table_elt_t],
) -> Result<(), ()> {
    // Room for every old element: later pushes (if a module makes any) fit.
    let nalloc = total.max(1);
    // SAFETY: the request pool is live.
    let elts = unsafe { ngx_palloc(req.pool, nalloc * size_of::<ngx_table_elt_t>()) }
        .cast::<ngx_table_elt_t>();
    if elts.is_null() {
        return Err(());
    }
    let mut kept = 0usize;
    // SAFETY: the old list is live; `elts` has room for all of its elements.
    unsafe {
        for_each_header_mut(&mut req.headers_in.headers.part, |h| {
            if !removed.contains(&ptr::from_ref(h)) && kept < nalloc {
                elts.add(kept).write(*h);
                kept += 1;
            }
        })
    };
    let list = &mut req.headers_in.headers;
    list.part = ngx_list_part_t { elts: elts.cast(), nelts: kept, next: ptr::null_mut() };
    list.last = ptr::addr_of_mut!(list.part);
    list.size = size_of::<ngx_table_elt_t>();
    list.nalloc = nalloc;
    list.pool = req.pool;

    // SAFETY: `elts` holds `kept` initialised elements of the request's new list.
    unsafe { relink_cookies(req, elts, kept) }
}

/// Points `headers_in.cookie` and its `next` chain at the `Cookie` elements of the new
/// list, in header order.
///
/// # Safety
/// `elts` holds `kept` initialised elements that live as long as the request.
#[cfg(nginx1_23_0)]
unsafe fn relink_cookies(
    req: &mut ngx_http_request_t,
    elts: *mut ngx_table_elt_t,
    kept: usize,
) -> Result<(), ()> {
    let mut link: *mut *mut ngx_table_elt_t = ptr::addr_of_mut!(req.headers_in.cookie);
    // SAFETY: `link` points at `headers_in.cookie` or at the `next` of one of the new
    // elements, all live.
    unsafe {
        for i in 0..kept {
            let h = elts.add(i);
            if (*h).key.as_bytes().eq_ignore_ascii_case(b"cookie") {
                *link = h;
                link = ptr::addr_of_mut!((*h).next);
            }
        }
        *link = ptr::null_mut();
    }
    Ok(())
}

/// Before 1.23.0, `headers_in.cookies` is an array of pointers to the `Cookie` elements.
///
/// # Safety
/// `elts` holds `kept` initialised elements that live as long as the request.
#[cfg(not(nginx1_23_0))]
unsafe fn relink_cookies(
    req: &mut ngx_http_request_t,
    elts: *mut ngx_table_elt_t,
    kept: usize,
) -> Result<(), ()> {
    let cookies = &mut req.headers_in.cookies;
    // Fewer pointers than before go back in: the pushes reuse the array's memory.
    cookies.nelts = 0;
    // SAFETY: the array is the request's live array of `ngx_table_elt_t *`.
    unsafe {
        for i in 0..kept {
            let h = elts.add(i);
            if (*h).key.as_bytes().eq_ignore_ascii_case(b"cookie") {
                let slot = ngx::ffi::ngx_array_push(cookies).cast::<*mut ngx_table_elt_t>();
                if slot.is_null() {
                    return Err(());
                }
                slot.write(h);
            }
        }
    }
    Ok(())
}
