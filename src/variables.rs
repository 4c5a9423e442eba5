//! `$session_id`, `$session_id_hash`, `$session_status`. They read what the access phase
//! decided and never evaluate the session themselves: before the access phase (or where
//! sessions are off) they are empty.

use core::ptr;

use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_palloc, ngx_str_t, ngx_uint_t, NGX_ERROR, NGX_HTTP_VAR_NOCACHEABLE, NGX_OK,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};
use ngx::ngx_string;

use crate::handler::{get_ctx, identity};
use crate::Module;

type Getter = unsafe extern "C" fn(
    *mut ngx_http_request_t,
    *mut ngx_http_variable_value_t,
    usize,
) -> ngx_int_t;

const VARIABLES: [(ngx_str_t, Getter); 3] = [
    (ngx_string!("session_id"), get_session_id),
    (ngx_string!("session_id_hash"), get_session_id_hash),
    (ngx_string!("session_status"), get_session_status),
];

/// Registers the variables (preconfiguration).
///
/// # Safety
/// `cf` must be a live configuration context.
pub unsafe fn register(cf: *mut ngx_conf_t) -> ngx_int_t {
    for (name, get) in VARIABLES {
        let mut name = name;
        let var = ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t);
        if var.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        (*var).get_handler = Some(get);
        (*var).data = 0;
    }
    NGX_OK as ngx_int_t
}

/// # Safety
/// `v` is a live variable value; `data` lives at least as long as the request.
unsafe fn set_value(v: *mut ngx_http_variable_value_t, data: *const u8, len: usize) {
    (*v).set_len(len as u32);
    (*v).set_valid(1);
    (*v).set_no_cacheable(1);
    (*v).set_not_found(0);
    (*v).data = data.cast_mut();
}

/// # Safety
/// `v` is a live variable value.
unsafe fn not_found(v: *mut ngx_http_variable_value_t) -> ngx_int_t {
    (*v).set_not_found(1);
    NGX_OK as ngx_int_t
}

/// Copies `bytes` into the request pool and points the value at it.
///
/// # Safety
/// `r` and `v` are live.
unsafe fn set_copy(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    bytes: &[u8],
) -> ngx_int_t {
    let p = ngx_palloc((*r).pool, bytes.len()).cast::<u8>();
    if p.is_null() {
        return NGX_ERROR as ngx_int_t;
    }
    ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
    set_value(v, p, bytes.len());
    NGX_OK as ngx_int_t
}

unsafe extern "C" fn get_session_id(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _: usize,
) -> ngx_int_t {
    // SAFETY: NGINX passes a live request and value; subrequests share the main context.
    unsafe {
        match get_ctx((*r).main).and_then(|c| c.eval.id) {
            Some(id) => set_copy(r, v, &id.encode()),
            None => not_found(v),
        }
    }
}

unsafe extern "C" fn get_session_id_hash(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _: usize,
) -> ngx_int_t {
    // SAFETY: as above.
    unsafe {
        let Some(id) = get_ctx((*r).main).and_then(|c| c.eval.id) else {
            return not_found(v);
        };
        let main = &*(*r).main;
        let (Some(mcf), Some(scf)) = (Module::main_conf(main), Module::server_conf(main)) else {
            return not_found(v);
        };
        match scf.resolved.as_ref().and_then(|res| identity(res, mcf)) {
            Some(ident) => set_copy(r, v, &ident.signer.log_hash(&id)),
            None => not_found(v),
        }
    }
}

unsafe extern "C" fn get_session_status(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    _: usize,
) -> ngx_int_t {
    // SAFETY: as above; the status text is a static string.
    unsafe {
        match get_ctx((*r).main) {
            Some(ctx) => {
                let s = ctx.eval.status.as_str();
                set_value(v, s.as_ptr(), s.len());
                NGX_OK as ngx_int_t
            }
            None => not_found(v),
        }
    }
}
