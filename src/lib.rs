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
//! - `filter.rs`: the header filter that sets the cookie;
//! - `variables.rs`: `$session_*`;
//! - `log.rs`: fingerprints, outcome lines, rate-limited lines, debug lines.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(unreachable_pub)]

use sessions_core::{cookie, redis_flow, redis_url, session, state, table};

mod access;
mod conf;
mod ctx;
mod filter;
mod identity;
mod log;
mod redis;
mod shm;
mod state_file;
mod variables;

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

#[cfg(feature = "export-modules")]
ngx::ngx_modules!(ngx_http_sessions_module);

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

/// A worker's idle Redis connections are closed as it exits, and its state file write
/// finishes.
unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    redis::close_idle();
    state_file::exit_process();
}
