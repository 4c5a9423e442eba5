//! Redis Sentinel on the event loop: each worker finds the master itself and keeps using
//! it until a connection to it fails or it answers `READONLY`, `LOADING` or `MASTERDOWN`;
//! then it looks the master up again. At most one lookup is in flight per worker.
//!
//! A lookup (the steps are [`sessions_core::sentinel::Lookup`]) asks the sentinels in turn,
//! the one that answered last first, each exchange within `sessions_redis_timeout`:
//! `SENTINEL get-master-addr-by-name` to a sentinel, then the data connection's `AUTH` /
//! `SELECT` and `ROLE` to the address it gave. Each exchange is a short-lived connection of
//! its own ([`Probe`]); the data connections stay in `conn.rs`, which closes those to an
//! old master when the master moves ([`super::conn::close_others`]).
//!
//! While no master is known (the first lookup of a worker, which starts when the worker
//! does) commands fail at once as [`Failure::Down`], so requests answer `error` rather
//! than wait. Once the master is known, requests go to it even while a new lookup runs;
//! when the master fails they fail fast through the breaker. A lookup that finds no
//! master is retried every [`RETRY_INTERVAL`] until one is found, with or without traffic,
//! so sessions go on shortly after the sentinels promote a replica.
//!
//! Host names that sentinels give (`announce-hostnames yes`) are resolved with the http
//! level `resolver` (`ngx_resolve_start`), within `sessions_redis_timeout`; IP addresses
//! need none.

use core::cell::UnsafeCell;
use core::ptr;

use ngx::ffi::{
    ngx_close_connection, ngx_connection_log_error_e_NGX_ERROR_INFO as NGX_ERROR_INFO,
    ngx_connection_t, ngx_del_timer, ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t,
    ngx_exiting, ngx_handle_read_event, ngx_handle_write_event, ngx_inet_set_port, ngx_int_t,
    ngx_msec_int_t, ngx_msec_t, ngx_peer_connection_t, ngx_resolve_name, ngx_resolve_name_done,
    ngx_resolve_start, ngx_resolver_ctx_t, ngx_resolver_t, ngx_sockaddr_t, ngx_str_t, sockaddr,
    sockaddr_in, sockaddr_in6, socklen_t, AF_INET, AF_INET6, NGX_AGAIN, NGX_LOG_ERR,
    NGX_LOG_NOTICE, NGX_OK,
};
use ngx::ngx_log_error;
use sessions_core::sentinel::{self as core_sentinel, Action, Answer, Expect, Lookup, Order};

use super::tls::{self, TlsPeer};
use super::worker::{self, cycle_log};
use super::{Failure, Upstream};

/// How long a worker waits before it asks the sentinels again after a lookup found no
/// master (during a failover: until the sentinels have promoted a replica).
const RETRY_INTERVAL: ngx_msec_t = 250;
/// Bytes read per `recv` call.
const READ_CHUNK: usize = 1024;
/// Replies larger than this are not what we asked for.
const MAX_REPLY: usize = 16 * 1024;

macro_rules! debug {
    ($($arg:tt)+) => {
        ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Http, cycle_log(), $($arg)+);
    };
}

/// A socket address and its name for the log, as `ngx_event_connect_peer` wants them,
/// and with `rediss://` the peer whose certificate is checked (null: plain TCP).
#[derive(Clone, Copy)]
pub(crate) struct Address {
    pub(crate) sockaddr: *mut sockaddr,
    pub(crate) socklen: socklen_t,
    pub(crate) name: *mut ngx_str_t,
    pub(crate) tls: *const TlsPeer,
}

/// A sentinel, resolved at configuration time (its address lives in the cycle's pool).
#[derive(Clone)]
pub(crate) struct SentinelAddr {
    /// As written, for the certificate check with `rediss://`.
    pub(crate) host: String,
    pub(crate) sockaddr: *mut sockaddr,
    pub(crate) socklen: socklen_t,
    pub(crate) name: ngx_str_t,
}

