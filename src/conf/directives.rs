//! The directive table. Every directive stores one `Option<Setting<T>>` field of its
//! level's configuration: the entry names the field with `offset_of!` and passes the value
//! parser in `post` (as NGINX's `ngx_http_userid_filter_module` passes its post handlers),
//! and one handler, [`set`], does the rest: "is duplicate", parse, record where it was set.
//! The [`directive!`] macro checks at compile time that the field and the parser agree.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::core::NGX_CONF_OK;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use ngx::ffi::{
    ngx_command_t, ngx_conf_full_name, ngx_conf_t, ngx_int_t, ngx_msec_t, ngx_parse_time,
    ngx_str_t, ngx_uint_t, sockaddr, socklen_t, NGX_CONF_1MORE, NGX_CONF_FLAG, NGX_CONF_NOARGS,
    NGX_CONF_TAKE1, NGX_CONF_TAKE12, NGX_CONF_TAKE23, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_SRV_CONF, NGX_HTTP_SRV_CONF_OFFSET, NGX_LOG_WARN, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_string};

use super::data;
use super::error::{ConfError, Located};
use super::zone;
use super::{Level, LocConf, MainConf, Setting, SrvConf};
use crate::cookie::{self, SameSite, Secure};
use crate::redis_url::{self, RedisUrl};
use crate::Module;

/// A configured secret shorter than this gets a `[warn]`.
const MIN_SECRET_LEN: usize = 32;

#[derive(Clone)]
pub(super) enum SecretSetting {
    Random,
    Key(Vec<u8>),
}

/// `sessions_secret_file`: what the file held when the configuration was read.
#[derive(Clone)]
pub(super) struct SecretFileSetting {
    pub(super) secret: Vec<u8>,
    pub(super) fallbacks: Vec<Vec<u8>>,
}

#[derive(Clone)]
pub(super) enum NameSetting {
    Random,
    Fixed(Vec<u8>),
}

/// `sessions_redis`: `off`, or a URL resolved at start (like `proxy_pass host:port`).
#[derive(Clone)]
pub(super) enum RedisSetting {
    Off,
    Url(RedisTarget),
}

#[derive(Clone)]
pub(super) struct RedisTarget {
    pub(super) url: RedisUrl,
    /// The first resolved address, in the configuration pool.
    pub(super) sockaddr: *mut sockaddr,
    pub(super) socklen: socklen_t,
    pub(super) name: ngx_str_t,
}

/// What a parser sees of the directive being read.
pub(super) struct Arg<'a> {
    pub(super) cf: &'a mut ngx_conf_t,
    /// The directive's name, for messages.
    pub(super) name: &'a str,
    /// Its one argument.
    pub(super) value: &'a [u8],
}

/// A directive's value parser, passed to [`set`] through the command's `post`.
pub(super) struct Parser<T>(fn(&mut Arg) -> Result<T, ConfError>);

/// Shows a value in a message, escaped.
pub(super) fn show(v: &[u8]) -> String {
    String::from_utf8_lossy(v).escape_debug().to_string()
}

/// The handler of every directive: see the module documentation.
///
/// # Safety
/// Called by NGINX with a live `cf`, our own table entry `cmd`, and `conf` the
/// configuration struct its `conf` offset selects; `cmd.offset` is then an
/// `Option<Setting<T>>` field of that struct and `cmd.post` a `Parser<T>` (both checked by
/// [`directive!`], the only way entries are made).
unsafe extern "C" fn set<T>(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the function's contract.
    let (cf, cmd) = unsafe { (&mut *cf, &*cmd) };
    // SAFETY: as above: the field at `offset` of `conf`, of the parser's type.
    let (slot, parser) = unsafe {
        (
            &mut *conf.cast::<u8>().add(cmd.offset).cast::<Option<Setting<T>>>(),
            &*cmd.post.cast::<Parser<T>>(),
        )
    };
    if slot.is_some() {
        return Located::from(ConfError::Duplicate).report(cf);
    }
    // SAFETY: while a directive is handled, `cf.args` holds its name and arguments, which
    // live in the configuration pool.
    let args = unsafe { cf.args.as_ref().map(|a| a.as_slice::<ngx_str_t>()).unwrap_or(&[]) };
    let name = args.first().and_then(|s| s.to_str().ok()).unwrap_or("sessions");
    let value = args.get(1).map(|s| s.as_bytes()).unwrap_or(b"");
    let origin = super::Origin::here(cf);
    match (parser.0)(&mut Arg { cf, name, value }) {
        Ok(value) => {
            *slot = Some(Setting { value, origin });
            NGX_CONF_OK
        }
        Err(e) => Located::from(e).report(cf),
    }
}

