//! Directives, configuration structs and their validation. Every check happens here,
//! once, at configuration time; a bad value fails `nginx -t` with `[emerg]`, the file and
//! the line of the directive at fault.

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_int_t, ngx_msec_t, ngx_parse_size, ngx_parse_time,
    ngx_pool_cleanup_add, ngx_shm_zone_t, ngx_str_t, ngx_uint_t, NGX_CONF_FLAG, NGX_CONF_TAKE1,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET,
    NGX_HTTP_SRV_CONF, NGX_HTTP_SRV_CONF_OFFSET, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::http::HttpModuleMainConf;
use ngx::{ngx_conf_log_error, ngx_string};

use crate::cookie::{self, CookieAttrs, SameSite, Secure, Signer};
use crate::redis_flow;
use crate::redis_url::{self, RedisUrl};
use crate::session::Policy;
use crate::shm;
use crate::Module;

/// A configured secret shorter than this gets a `[warn]`.
pub const MIN_SECRET_LEN: usize = 32;
const DEFAULT_IDLE: u64 = 1800;
const DEFAULT_ROLLING: u64 = 3600;
const DEFAULT_ABSOLUTE: u64 = 86400;
const DEFAULT_ZONE_NAME: &[u8] = b"sessions";
const DEFAULT_ZONE_SIZE: usize = 10 * 1024 * 1024;
const DEFAULT_REDIS_TIMEOUT: ngx_msec_t = 1000;
const DEFAULT_REDIS_KEEPALIVE: usize = 10;

/// Where a directive was written, to point `[emerg]` at it when a later check (at merge
/// time, comparing two directives) fails.
#[derive(Clone, Copy)]
pub struct Origin {
    file: ngx_str_t,
    line: ngx_uint_t,
}

impl Origin {
    fn here(cf: &ngx_conf_t) -> Option<Self> {
        // SAFETY: during parsing `conf_file` points at the file being read.
        let f = unsafe { cf.conf_file.as_ref()? };
        Some(Origin { file: f.file.name, line: f.line })
    }
}

/// A value from a directive, with where it was set.
#[derive(Clone, Copy)]
struct Setting<T> {
    pub value: T,
    origin: Option<Origin>,
}

/// `http`-level configuration.
pub struct MainConf {
    pub zone: *mut ngx_shm_zone_t,
    zone_explicit: bool,
    /// Some `sessions on` exists, so the (implicit) zone is needed.
    pub used: bool,
    pub redis: Option<RedisUrl>,
    redis_addr: Option<(*mut ngx::ffi::sockaddr, ngx::ffi::socklen_t, ngx_str_t)>,
    pub redis_timeout: Option<ngx_msec_t>,
    pub redis_keepalive: Option<usize>,
    /// The resolved Redis store, when `sessions_redis` is set.
    pub redis_upstream: Option<crate::redis::Upstream>,
    /// Filled in by the zone's init: the random secret and name kept in shared memory.
    pub random: Option<shm::RandomIdentity>,
}

impl Default for MainConf {
    fn default() -> Self {
        MainConf {
            zone: ptr::null_mut(),
            zone_explicit: false,
            used: false,
            redis: None,
            redis_addr: None,
            redis_timeout: None,
            redis_keepalive: None,
            redis_upstream: None,
            random: None,
        }
    }
}

impl MainConf {
    pub fn redis_timeout(&self) -> ngx_msec_t {
        self.redis_timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT)
    }

    pub fn redis_keepalive(&self) -> usize {
        self.redis_keepalive.unwrap_or(DEFAULT_REDIS_KEEPALIVE)
    }
}

#[derive(Clone)]
enum SecretSetting {
    Random,
    Key(Vec<u8>),
}

#[derive(Clone)]
enum NameSetting {
    Random,
    Fixed(Vec<u8>),
}