/// `sessions_redis_sentinel` and its credentials, resolved.
#[derive(Clone)]
pub(crate) struct SentinelConf {
    /// The master's name, for the log.
    pub(crate) master: String,
    pub(crate) sentinels: Vec<SentinelAddr>,
    /// `AUTH` (with the sentinel credentials) and `SENTINEL get-master-addr-by-name`.
    pub(crate) lookup_commands: Vec<Vec<u8>>,
    /// The http-level `resolver`, for host names sentinels give; null without one.
    pub(crate) resolver: *mut ngx_resolver_t,
}

/// A master address a sentinel gave. Kept (boxed, so it never moves) for the worker's
/// life: connections point at it, and a cluster has a handful of them.
struct Peer {
    addr: ngx_sockaddr_t,
    socklen: socklen_t,
    text: Vec<u8>,
    name: ngx_str_t,
    /// `rediss://`: the master's certificate must name the host the sentinel gave.
    tls: Option<TlsPeer>,
}

struct Discovery {
    /// Every master address seen; `master` indexes it. Boxed: connections keep pointers
    /// into a peer, which must not move when the list grows.
    #[allow(clippy::vec_box)]
    peers: Vec<Box<Peer>>,
    master: Option<usize>,
    order: Option<Order>,
    /// The lookup in flight, if any, and the address it is confirming.
    lookup: Option<Lookup>,
    candidate: Option<usize>,
    /// The exchange in flight (owned here; null when none).
    probe: *mut Probe,
    /// The host name being resolved (the resolver reads it until it is done) and the port.
    resolving: Option<(Vec<u8>, u16)>,
    /// The last lookup failed (logged once until one succeeds).
    failing: bool,
    /// Why the last exchange of the lookup in flight failed, for that log line.
    last_failure: String,
    /// A lookup confirmed the master we had: failures of it start no new lookup before
    /// this (`ngx_current_msec` clock), so a master that keeps answering `LOADING` is not
    /// looked up once per request.
    quiet_until: ngx_msec_t,
    /// Fires [`RETRY_INTERVAL`] after a failed lookup.
    retry: ngx_event_t,
    upstream: *const Upstream,
}

struct DiscoveryCell(UnsafeCell<Option<Discovery>>);

// SAFETY: a worker process runs its event loop on one thread; only that thread touches it.
unsafe impl Sync for DiscoveryCell {}

static DISCOVERY: DiscoveryCell = DiscoveryCell(UnsafeCell::new(None));

/// Runs `f` with the worker's discovery state (made on first use). As in `worker.rs`, the
/// closures passed here only touch fields and never call back, so the borrow is unique.
fn with_state<R>(f: impl FnOnce(&mut Discovery) -> R) -> R {
    // SAFETY: single-threaded worker, and no `with_state` call nests in another.
    let state = unsafe { &mut *DISCOVERY.0.get() };
    let state = state.get_or_insert_with(|| Discovery {
        peers: Vec::new(),
        master: None,
        order: None,
        lookup: None,
        candidate: None,
        probe: ptr::null_mut(),
        resolving: None,
        failing: false,
        last_failure: String::new(),
        quiet_until: 0,
        // SAFETY: all-zero is an unset NGINX event.
        retry: unsafe { core::mem::zeroed() },
        upstream: ptr::null(),
    });
    f(state)
}

/// Where the next data connection goes: the URL's address, or the master Sentinel gave.
/// `Err(Down)` while no master is known yet (a lookup is then under way).
pub(super) fn target(up: &Upstream) -> Result<Address, Failure> {
    if up.sentinel.is_none() {
        return Ok(Address {
            sockaddr: up.sockaddr,
            socklen: up.socklen,
            name: ptr::addr_of!(up.name).cast_mut(),
            tls: up.tls.as_ref().map_or(ptr::null(), ptr::from_ref),
        });
    }
    let master = with_state(|s| s.master.and_then(|i| s.peers.get_mut(i)).map(|p| peer_address(p)));
    match master {
        Some(addr) => Ok(addr),
        None => {
            start_lookup(up);
            Err(Failure::Down)
        }
    }
}

fn peer_address(p: &mut Peer) -> Address {
    Address {
        sockaddr: ptr::addr_of_mut!(p.addr.sockaddr),
        socklen: p.socklen,
        name: ptr::addr_of_mut!(p.name),
        tls: p.tls.as_ref().map_or(ptr::null(), ptr::from_ref),
    }
}

