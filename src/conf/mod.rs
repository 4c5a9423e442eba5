//! Configuration: the settings of each level, their defaults, how they merge, and what
//! requests use once they are resolved. Every check happens at configuration time; a bad
//! value fails `nginx -t` with `[emerg]`, the file and the line of the directive at fault.
//!
//! - this file: the settings structs, merge, resolution;
//! - `directives.rs`: the directive table and the parser of each value;
//! - `zone.rs`: `sessions_zone` and the implicit zone;
//! - `error.rs`: the one error type and the one way to `[emerg]`.
//!
//! A new directive is a field here (`Option<Setting<T>>`), a line in the table and a
//! parser; merging it is one `inherit` line.

pub(crate) mod data;
mod directives;
mod error;
mod zone;

use core::ffi::{c_char, c_void};
use core::ptr;

use ngx::core::NGX_CONF_OK;
use ngx::ffi::{
    ngx_conf_t, ngx_http_core_srv_conf_t, ngx_msec_t, ngx_pool_cleanup_add, ngx_str_t, ngx_uint_t,
    NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF_OFFSET,
};
use ngx::http::{
    HttpModuleMainConf, HttpModuleServerConf, Merge, MergeConfigError, NgxHttpCoreModule,
};

use crate::cookie::{self, CookieAttrs, SameSite, Secure, Signer};
use crate::redis::Upstream;
use crate::redis_flow;
use crate::session::Policy;
use crate::shm::SharedZone;
use crate::Module;

pub(crate) use directives::COMMANDS;
use directives::{NameSetting, RedisSetting, SecretFileSetting, SecretSetting};
use error::{ConfError, Located};
use zone::ZoneSpec;

const DEFAULT_IDLE: u64 = 1800;
const DEFAULT_ROLLING: u64 = 3600;
const DEFAULT_ABSOLUTE: u64 = 86400;
const DEFAULT_REDIS_TIMEOUT: ngx_msec_t = 1000;
const DEFAULT_REDIS_KEEPALIVE: usize = 10;
/// BunkerWeb's `REDIS_KEEPALIVE_IDLE` default.
const DEFAULT_REDIS_KEEPALIVE_TIMEOUT: ngx_msec_t = 30_000;
const DEFAULT_STATE_INTERVAL: ngx_msec_t = 60_000;

/// Where a directive was written, to point `[emerg]` at it when a later check (at merge
/// time, comparing two directives) fails.
#[derive(Clone, Copy)]
pub(crate) struct Origin {
    file: ngx_str_t,
    line: ngx_uint_t,
}

impl Origin {
    fn here(cf: &ngx_conf_t) -> Option<Self> {
        // SAFETY: during parsing `conf_file` is null or points at the file being read.
        let f = unsafe { cf.conf_file.as_ref()? };
        Some(Origin { file: f.file.name, line: f.line })
    }
}

/// A value from a directive, with where it was set.
#[derive(Clone, Copy)]
pub(crate) struct Setting<T> {
    value: T,
    origin: Option<Origin>,
}

/// Which of NGINX's configuration pointers a level's directives receive.
trait Level {
    const CONF: usize;
}

/// `http`-level configuration.
#[derive(Default)]
pub(crate) struct MainConf {
    /// The session zone; filled by `shm` once mapped.
    pub(crate) zone: SharedZone,
    zone_spec: Option<Setting<ZoneSpec>>,
    /// Some `sessions on` exists, so the (implicit) zone is needed.
    used: bool,
    redis: Option<Setting<RedisSetting>>,
    redis_timeout: Option<Setting<ngx_msec_t>>,
    redis_keepalive: Option<Setting<usize>>,
    redis_keepalive_timeout: Option<Setting<ngx_msec_t>>,
    /// The resolved Redis store, when `sessions_redis` is set.
    pub(crate) redis_upstream: Option<Upstream>,
    state_interval: Option<Setting<ngx_msec_t>>,
    /// `sessions_data_size`.
    data_size: Option<Setting<usize>>,
}

impl Level for MainConf {
    const CONF: usize = NGX_HTTP_MAIN_CONF_OFFSET;
}

