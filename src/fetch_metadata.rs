//! SPEC behaviour step 7: no session from a request the browser stripped. A cookieless
//! request that the browser marks cross-site (Fetch Metadata) and that is not a top-level
//! GET/HEAD navigation may come from a visitor whose cookie SameSite held back; a session
//! started there would replace the visitor's cookie, so none is started.

use ngx::ffi::{ngx_http_request_t, ngx_uint_t, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_LOG_INFO};
use ngx::ngx_log_error;

use crate::cookie::{Incoming, SameSite};
use crate::http;
use crate::log;
use crate::session::{Evaluation, Status};

/// The decision for a request held back: `new`, no ID, nothing stored, no `Set-Cookie`.
pub(crate) const NO_SESSION: Evaluation =
    Evaluation { status: Status::New, id: None, set_cookie: false, renewal: false };

/// Whether the request must not start a session (and then logs one `info` line). Looks at
/// the request's headers only when no cookie of ours came and SameSite could have held it
/// back.
pub(crate) fn held_back(r: &ngx_http_request_t, samesite: SameSite, incoming: Incoming) -> bool {
    if incoming != Incoming::Absent || samesite == SameSite::None {
        return false;
    }
    let (mut site, mut mode) = (None, None);
    // SAFETY: a live request's header list is a valid `ngx_list_t` of table elements.
    for (key, value) in unsafe { ngx::http::list_iterator(&r.headers_in.headers) } {
        let key = key.as_bytes();
        if site.is_none() && key.eq_ignore_ascii_case(b"sec-fetch-site") {
            site = Some(value.as_bytes());
        } else if mode.is_none() && key.eq_ignore_ascii_case(b"sec-fetch-mode") {
            mode = Some(value.as_bytes());
        }
    }
    let get_or_head = r.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t != 0;
    if http::starts_session(samesite, site, mode, get_or_head) {
        return false;
    }
    ngx_log_error!(
        NGX_LOG_INFO,
        log::request_log(r),
        "sessions: cross-site {} request without a session cookie: no session started",
        mode_for_log(mode)
    );
    true
}

/// The `Sec-Fetch-Mode` for the log line: one of the values browsers send, never bytes a
/// client chose.
fn mode_for_log(mode: Option<&[u8]>) -> &'static str {
    const MODES: [&str; 5] = ["navigate", "cors", "no-cors", "same-origin", "websocket"];
    match mode {
        None => "(no Sec-Fetch-Mode)",
        Some(m) => MODES
            .into_iter()
            .find(|known| m.eq_ignore_ascii_case(known.as_bytes()))
            .unwrap_or("(unknown Sec-Fetch-Mode)"),
    }
}
