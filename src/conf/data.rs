//! The session data directives (SPEC "Session data and what the application says"):
//! `sessions_data_size`, `sessions_set`, `sessions_renew`, `sessions_destroy`,
//! `sessions_require`. Values and `if=` conditions are NGINX complex values, compiled once
//! here and evaluated at response time (or, for `sessions_require`, in the access phase),
//! so `$upstream_http_*`, maps and `$status` work.

use core::ffi::{c_char, c_void};
use core::ptr::NonNull;

use ngx::core::NGX_CONF_OK;
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value, ngx_http_compile_complex_value_t,
    ngx_http_complex_value, ngx_http_complex_value_t, ngx_http_request_t, ngx_int_t,
    ngx_parse_size, ngx_pcalloc, ngx_str_t, NGX_OK,
};

use super::directives::{show, Arg};
use super::error::{ConfError, Located};
use super::{LocConf, Origin, Setting};
use crate::data::{self, Actions, Changes, Destroy};

/// A compiled complex value, in the configuration pool (lives as long as the cycle).
#[derive(Clone, Copy)]
pub(crate) struct Complex(NonNull<ngx_http_complex_value_t>);

impl Complex {
    /// Compiles `value` (variables allowed).
    fn compile(cf: &mut ngx_conf_t, value: &[u8]) -> Result<Complex, ConfError> {
        // SAFETY: the configuration pool is live; the copy lives as long as the cycle.
        let mut text =
            unsafe { ngx_str_t::from_bytes(cf.pool, value) }.ok_or(ConfError::NoMemory)?;
        // SAFETY: as above; zeroed memory is an empty complex value.
        let cv = unsafe { ngx_pcalloc(cf.pool, size_of::<ngx_http_complex_value_t>()) }
            .cast::<ngx_http_complex_value_t>();
        let cv = NonNull::new(cv).ok_or(ConfError::NoMemory)?;
        // SAFETY: all-zero is what `ngx_http_compile_complex_value` expects besides the
        // three fields set below.
        let mut ccv: ngx_http_compile_complex_value_t = unsafe { core::mem::zeroed() };
        ccv.cf = cf;
        ccv.value = &mut text;
        ccv.complex_value = cv.as_ptr();
        // SAFETY: `ccv` is filled as NGINX's own modules fill it; NGINX logs its own
        // `[emerg]` when the value does not compile.
        if unsafe { ngx_http_compile_complex_value(&mut ccv) } != NGX_OK as ngx_int_t {
            return Err(ConfError::NoMemory);
        }
        Ok(Complex(cv))
    }

    /// The value for request `r`, in its pool; `None` when it cannot be computed (memory).
    ///
    /// # Safety
    /// `r` is a live request; the bytes live as long as its pool.
    pub(crate) unsafe fn eval<'r>(&self, r: *mut ngx_http_request_t) -> Option<&'r [u8]> {
        let mut out = ngx_str_t { len: 0, data: core::ptr::null_mut() };
        // SAFETY: the caller's contract; the complex value was compiled for this cycle.
        if unsafe { ngx_http_complex_value(r, self.0.as_ptr(), &mut out) } != NGX_OK as ngx_int_t {
            return None;
        }
        if out.len == 0 {
            return Some(&[]);
        }
        // SAFETY: NGINX's result: `len` bytes at `data`, in the request's pool.
        Some(unsafe { core::slice::from_raw_parts(out.data, out.len) })
    }
}

/// An `if=` condition: true unless the value is empty or `0` (as `access_log ... if=`).
/// `None` (no `if=`) is always true.
pub(crate) type Condition = Option<Complex>;

/// # Safety
/// `r` is a live request.
unsafe fn holds(cond: &Condition, r: *mut ngx_http_request_t) -> Option<bool> {
    match cond {
        None => Some(true),
        // SAFETY: the caller's contract.
        Some(c) => unsafe { c.eval(r) }.map(truthy),
    }
}

/// Neither empty nor `0`.
fn truthy(v: &[u8]) -> bool {
    !v.is_empty() && v != b"0"
}

/// One `sessions_set`.
#[derive(Clone)]
pub(crate) struct SetAction {
    key: Vec<u8>,
    value: Complex,
    cond: Condition,
}

/// `sessions_require`.
#[derive(Clone)]
pub(crate) struct Require {
    values: Vec<Complex>,
    /// 401 or 403: the answer when a value is empty or `0`.
    pub(crate) error: u16,
}

impl Require {
    /// Whether every value is neither empty nor `0`; `None` when one cannot be computed.
    ///
    /// # Safety
    /// `r` is a live request.
    pub(crate) unsafe fn satisfied(&self, r: *mut ngx_http_request_t) -> Option<bool> {
        for v in &self.values {
            // SAFETY: the caller's contract.
            if !truthy(unsafe { v.eval(r) }?) {
                return Some(false);
            }
        }
        Some(true)
    }
}