/// `http`/`server`-level configuration, as written.
#[derive(Default)]
pub struct SrvConf {
    secret: Option<Setting<SecretSetting>>,
    name: Option<Setting<NameSetting>>,
    idle: Option<Setting<u64>>,
    rolling: Option<Setting<u64>>,
    absolute: Option<Setting<u64>>,
    check_ip: Option<bool>,
    check_user_agent: Option<bool>,
    domain: Option<Setting<Option<Vec<u8>>>>,
    path: Option<Setting<Vec<u8>>>,
    samesite: Option<Setting<SameSite>>,
    secure: Option<Setting<Secure>>,
    /// What requests use, computed once when merging.
    pub resolved: Option<Resolved>,
}

/// A server's settings, validated and ready for requests.
pub struct Resolved {
    /// `None`: the zone's random secret.
    pub signer: Option<Signer>,
    /// `None`: the zone's random name.
    pub name: Option<Vec<u8>>,
    /// The `Set-Cookie` attributes after the value (without `Secure`).
    pub suffix: Vec<u8>,
    pub secure: Secure,
    pub policy: Policy,
}

/// `location`-level configuration.
#[derive(Default)]
pub struct LocConf {
    pub enabled: Option<bool>,
}

impl LocConf {
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(false)
    }
}

fn args(cf: &ngx_conf_t) -> &[ngx_str_t] {
    // SAFETY: while a directive is handled, `cf.args` holds its name and arguments.
    unsafe { cf.args.as_ref().map(|a| a.as_slice::<ngx_str_t>()).unwrap_or(&[]) }
}

fn value(cf: &ngx_conf_t) -> &[u8] {
    args(cf).get(1).map(|s| s.as_bytes()).unwrap_or(b"")
}

macro_rules! emerg {
    ($cf:expr, $($arg:tt)+) => {{
        ngx_conf_log_error!(NGX_LOG_EMERG, $cf, $($arg)+);
        NGX_CONF_ERROR
    }};
}

/// Logs `[emerg]` pointing at `origin` (when known) instead of where parsing is now.
fn emerg_at(cf: *mut ngx_conf_t, origin: Option<Origin>, msg: &str) -> *mut c_char {
    // SAFETY: `cf` is the live configuration context; the swapped-in name and line come
    // from the same parse (the file name lives in the cycle pool) and are put back.
    unsafe {
        let file = (*cf).conf_file;
        let saved = file.as_ref().map(|f| (f.file.name, f.line));
        if let (Some(o), false) = (origin, file.is_null()) {
            (*file).file.name = o.file;
            (*file).line = o.line;
        }
        ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", msg);
        if let Some((name, line)) = saved {
            (*file).file.name = name;
            (*file).line = line;
        }
    }
    NGX_CONF_ERROR
}

fn parse_on_off(v: &[u8]) -> Option<bool> {
    match v {
        b"on" => Some(true),
        b"off" => Some(false),
        _ => None,
    }
}

fn directive_name(cf: &ngx_conf_t) -> &str {
    args(cf).first().and_then(|s| s.to_str().ok()).unwrap_or("sessions")
}

fn show(v: &[u8]) -> String {
    String::from_utf8_lossy(v).escape_debug().to_string()
}

/// Sets a `Setting` once; a second occurrence is "is duplicate", like NGINX's own slots.
macro_rules! set_once {
    ($slot:expr, $value:expr, $cf:expr) => {{
        if $slot.is_some() {
            return c"is duplicate".as_ptr().cast_mut();
        }
        $slot = Some(Setting { value: $value, origin: Origin::here($cf) });
        NGX_CONF_OK
    }};
}

/// Recovers our typed configuration from the `conf` pointer NGINX passes to handlers.
///
/// # Safety
/// `conf` must be the configuration struct of type `T` selected by the command's offset.
unsafe fn conf_mut<'a, T>(conf: *mut c_void) -> &'a mut T {
    &mut *conf.cast::<T>()
}