/// Whether `sockaddr` (a data connection's) is the current master's.
fn is_master(sockaddr: *const sockaddr) -> bool {
    with_state(|s| {
        s.master
            .and_then(|i| s.peers.get(i))
            .is_some_and(|p| ptr::eq(ptr::addr_of!(p.addr.sockaddr), sockaddr))
    })
}

/// A data connection to `sockaddr` failed (connect, closed, timed out): if that is the
/// master, it is looked up again.
pub(super) fn connection_failed(up: &Upstream, sockaddr: *const sockaddr) {
    if up.sentinel.is_some() && is_master(sockaddr) {
        start_lookup(up);
    }
}

/// The master answered `error`: `READONLY`, `LOADING` and `MASTERDOWN` mean it is no
/// longer (or not yet) a master that serves writes: look it up again.
pub(super) fn error_reply(up: &Upstream, sockaddr: *const sockaddr, error: &str) {
    if up.sentinel.is_some() && core_sentinel::means_rediscover(error) && is_master(sockaddr) {
        start_lookup(up);
    }
}

/// The worker's first lookup, as it starts (so the first requests find the master known).
pub(crate) fn init_worker(up: &Upstream) {
    if up.sentinel.is_some() {
        start_lookup(up);
    }
}

/// Starts a lookup unless one is in flight or scheduled.
fn start_lookup(up: &Upstream) {
    let Some(conf) = up.sentinel.as_ref() else { return };
    // SAFETY: NGINX sets it on the worker's own thread.
    if unsafe { ngx_exiting } != 0 {
        return;
    }
    let action = with_state(|s| {
        if s.lookup.is_some() || s.retry.timer_set() != 0 {
            return None;
        }
        // The clock's difference read signed, as NGINX's timers do.
        if s.master.is_some() && (s.quiet_until.wrapping_sub(worker::now()) as ngx_msec_int_t) > 0 {
            return None;
        }
        s.upstream = up;
        // A new list (a reload in single-process mode) starts over in its own order.
        let count = conf.sentinels.len();
        let order = match &mut s.order {
            Some(order) if order.as_slice().len() == count => order,
            other => other.insert(Order::new(count)),
        };
        let (lookup, action) = Lookup::start(order);
        s.lookup = Some(lookup);
        s.last_failure.clear();
        Some(action)
    });
    if let Some(action) = action {
        debug!("sessions sentinel: looking up the master of \"{}\"", conf.master);
        run(up, action);
    }
}

/// Carries out `action`, and the ones after it that need no waiting.
fn run(up: &Upstream, mut action: Action) {
    let Some(conf) = up.sentinel.as_ref() else { return };
    loop {
        action = match action {
            Action::Ask(n) => {
                let Some(s) = conf.sentinels.get(n) else {
                    action = advance(|l| l.sentinel_answered(None));
                    continue;
                };
                let addr = Address {
                    sockaddr: s.sockaddr,
                    socklen: s.socklen,
                    name: ptr::addr_of!(s.name).cast_mut(),
                    tls: ptr::null(),
                };
                // `rediss://`: TLS to the sentinels too, checked against the host written.
                let tls = up.tls.as_ref().and_then(|t| t.for_host(&s.host));
                let commands = conf.lookup_commands.clone();
                match Probe::start(up, addr, tls, commands, Expect::MasterAddr) {
                    Ok(()) => return,
                    Err(why) => {
                        debug!("sessions sentinel: cannot ask sentinel {}: {}", n, why);
                        advance(|l| l.sentinel_answered(None))
                    }
                }
            }
            Action::Confirm { host, port, from } => {
                let started = match intern(up, &host, port, &host) {
                    Some(peer) => confirm(up, peer),
                    None => resolve(up, conf, &host, port, from),
                };
                if started {
                    return;
                }
                advance(|l| l.confirmed(false))
            }
            Action::Found { from, .. } => {
                found(up, conf, from);
                return;
            }
            Action::Failed => {
                failed(conf);
                return;
            }
        };
    }
}

