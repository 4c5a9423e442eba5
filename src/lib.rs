//! ngx_http_sessions_module: HTTP sessions for NGINX — a signed session cookie, a
//! server-side session table in shared memory or Redis, idle / rolling / absolute timeouts
//! and binding to the client address and User-Agent.
//!
//! The pure logic lives in the `sessions-core` crate (no NGINX types, unit tested);
//! this crate is the FFI glue, one concern per file:
//!
//! - `lib.rs`: the module's definition and how NGINX reaches the rest;
//! - `conf/`: the directives, the settings of each level, merge, the zone's declaration;
//! - `shm.rs`: the shared-memory zone (its state, layout and lock);
//! - `state_file.rs`: the zone's state file (loaded at creation, written periodically and at stop);
//! - `redis/`: the Redis client on the event loop (connections, pool, breaker);
//! - `identity.rs`: the secret and cookie name a request uses;
//! - `ctx.rs`: the per-request state;
//! - `access.rs`: the access phase that evaluates the session (shm, or Redis with resume);
//! - `fetch_metadata.rs`: no session from a cookieless cross-site request (SPEC step 7);
//! - `filter.rs`: the header filter that applies the response's session actions and sets
//!   the cookie;
//! - `redis_commit.rs`: the Redis write of those actions (the header held until it is done);
//! - `pass_cookie.rs`: `sessions_pass_cookie off` (our cookie kept from the upstream);
//! - `variables.rs`: `$session_*`;
//! - `metrics.rs`: `sessions_metrics` and the calls that feed its counters;
//! - `log.rs`: fingerprints, outcome lines, rate-limited lines, debug lines.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(unreachable_pub)]

use sessions_core::{cookie, data, http, redis_flow, redis_url, session, state, table};

mod access;
mod conf;
mod ctx;
mod fetch_metadata;
mod filter;
mod identity;
mod log;
mod metrics;
mod pass_cookie;
mod redis;
mod redis_commit;
mod shm;
mod state_file;
mod variables;

use core::ffi::c_char;
use core::ptr;

use ngx::core::Status;
use ngx::ffi::NGX_HTTP_MODULE;
use ngx::ffi::{ngx_conf_t, ngx_cycle_t, ngx_http_module_t, ngx_int_t, ngx_module_t, ngx_uint_t};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf};

use conf::{LocConf, MainConf, SrvConf};

pub(crate) struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is only written by NGINX while loading configuration.
        unsafe { &*ptr::addr_of!(ngx_http_sessions_module) }
    }

    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: NGINX passes a live configuration context.
        unsafe { variables::register(cf) }
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        // SAFETY: NGINX passes a live configuration context.
        let cf = unsafe { &mut *cf };
        if access::install(cf).is_err() {
            return Status::NGX_ERROR.into();
        }
        filter::install();
        redis_commit::install();
        conf::log_fixed_secrets(cf);
        Status::NGX_OK.into()
    }
}

// SAFETY: the conf types match what the module's create functions allocate.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = MainConf;
}
// SAFETY: as above.
unsafe impl HttpModuleServerConf for Module {
    type ServerConf = SrvConf;
}
// SAFETY: as above.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = LocConf;
}

static NGX_HTTP_SESSIONS_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(Module::preconfiguration),
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: Some(conf::create_main_conf),
    init_main_conf: Some(conf::init_main_conf),
    create_srv_conf: Some(conf::create_srv_conf),
    merge_srv_conf: Some(conf::merge_srv_conf),
    create_loc_conf: Some(conf::create_loc_conf),
    merge_loc_conf: Some(Module::merge_loc_conf),
};

/// A NULL-terminated array of pointers exported to NGINX's `dlsym`. The pointers are to
/// immutable statics (C strings, the module), so sharing them between threads is sound.
#[repr(transparent)]
pub struct Exported<T, const N: usize>([*const T; N]);

// SAFETY: the arrays are never written, and what they point to is either immutable or
// written only by NGINX's single-threaded configuration load.
unsafe impl<T, const N: usize> Sync for Exported<T, N> {}

// What `load_module` looks up (`ngx_load_module` in src/core/nginx.c): the modules of
// this object, their names, and where they go in the module order. `ngx::ngx_modules!`
// would export an empty order, so the three symbols are written out here.

#[cfg(feature = "export-modules")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ngx_modules: Exported<ngx_module_t, 2> =
    Exported([ptr::addr_of!(ngx_http_sessions_module), ptr::null()]);

#[cfg(feature = "export-modules")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ngx_module_names: Exported<c_char, 2> =
    Exported([c"ngx_http_sessions_module".as_ptr(), ptr::null()]);

/// The module goes right before `ngx_http_headers_filter_module` (`ngx_add_module` in
/// src/core/ngx_module.c), where NGINX's build puts its own dynamic filter modules.
/// Filters install themselves in module order, each on top of the chain, so our header
/// filter then runs after the headers filter: it sees the `Cache-Control` of `expires` and
/// the `Set-Cookie` of `add_header`, and has the last word on both. The access handler
/// still registers after those of the static access modules (auth_basic, access,
/// limit_req, ...), which come earlier in the order, so it still runs before them.
#[cfg(feature = "export-modules")]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ngx_module_order: Exported<c_char, 3> = Exported([
    c"ngx_http_sessions_module".as_ptr(),
    c"ngx_http_headers_filter_module".as_ptr(),
    ptr::null(),
]);

#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_sessions_module: ngx_module_t = ngx_module_t {
    ctx: ptr::addr_of!(NGX_HTTP_SESSIONS_MODULE_CTX) as _,
    // SAFETY: only the address of the command table is taken.
    commands: unsafe { ptr::addr_of_mut!(conf::COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_process: Some(state_file::init_process),
    exit_process: Some(exit_process),
    exit_master: Some(state_file::exit_master),
    ..ngx_module_t::default()
};

/// A worker's Redis connections are closed as it exits, and its state file write
/// finishes.
unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    redis::close_all();
    state_file::exit_process();
}