/// One table entry for the field `field` of `C`, parsed by `parser`. `check` is never
/// called: its type makes the compiler prove that the field holds what the parser makes.
const fn entry<C: Level, T>(
    name: ngx_str_t,
    contexts: u32,
    args: u32,
    offset: usize,
    _check: fn(&mut C) -> &mut Option<Setting<T>>,
    parser: &'static Parser<T>,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: (contexts | args) as ngx_uint_t,
        set: Some(set::<T>),
        conf: C::CONF,
        offset,
        post: ptr::from_ref(parser).cast_mut().cast(),
    }
}

/// `directive!("name", contexts, args, Conf.field, parser)`.
macro_rules! directive {
    ($name:literal, $contexts:expr, $args:expr, $conf:ident . $field:ident, $parser:expr) => {
        entry::<$conf, _>(
            ngx_string!($name),
            $contexts,
            $args,
            core::mem::offset_of!($conf, $field),
            |c| &mut c.$field,
            &Parser($parser),
        )
    };
}

const HTTP_ANY: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;
const HTTP_SRV: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF;
const HTTP: u32 = NGX_HTTP_MAIN_CONF;
const FLAG: u32 = NGX_CONF_FLAG;
const TAKE1: u32 = NGX_CONF_TAKE1;
const TAKE12: u32 = NGX_CONF_TAKE12;
const LOC: u32 = NGX_HTTP_LOC_CONF;
const NOARGS: u32 = NGX_CONF_NOARGS;

/// The module's directives (NGINX reads the table, terminated by an empty entry).
pub(crate) static mut COMMANDS: [ngx_command_t; 28] = [
    directive!("sessions", HTTP_ANY, FLAG, LocConf.enabled, parse_sessions),
    directive!("sessions_pass_cookie", HTTP_ANY, FLAG, LocConf.pass_cookie, parse_on_off),
    directive!("sessions_secret", HTTP_SRV, TAKE1, SrvConf.secret, parse_secret),
    directive!("sessions_secret_file", HTTP_SRV, TAKE1, SrvConf.secret_file, parse_secret_file),
    fallback_entry(),
    directive!("sessions_name", HTTP_SRV, TAKE1, SrvConf.name, parse_name),
    directive!("sessions_idling_timeout", HTTP_SRV, TAKE1, SrvConf.idle, parse_seconds),
    directive!("sessions_rolling_timeout", HTTP_SRV, TAKE1, SrvConf.rolling, parse_seconds),
    directive!("sessions_absolute_timeout", HTTP_SRV, TAKE1, SrvConf.absolute, parse_seconds),
    directive!("sessions_check_ip", HTTP_SRV, FLAG, SrvConf.check_ip, parse_on_off),
    directive!("sessions_check_user_agent", HTTP_SRV, FLAG, SrvConf.check_user_agent, parse_on_off),
    directive!("sessions_cookie_domain", HTTP_SRV, TAKE1, SrvConf.domain, parse_domain),
    directive!("sessions_cookie_path", HTTP_SRV, TAKE1, SrvConf.path, parse_path),
    directive!("sessions_cookie_samesite", HTTP_SRV, TAKE1, SrvConf.samesite, parse_samesite),
    directive!("sessions_cookie_secure", HTTP_SRV, TAKE1, SrvConf.secure, parse_secure),
    directive!("sessions_zone", HTTP, TAKE12, MainConf.zone_spec, zone::parse),
    directive!("sessions_redis", HTTP, TAKE1, MainConf.redis, parse_redis),
    directive!("sessions_redis_timeout", HTTP, TAKE1, MainConf.redis_timeout, parse_msec),
    directive!("sessions_redis_keepalive", HTTP, TAKE1, MainConf.redis_keepalive, parse_keepalive),
    directive!(
        "sessions_redis_keepalive_timeout",
        HTTP,
        TAKE1,
        MainConf.redis_keepalive_timeout,
        parse_msec
    ),
    directive!("sessions_metrics", LOC, NOARGS, LocConf.metrics, parse_metrics),
    directive!(
        "sessions_state_interval",
        HTTP,
        TAKE1,
        MainConf.state_interval,
        parse_state_interval
    ),
    directive!("sessions_data_size", HTTP, TAKE1, MainConf.data_size, data::parse_data_size),
    data_entry(ngx_string!("sessions_set"), NGX_CONF_TAKE23, data::set_set),
    data_entry(ngx_string!("sessions_renew"), NOARGS | TAKE1, data::set_renew),
    data_entry(ngx_string!("sessions_destroy"), NOARGS | TAKE12, data::set_destroy),
    data_entry(ngx_string!("sessions_require"), NGX_CONF_1MORE, data::set_require),
    ngx_command_t::empty(),
];