/// Feeds the lookup in flight.
fn advance(f: impl FnOnce(&mut Lookup) -> Action) -> Action {
    with_state(|s| s.lookup.as_mut().map_or(Action::Failed, f))
}

/// Asks `ROLE` of the peer; whether the probe started.
fn confirm(up: &Upstream, peer: usize) -> bool {
    let addr = with_state(|s| {
        s.candidate = Some(peer);
        s.peers.get_mut(peer).map(|p| peer_address(p))
    });
    let commands = core_sentinel::confirm_commands(&up.setup);
    // The probe checks the certificate like the data connections will.
    let tls = addr.and_then(|a| tls_of(a.tls));
    addr.is_some_and(|a| Probe::start(up, a, tls, commands, Expect::Master).is_ok())
}

/// A copy of the TLS peer behind an address.
fn tls_of(tls: *const TlsPeer) -> Option<TlsPeer> {
    // SAFETY: a non-null `tls` of an address points into a peer or the upstream, both
    // alive for the worker's life.
    unsafe { tls.as_ref() }.cloned()
}

/// Resolves the host name a sentinel gave with the http `resolver`; [`on_resolved`]
/// carries on (perhaps before this returns, from the resolver's cache). Whether it started.
fn resolve(up: &Upstream, conf: &SentinelConf, host: &str, port: u16, from: usize) -> bool {
    let why = 'start: {
        if conf.resolver.is_null() {
            break 'start "no \"resolver\" is set at the http level";
        }
        // SAFETY: the resolver lives as long as the cycle.
        let ctx = unsafe { ngx_resolve_start(conf.resolver, ptr::null_mut()) };
        if ctx.is_null() {
            break 'start "out of memory";
        }
        // NGX_NO_RESOLVER: the http level has no usable `resolver`.
        if ctx as isize == -1 {
            break 'start "no \"resolver\" is set at the http level";
        }
        let name = with_state(|s| {
            let (name, _) = s.resolving.insert((host.as_bytes().to_vec(), port));
            ngx_str_t { len: name.len(), data: name.as_mut_ptr() }
        });
        // SAFETY: `ctx` is a fresh resolver context; the name lives in the worker's state
        // until `on_resolved` is done with the context; `up` lives as long as the cycle.
        unsafe {
            (*ctx).name = name;
            (*ctx).handler = Some(on_resolved);
            (*ctx).data = ptr::from_ref(up).cast_mut().cast();
            (*ctx).timeout = up.timeout;
            // On error NGINX has freed the context already.
            if ngx_resolve_name(ctx) != NGX_OK as ngx_int_t {
                with_state(|s| s.resolving = None);
                break 'start "the resolver failed";
            }
        }
        return true;
    };
    // Once per series of failed lookups, like the line of `failed`.
    if with_state(|s| s.failing) {
        return false;
    }
    ngx_log_error!(
        NGX_LOG_ERR,
        cycle_log(),
        "sessions: sentinel {} gave the host name \"{}\" as the master of \"{}\", which cannot be resolved: {}",
        sentinel_name(conf, from),
        host.escape_debug(),
        conf.master,
        why
    );
    false
}

unsafe extern "C" fn on_resolved(ctx: *mut ngx_resolver_ctx_t) {
    // SAFETY: NGINX calls this once with the context `resolve` started; `data` is the
    // upstream, which lives as long as the cycle; `addrs` holds `naddrs` addresses.
    unsafe {
        let up = &*(*ctx).data.cast::<Upstream>().cast_const();
        let (name, port) = with_state(|s| s.resolving.clone()).unwrap_or_default();
        let ip = ((*ctx).state == 0 && (*ctx).naddrs > 0 && !(*ctx).addrs.is_null())
            .then(|| ip_of((*(*ctx).addrs).sockaddr))
            .flatten();
        if ip.is_none() {
            debug!("sessions sentinel: resolving the master failed ({})", (*ctx).state);
        }
        ngx_resolve_name_done(ctx);
        with_state(|s| s.resolving = None);
        let name = String::from_utf8_lossy(&name).into_owned();
        let peer = ip.and_then(|ip| intern(up, &ip.to_string(), port, &name));
        if peer.is_some_and(|p| confirm(up, p)) {
            return;
        }
        let action = advance(|l| l.confirmed(false));
        run(up, action);
    }
}

