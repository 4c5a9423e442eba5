//! The Redis side of a response's session actions (`sessions_set`, `sessions_renew`,
//! `sessions_destroy`). STUB: helper R replaces this file with the real write (the
//! response header held until Redis confirms).

use ngx::ffi::{ngx_http_request_t, NGX_LOG_WARN};
use ngx::ngx_log_error;

use crate::data::Actions;
use crate::log;

/// Starts applying `actions` in Redis. `Ok(true)`: a command is in flight and the header
/// is held (the filter returns `NGX_OK` without calling the next header filter);
/// `Ok(false)`: nothing held, the response goes on.
///
/// # Safety
/// `r` is a live main request with a context.
pub(crate) unsafe fn start(r: *mut ngx_http_request_t, actions: &Actions) -> Result<bool, ()> {
    let _ = actions;
    // SAFETY: the caller's contract.
    let req = unsafe { &*r };
    ngx_log_error!(NGX_LOG_WARN, log::request_log(req), "session data with Redis is not built yet");
    Ok(false)
}

/// Installs the body filter that buffers a held response (postconfiguration). Stub: none.
pub(crate) fn install() {}