extern "C" fn cmd_sessions(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: NGINX calls handlers with a valid `cf` and our location conf (LOC offset).
    let (cf_ref, lcf) = unsafe { (&*cf, conf_mut::<LocConf>(conf)) };
    if lcf.enabled.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let Some(on) = parse_on_off(value(cf_ref)) else {
        return emerg!(
            cf,
            "invalid value \"{}\" in \"sessions\" directive, it must be \"on\" or \"off\"",
            show(value(cf_ref))
        );
    };
    lcf.enabled = Some(on);
    if on {
        if let Some(mcf) = Module::main_conf_mut(cf_ref) {
            mcf.used = true;
        }
    }
    NGX_CONF_OK
}

extern "C" fn cmd_secret(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; SRV offset.
    let (cf_ref, scf) = unsafe { (&*cf, conf_mut::<SrvConf>(conf)) };
    let v = value(cf_ref);
    if v.is_empty() {
        return emerg!(cf, "\"sessions_secret\" must not be empty (use \"random\" or 32+ bytes)");
    }
    let secret = if v == b"random" {
        SecretSetting::Random
    } else {
        if v.len() < MIN_SECRET_LEN {
            ngx_conf_log_error!(
                NGX_LOG_WARN,
                cf,
                "\"sessions_secret\" is {} bytes; use at least {} random bytes",
                v.len(),
                MIN_SECRET_LEN
            );
        }
        SecretSetting::Key(v.to_vec())
    };
    set_once!(scf.secret, secret, cf_ref)
}

extern "C" fn cmd_name(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; SRV offset.
    let (cf_ref, scf) = unsafe { (&*cf, conf_mut::<SrvConf>(conf)) };
    let v = value(cf_ref);
    let name = if v == b"random" {
        NameSetting::Random
    } else {
        if !cookie::is_token(v) || v.len() > 255 {
            return emerg!(
                cf,
                "invalid cookie name \"{}\" in \"sessions_name\": it must be an RFC 6265 token (letters, digits, !#$%&'*+-.^_`|~; no spaces, \";\", \",\" or \"=\")",
                show(v)
            );
        }
        NameSetting::Fixed(v.to_vec())
    };
    set_once!(scf.name, name, cf_ref)
}

extern "C" fn cmd_timeout(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; SRV offset; `cmd` is our own table entry.
    let (cf_ref, scf, which) = unsafe { (&*cf, conf_mut::<SrvConf>(conf), (*cmd).offset) };
    let mut raw = args(cf_ref).get(1).copied().unwrap_or(ngx_str_t::empty());
    // SAFETY: `raw` points into the parsed arguments.
    let secs = unsafe { ngx_parse_time(&mut raw, 1) };
    let name = directive_name(cf_ref);
    if secs == ngx::ffi::NGX_ERROR as ngx_int_t {
        return emerg!(
            cf,
            "invalid time \"{}\" in \"{}\" (use e.g. 1800, 30m, 1h, 1d)",
            show(value(cf_ref)),
            name
        );
    }
    if secs <= 0 {
        return emerg!(cf, "\"{}\" must be greater than 0", name);
    }
    let slot = match which {
        0 => &mut scf.idle,
        1 => &mut scf.rolling,
        _ => &mut scf.absolute,
    };
    set_once!(*slot, secs as u64, cf_ref)
}

extern "C" fn cmd_check(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; SRV offset; `cmd` is our own table entry.
    let (cf_ref, scf, which) = unsafe { (&*cf, conf_mut::<SrvConf>(conf), (*cmd).offset) };
    let Some(on) = parse_on_off(value(cf_ref)) else {
        return emerg!(
            cf,
            "invalid value \"{}\" in \"{}\" directive, it must be \"on\" or \"off\"",
            show(value(cf_ref)),
            directive_name(cf_ref)
        );
    };
    let slot = if which == 0 { &mut scf.check_ip } else { &mut scf.check_user_agent };
    if slot.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    *slot = Some(on);
    NGX_CONF_OK
}