/// The IP address of a resolved socket address.
///
/// # Safety
/// `sa` points to a socket address of its family's size.
unsafe fn ip_of(sa: *const sockaddr) -> Option<std::net::IpAddr> {
    // SAFETY: the caller's contract; the family says which struct it is.
    unsafe {
        match u32::from((*sa).sa_family) {
            AF_INET => {
                let sin = &*sa.cast::<sockaddr_in>();
                Some(std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()).into())
            }
            AF_INET6 => {
                let sin6 = &*sa.cast::<sockaddr_in6>();
                Some(std::net::Ipv6Addr::from(sin6.sin6_addr.__in6_u.__u6_addr8).into())
            }
            _ => None,
        }
    }
}

fn sentinel_name(conf: &SentinelConf, n: usize) -> String {
    conf.sentinels
        .get(n)
        .map_or_else(String::new, |s| String::from_utf8_lossy(s.name.as_bytes()).into_owned())
}

/// The lookup confirmed a master: use it; a new one closes the pool (its connections go
/// to the old master) and the breaker (the new master answered).
fn found(up: &Upstream, conf: &SentinelConf, from: usize) {
    let (changed, was, now) = with_state(|s| {
        s.lookup = None;
        s.failing = false;
        if let Some(order) = s.order.as_mut() {
            order.promote(from);
        }
        let new = s.candidate.take();
        let old = core::mem::replace(&mut s.master, new);
        if old == new {
            s.quiet_until = worker::now().wrapping_add(RETRY_INTERVAL);
        }
        let text = |i: Option<usize>| {
            i.and_then(|i| s.peers.get(i)).map(|p| String::from_utf8_lossy(&p.text).into_owned())
        };
        (old != new, text(old), text(new))
    });
    if changed {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            cycle_log(),
            "sessions: sentinel {} says the Redis master \"{}\" is at {}{}",
            sentinel_name(conf, from),
            conf.master,
            now.as_deref().unwrap_or("?"),
            was.map(|w| format!(" (was {w})")).unwrap_or_default()
        );
        let to = with_state(|s| {
            s.master.and_then(|i| s.peers.get_mut(i)).map(|p| peer_address(p).sockaddr)
        });
        if let Some(to) = to {
            // SAFETY: from a probe's event handler, outside the connection code.
            unsafe { super::conn::close_others(to) };
        }
        // The new master answered `ROLE`. The same master confirmed again leaves the
        // breaker to its own retries: `ROLE` works even while it answers `LOADING`.
        worker::mark_up(up);
    }
}

/// No sentinel gave a master that answered as one: try again shortly.
fn failed(conf: &SentinelConf) {
    let (first, why) = with_state(|s| {
        s.lookup = None;
        s.candidate = None;
        (!core::mem::replace(&mut s.failing, true), core::mem::take(&mut s.last_failure))
    });
    if first {
        ngx_log_error!(
            NGX_LOG_ERR,
            cycle_log(),
            "sessions: no sentinel gave a reachable master for \"{}\"{}; asking again every {}ms",
            conf.master,
            if why.is_empty() { String::new() } else { format!(" (last: {why})") },
            RETRY_INTERVAL
        );
    }
    // SAFETY: the retry event lives in the static state; it is set up once and only
    // touched on this thread.
    unsafe {
        let ev = with_state(|s| ptr::addr_of_mut!(s.retry));
        if (*ev).handler.is_none() {
            (*ev).handler = Some(on_retry);
            (*ev).log = cycle_log();
            (*ev).data = ev.cast();
            // A graceful shutdown does not wait for it.
            (*ev).set_cancelable(1);
        }
        if ngx_exiting == 0 {
            ngx::ffi::ngx_add_timer(ev, RETRY_INTERVAL);
        }
    }
}