/// `http`/`server`-level configuration, as written.
#[derive(Default)]
pub(crate) struct SrvConf {
    secret: Option<Setting<SecretSetting>>,
    /// `sessions_secret_file`: the secret (and fallbacks) read from a file; excludes
    /// `sessions_secret` at the same level.
    secret_file: Option<Setting<SecretFileSetting>>,
    /// `sessions_secret_fallback`, every one given at this level, in order.
    fallbacks: Option<Setting<Vec<Vec<u8>>>>,
    name: Option<Setting<NameSetting>>,
    idle: Option<Setting<u64>>,
    rolling: Option<Setting<u64>>,
    absolute: Option<Setting<u64>>,
    check_ip: Option<Setting<bool>>,
    check_user_agent: Option<Setting<bool>>,
    domain: Option<Setting<Option<Vec<u8>>>>,
    path: Option<Setting<Vec<u8>>>,
    samesite: Option<Setting<SameSite>>,
    secure: Option<Setting<Secure>>,
    /// What requests use, computed once when merging.
    pub(crate) resolved: Option<Resolved>,
}

impl Level for SrvConf {
    const CONF: usize = NGX_HTTP_SRV_CONF_OFFSET;
}

/// A server's settings, validated and ready for requests.
pub(crate) struct Resolved {
    /// `None`: the random secret in force.
    pub(crate) signer: Option<Signer>,
    /// Earlier secrets that still verify cookies (whatever the current one is).
    pub(crate) fallbacks: Vec<Signer>,
    /// `None`: the random name in force.
    pub(crate) name: Option<Vec<u8>>,
    /// The `Set-Cookie` attributes after the value (without `Secure`).
    pub(crate) suffix: Vec<u8>,
    pub(crate) secure: Secure,
    /// Whether a cookieless cross-site request may start a session (SPEC step 7).
    pub(crate) samesite: SameSite,
    pub(crate) policy: Policy,
}

/// `location`-level configuration.
#[derive(Default)]
pub(crate) struct LocConf {
    enabled: Option<Setting<bool>>,
    /// `sessions_metrics`: the location answers with the metrics (not inherited).
    metrics: Option<Setting<()>>,
    /// `sessions_pass_cookie`.
    pass_cookie: Option<Setting<bool>>,
    /// `sessions_set`, `sessions_renew`, `sessions_destroy`, `sessions_require`.
    pub(crate) data: data::DataConf,
}

impl Level for LocConf {
    const CONF: usize = NGX_HTTP_LOC_CONF_OFFSET;
}

impl LocConf {
    /// Sessions are evaluated here. Never in a `sessions_metrics` location: a scraper is
    /// not a visitor, and each scrape would start a session.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.is_some_and(|s| s.value) && self.metrics.is_none()
    }

    /// Whether the upstream gets our cookie (`sessions_pass_cookie`, default on).
    pub(crate) fn pass_cookie(&self) -> bool {
        value_or(&self.pass_cookie, true)
    }
}

impl Merge for LocConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        inherit(&mut self.enabled, &prev.enabled);
        inherit(&mut self.pass_cookie, &prev.pass_cookie);
        self.data.merge(&prev.data);
        Ok(())
    }
}

fn inherit<T: Clone>(child: &mut Option<T>, parent: &Option<T>) {
    if child.is_none() {
        child.clone_from(parent);
    }
}

fn value_or<T: Copy>(s: &Option<Setting<T>>, default: T) -> T {
    s.as_ref().map_or(default, |s| s.value)
}

/// The origin of the first of `settings` that was written.
fn first_origin<const N: usize>(settings: [Option<Origin>; N]) -> Option<Origin> {
    settings.into_iter().flatten().next()
}

fn origin<T>(s: &Option<Setting<T>>) -> Option<Origin> {
    s.as_ref().and_then(|s| s.origin)
}

impl MainConf {
    /// Once the `http` block is parsed: the zone (declared or implicit) and the Redis
    /// store.
    fn init(&mut self, cf: &mut ngx_conf_t) -> Result<(), Located> {
        zone::declare(cf, self)?;
        if let Some(Setting { value: RedisSetting::Url(target), .. }) = &self.redis {
            let url = &target.url;
            self.redis_upstream = Some(Upstream {
                sockaddr: target.sockaddr,
                socklen: target.socklen,
                name: target.name,
                setup: redis_flow::setup_commands(
                    url.user.as_deref(),
                    url.password.as_deref(),
                    url.db,
                ),
                timeout: value_or(&self.redis_timeout, DEFAULT_REDIS_TIMEOUT),
                keepalive: value_or(&self.redis_keepalive, DEFAULT_REDIS_KEEPALIVE),
                keepalive_timeout: value_or(
                    &self.redis_keepalive_timeout,
                    DEFAULT_REDIS_KEEPALIVE_TIMEOUT,
                ),
            });
        }
        Ok(())
    }
}

