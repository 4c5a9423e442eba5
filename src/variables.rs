//! `$session_id`, `$session_id_hash`, `$session_status`, `$session_data_<key>`. They read what the access phase
//! decided and never evaluate the session themselves: before the access phase (or where
//! sessions are off) they are empty.
//!
//! A new variable is one line in [`VARIABLES`] and a function from the request's context
//! to its value.

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_add_variable, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t,
    ngx_palloc, ngx_str_t, ngx_uint_t, NGX_HTTP_VAR_NOCACHEABLE, NGX_HTTP_VAR_PREFIX,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule};
use ngx::ngx_string;

use crate::ctx::{self, RequestCtx};
use crate::identity;
use crate::Module;

/// A variable's value, computed from the main request and its context.
enum Value {
    /// Bytes to copy into the request pool (`len` of `buf`).
    Copy { buf: [u8; 64], len: usize },
    /// A static string (no copy).
    Static(&'static str),
}

impl Value {
    /// A short value to copy; `None` (not found) if it does not fit.
    fn copy(bytes: &[u8]) -> Option<Value> {
        let mut buf = [0u8; 64];
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Value::Copy { buf, len: bytes.len() })
    }
}

type Compute = fn(&ngx_http_request_t, &RequestCtx) -> Option<Value>;

type Getter = unsafe extern "C" fn(
    *mut ngx_http_request_t,
    *mut ngx_http_variable_value_t,
    usize,
) -> ngx_int_t;

/// Every variable: its name and how its value is computed (passed as the handler's data).
const VARIABLES: [(ngx_str_t, Compute); 3] = [
    (ngx_string!("session_id"), session_id),
    (ngx_string!("session_id_hash"), session_id_hash),
    (ngx_string!("session_status"), session_status),
];

fn session_id(_: &ngx_http_request_t, ctx: &RequestCtx) -> Option<Value> {
    Value::copy(&ctx.eval.id?.encode())
}

fn session_id_hash(main: &ngx_http_request_t, ctx: &RequestCtx) -> Option<Value> {
    let id = ctx.eval.id?;
    let (mcf, scf) = (Module::main_conf(main)?, Module::server_conf(main)?);
    let res = scf.resolved.as_ref()?;
    identity::with(res, mcf, |ident| Value::copy(&ident.signer.log_hash(&id)))?
}

fn session_status(_: &ngx_http_request_t, ctx: &RequestCtx) -> Option<Value> {
    Some(Value::Static(ctx.eval.status.as_str()))
}

/// Registers the variables (preconfiguration).
///
/// # Safety
/// `cf` must be a live configuration context.
pub(crate) unsafe fn register(cf: *mut ngx_conf_t) -> ngx_int_t {
    for (name, compute) in VARIABLES {
        let mut name = name;
        // SAFETY: the caller's contract; NGINX copies the name.
        let var =
            unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t) };
        // SAFETY: null or a variable NGINX just added for us.
        let Some(var) = (unsafe { var.as_mut() }) else {
            return Status::NGX_ERROR.into();
        };
        var.get_handler = Some(get as Getter);
        var.data = compute as usize;
    }
    let mut prefix = DATA_PREFIX;
    let flags = NGX_HTTP_VAR_NOCACHEABLE | NGX_HTTP_VAR_PREFIX;
    // SAFETY: the caller's contract; NGINX copies the name.
    let var = unsafe { ngx_http_add_variable(cf, &mut prefix, flags as ngx_uint_t) };
    // SAFETY: null or a variable NGINX just added for us.
    let Some(var) = (unsafe { var.as_mut() }) else {
        return Status::NGX_ERROR.into();
    };
    var.get_handler = Some(DATA_GETTER);
    Status::NGX_OK.into()
}

/// The one address of `$session_data_*`'s getter, both registered and looked for by
/// [`forget_data`].
static DATA_GETTER: Getter = get_data;

/// `$session_data_<key>`'s prefix.
const DATA_PREFIX: ngx_str_t = ngx_string!("session_data_");