unsafe extern "C" fn on_retry(_ev: *mut ngx_event_t) {
    let up = with_state(|s| s.upstream);
    // SAFETY: `upstream` was set by `start_lookup` from the cycle's configuration, which
    // outlives the worker's timers.
    if let Some(up) = unsafe { up.as_ref() } {
        start_lookup(up);
    }
}

/// The index of the peer for `host:port`, added if new; `None` when `host` is not an IP.
/// `tls_name`: the name the master's certificate must carry (what the sentinel gave).
fn intern(up: &Upstream, host: &str, port: u16, tls_name: &str) -> Option<usize> {
    let ip: std::net::IpAddr = host.parse().ok()?;
    let text = match ip {
        std::net::IpAddr::V4(_) => format!("{ip}:{port}"),
        std::net::IpAddr::V6(_) => format!("[{ip}]:{port}"),
    };
    with_state(|s| {
        if let Some(i) = s.peers.iter().position(|p| p.text == text.as_bytes()) {
            return Some(i);
        }
        // SAFETY: all-zero is a valid (unspecified) socket address, filled in below.
        let mut addr: ngx_sockaddr_t = unsafe { core::mem::zeroed() };
        let socklen = match ip {
            std::net::IpAddr::V4(v4) => {
                addr.sockaddr_in = sockaddr_in {
                    sin_family: AF_INET as _,
                    sin_port: 0,
                    sin_addr: ngx::ffi::in_addr { s_addr: u32::from_ne_bytes(v4.octets()) },
                    sin_zero: [0; 8],
                };
                core::mem::size_of::<sockaddr_in>()
            }
            std::net::IpAddr::V6(v6) => {
                addr.sockaddr_in6.sin6_family = AF_INET6 as _;
                addr.sockaddr_in6.sin6_addr.__in6_u.__u6_addr8 = v6.octets();
                core::mem::size_of::<sockaddr_in6>()
            }
        };
        // SAFETY: `addr` holds an IPv4 or IPv6 address of the family just set.
        unsafe { ngx_inet_set_port(ptr::addr_of_mut!(addr.sockaddr), port) };
        let mut peer = Box::new(Peer {
            addr,
            socklen: socklen as socklen_t,
            text: text.into_bytes(),
            name: ngx_str_t { len: 0, data: ptr::null_mut() },
            tls: up.tls.as_ref().and_then(|t| t.for_host(tls_name)),
        });
        peer.name = ngx_str_t { len: peer.text.len(), data: peer.text.as_mut_ptr() };
        s.peers.push(peer);
        Some(s.peers.len() - 1)
    })
}

/// A probe's result reaches the lookup.
/// `peer` names the server that answered (or did not), for the log.
fn probe_done(up: &Upstream, expect: Expect, answer: Answer, peer: String) {
    let failure = |answer: Answer| {
        let why = match answer {
            Answer::Failed(why) => why,
            other => format!("{other:?}"),
        };
        debug!("sessions sentinel: {}: {}", peer, why);
        with_state(|s| s.last_failure = format!("{peer}: {why}"));
    };
    let action = match (expect, answer) {
        (Expect::MasterAddr, Answer::MasterAt(host, port)) => {
            debug!("sessions sentinel: {} says {}:{}", peer, host, port);
            advance(|l| l.sentinel_answered(Some((host, port))))
        }
        (Expect::MasterAddr, other) => {
            failure(other);
            advance(|l| l.sentinel_answered(None))
        }
        (Expect::Master, Answer::IsMaster) => advance(|l| l.confirmed(true)),
        (Expect::Master, other) => {
            failure(other);
            advance(|l| l.confirmed(false))
        }
    };
    run(up, action);
}

/// One exchange on a connection of its own: the commands one after the other, each reply
/// read whole before the next command goes; one timer (the timeout) for all of it.
struct Probe {
    pc: ngx_peer_connection_t,
    upstream: *const Upstream,
    /// `rediss://`: the TLS handshake comes first.
    tls: Option<TlsPeer>,
    commands: Vec<Vec<u8>>,
    expect: Expect,
    index: usize,
    sent: usize,
    input: Vec<u8>,
}