impl MainConf {
    /// `sessions_data_size`: the most data one session may hold (0: data off).
    pub(crate) fn data_size(&self) -> usize {
        value_or(&self.data_size, crate::data::DEFAULT_DATA_SIZE)
    }

    /// With `sessions_zone ... state=<file>`: the file (full path) and how often to write it.
    pub(crate) fn state_file(&self) -> Option<(&[u8], ngx_msec_t)> {
        let path = self.zone_spec.as_ref()?.value.state()?;
        Some((path, value_or(&self.state_interval, DEFAULT_STATE_INTERVAL)))
    }
}

impl SrvConf {
    /// Merges with the enclosing level and resolves everything requests need.
    fn merge_from(&mut self, prev: &SrvConf) -> Result<(), Located> {
        // The http level is never merged itself: its conflicts are found with each server.
        prev.check_one_secret()?;
        self.check_one_secret()?;
        // The nearest level that names a secret, from a file or not, decides it.
        if self.secret.is_none() && self.secret_file.is_none() {
            inherit(&mut self.secret, &prev.secret);
            inherit(&mut self.secret_file, &prev.secret_file);
        }
        inherit(&mut self.fallbacks, &prev.fallbacks);
        inherit(&mut self.name, &prev.name);
        inherit(&mut self.idle, &prev.idle);
        inherit(&mut self.rolling, &prev.rolling);
        inherit(&mut self.absolute, &prev.absolute);
        inherit(&mut self.check_ip, &prev.check_ip);
        inherit(&mut self.check_user_agent, &prev.check_user_agent);
        inherit(&mut self.domain, &prev.domain);
        inherit(&mut self.path, &prev.path);
        inherit(&mut self.samesite, &prev.samesite);
        inherit(&mut self.secure, &prev.secure);

        let policy = Policy {
            idle: value_or(&self.idle, DEFAULT_IDLE),
            rolling: value_or(&self.rolling, DEFAULT_ROLLING),
            absolute: value_or(&self.absolute, DEFAULT_ABSOLUTE),
            check_ip: value_or(&self.check_ip, true),
            check_user_agent: value_or(&self.check_user_agent, true),
        };
        if policy.idle > policy.absolute {
            return Err(ConfError::msg(format!(
                "\"sessions_idling_timeout\" ({}s) is longer than \"sessions_absolute_timeout\" ({}s)",
                policy.idle, policy.absolute
            ))
            .at(first_origin([origin(&self.idle), origin(&self.absolute)])));
        }
        if policy.rolling > policy.absolute {
            return Err(ConfError::msg(format!(
                "\"sessions_rolling_timeout\" ({}s) is longer than \"sessions_absolute_timeout\" ({}s)",
                policy.rolling, policy.absolute
            ))
            .at(first_origin([origin(&self.rolling), origin(&self.absolute)])));
        }

        let name = match &self.name {
            Some(Setting { value: NameSetting::Fixed(n), .. }) => Some(n.clone()),
            _ => None,
        };
        let mut attrs = CookieAttrs {
            domain: self.domain.as_ref().and_then(|d| d.value.clone()),
            path: self.path.as_ref().map_or_else(|| b"/".to_vec(), |p| p.value.clone()),
            samesite: value_or(&self.samesite, SameSite::Lax),
            secure: value_or(&self.secure, Secure::Auto),
        };
        if let Err(e) = attrs.validate(name.as_deref()) {
            return Err(ConfError::msg(format!("invalid session cookie settings: {e}")).at(
                first_origin([origin(&self.name), origin(&self.samesite), origin(&self.secure)]),
            ));
        }
        let signer = self.fixed_secret().map(|(secret, _)| Signer::new(secret));
        let fallbacks = self.fallback_secrets().into_iter().map(Signer::new).collect();
        self.resolved = Some(Resolved {
            signer,
            fallbacks,
            name,
            suffix: attrs.suffix(),
            secure: attrs.secure,
            samesite: attrs.samesite,
            policy,
        });
        Ok(())
    }

    /// `sessions_secret` and `sessions_secret_file` at one level: which one would be meant?
    fn check_one_secret(&self) -> Result<(), Located> {
        match (&self.secret, &self.secret_file) {
            (Some(_), Some(file)) => Err(ConfError::msg(
                "\"sessions_secret_file\" cannot be combined with \"sessions_secret\" at the same level",
            )
            .at(file.origin)),
            _ => Ok(()),
        }
    }

