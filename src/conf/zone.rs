//! `sessions_zone name:size [state=file]`, and the implicit zone when sessions are used
//! without one. The zone is declared once the `http` block is parsed; its state belongs to
//! `shm`, its state file to `state_file`.

use ngx::ffi::{ngx_conf_full_name, ngx_conf_t, ngx_int_t, ngx_parse_size, ngx_str_t, NGX_OK};

use super::directives::{show, Arg};
use super::error::{at_origin, ConfError, Located};
use super::{MainConf, Setting};
use crate::shm::SharedZone;

const DEFAULT_NAME: &[u8] = b"sessions";
const DEFAULT_SIZE: usize = 10 * 1024 * 1024;

/// A zone as written: its name (an argument of the configuration, which lives in the
/// cycle pool, as NGINX needs), size, and state file (full path, in the cycle pool).
#[derive(Clone, Copy)]
pub(super) struct ZoneSpec {
    name: ngx_str_t,
    size: usize,
    state: Option<ngx_str_t>,
}

impl ZoneSpec {
    /// The state file's full path, with `state=`.
    pub(super) fn state(&self) -> Option<&[u8]> {
        self.state.as_ref().map(|s| s.as_bytes())
    }
}

/// Parses `name:size [state=file]`.
pub(super) fn parse(arg: &mut Arg) -> Result<ZoneSpec, ConfError> {
    let v = arg.value;
    let Some(colon) = v.iter().rposition(|&c| c == b':') else {
        return Err(ConfError::msg(format!(
            "invalid \"sessions_zone\" \"{}\": expected name:size, e.g. sessions:10m",
            show(v)
        )));
    };
    let (name, size) = (&v[..colon], &v[colon + 1..]);
    if name.is_empty() {
        return Err(ConfError::msg(format!(
            "invalid \"sessions_zone\" \"{}\": the zone needs a name",
            show(v)
        )));
    }
    let mut size_str = ngx_str_t { len: size.len(), data: size.as_ptr().cast_mut() };
    // SAFETY: `size_str` points into the argument, which outlives the call.
    let bytes = unsafe { ngx_parse_size(&mut size_str) };
    let Ok(bytes) = usize::try_from(bytes) else {
        return Err(ConfError::msg(format!(
            "invalid zone size \"{}\" in \"sessions_zone\"",
            show(size)
        )));
    };
    let min = SharedZone::min_size();
    if bytes < min {
        return Err(ConfError::msg(format!(
            "zone \"{}\" is too small in \"sessions_zone\": at least {}k",
            show(name),
            min / 1024
        )));
    }
    Ok(ZoneSpec {
        name: ngx_str_t { len: name.len(), data: name.as_ptr().cast_mut() },
        size: bytes,
        state: parse_state(arg)?,
    })
}

/// The optional second argument, `state=<file>`: a path relative to the prefix, like
/// NGINX's other paths.
fn parse_state(arg: &mut Arg) -> Result<Option<ngx_str_t>, ConfError> {
    // SAFETY: while a directive is handled, `cf.args` holds its name and arguments, which
    // live in the configuration pool.
    let args = unsafe { arg.cf.args.as_ref().map(|a| a.as_slice::<ngx_str_t>()).unwrap_or(&[]) };
    let Some(param) = args.get(2) else { return Ok(None) };
    let Some(file) = param.as_bytes().strip_prefix(b"state=") else {
        return Err(ConfError::msg(format!(
            "invalid parameter \"{}\" in \"sessions_zone\": expected state=<file>",
            show(param.as_bytes())
        )));
    };
    if file.is_empty() {
        return Err(ConfError::msg("\"state=\" needs a file name in \"sessions_zone\""));
    }
    let mut full = ngx_str_t { len: file.len(), data: file.as_ptr().cast_mut() };
    // SAFETY: `cf.cycle` is the cycle being configured; `full` points into the argument,
    // and a relative path is replaced by a copy in the cycle pool.
    if unsafe { ngx_conf_full_name(arg.cf.cycle, &mut full, 0) } != NGX_OK as ngx_int_t {
        return Err(ConfError::NoMemory);
    }
    Ok(Some(full))
}

/// Declares the zone: the one `sessions_zone` names, or the default one if some
/// `sessions on` needs it.
pub(super) fn declare(cf: &mut ngx_conf_t, mcf: &mut MainConf) -> Result<(), Located> {
    let (spec, origin) = match mcf.zone_spec {
        Some(Setting { value, origin }) => (value, origin),
        None if mcf.used => (
            ZoneSpec {
                name: ngx_str_t { len: DEFAULT_NAME.len(), data: DEFAULT_NAME.as_ptr().cast_mut() },
                size: DEFAULT_SIZE,
                state: None,
            },
            None,
        ),
        None => return Ok(()),
    };
    // NGINX's own complaints (a name clash with another module's zone) name the directive.
    at_origin(cf, origin, |cf| {
        // SAFETY: `cf` is the live configuration context handed to `at_origin`.
        let cf = unsafe { &mut *cf };
        mcf.zone.configure(cf, spec.name, spec.size, spec.state)
    })
    .map_err(|e| ConfError::msg(e).at(origin))
}