impl Probe {
    /// Connects and sends the first command; the answer comes to [`probe_done`] later,
    /// never from here. `Err` when the connection could not even be started.
    fn start(
        up: &Upstream,
        addr: Address,
        tls: Option<TlsPeer>,
        commands: Vec<Vec<u8>>,
        expect: Expect,
    ) -> Result<(), &'static str> {
        let probe = Box::into_raw(Box::new(Probe {
            // SAFETY: all-zero is an unset peer connection.
            pc: unsafe { core::mem::zeroed() },
            upstream: up,
            tls,
            commands,
            expect,
            index: 0,
            sent: 0,
            input: Vec::new(),
        }));
        // SAFETY: `probe` was just allocated; the address lives in the configuration or
        // the peer list, both longer than the connection.
        unsafe {
            let pc = &mut (*probe).pc;
            pc.sockaddr = addr.sockaddr;
            pc.socklen = addr.socklen;
            pc.name = addr.name;
            pc.get = Some(ngx_event_get_peer);
            pc.log = cycle_log();
            // A dead sentinel is expected now and then: its errors are not ours to shout.
            pc.set_log_error(NGX_ERROR_INFO);
            let rc = ngx_event_connect_peer(pc);
            if rc != NGX_OK as isize && rc != NGX_AGAIN as isize {
                if !pc.connection.is_null() {
                    ngx_close_connection(pc.connection);
                }
                drop(Box::from_raw(probe));
                return Err("connect failed");
            }
            let c = pc.connection;
            (*c).data = probe.cast();
            (*(*c).read).handler = Some(probe_on_read);
            (*(*c).write).handler = Some(probe_on_write);
            ngx::ffi::ngx_add_timer((*c).read, up.timeout);
            if rc == NGX_OK as isize {
                // Connected at once: write from a posted event, not from here.
                (*(*c).write).set_ready(1);
                ngx::ffi::ngx_post_event(
                    (*c).write,
                    ptr::addr_of_mut!(ngx::ffi::ngx_posted_events),
                );
            }
        }
        with_state(|s| s.probe = probe);
        Ok(())
    }
}

/// # Safety
/// `ev` is an event of a probe's connection.
unsafe fn probe_of(ev: *mut ngx_event_t) -> *mut Probe {
    // SAFETY: the caller's contract: the connection's `data` is the probe.
    unsafe { (*(*ev).data.cast::<ngx_connection_t>()).data.cast::<Probe>() }
}

unsafe extern "C" fn probe_on_write(wev: *mut ngx_event_t) {
    // SAFETY: NGINX calls this with the write event of a probe's connection.
    unsafe { probe_flush(probe_of(wev)) };
}

unsafe extern "C" fn probe_on_read(rev: *mut ngx_event_t) {
    // SAFETY: NGINX calls this with the read event of a probe's connection.
    unsafe {
        let probe = probe_of(rev);
        if (*rev).timedout() != 0 {
            probe_finish(probe, Answer::Failed("timed out".into()));
            return;
        }
        probe_read(probe);
    }
}

/// Writes the rest of the current command, then waits for its reply.
///
/// # Safety
/// `probe` is live.
unsafe fn probe_flush(probe: *mut Probe) {
    // SAFETY: the caller's contract; the connection is the probe's own.
    unsafe {
        let c = (*probe).pc.connection;
        if let Some(peer) = (*probe).tls.as_ref().filter(|_| !tls::is_on(c)) {
            let address = *(*probe).pc.name;
            match tls::start(c, &*(*probe).upstream, peer, address, Some(probe_on_handshake)) {
                Ok(true) => probe_set_handlers(c),
                Ok(false) => return,
                Err(f) => return probe_finish(probe, Answer::Failed(f.as_str().into())),
            }
        }
        let Some(send) = (*c).send else {
            probe_finish(probe, Answer::Failed("no send".into()));
            return;
        };
        // Only this field is borrowed; `sent` is updated beside it.
        let commands = &(*probe).commands;
        while let Some(out) = commands.get((*probe).index) {
            let rest = &out[(*probe).sent.min(out.len())..];
            if rest.is_empty() {
                break;
            }
            let n = send(c, rest.as_ptr().cast_mut(), rest.len());
            if n > 0 {
                (*probe).sent += n as usize;
            } else if n == NGX_AGAIN as isize {
                if ngx_handle_write_event((*c).write, 0) != NGX_OK as isize {
                    probe_finish(probe, Answer::Failed("write event".into()));
                }
                return;
            } else {
                probe_finish(probe, Answer::Failed("connection failed".into()));
                return;
            }
        }
        if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
            probe_finish(probe, Answer::Failed("read event".into()));
            return;
        }
        if (*(*c).read).ready() != 0 {
            probe_read(probe);
        }
    }
}

