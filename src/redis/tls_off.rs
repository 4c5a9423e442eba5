//! `rediss://` on an NGINX built without SSL (no `--with-http_ssl_module`): the same API
//! as `tls.rs`, but the configuration refuses TLS (`create_context` fails), so nothing
//! else here is ever reached.

use ngx::ffi::{
    ngx_close_connection, ngx_conf_t, ngx_connection_handler_pt, ngx_connection_t, ngx_str_t,
};

use super::{Failure, Upstream};

pub(crate) struct TlsOptions {
    pub(crate) verify: bool,
    pub(crate) trusted_certificate: Option<ngx_str_t>,
    pub(crate) certificate: Option<(ngx_str_t, ngx_str_t)>,
}

pub(crate) enum TlsContext {}

#[derive(Clone)]
pub(crate) struct TlsPeer {
    _never: *const TlsContext,
}

impl TlsPeer {
    pub(crate) fn new(_context: *const TlsContext, _host: &str) -> Option<TlsPeer> {
        None
    }

    #[allow(dead_code)]
    pub(crate) fn for_host(&self, _host: &str) -> Option<TlsPeer> {
        None
    }
}

pub(crate) fn create_context(
    _cf: &mut ngx_conf_t,
    options: &TlsOptions,
) -> Result<*const TlsContext, String> {
    let _ = (options.verify, options.trusted_certificate, options.certificate);
    Err("this NGINX was built without SSL (configure it --with-http_ssl_module)".into())
}

/// Whether TLS is on for `c`: never.
///
/// # Safety
/// `c` is a live connection.
pub(super) unsafe fn is_on(_c: *mut ngx_connection_t) -> bool {
    false
}

/// # Safety
/// Never called (no `TlsPeer` exists).
pub(super) unsafe fn start(
    _c: *mut ngx_connection_t,
    _up: &Upstream,
    _peer: &TlsPeer,
    _address: ngx_str_t,
    _resume: ngx_connection_handler_pt,
) -> Result<bool, Failure> {
    Err(Failure::Tls)
}

/// # Safety
/// Never called (no `TlsPeer` exists).
pub(super) unsafe fn finish(
    _c: *mut ngx_connection_t,
    _up: &Upstream,
    _peer: &TlsPeer,
) -> Result<(), Failure> {
    Err(Failure::Tls)
}

/// # Safety
/// `c` is a live connection; it is gone after.
pub(super) unsafe fn close_connection(c: *mut ngx_connection_t) {
    // SAFETY: the caller's contract.
    unsafe { ngx_close_connection(c) };
}
