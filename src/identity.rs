//! The secret and cookie name a request is signed with: the configured ones, or for
//! `random` the zone's (shared-memory store) or the cluster's (adopted from Redis and
//! cached per worker); and the key of the binding hashes, the zone's or the cluster's,
//! whatever the secret.

use core::cell::UnsafeCell;

use ngx::ffi::ngx_log_t;
use ngx::ngx_log_error;

use crate::conf::{MainConf, Resolved};
use crate::cookie::{self, Keys, Signer};
use crate::redis_flow::{self, Command};
use crate::session::BindingKey;
use crate::shm::RandomIdentity;

/// How often a worker re-reads what it adopted from Redis (and refreshes its TTL).
const REFRESH: u64 = 3600;

/// The secret, cookie name and binding key that apply to a request.
pub(crate) struct Identity<'a> {
    /// The current secret: what responses are signed with.
    pub(crate) signer: &'a Signer,
    /// Earlier secrets that still verify cookies.
    pub(crate) fallbacks: &'a [Signer],
    pub(crate) name: &'a [u8],
    pub(crate) binding_key: &'a BindingKey,
}

impl<'a> Identity<'a> {
    /// The secrets that verify cookies: the current one first.
    pub(crate) fn keys(&self) -> Keys<'a> {
        Keys::new(self.signer, self.fallbacks)
    }
}

/// Per worker: what was adopted from Redis, each with when (seconds).
struct Shared {
    identity: Option<(RandomIdentity, u64)>,
    binding_key: Option<(BindingKey, u64)>,
}

struct Adopted(UnsafeCell<Shared>);

// SAFETY: a worker process runs its event loop on one thread; only that thread touches it.
unsafe impl Sync for Adopted {}

static ADOPTED: Adopted = Adopted(UnsafeCell::new(Shared { identity: None, binding_key: None }));

/// Runs `f` with what was adopted from Redis. `f` must not adopt (nothing it calls does:
/// adopting happens only in [`adopt`], from the Redis callback).
fn with_adopted<R>(f: impl FnOnce(&Shared) -> R) -> R {
    // SAFETY: single-threaded worker; the only writer, `adopt`, is not reachable from `f`,
    // so this shared borrow is not aliased by a write while it lives.
    f(unsafe { &*ADOPTED.0.get() })
}

fn needs_identity(res: &Resolved) -> bool {
    res.signer.is_none() || res.name.is_none()
}

fn stale(adopted_at: Option<u64>, now: u64) -> bool {
    adopted_at.is_none_or(|at| now.saturating_sub(at) >= REFRESH)
}

/// Whether the binding key (and the identity, if the server needs the random one) must be
/// (re)fetched from Redis before a request can use them.
pub(crate) fn needs_fetch(res: &Resolved, now: u64) -> bool {
    with_adopted(|a| {
        stale(a.binding_key.as_ref().map(|(_, at)| *at), now)
            || (needs_identity(res) && stale(a.identity.as_ref().map(|(_, at)| *at), now))
    })
}

/// The command that fetches what the cluster shares, proposing ours: the binding key this
/// worker already uses if any (so that a flushed Redis gets the same one back), else the
/// zone's; the zone's random identity when the server needs it. `None` before the zone is
/// ready.
pub(crate) fn fetch_command(res: &Resolved, mcf: &MainConf) -> Option<Command> {
    let (local, zone_key) = (mcf.zone.random()?, mcf.zone.binding_key()?);
    let binding_key =
        with_adopted(|a| a.binding_key.as_ref().map(|(k, _)| *k)).unwrap_or(*zone_key);
    let identity = needs_identity(res).then(|| {
        let mut proposal = [0u8; redis_flow::IDENTITY_LEN];
        proposal[..32].copy_from_slice(&local.secret);
        proposal[32..].copy_from_slice(&local.name);
        proposal
    });
    Some(Command::Shared { binding_key, identity })
}

/// Runs `f` with the secret, name and binding key in force for a server, resolving `random`
/// against the random identity in force (with Redis, the cluster's; else the zone's).
/// `None` when something needed is not known yet.
pub(crate) fn with<R>(
    res: &Resolved,
    mcf: &MainConf,
    f: impl FnOnce(Identity<'_>) -> R,
) -> Option<R> {
    fn resolve<'a>(
        res: &'a Resolved,
        random: Option<&'a RandomIdentity>,
        binding_key: Option<&'a BindingKey>,
    ) -> Option<Identity<'a>> {
        let signer = match &res.signer {
            Some(s) => s,
            None => &random?.signer,
        };
        let name = match &res.name {
            Some(n) => n.as_slice(),
            None => &random?.name[..],
        };
        Some(Identity { signer, fallbacks: &res.fallbacks, name, binding_key: binding_key? })
    }
    if mcf.redis_upstream.is_some() {
        with_adopted(|a| {
            let random = a.identity.as_ref().map(|(i, _)| i);
            resolve(res, random, a.binding_key.as_ref().map(|(k, _)| k)).map(f)
        })
    } else {
        resolve(res, mcf.zone.random(), mcf.zone.binding_key()).map(f)
    }
}

/// Runs `f` with the cookie name in force: the configured one, or the random one once it
/// is known. Unlike [`with`] it needs no binding key, so an upstream's `Set-Cookie` for our
/// name is dropped (and `sessions_pass_cookie off` strips our cookie) even while Redis has
/// never answered.
pub(crate) fn with_name<R>(
    res: &Resolved,
    mcf: &MainConf,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    if let Some(name) = &res.name {
        return Some(f(name));
    }
    if mcf.redis_upstream.is_some() {
        with_adopted(|a| a.identity.as_ref().map(|(i, _)| f(&i.name[..])))
    } else {
        mcf.zone.random().map(|random| f(&random.name[..]))
    }
}

/// Takes what Redis holds for the cluster (the reply to [`fetch_command`]'s command).
pub(crate) fn adopt(value: &[u8], now: u64, log: *mut ngx_log_t) {
    let Some((binding_key, identity)) = redis_flow::parse_shared(value) else {
        ngx_log_error!(
            ngx::ffi::NGX_LOG_ERR,
            log,
            "sessions: the binding key or identity kept in Redis is malformed; delete \"{}\" and \"{}\" to let them be made again",
            redis_flow::BINDING_KEY_KEY,
            redis_flow::IDENTITY_KEY
        );
        return;
    };
    let changed = identity.is_some_and(|(secret, name)| {
        with_adopted(|a| {
            a.identity.as_ref().is_none_or(|(i, _)| i.secret != secret || i.name != name)
        })
    });
    if let (true, Some((secret, _))) = (changed, identity) {
        crate::log::fingerprint(log, &cookie::fingerprint(&secret), "random, shared through Redis");
    }
    // SAFETY: single-threaded worker; no borrow from `with_adopted` is live here (they are
    // all scoped to a closure, and this is not called from one).
    let adopted = unsafe { &mut *ADOPTED.0.get() };
    adopted.binding_key = Some((binding_key, now));
    if let Some((secret, name)) = identity {
        adopted.identity = Some((RandomIdentity::new(secret, name), now));
    }
}