extern "C" fn cmd_cookie_attr(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; SRV offset; `cmd` is our own table entry.
    let (cf_ref, scf, which) = unsafe { (&*cf, conf_mut::<SrvConf>(conf), (*cmd).offset) };
    let v = value(cf_ref);
    match which {
        0 => {
            let domain = if v == b"off" || v.is_empty() { None } else { Some(v.to_vec()) };
            if let Some(d) = &domain {
                if let Err(e) = cookie::check_attribute(d, "domain") {
                    return emerg!(cf, "invalid \"sessions_cookie_domain\" \"{}\": {}", show(v), e);
                }
            }
            set_once!(scf.domain, domain, cf_ref)
        }
        1 => {
            if let Err(e) = cookie::check_attribute(v, "path") {
                return emerg!(cf, "invalid \"sessions_cookie_path\" \"{}\": {}", show(v), e);
            }
            if !v.starts_with(b"/") {
                return emerg!(
                    cf,
                    "invalid \"sessions_cookie_path\" \"{}\": it must start with \"/\"",
                    show(v)
                );
            }
            set_once!(scf.path, v.to_vec(), cf_ref)
        }
        2 => {
            let s = match v {
                b"lax" => SameSite::Lax,
                b"strict" => SameSite::Strict,
                b"none" => SameSite::None,
                _ => return emerg!(cf, "invalid value \"{}\" in \"sessions_cookie_samesite\", it must be \"lax\", \"strict\" or \"none\"", show(v)),
            };
            set_once!(scf.samesite, s, cf_ref)
        }
        _ => {
            let s = match v {
                b"auto" => Secure::Auto,
                b"on" => Secure::On,
                b"off" => Secure::Off,
                _ => return emerg!(cf, "invalid value \"{}\" in \"sessions_cookie_secure\", it must be \"auto\", \"on\" or \"off\"", show(v)),
            };
            set_once!(scf.secure, s, cf_ref)
        }
    }
}

extern "C" fn cmd_zone(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; MAIN offset.
    let (cf_ref, mcf) = unsafe { (&*cf, conf_mut::<MainConf>(conf)) };
    if mcf.zone_explicit {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let v = value(cf_ref);
    let Some(colon) = v.iter().rposition(|&c| c == b':') else {
        return emerg!(
            cf,
            "invalid \"sessions_zone\" \"{}\": expected name:size, e.g. sessions:10m",
            show(v)
        );
    };
    let (name, size) = (&v[..colon], &v[colon + 1..]);
    if name.is_empty() {
        return emerg!(cf, "invalid \"sessions_zone\" \"{}\": the zone needs a name", show(v));
    }
    let mut size_str = ngx_str_t { len: size.len(), data: size.as_ptr().cast_mut() };
    // SAFETY: `size_str` points into the argument.
    let bytes = unsafe { ngx_parse_size(&mut size_str) };
    let min = shm::min_zone_size();
    if bytes == ngx::ffi::NGX_ERROR as isize {
        return emerg!(cf, "invalid zone size \"{}\" in \"sessions_zone\"", show(size));
    }
    if (bytes as usize) < min {
        return emerg!(
            cf,
            "zone \"{}\" is too small in \"sessions_zone\": at least {}k",
            show(name),
            min / 1024
        );
    }
    match shm::add_zone(cf, name, bytes as usize, mcf) {
        Ok(zone) => {
            mcf.zone = zone;
            mcf.zone_explicit = true;
            NGX_CONF_OK
        }
        Err(msg) => emerg!(cf, "{}", msg),
    }
}

extern "C" fn cmd_redis(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; MAIN offset.
    let (cf_ref, mcf) = unsafe { (&*cf, conf_mut::<MainConf>(conf)) };
    let v = value(cf_ref);
    if v == b"off" {
        return NGX_CONF_OK;
    }
    let Ok(url) = core::str::from_utf8(v) else {
        return emerg!(cf, "invalid Redis URL in \"sessions_redis\": not UTF-8");
    };
    if mcf.redis.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let u = match redis_url::parse(url) {
        Ok(u) => u,
        Err(e) => return emerg!(cf, "invalid Redis URL in \"sessions_redis\": it {} (expected redis://[[user]:password@]host[:port][/db])", e),
    };
    // Resolved once, at start, like `proxy_pass host:port`.
    let hostport = if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    };
    // SAFETY: `cf` is live; the URL copy and the resolved addresses live in the
    // configuration pool, as long as the cycle.
    unsafe {
        let Some(text) = ngx_str_t::from_bytes(cf_ref.pool, hostport.as_bytes()) else {
            return NGX_CONF_ERROR;
        };
        let mut url: ngx::ffi::ngx_url_t = core::mem::zeroed();
        url.url = text;
        url.default_port = u.port;
        if ngx::ffi::ngx_parse_url(cf_ref.pool, &mut url) != ngx::ffi::NGX_OK as ngx_int_t
            || url.naddrs == 0
        {
            let why = if url.err.is_null() {
                "host not found".to_string()
            } else {
                core::ffi::CStr::from_ptr(url.err).to_string_lossy().into_owned()
            };
            return emerg!(cf, "\"sessions_redis\": cannot resolve \"{}\": {}", u.host, why);
        }
        let addr = &*url.addrs;
        mcf.redis_addr = Some((addr.sockaddr, addr.socklen, addr.name));
    }
    mcf.redis = Some(u);
    NGX_CONF_OK
}