/// A data directive (any level, several arguments): its own handler fills
/// `LocConf.data`.
const fn data_entry(
    name: ngx_str_t,
    args: u32,
    set: unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: (HTTP_ANY | args) as ngx_uint_t,
        set: Some(set),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    }
}

/// `invalid value "x" in "name" directive, it must be ...`
fn invalid(arg: &Arg, must: &str) -> ConfError {
    ConfError::msg(format!(
        "invalid value \"{}\" in \"{}\" directive, it must be {must}",
        show(arg.value),
        arg.name
    ))
}

/// One of several keywords.
fn keyword<T: Copy>(arg: &Arg, words: &[(&str, T)]) -> Result<T, ConfError> {
    if let Some(&(_, v)) = words.iter().find(|(w, _)| w.as_bytes() == arg.value) {
        return Ok(v);
    }
    let list: Vec<String> = words.iter().map(|(w, _)| format!("\"{w}\"")).collect();
    let must = match list.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(invalid(arg, &must))
}

fn parse_on_off(arg: &mut Arg) -> Result<bool, ConfError> {
    keyword(arg, &[("on", true), ("off", false)])
}

fn parse_sessions(arg: &mut Arg) -> Result<bool, ConfError> {
    let on = parse_on_off(arg)?;
    if on {
        // The (implicit) zone is needed. The main configuration is a distinct struct from
        // the location one being set.
        if let Some(mcf) = Module::main_conf_mut(&*arg.cf) {
            mcf.used = true;
        }
    }
    Ok(on)
}

fn parse_secret(arg: &mut Arg) -> Result<SecretSetting, ConfError> {
    let v = arg.value;
    if v.is_empty() {
        return Err(ConfError::msg(
            "\"sessions_secret\" must not be empty (use \"random\" or 32+ bytes)",
        ));
    }
    if v == b"random" {
        return Ok(SecretSetting::Random);
    }
    warn_if_short(arg.cf, "\"sessions_secret\"", v);
    Ok(SecretSetting::Key(v.to_vec()))
}

/// The `[warn]` of a configured secret that is too short to be a random key.
fn warn_if_short(cf: *mut ngx_conf_t, what: &str, secret: &[u8]) {
    if secret.len() < MIN_SECRET_LEN {
        ngx_conf_log_error!(
            NGX_LOG_WARN,
            cf,
            "{} is {} bytes; use at least {} random bytes",
            what,
            secret.len(),
            MIN_SECRET_LEN
        );
    }
}

/// `sessions_secret_file`: read now, that is at start and on every reload.
fn parse_secret_file(arg: &mut Arg) -> Result<SecretFileSetting, ConfError> {
    let pool = arg.cf.pool;
    // SAFETY: the configuration pool is live; the copy lives as long as the cycle.
    let Some(mut path) = (unsafe { ngx_str_t::from_bytes(pool, arg.value) }) else {
        return Err(ConfError::NoMemory);
    };
    // Relative to the configuration prefix, like `ssl_certificate`.
    // SAFETY: a live cycle and a path in its pool; the full name is allocated there too.
    if unsafe { ngx_conf_full_name(arg.cf.cycle, &mut path, 1) } != NGX_OK as ngx_int_t {
        return Err(ConfError::NoMemory);
    }
    let shown = show(path.as_bytes());
    let file = std::path::Path::new(std::ffi::OsStr::from_bytes(path.as_bytes()));
    let contents = std::fs::read(file).map_err(|e| {
        ConfError::msg(format!("\"sessions_secret_file\": cannot read \"{shown}\": {e}"))
    })?;
    let Some(parsed) = cookie::parse_secret_file(&contents) else {
        return Err(ConfError::msg(format!(
            "\"sessions_secret_file\": \"{shown}\" has no secret (its first line is empty)"
        )));
    };
    let cf: *mut ngx_conf_t = arg.cf;
    if let Ok(meta) = std::fs::metadata(file) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            ngx_conf_log_error!(
                NGX_LOG_WARN,
                cf,
                "\"sessions_secret_file\": \"{}\" can be read by other users (mode {:04o}); make it 0600 or 0400",
                shown,
                mode
            );
        }
    }
    warn_if_short(cf, &format!("the secret in \"{shown}\""), &parsed.current);
    for (i, fallback) in parsed.fallbacks.iter().enumerate() {
        warn_if_short(cf, &format!("fallback secret {} in \"{shown}\"", i + 1), fallback);
    }
    Ok(SecretFileSetting { secret: parsed.current, fallbacks: parsed.fallbacks })
}

