//! The secret and cookie name a request is signed with: the configured ones, or for
//! `random` the zone's (shared-memory store) or the cluster's (adopted from Redis and
//! cached per worker).

use core::cell::UnsafeCell;

use ngx::ffi::ngx_log_t;
use ngx::ngx_log_error;

use crate::conf::{MainConf, Resolved};
use crate::cookie::{self, Signer};
use crate::redis_flow;
use crate::shm::RandomIdentity;

/// How often a worker re-reads the identity from Redis (and refreshes its TTL).
const REFRESH: u64 = 3600;

/// The secret and cookie name that apply to a request.
pub(crate) struct Identity<'a> {
    pub(crate) signer: &'a Signer,
    pub(crate) name: &'a [u8],
}

/// Per worker: the random secret and name adopted from Redis, and when (seconds).
struct Adopted(UnsafeCell<Option<(RandomIdentity, u64)>>);

// SAFETY: a worker process runs its event loop on one thread; only that thread touches it.
unsafe impl Sync for Adopted {}

static ADOPTED: Adopted = Adopted(UnsafeCell::new(None));

/// Runs `f` with the identity adopted from Redis. `f` must not adopt (nothing it calls
/// does: adopting happens only in [`adopt`], from the Redis callback).
fn with_adopted<R>(f: impl FnOnce(Option<&(RandomIdentity, u64)>) -> R) -> R {
    // SAFETY: single-threaded worker; the only writer, `adopt`, is not reachable from `f`,
    // so this shared borrow is not aliased by a write while it lives.
    f(unsafe { (*ADOPTED.0.get()).as_ref() })
}

/// Whether the identity must be (re)fetched from Redis before a request can use it.
pub(crate) fn needs_fetch(res: &Resolved, now: u64) -> bool {
    let needs_identity = res.signer.is_none() || res.name.is_none();
    needs_identity && with_adopted(|a| a.is_none_or(|(_, at)| now.saturating_sub(*at) >= REFRESH))
}

/// Runs `f` with the secret and name in force for a server, resolving `random` against
/// the random identity in force (with Redis, the cluster's; else the zone's). `None` when
/// a random identity is needed and not known yet.
pub(crate) fn with<R>(
    res: &Resolved,
    mcf: &MainConf,
    f: impl FnOnce(Identity<'_>) -> R,
) -> Option<R> {
    fn resolve<'a>(res: &'a Resolved, random: Option<&'a RandomIdentity>) -> Option<Identity<'a>> {
        let signer = match &res.signer {
            Some(s) => s,
            None => &random?.signer,
        };
        let name = match &res.name {
            Some(n) => n.as_slice(),
            None => &random?.name[..],
        };
        Some(Identity { signer, name })
    }
    if mcf.redis_upstream.is_some() {
        with_adopted(|a| resolve(res, a.map(|(i, _)| i)).map(f))
    } else {
        resolve(res, mcf.zone.random()).map(f)
    }
}

/// Takes the secret and name that Redis holds for the cluster.
pub(crate) fn adopt(value: &[u8], now: u64, log: *mut ngx_log_t) {
    let Some((secret, name)) = redis_flow::parse_identity(value) else {
        ngx_log_error!(ngx::ffi::NGX_LOG_ERR, log, "sessions: the identity kept in Redis is malformed; delete \"{}\" to let it be made again", redis_flow::IDENTITY_KEY);
        return;
    };
    let changed = with_adopted(|a| a.is_none_or(|(i, _)| i.secret != secret || i.name != name));
    if changed {
        crate::log::fingerprint(log, &cookie::fingerprint(&secret), "random, shared through Redis");
    }
    // SAFETY: single-threaded worker; no borrow from `with_adopted` is live here (they are
    // all scoped to a closure, and this is not called from one).
    unsafe { *ADOPTED.0.get() = Some((RandomIdentity::new(secret, name), now)) };
}
