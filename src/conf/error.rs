//! The one configuration error type, and the one way it reaches NGINX: `[emerg]` with the
//! file and line of the directive at fault.

use core::ffi::c_char;
use core::fmt;

use ngx::core::NGX_CONF_ERROR;
use ngx::ffi::{ngx_conf_t, NGX_LOG_EMERG};
use ngx::ngx_conf_log_error;

use super::Origin;

/// Why a configuration is refused.
#[derive(Debug)]
pub(crate) enum ConfError {
    /// A directive given twice at one level. NGINX words it, like for its own directives:
    /// `"sessions_name" directive is duplicate`.
    Duplicate,
    /// Anything else, worded in full.
    Message(String),
    /// The configuration pool is exhausted (NGINX has already logged it).
    NoMemory,
}

impl ConfError {
    pub(crate) fn msg(text: impl Into<String>) -> Self {
        ConfError::Message(text.into())
    }

    /// Blames the directive written at `origin` (where known) rather than the place
    /// parsing has reached.
    pub(crate) fn at(self, origin: Option<Origin>) -> Located {
        Located { error: self, origin }
    }
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfError::Duplicate => f.write_str("is duplicate"),
            ConfError::Message(m) => f.write_str(m),
            ConfError::NoMemory => f.write_str("out of memory"),
        }
    }
}

/// An error and the directive it is about.
pub(crate) struct Located {
    error: ConfError,
    origin: Option<Origin>,
}

impl From<ConfError> for Located {
    /// An error about the directive being parsed now.
    fn from(error: ConfError) -> Self {
        Located { error, origin: None }
    }
}

impl Located {
    /// The funnel: what a directive handler or a configuration callback returns to NGINX.
    pub(crate) fn report(self, cf: &mut ngx_conf_t) -> *mut c_char {
        match self.error {
            ConfError::Duplicate if self.origin.is_none() => c"is duplicate".as_ptr().cast_mut(),
            ConfError::NoMemory => NGX_CONF_ERROR,
            error => {
                at_origin(cf, self.origin, |cf| {
                    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", error);
                });
                NGX_CONF_ERROR
            }
        }
    }
}

/// Runs `f` with the configuration context pointing at `origin` (when known), so that what
/// `f` logs — our `[emerg]`, or NGINX's own — names that file and line.
pub(crate) fn at_origin<R>(
    cf: &mut ngx_conf_t,
    origin: Option<Origin>,
    f: impl FnOnce(*mut ngx_conf_t) -> R,
) -> R {
    let file = cf.conf_file;
    let (Some(o), false) = (origin, file.is_null()) else { return f(cf) };
    // SAFETY: `conf_file` is the live file being parsed; the swapped-in name and line come
    // from the same parse (the name lives in the cycle pool) and are put back after `f`.
    unsafe {
        let saved = ((*file).file.name, (*file).line);
        (*file).file.name = o.file;
        (*file).line = o.line;
        let r = f(cf);
        ((*file).file.name, (*file).line) = saved;
        r
    }
}