/// `sessions_secret_fallback` may be repeated: its own handler appends to one list
/// (the generic [`set`] refuses a second directive).
const fn fallback_entry() -> ngx_command_t {
    ngx_command_t {
        name: ngx_string!("sessions_secret_fallback"),
        type_: (HTTP_SRV | TAKE1) as ngx_uint_t,
        set: Some(set_fallback),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: ptr::null_mut(),
    }
}

/// # Safety
/// Called by NGINX with a live `cf` and `conf` our server-level configuration (the entry's
/// `conf` offset).
unsafe extern "C" fn set_fallback(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the function's contract.
    let (cf, conf) = unsafe { (&mut *cf, &mut *conf.cast::<SrvConf>()) };
    // SAFETY: while a directive is handled, `cf.args` holds its name and arguments.
    let args = unsafe { cf.args.as_ref().map(|a| a.as_slice::<ngx_str_t>()).unwrap_or(&[]) };
    let value = args.get(1).map(|s| s.as_bytes()).unwrap_or(b"");
    if value.is_empty() {
        return Located::from(ConfError::msg("\"sessions_secret_fallback\" must not be empty"))
            .report(cf);
    }
    warn_if_short(cf, "\"sessions_secret_fallback\"", value);
    let value = value.to_vec();
    match &mut conf.fallbacks {
        Some(list) => list.value.push(value),
        None => {
            conf.fallbacks = Some(Setting { value: vec![value], origin: super::Origin::here(cf) })
        }
    }
    NGX_CONF_OK
}

fn parse_name(arg: &mut Arg) -> Result<NameSetting, ConfError> {
    let v = arg.value;
    if v == b"random" {
        return Ok(NameSetting::Random);
    }
    match cookie::check_name(v) {
        Ok(()) => {}
        Err(cookie::AttrError::NameNotToken) => {
            return Err(ConfError::msg(format!(
                "invalid cookie name \"{}\" in \"sessions_name\": it must be an RFC 6265 token (letters, digits, !#%&'*+-.^_`|~; no spaces, \";\", \",\" or \"=\")",
                show(v)
            )));
        }
        Err(e) => {
            return Err(ConfError::msg(format!(
                "invalid cookie name \"{}\" in \"sessions_name\": {e}",
                show(v)
            )));
        }
    }
    Ok(NameSetting::Fixed(v.to_vec()))
}

/// A time in NGINX syntax (`1800`, `30m`, `1h`), in seconds or milliseconds.
fn parse_time(arg: &Arg, seconds: bool, example: &str) -> Result<ngx_int_t, ConfError> {
    let mut raw = ngx_str_t { len: arg.value.len(), data: arg.value.as_ptr().cast_mut() };
    // SAFETY: `raw` points into the argument, which outlives the call.
    let t = unsafe { ngx_parse_time(&mut raw, seconds as ngx_uint_t) };
    if t == ngx::ffi::NGX_ERROR as ngx_int_t {
        return Err(ConfError::msg(format!(
            "invalid time \"{}\" in \"{}\"{example}",
            show(arg.value),
            arg.name
        )));
    }
    Ok(t)
}

fn parse_seconds(arg: &mut Arg) -> Result<u64, ConfError> {
    match parse_time(arg, true, " (use e.g. 1800, 30m, 1h, 1d)")? {
        t if t > 0 => Ok(t as u64),
        _ => Err(ConfError::msg(format!("\"{}\" must be greater than 0", arg.name))),
    }
}

fn parse_msec(arg: &mut Arg) -> Result<ngx_msec_t, ConfError> {
    match parse_time(arg, false, "") {
        Ok(t) if t > 0 => Ok(t as ngx_msec_t),
        _ => {
            Err(ConfError::msg(format!("invalid time \"{}\" in \"{}\"", show(arg.value), arg.name)))
        }
    }
}

/// At least a second: each write copies the whole table under its lock.
fn parse_state_interval(arg: &mut Arg) -> Result<ngx_msec_t, ConfError> {
    match parse_msec(arg)? {
        t if t >= 1000 => Ok(t),
        _ => Err(ConfError::msg("\"sessions_state_interval\" must be at least 1s")),
    }
}