    /// The fixed secret in force, if any, and where it comes from (for the startup
    /// fingerprint). A secret file replaces `random`.
    fn fixed_secret(&self) -> Option<(&[u8], &'static str)> {
        match (&self.secret, &self.secret_file) {
            (_, Some(file)) => Some((&file.value.secret, "file")),
            (Some(Setting { value: SecretSetting::Key(k), .. }), None) => Some((k, "configured")),
            _ => None,
        }
    }

    /// The fallback secrets in force: the secret file's, then `sessions_secret_fallback`'s;
    /// each once, and never the current secret again (it is tried first anyway).
    fn fallback_secrets(&self) -> Vec<&[u8]> {
        let from_file = self.secret_file.iter().flat_map(|f| &f.value.fallbacks);
        let listed = self.fallbacks.iter().flat_map(|f| &f.value);
        let current = self.fixed_secret().map(|(s, _)| s);
        let mut out: Vec<&[u8]> = Vec::new();
        for secret in from_file.chain(listed) {
            if Some(secret.as_slice()) != current && !out.contains(&secret.as_slice()) {
                out.push(secret);
            }
        }
        out
    }
}

/// Allocates a configuration struct in the configuration pool; `Drop` runs when the
/// cycle's pool is destroyed. Null on allocation failure (NGINX then fails the load).
/// (ngx 0.5.1's default `create_*_conf` writes through `ngx_palloc`'s result unchecked.)
///
/// # Safety
/// `cf` must be a live configuration context.
unsafe fn create<T: Default>(cf: *mut ngx_conf_t) -> *mut c_void {
    unsafe extern "C" fn drop_conf<T>(data: *mut c_void) {
        // SAFETY: `data` is the `T` written by `create`, dropped exactly once, here.
        unsafe { ptr::drop_in_place(data.cast::<T>()) };
    }
    // SAFETY: the caller's contract; the cleanup's data has the size of a `T` and is
    // written before NGINX can see it.
    unsafe {
        let cln = ngx_pool_cleanup_add((*cf).pool, core::mem::size_of::<T>());
        if cln.is_null() {
            return ptr::null_mut();
        }
        let p = (*cln).data.cast::<T>();
        p.write(T::default());
        (*cln).handler = Some(drop_conf::<T>);
        p.cast()
    }
}

pub(crate) unsafe extern "C" fn create_main_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: NGINX passes a live configuration context.
    unsafe { create::<MainConf>(cf) }
}

pub(crate) unsafe extern "C" fn create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: as above.
    unsafe { create::<SrvConf>(cf) }
}

pub(crate) unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: as above.
    unsafe { create::<LocConf>(cf) }
}

pub(crate) unsafe extern "C" fn init_main_conf(
    cf: *mut ngx_conf_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: NGINX passes a live context and our main configuration (from `create`).
    let (cf, mcf) = unsafe { (&mut *cf, &mut *conf.cast::<MainConf>()) };
    match mcf.init(cf) {
        Ok(()) => NGX_CONF_OK,
        Err(e) => e.report(cf),
    }
}

pub(crate) unsafe extern "C" fn merge_srv_conf(
    cf: *mut ngx_conf_t,
    prev: *mut c_void,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: NGINX passes a live context and two distinct server configurations of ours.
    let (cf, prev, conf) =
        unsafe { (&mut *cf, &*prev.cast::<SrvConf>(), &mut *conf.cast::<SrvConf>()) };
    match conf.merge_from(prev) {
        Ok(()) => NGX_CONF_OK,
        Err(e) => e.report(cf),
    }
}

/// Logs the fingerprint of each distinct configured secret (postconfiguration; the
/// random one is logged by the zone).
pub(crate) fn log_fixed_secrets(cf: &ngx_conf_t) {
    if !Module::main_conf(cf).is_some_and(|m| m.used) {
        return;
    }
    let Some(cmcf) = NgxHttpCoreModule::main_conf(cf) else { return };
    // SAFETY: `servers` is the core module's array of server configurations.
    let servers = unsafe { cmcf.servers.as_slice::<*mut ngx_http_core_srv_conf_t>() };
    let mut seen: Vec<[u8; 16]> = Vec::new();
    for &cscf in servers {
        // SAFETY: each element is a live server configuration of this cycle.
        let Some(scf) = Module::server_conf(unsafe { &*cscf }) else { continue };
        let current = scf.fixed_secret();
        let fallbacks = scf.fallback_secrets().into_iter().map(|s| (s, "fallback"));
        for (secret, kind) in current.into_iter().chain(fallbacks) {
            let fp = cookie::fingerprint(secret);
            if !seen.contains(&fp) {
                seen.push(fp);
                crate::log::fingerprint(cf.log, &fp, kind);
            }
        }
    }
}
