//! `sessions_zone name:size`, and the implicit zone when sessions are used without one.
//! The zone is declared once the `http` block is parsed; its state belongs to `shm`.

use ngx::ffi::{ngx_conf_t, ngx_parse_size, ngx_str_t};

use super::directives::{show, Arg};
use super::error::{at_origin, ConfError, Located};
use super::{MainConf, Setting};
use crate::shm::SharedZone;

const DEFAULT_NAME: &[u8] = b"sessions";
const DEFAULT_SIZE: usize = 10 * 1024 * 1024;

/// A zone as written: its name (an argument of the configuration, which lives in the
/// cycle pool, as NGINX needs) and size.
#[derive(Clone, Copy)]
pub(super) struct ZoneSpec {
    name: ngx_str_t,
    size: usize,
}

/// Parses `name:size`.
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
    })
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
            },
            None,
        ),
        None => return Ok(()),
    };
    // NGINX's own complaints (a name clash with another module's zone) name the directive.
    at_origin(cf, origin, |cf| {
        // SAFETY: `cf` is the live configuration context handed to `at_origin`.
        let cf = unsafe { &mut *cf };
        mcf.zone.configure(cf, spec.name, spec.size)
    })
    .map_err(|e| ConfError::msg(e).at(origin))
}