fn parse_keepalive(arg: &mut Arg) -> Result<usize, ConfError> {
    match core::str::from_utf8(arg.value).ok().and_then(|s| s.parse::<usize>().ok()) {
        Some(n) if n <= 1024 => Ok(n),
        _ => Err(ConfError::msg(format!(
            "invalid value \"{}\" in \"sessions_redis_keepalive\": a number of connections from 0 to 1024",
            show(arg.value)
        ))),
    }
}

fn parse_domain(arg: &mut Arg) -> Result<Option<Vec<u8>>, ConfError> {
    let v = arg.value;
    if v == b"off" || v.is_empty() {
        return Ok(None);
    }
    cookie::check_attribute(v, "domain").map_err(|e| {
        ConfError::msg(format!("invalid \"sessions_cookie_domain\" \"{}\": {}", show(v), e))
    })?;
    Ok(Some(v.to_vec()))
}

fn parse_path(arg: &mut Arg) -> Result<Vec<u8>, ConfError> {
    let v = arg.value;
    cookie::check_attribute(v, "path").map_err(|e| {
        ConfError::msg(format!("invalid \"sessions_cookie_path\" \"{}\": {}", show(v), e))
    })?;
    if !v.starts_with(b"/") {
        return Err(ConfError::msg(format!(
            "invalid \"sessions_cookie_path\" \"{}\": it must start with \"/\"",
            show(v)
        )));
    }
    Ok(v.to_vec())
}

fn parse_samesite(arg: &mut Arg) -> Result<SameSite, ConfError> {
    keyword(arg, &[("lax", SameSite::Lax), ("strict", SameSite::Strict), ("none", SameSite::None)])
}

fn parse_secure(arg: &mut Arg) -> Result<Secure, ConfError> {
    keyword(arg, &[("auto", Secure::Auto), ("on", Secure::On), ("off", Secure::Off)])
}

fn parse_redis(arg: &mut Arg) -> Result<RedisSetting, ConfError> {
    if arg.value == b"off" {
        return Ok(RedisSetting::Off);
    }
    let Ok(url) = core::str::from_utf8(arg.value) else {
        return Err(ConfError::msg("invalid Redis URL in \"sessions_redis\": not UTF-8"));
    };
    let url = redis_url::parse(url).map_err(|e| {
        ConfError::msg(format!(
            "invalid Redis URL in \"sessions_redis\": it {e} (expected redis://[[user]:password@]host[:port][/db])"
        ))
    })?;
    // Resolved once, at start, like `proxy_pass host:port`.
    let hostport = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let pool = arg.cf.pool;
    // SAFETY: the configuration pool is live; the copy lives as long as the cycle.
    let Some(text) = (unsafe { ngx_str_t::from_bytes(pool, hostport.as_bytes()) }) else {
        return Err(ConfError::NoMemory);
    };
    // SAFETY: `ngx_url_t` is a C struct for which all-zero is "unset".
    let mut u: ngx::ffi::ngx_url_t = unsafe { core::mem::zeroed() };
    u.url = text;
    u.default_port = url.port;
    // SAFETY: `u` is initialised as `ngx_parse_url` expects; the addresses it resolves are
    // allocated from the configuration pool, as long-lived as the cycle.
    let rc = unsafe { ngx::ffi::ngx_parse_url(pool, &mut u) };
    if rc != ngx::ffi::NGX_OK as ngx_int_t || u.naddrs == 0 || u.addrs.is_null() {
        let why = if u.err.is_null() {
            "host not found".to_string()
        } else {
            // SAFETY: `err` is a static C string set by `ngx_parse_url`.
            unsafe { core::ffi::CStr::from_ptr(u.err) }.to_string_lossy().into_owned()
        };
        return Err(ConfError::msg(format!(
            "\"sessions_redis\": cannot resolve \"{}\": {}",
            url.host, why
        )));
    }
    // SAFETY: `addrs` holds `naddrs` (> 0) resolved addresses.
    let addr = unsafe { &*u.addrs };
    Ok(RedisSetting::Url(RedisTarget {
        url,
        sockaddr: addr.sockaddr,
        socklen: addr.socklen,
        name: addr.name,
    }))
}

/// `sessions_metrics`: the location's content handler answers with the metrics.
fn parse_metrics(arg: &mut Arg) -> Result<(), ConfError> {
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(&*arg.cf) else {
        return Err(ConfError::msg("\"sessions_metrics\" needs a location"));
    };
    crate::metrics::install_handler(clcf);
    Ok(())
}