/// The data directives of one location (merged).
#[derive(Clone, Default)]
pub(crate) struct DataConf {
    /// Every `sessions_set` of the level, in order; a level with none inherits the level
    /// above's (as `add_header` does).
    sets: Option<Setting<Vec<SetAction>>>,
    renew: Option<Setting<Condition>>,
    destroy: Option<Setting<(Destroy, Condition)>>,
    require: Option<Setting<Require>>,
}

impl DataConf {
    pub(super) fn merge(&mut self, prev: &DataConf) {
        super::inherit(&mut self.sets, &prev.sets);
        super::inherit(&mut self.renew, &prev.renew);
        super::inherit(&mut self.destroy, &prev.destroy);
        super::inherit(&mut self.require, &prev.require);
    }

    /// Whether any response-time directive applies here (no work at all otherwise).
    pub(crate) fn has_actions(&self) -> bool {
        self.sets.is_some() || self.renew.is_some() || self.destroy.is_some()
    }

    pub(crate) fn require(&self) -> Option<&Require> {
        self.require.as_ref().map(|s| &s.value)
    }

    /// What the response asks of its session: values and conditions evaluated now.
    /// `None` when a value cannot be computed (memory).
    ///
    /// # Safety
    /// `r` is a live request.
    pub(crate) unsafe fn actions(&self, r: *mut ngx_http_request_t) -> Option<Actions> {
        let mut actions = Actions { changes: Changes::new(), renew: false, destroy: None };
        for set in self.sets.iter().flat_map(|s| &s.value) {
            // SAFETY: the caller's contract.
            if unsafe { holds(&set.cond, r) }? {
                // SAFETY: as above.
                actions.changes.set(&set.key, unsafe { set.value.eval(r) }?);
            }
        }
        if let Some(cond) = &self.renew {
            // SAFETY: as above.
            actions.renew = unsafe { holds(&cond.value, r) }?;
        }
        if let Some(Setting { value: (which, cond), .. }) = &self.destroy {
            // SAFETY: as above.
            if unsafe { holds(cond, r) }? {
                actions.destroy = Some(*which);
            }
        }
        Some(actions)
    }
}

/// `sessions_data_size`: `0`–`64k`.
pub(super) fn parse_data_size(arg: &mut Arg) -> Result<usize, ConfError> {
    let mut raw = ngx_str_t { len: arg.value.len(), data: arg.value.as_ptr().cast_mut() };
    // SAFETY: `raw` points into the argument, which outlives the call.
    let size = unsafe { ngx_parse_size(&mut raw) };
    match usize::try_from(size) {
        Ok(n) if n <= data::MAX_DATA_SIZE => Ok(n),
        _ => Err(ConfError::msg(format!(
            "invalid value \"{}\" in \"sessions_data_size\": a size from 0 to 64k",
            show(arg.value)
        ))),
    }
}

/// The directive's arguments (after its name).
///
/// # Safety
/// `cf` is the live context of a directive being handled.
unsafe fn args<'a>(cf: &ngx_conf_t) -> &'a [ngx_str_t] {
    // SAFETY: while a directive is handled, `cf.args` holds its name and arguments, which
    // live in the configuration pool.
    let all = unsafe { cf.args.as_ref().map(|a| a.as_slice::<ngx_str_t>()).unwrap_or(&[]) };
    all.get(1..).unwrap_or(&[])
}

/// `if=<condition>`.
fn parse_if(cf: &mut ngx_conf_t, name: &str, arg: &[u8]) -> Result<Complex, ConfError> {
    match arg.strip_prefix(b"if=") {
        Some(cond) if !cond.is_empty() => Complex::compile(cf, cond),
        _ => Err(ConfError::msg(format!(
            "invalid parameter \"{}\" in \"{name}\": expected \"if=<condition>\"",
            show(arg)
        ))),
    }
}

/// A data directive's parser: the context, the level's data directives, the arguments,
/// where the directive is written.
type DataParser =
    fn(&mut ngx_conf_t, &mut DataConf, &[ngx_str_t], Option<Origin>) -> Result<(), ConfError>;

/// Runs a data directive's parser on our location configuration.
///
/// # Safety
/// `cf` is a live context and `conf` our location configuration.
unsafe fn handle(cf: *mut ngx_conf_t, conf: *mut c_void, parse: DataParser) -> *mut c_char {
    // SAFETY: the function's contract.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<LocConf>()) };
    // SAFETY: as above.
    let args = unsafe { args(cf) };
    let origin = Origin::here(cf);
    match parse(cf, &mut conf.data, args, origin) {
        Ok(()) => NGX_CONF_OK,
        Err(e) => Located::from(e).report(cf),
    }
}