/// NGINX calls this when a probe's TLS handshake that needed I/O is over (or timed out).
unsafe extern "C" fn probe_on_handshake(c: *mut ngx_connection_t) {
    // SAFETY: NGINX calls this with a probe's connection on which `tls::start` began TLS.
    unsafe {
        let probe = (*c).data.cast::<Probe>();
        let up = &*(*probe).upstream;
        let done = (*probe).tls.as_ref().map_or(Err(Failure::Tls), |p| tls::finish(c, up, p));
        match done {
            Ok(()) => {
                probe_set_handlers(c);
                probe_flush(probe);
            }
            Err(f) => probe_finish(probe, Answer::Failed(f.as_str().into())),
        }
    }
}

/// The probe's handlers back on its events (the TLS handshake borrowed them).
///
/// # Safety
/// `c` is a probe's live connection.
unsafe fn probe_set_handlers(c: *mut ngx_connection_t) {
    // SAFETY: the caller's contract.
    unsafe {
        (*(*c).read).handler = Some(probe_on_read);
        (*(*c).write).handler = Some(probe_on_write);
    }
}

/// Reads what has come, and acts on a whole reply.
///
/// # Safety
/// `probe` is live.
unsafe fn probe_read(probe: *mut Probe) {
    // SAFETY: the caller's contract; the connection is the probe's own.
    unsafe {
        let c = (*probe).pc.connection;
        let Some(recv) = (*c).recv else {
            probe_finish(probe, Answer::Failed("no recv".into()));
            return;
        };
        loop {
            let mut chunk = [0u8; READ_CHUNK];
            let n = recv(c, chunk.as_mut_ptr(), chunk.len());
            if n > 0 {
                (*probe).input.extend_from_slice(&chunk[..n as usize]);
                if (*probe).input.len() > MAX_REPLY {
                    probe_finish(probe, Answer::Failed("reply too long".into()));
                    return;
                }
                continue;
            }
            if n == NGX_AGAIN as isize {
                break;
            }
            probe_finish(probe, Answer::Failed("connection failed".into()));
            return;
        }
        let count = (*probe).commands.len();
        match core_sentinel::read_answer(&(*probe).input, (*probe).index, count, (*probe).expect) {
            Answer::Incomplete => {
                if ngx_handle_read_event((*c).read, 0) != NGX_OK as isize {
                    probe_finish(probe, Answer::Failed("read event".into()));
                }
            }
            Answer::Accepted => {
                (*probe).index += 1;
                (*probe).sent = 0;
                (*probe).input.clear();
                probe_flush(probe);
            }
            answer => probe_finish(probe, answer),
        }
    }
}

/// Closes and frees the probe, then hands its answer on.
///
/// # Safety
/// `probe` is live; it is gone after.
unsafe fn probe_finish(probe: *mut Probe, answer: Answer) {
    // SAFETY: the caller's contract; `upstream` lives as long as the cycle.
    unsafe {
        let (up, expect) = (&*(*probe).upstream, (*probe).expect);
        let peer = (*probe)
            .pc
            .name
            .as_ref()
            .map_or_else(String::new, |n| String::from_utf8_lossy(n.as_bytes()).into_owned());
        let c = (*probe).pc.connection;
        if !c.is_null() {
            if (*(*c).read).timer_set() != 0 {
                ngx_del_timer((*c).read);
            }
            tls::close_connection(c);
        }
        with_state(|s| {
            if ptr::eq(s.probe, probe) {
                s.probe = ptr::null_mut();
            }
        });
        drop(Box::from_raw(probe));
        probe_done(up, expect, answer, peer);
    }
}
