//! ngx_http_sessions_module: HTTP sessions for NGINX — a signed session cookie, a
//! server-side session table in shared memory, idle / rolling / absolute timeouts and
//! binding to the client address and User-Agent.
//!
//! The pure logic lives in the `sessions-core` crate (no NGINX types, unit tested);
//! this crate is the thin FFI glue.

pub use sessions_core::{cookie, redis_flow, redis_url, session, table};

pub mod conf;
mod handler;
mod redis;
mod shm;
mod variables;

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_array_push, ngx_conf_t, ngx_http_core_main_conf_t, ngx_http_handler_pt, ngx_http_module_t,
    ngx_http_phases_NGX_HTTP_ACCESS_PHASE, ngx_int_t, ngx_module_t, ngx_uint_t, NGX_ERROR,
    NGX_HTTP_MODULE, NGX_OK,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf, NgxHttpCoreModule,
};
use ngx::ngx_conf_log_error;

use conf::{LocConf, MainConf, SrvConf};

pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is only written by NGINX while loading configuration.
        unsafe { &*ptr::addr_of!(ngx_http_sessions_module) }
    }

    unsafe extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        variables::register(cf)
    }

    unsafe extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
        let Some(cmcf) = NgxHttpCoreModule::main_conf_mut(&*cf) else {
            return NGX_ERROR as ngx_int_t;
        };
        let cmcf: &mut ngx_http_core_main_conf_t = cmcf;
        let slot = ngx_array_push(
            &mut cmcf.phases[ngx_http_phases_NGX_HTTP_ACCESS_PHASE as usize].handlers,
        )
        .cast::<ngx_http_handler_pt>();
        if slot.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        *slot = Some(handler::access_handler);

        handler::NEXT_HEADER_FILTER = ngx::ffi::ngx_http_top_header_filter;
        ngx::ffi::ngx_http_top_header_filter = Some(handler::header_filter);

        // One fingerprint line per configured secret (the random one is logged by the zone).
        if let Some(mcf) = Module::main_conf(&*cf) {
            if mcf.used {
                log_fixed_secrets(cf);
            }
        }
        NGX_OK as ngx_int_t
    }
}

/// Logs the fingerprint of each distinct configured secret.
unsafe fn log_fixed_secrets(cf: *mut ngx_conf_t) {
    let Some(cmcf) = NgxHttpCoreModule::main_conf(&*cf) else { return };
    let servers = cmcf.servers.as_slice::<*mut ngx::ffi::ngx_http_core_srv_conf_t>();
    let mut seen: Vec<[u8; 16]> = Vec::new();
    for &cscf in servers {
        let Some(scf) = Module::server_conf(&*cscf) else { continue };
        if let Some(secret) = scf.fixed_secret() {
            let fp = cookie::fingerprint(secret);
            if !seen.contains(&fp) {
                seen.push(fp);
                shm::log_fingerprint((*cf).log, &fp, "configured");
            }
        }
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

unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    conf::alloc_conf::<MainConf>(cf)
}

unsafe extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    let mcf = &mut *conf.cast::<MainConf>();
    match conf::init_main(cf, mcf) {
        Ok(()) => NGX_CONF_OK,
        Err(msg) => {
            ngx_conf_log_error!(ngx::ffi::NGX_LOG_EMERG, cf, "{}", msg);
            NGX_CONF_ERROR
        }
    }
}

unsafe extern "C" fn create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    conf::alloc_conf::<SrvConf>(cf)
}

unsafe extern "C" fn merge_srv_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    let prev = &*prev.cast::<SrvConf>();
    let conf = &mut *conf.cast::<SrvConf>();
    match conf.merge(prev, cf) {
        Ok(()) => NGX_CONF_OK,
        Err(e) => e,
    }
}

unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    conf::alloc_conf::<LocConf>(cf)
}

unsafe extern "C" fn merge_loc_conf(
    _cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    let prev = &*prev.cast::<LocConf>();
    let conf = &mut *conf.cast::<LocConf>();
    if conf.enabled.is_none() {
        conf.enabled = prev.enabled;
    }
    NGX_CONF_OK
}

static NGX_HTTP_SESSIONS_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(Module::preconfiguration),
    postconfiguration: Some(Module::postconfiguration),
    create_main_conf: Some(create_main_conf),
    init_main_conf: Some(init_main_conf),
    create_srv_conf: Some(create_srv_conf),
    merge_srv_conf: Some(merge_srv_conf),
    create_loc_conf: Some(create_loc_conf),
    merge_loc_conf: Some(merge_loc_conf),
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
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

/// A worker's idle Redis connections are closed as it exits.
unsafe extern "C" fn exit_process(_cycle: *mut ngx::ffi::ngx_cycle_t) {
    redis::close_idle();
}

/// Our index into `r->ctx`.
pub(crate) fn module_ctx_index() -> usize {
    Module::module().ctx_index
}