pub(super) unsafe extern "C" fn set_set(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: NGINX calls with a live context and our location configuration.
    unsafe { handle(cf, conf, parse_set) }
}

fn parse_set(
    cf: &mut ngx_conf_t,
    conf: &mut DataConf,
    args: &[ngx_str_t],
    origin: Option<Origin>,
) -> Result<(), ConfError> {
    let [key, value, rest @ ..] = args else {
        return Err(ConfError::msg("\"sessions_set\" needs a key and a value"));
    };
    let key = key.as_bytes();
    if !data::valid_key(key) {
        return Err(ConfError::msg(format!(
            "invalid key \"{}\" in \"sessions_set\": 1-64 characters of a-z, 0-9 and _",
            show(key)
        )));
    }
    let value = Complex::compile(cf, value.as_bytes())?;
    let cond = match rest {
        [] => None,
        [c] => Some(parse_if(cf, "sessions_set", c.as_bytes())?),
        _ => return Err(ConfError::msg("too many parameters in \"sessions_set\"")),
    };
    let set = SetAction { key: key.to_vec(), value, cond };
    match &mut conf.sets {
        Some(list) => list.value.push(set),
        None => conf.sets = Some(Setting { value: vec![set], origin }),
    }
    Ok(())
}

pub(super) unsafe extern "C" fn set_renew(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: NGINX calls with a live context and our location configuration.
    unsafe { handle(cf, conf, parse_renew) }
}

fn parse_renew(
    cf: &mut ngx_conf_t,
    conf: &mut DataConf,
    args: &[ngx_str_t],
    origin: Option<Origin>,
) -> Result<(), ConfError> {
    if conf.renew.is_some() {
        return Err(ConfError::msg("\"sessions_renew\" directive is duplicate"));
    }
    let cond = match args {
        [] => None,
        [c] => Some(parse_if(cf, "sessions_renew", c.as_bytes())?),
        _ => return Err(ConfError::msg("too many parameters in \"sessions_renew\"")),
    };
    conf.renew = Some(Setting { value: cond, origin });
    Ok(())
}

pub(super) unsafe extern "C" fn set_destroy(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: NGINX calls with a live context and our location configuration.
    unsafe { handle(cf, conf, parse_destroy) }
}

fn parse_destroy(
    cf: &mut ngx_conf_t,
    conf: &mut DataConf,
    args: &[ngx_str_t],
    origin: Option<Origin>,
) -> Result<(), ConfError> {
    if conf.destroy.is_some() {
        return Err(ConfError::msg("\"sessions_destroy\" directive is duplicate"));
    }
    let mut which = Destroy::This;
    let mut rest = args;
    if let Some((first, tail)) = args.split_first() {
        let word = match first.as_bytes() {
            b"this" => Some(Destroy::This),
            b"others" => Some(Destroy::Others),
            b"all" => Some(Destroy::All),
            w if w.starts_with(b"if=") => None,
            w => {
                return Err(ConfError::msg(format!(
                    "invalid value \"{}\" in \"sessions_destroy\", it must be \"this\", \"others\" or \"all\"",
                    show(w)
                )))
            }
        };
        if let Some(w) = word {
            which = w;
            rest = tail;
        }
    }
    let cond = match rest {
        [] => None,
        [c] => Some(parse_if(cf, "sessions_destroy", c.as_bytes())?),
        _ => return Err(ConfError::msg("too many parameters in \"sessions_destroy\"")),
    };
    conf.destroy = Some(Setting { value: (which, cond), origin });
    Ok(())
}

pub(super) unsafe extern "C" fn set_require(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: NGINX calls with a live context and our location configuration.
    unsafe { handle(cf, conf, parse_require) }
}

fn parse_require(
    cf: &mut ngx_conf_t,
    conf: &mut DataConf,
    args: &[ngx_str_t],
    origin: Option<Origin>,
) -> Result<(), ConfError> {
    if conf.require.is_some() {
        return Err(ConfError::msg("\"sessions_require\" directive is duplicate"));
    }
    let (mut values, mut error) = (Vec::new(), 401);
    for (i, arg) in args.iter().enumerate() {
        let a = arg.as_bytes();
        if let Some(code) = a.strip_prefix(b"error=") {
            error = match code {
                b"401" if i + 1 == args.len() => 401,
                b"403" if i + 1 == args.len() => 403,
                _ => {
                    return Err(ConfError::msg(format!(
                        "invalid parameter \"{}\" in \"sessions_require\": \"error=401\" or \"error=403\", last",
                        show(a)
                    )))
                }
            };
        } else {
            values.push(Complex::compile(cf, a)?);
        }
    }
    if values.is_empty() {
        return Err(ConfError::msg("\"sessions_require\" needs at least one value"));
    }
    conf.require = Some(Setting { value: Require { values, error }, origin });
    Ok(())
}