extern "C" fn cmd_redis_timeout(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; MAIN offset.
    let (cf_ref, mcf) = unsafe { (&*cf, conf_mut::<MainConf>(conf)) };
    let mut raw = args(cf_ref).get(1).copied().unwrap_or(ngx_str_t::empty());
    // SAFETY: `raw` points into the parsed arguments.
    let ms = unsafe { ngx_parse_time(&mut raw, 0) };
    if ms == ngx::ffi::NGX_ERROR as ngx_int_t || ms <= 0 {
        return emerg!(
            cf,
            "invalid time \"{}\" in \"sessions_redis_timeout\"",
            show(value(cf_ref))
        );
    }
    mcf.redis_timeout = Some(ms as ngx_msec_t);
    NGX_CONF_OK
}

extern "C" fn cmd_redis_keepalive(
    cf: *mut ngx_conf_t,
    _: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: handler contract; MAIN offset.
    let (cf_ref, mcf) = unsafe { (&*cf, conf_mut::<MainConf>(conf)) };
    match core::str::from_utf8(value(cf_ref)).ok().and_then(|s| s.parse::<usize>().ok()) {
        Some(n) if n <= 1024 => {
            mcf.redis_keepalive = Some(n);
            NGX_CONF_OK
        }
        _ => emerg!(cf, "invalid value \"{}\" in \"sessions_redis_keepalive\": a number of connections from 0 to 1024", show(value(cf_ref))),
    }
}

const HTTP_ANY: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;
const HTTP_SRV: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF;

type Handler = extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

const fn command(
    name: ngx_str_t,
    ctx: u32,
    args: u32,
    set: Handler,
    conf: usize,
    offset: usize,
) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: (ctx | args) as ngx_uint_t,
        set: Some(set),
        conf,
        offset,
        post: ptr::null_mut(),
    }
}