/// `$session_data_<key>`: `data` is the variable's full name (NGINX passes it to prefix
/// variables' getters). Empty when the key is unset, without a session, or where sessions
/// are off.
unsafe extern "C" fn get_data(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: NGINX passes a live request, value, and the variable's name as `data`.
    let (main, v, name) = unsafe { ((*r).main, &mut *v, &*(data as *const ngx_str_t)) };
    let key = name.as_bytes().get(DATA_PREFIX.len..).unwrap_or(b"");
    // SAFETY: the main request of a live request is live; the borrow ends inside, and the
    // copy goes to the request's pool.
    let copied = unsafe {
        ctx::with(main, |ctx| match ctx.data.get(key) {
            None => Some((core::ptr::null_mut(), 0)),
            Some(value) => {
                let p = ngx_palloc((*r).pool, value.len()).cast::<u8>();
                if p.is_null() {
                    return None;
                }
                core::ptr::copy_nonoverlapping(value.as_ptr(), p, value.len());
                Some((p, value.len()))
            }
        })
    };
    let (data, len) = match copied {
        Some(Some(found)) => found,
        Some(None) => return Status::NGX_ERROR.into(),
        None => (core::ptr::null_mut(), 0),
    };
    // Empty rather than "not found": `sessions_require $session_data_user` and `if=` read
    // it as empty either way, and logs show "" rather than "-".
    v.set_len(len as u32);
    v.set_valid(1);
    v.set_no_cacheable(1);
    v.set_not_found(0);
    v.data = if data.is_null() { b"".as_ptr().cast_mut() } else { data };
    Status::NGX_OK.into()
}

/// Forgets the request's computed `$session_data_*` values, after the response's actions
/// changed the data: `access_log` and others read indexed variables from the request's
/// cache, which `no_cacheable` alone does not refresh.
///
/// # Safety
/// `r` is a live main request.
pub(crate) unsafe fn forget_data(r: *mut ngx_http_request_t) {
    // SAFETY: the caller's contract.
    let req = unsafe { &*r };
    let Some(cmcf) = NgxHttpCoreModule::main_conf(req) else { return };
    if req.variables.is_null() {
        return;
    }
    // SAFETY: the core module's array of indexed variables; the request's `variables` has
    // one value per element (allocated with the request).
    let vars = unsafe { cmcf.variables.as_slice::<ngx::ffi::ngx_http_variable_t>() };
    for (i, var) in vars.iter().enumerate() {
        if var.get_handler.is_some_and(|h| h as usize == DATA_GETTER as usize) {
            // SAFETY: as above: index `i` is within the request's values.
            let value = unsafe { &mut *req.variables.add(i) };
            value.set_valid(0);
            value.set_not_found(0);
        }
    }
}

/// The one getter: finds the main request's context and computes the value with `data`.
unsafe extern "C" fn get(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: `data` is a `Compute` stored by `register` (fn pointers round-trip through
    // usize); NGINX passes a live request and value; subrequests share the main context.
    let (compute, main, v) =
        unsafe { (core::mem::transmute::<usize, Compute>(data), (*r).main, &mut *v) };
    // SAFETY: the main request of a live request is live; the borrow ends inside.
    let value = unsafe { ctx::with(main, |ctx| compute(&*main, ctx)) }.flatten();
    let (data, len) = match value {
        None => {
            v.set_not_found(1);
            return Status::NGX_OK.into();
        }
        Some(Value::Static(s)) => (s.as_ptr().cast_mut(), s.len()),
        Some(Value::Copy { buf, len }) => {
            let bytes = &buf[..len];
            // SAFETY: the request pool is live; the copy fills the whole allocation.
            let p = unsafe { ngx_palloc((*r).pool, bytes.len()) }.cast::<u8>();
            if p.is_null() {
                return Status::NGX_ERROR.into();
            }
            // SAFETY: `p` holds `bytes.len()` bytes and does not overlap `bytes`.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
            (p, bytes.len())
        }
    };
    v.set_len(len as u32);
    v.set_valid(1);
    v.set_no_cacheable(1);
    v.set_not_found(0);
    v.data = data;
    Status::NGX_OK.into()
}