/// The directive table. `offset` selects the field for handlers shared by several
/// directives.
pub static mut COMMANDS: [ngx_command_t; 18] = [
    command(
        ngx_string!("sessions"),
        HTTP_ANY,
        NGX_CONF_FLAG,
        cmd_sessions,
        NGX_HTTP_LOC_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_secret"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_secret,
        NGX_HTTP_SRV_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_name"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_name,
        NGX_HTTP_SRV_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_idling_timeout"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_timeout,
        NGX_HTTP_SRV_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_rolling_timeout"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_timeout,
        NGX_HTTP_SRV_CONF_OFFSET,
        1,
    ),
    command(
        ngx_string!("sessions_absolute_timeout"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_timeout,
        NGX_HTTP_SRV_CONF_OFFSET,
        2,
    ),
    command(
        ngx_string!("sessions_check_ip"),
        HTTP_SRV,
        NGX_CONF_FLAG,
        cmd_check,
        NGX_HTTP_SRV_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_check_user_agent"),
        HTTP_SRV,
        NGX_CONF_FLAG,
        cmd_check,
        NGX_HTTP_SRV_CONF_OFFSET,
        1,
    ),
    command(
        ngx_string!("sessions_cookie_domain"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_cookie_attr,
        NGX_HTTP_SRV_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_cookie_path"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_cookie_attr,
        NGX_HTTP_SRV_CONF_OFFSET,
        1,
    ),
    command(
        ngx_string!("sessions_cookie_samesite"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_cookie_attr,
        NGX_HTTP_SRV_CONF_OFFSET,
        2,
    ),
    command(
        ngx_string!("sessions_cookie_secure"),
        HTTP_SRV,
        NGX_CONF_TAKE1,
        cmd_cookie_attr,
        NGX_HTTP_SRV_CONF_OFFSET,
        3,
    ),
    command(
        ngx_string!("sessions_zone"),
        NGX_HTTP_MAIN_CONF,
        NGX_CONF_TAKE1,
        cmd_zone,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_redis"),
        NGX_HTTP_MAIN_CONF,
        NGX_CONF_TAKE1,
        cmd_redis,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_redis_timeout"),
        NGX_HTTP_MAIN_CONF,
        NGX_CONF_TAKE1,
        cmd_redis_timeout,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    command(
        ngx_string!("sessions_redis_keepalive"),
        NGX_HTTP_MAIN_CONF,
        NGX_CONF_TAKE1,
        cmd_redis_keepalive,
        NGX_HTTP_MAIN_CONF_OFFSET,
        0,
    ),
    ngx_command_t::empty(),
    ngx_command_t::empty(),
];

/// Allocates a configuration struct in the configuration pool; `Drop` runs when the
/// cycle's pool is destroyed. Null on allocation failure (NGINX then fails the load).
///
/// # Safety
/// `cf` must be a live configuration context.
pub unsafe fn alloc_conf<T: Default>(cf: *mut ngx_conf_t) -> *mut c_void {
    let cln = ngx_pool_cleanup_add((*cf).pool, core::mem::size_of::<T>());
    if cln.is_null() {
        return ptr::null_mut();
    }
    let p = (*cln).data.cast::<T>();
    p.write(T::default());
    (*cln).handler = Some(drop_conf::<T>);
    p.cast()
}

unsafe extern "C" fn drop_conf<T>(data: *mut c_void) {
    // SAFETY: `data` is the `T` written by `alloc_conf`, dropped exactly once here.
    ptr::drop_in_place(data.cast::<T>());
}

/// Called when the `http` block is parsed: the implicit zone, if sessions are used
/// and none was declared.
pub fn init_main(cf: *mut ngx_conf_t, mcf: &mut MainConf) -> Result<(), String> {
    if mcf.used && mcf.zone.is_null() {
        mcf.zone = shm::add_zone(cf, DEFAULT_ZONE_NAME, DEFAULT_ZONE_SIZE, mcf)?;
    }
    if let (Some(url), Some((sockaddr, socklen, name))) = (&mcf.redis, mcf.redis_addr) {
        mcf.redis_upstream = Some(crate::redis::Upstream {
            sockaddr,
            socklen,
            name,
            setup: redis_flow::setup_commands(url.user.as_deref(), url.password.as_deref(), url.db),
            timeout: mcf.redis_timeout(),
            keepalive: mcf.redis_keepalive(),
        });
    }
    Ok(())
}

fn inherit<T: Copy>(child: &mut Option<T>, parent: &Option<T>) {
    if child.is_none() {
        *child = *parent;
    }
}

fn inherit_clone<T: Clone>(child: &mut Option<T>, parent: &Option<T>) {
    if child.is_none() {
        child.clone_from(parent);
    }
}

impl SrvConf {
    /// Merges with the enclosing level and resolves everything requests need.
    pub fn merge(&mut self, prev: &SrvConf, cf: *mut ngx_conf_t) -> Result<(), *mut c_char> {
        inherit_clone(&mut self.secret, &prev.secret);
        inherit_clone(&mut self.name, &prev.name);
        inherit(&mut self.idle, &prev.idle);
        inherit(&mut self.rolling, &prev.rolling);
        inherit(&mut self.absolute, &prev.absolute);
        inherit(&mut self.check_ip, &prev.check_ip);
        inherit(&mut self.check_user_agent, &prev.check_user_agent);
        inherit_clone(&mut self.domain, &prev.domain);
        inherit_clone(&mut self.path, &prev.path);
        inherit(&mut self.samesite, &prev.samesite);
        inherit(&mut self.secure, &prev.secure);

        let val = |s: &Option<Setting<u64>>, d: u64| s.map(|s| s.value).unwrap_or(d);
        let policy = Policy {
            idle: val(&self.idle, DEFAULT_IDLE),
            rolling: val(&self.rolling, DEFAULT_ROLLING),
            absolute: val(&self.absolute, DEFAULT_ABSOLUTE),
            check_ip: self.check_ip.unwrap_or(true),
            check_user_agent: self.check_user_agent.unwrap_or(true),
        };
        let origin_of = |a: &Option<Setting<u64>>, b: &Option<Setting<u64>>| {
            a.and_then(|s| s.origin).or_else(|| b.and_then(|s| s.origin))
        };
        if policy.idle > policy.absolute {
            return Err(emerg_at(cf, origin_of(&self.idle, &self.absolute), &format!(
                "\"sessions_idling_timeout\" ({}s) is longer than \"sessions_absolute_timeout\" ({}s)",
                policy.idle, policy.absolute
            )));
        }
        if policy.rolling > policy.absolute {
            return Err(emerg_at(cf, origin_of(&self.rolling, &self.absolute), &format!(
                "\"sessions_rolling_timeout\" ({}s) is longer than \"sessions_absolute_timeout\" ({}s)",
                policy.rolling, policy.absolute
            )));
        }

        let name = match &self.name {
            Some(Setting { value: NameSetting::Fixed(n), .. }) => Some(n.clone()),
            _ => None,
        };
        let mut attrs = CookieAttrs {
            domain: self.domain.as_ref().and_then(|d| d.value.clone()),
            path: self.path.as_ref().map(|p| p.value.clone()).unwrap_or_else(|| b"/".to_vec()),
            samesite: self.samesite.map(|s| s.value).unwrap_or(SameSite::Lax),
            secure: self.secure.map(|s| s.value).unwrap_or(Secure::Auto),
        };
        if let Err(e) = attrs.validate(name.as_deref()) {
            let origin = self
                .name
                .as_ref()
                .and_then(|n| n.origin)
                .or(self.samesite.and_then(|s| s.origin))
                .or(self.secure.and_then(|s| s.origin));
            return Err(emerg_at(cf, origin, &format!("invalid session cookie settings: {e}")));
        }
        let signer = match &self.secret {
            Some(Setting { value: SecretSetting::Key(k), .. }) => Some(Signer::new(k)),
            _ => None,
        };
        self.resolved =
            Some(Resolved { signer, name, suffix: attrs.suffix(), secure: attrs.secure, policy });
        Ok(())
    }

    /// The fixed secret, if one is configured (for the startup fingerprint).
    pub fn fixed_secret(&self) -> Option<&[u8]> {
        match &self.secret {
            Some(Setting { value: SecretSetting::Key(k), .. }) => Some(k),
            _ => None,
        }
    }
}
