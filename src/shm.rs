//! The shared-memory session table: one NGINX zone for all workers, guarded by the slab
//! pool's own mutex (the master force-unlocks it when a worker dies mid-section), kept
//! across `nginx -s reload` when name and size are unchanged.
//!
//! At the zone's first initialisation the slab pool gives us a small root (magic, the
//! random secret and cookie name, the binding key, the table header) and one block of whole pages for the
//! table itself: a bucket array and fixed 64-byte slots (`sessions_core::table`).
//!
//! [`SharedZone`] is the zone as the configuration sees it: unset, configured (declared
//! to NGINX) or ready (mapped, with its random identity). Only this file changes its
//! state; the configuration declares it and reads it.
//!
//! With `state=<file>`, a fresh zone is filled from the file ([`load_state`]) and
//! [`SharedZone::copy_state`] copies it out for the next write (`state_file.rs`).

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr::{self, NonNull};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_int_t, ngx_log_t, ngx_pagesize, ngx_shared_memory_add, ngx_shm_zone_t,
    ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_pool_t, ngx_str_t,
    ngx_test_config, ngx_time, NGX_LOG_EMERG,
};
use ngx::ngx_log_error;

use crate::cookie::{self, Signer};
use crate::log;
use crate::session::BindingKey;
use crate::state::{self, ZoneIdentity};
use crate::state_file;
use crate::table::{self, Header, Slot, SlotTable, TableCopy};
use sessions_core::metrics::Counters;

/// Marks a root laid out by this version of the module. NGINX hands a zone over to the next
/// configuration only when its name, size and tag (the address of this module's
/// `ngx_module_t`, so the same loaded module) are unchanged, and a binary upgrade starts with
/// fresh zones; a root of another layout is therefore never met in practice, and is refused
/// rather than read if it ever is. Change it with the layout of `Root`, `Header` or `Slot`.
const MAGIC: u64 = u64::from_le_bytes(*b"ngxsess5");

/// What lives at the start of the zone, found again through `shpool->data`.
#[repr(C)]
struct Root {
    magic: u64,
    secret: [u8; 32],
    name: [u8; 16],
    /// The key of the binding hashes (random, like the secret, but never replaced by a
    /// configured one: records must not depend on the secret in force).
    binding_key: [u8; 16],
    header: Header,
    buckets: *mut u32,
    nbuckets: usize,
    slots: *mut Slot,
    nslots: usize,
    /// The workers' metrics counters (`sessions_core::metrics`), in their own block.
    counters: *mut Counters,
}

/// The random secret and name of a zone, the same in every worker and kept across
/// reloads because they live in the zone.
#[derive(Clone)]
pub(crate) struct RandomIdentity {
    pub(crate) signer: Signer,
    pub(crate) secret: [u8; 32],
    pub(crate) name: [u8; 16],
}

impl RandomIdentity {
    pub(crate) fn new(secret: [u8; 32], name: [u8; 16]) -> Self {
        RandomIdentity { signer: Signer::new(&secret), secret, name }
    }
}

/// The session zone of one configuration cycle.
#[derive(Default)]
pub(crate) enum SharedZone {
    /// No zone: neither `sessions_zone` nor any `sessions on`.
    #[default]
    Unset,
    /// Declared to NGINX; not mapped yet (configuration time). With the state file (full
    /// path, in the cycle pool) to load if the zone is created fresh.
    Configured(Option<ngx_str_t>),
    /// Mapped and laid out: the zone, and the random identity and binding key kept in it.
    Ready(NonNull<ngx_shm_zone_t>, Box<RandomIdentity>, BindingKey),
}

impl SharedZone {
    /// The smallest zone that holds the root and a useful table.
    pub(crate) fn min_size() -> usize {
        // SAFETY: `ngx_pagesize` is set by `ngx_os_init` before configuration is read.
        8 * unsafe { ngx_pagesize }
    }

    pub(crate) fn is_set(&self) -> bool {
        !matches!(self, SharedZone::Unset)
    }

    /// Declares the zone to NGINX; it is mapped and initialised once the configuration is
    /// complete. `name` must live as long as the cycle (an argument of the configuration
    /// or a static), because NGINX keeps the pointer.
    ///
    /// `self` must not move afterwards: NGINX keeps its address for [`zone_init`] (it lives
    /// in the module's main configuration, in the cycle pool). `state` is the state file
    /// (`state=`), which must live as long as the cycle too.
    pub(crate) fn configure(
        &mut self,
        cf: &mut ngx_conf_t,
        name: ngx_str_t,
        size: usize,
        state: Option<ngx_str_t>,
    ) -> Result<(), String> {
        let shown = || String::from_utf8_lossy(name.as_bytes()).into_owned();
        let mut zname = name;
        // SAFETY: `cf` is live; the tag is the module static, which outlives every cycle;
        // NGINX keeps `zname.data`, which the caller guarantees lives as long as the cycle.
        let zone = unsafe {
            ngx_shared_memory_add(
                cf,
                &mut zname,
                size,
                ptr::addr_of_mut!(crate::ngx_http_sessions_module).cast(),
            )
        };
        let Some(zone) = NonNull::new(zone) else {
            return Err(format!("cannot declare the shared memory zone \"{}\"", shown()));
        };
        // SAFETY: `zone` was just returned by NGINX for this cycle, nothing else uses it yet.
        let zone_ref = unsafe { &mut *zone.as_ptr() };
        if !zone_ref.data.is_null() {
            return Err(format!("shared memory zone \"{}\" is already declared", shown()));
        }
        zone_ref.init = Some(zone_init);
        zone_ref.data = ptr::from_mut(self).cast();
        *self = SharedZone::Configured(state);
        Ok(())
    }

    /// The random secret and name kept in the zone, once it is ready.
    pub(crate) fn random(&self) -> Option<&RandomIdentity> {
        match self {
            SharedZone::Ready(_, identity, _) => Some(identity),
            _ => None,
        }
    }

    /// The binding key kept in the zone, once it is ready.
    pub(crate) fn binding_key(&self) -> Option<&BindingKey> {
        match self {
            SharedZone::Ready(_, _, key) => Some(key),
            _ => None,
        }
    }

    /// The zone's name, for log lines (empty when the zone is not ready).
    pub(crate) fn name(&self) -> &[u8] {
        match self {
            // SAFETY: a ready zone lives for the whole cycle, and so does its name (an
            // argument of the configuration or a static, see `configure`).
            SharedZone::Ready(zone, _, _) => unsafe { (*zone.as_ptr()).shm.name.as_bytes() },
            _ => b"",
        }
    }

    /// Locks the zone's table, or `None` when the zone is not ready.
    pub(crate) fn lock(&self) -> Option<Locked> {
        let SharedZone::Ready(zone, _, _) = self else { return None };
        // SAFETY: a ready zone is mapped for the whole cycle (workers inherit the mapping).
        unsafe { Locked::lock(zone.as_ptr()) }
    }

    /// Slots in use in the zone now (records, their data and subject entries): what a copy
    /// of the table holds.
    pub(crate) fn slots_in_use(&self) -> Option<usize> {
        Some(self.lock()?.table().slots_in_use())
    }

    /// What the state file keeps of the zone: its identity, and its records copied into
    /// `copy` under the lock, which is held for that one sequential copy only (give `copy`
    /// room beforehand so that nothing is allocated under the lock).
    pub(crate) fn copy_state(&self, copy: &mut TableCopy) -> Option<ZoneIdentity> {
        let mut locked = self.lock()?;
        // SAFETY: the lock gives exclusive access to the root.
        let root = unsafe { &*locked.root };
        let identity =
            ZoneIdentity { secret: root.secret, name: root.name, binding_key: root.binding_key };
        locked.table().copy_into(copy);
        Some(identity)
    }

    /// The workers' metrics counters kept in the zone (no lock: they are atomics).
    pub(crate) fn counters(&self) -> Option<&Counters> {
        let SharedZone::Ready(zone, ..) = self else { return None };
        // SAFETY: a ready zone is mapped for the whole cycle, and so is the counters block
        // its root points to; only atomics are reached through the shared reference.
        unsafe { root_of(zone.as_ptr()).and_then(|root| (*root).counters.as_ref()) }
    }
}

/// The zone's root, if it is laid out by this version.
///
/// # Safety
/// `zone` is a live, mapped zone declared by [`SharedZone::configure`].
unsafe fn root_of(zone: *mut ngx_shm_zone_t) -> Option<*mut Root> {
    // SAFETY: the caller's contract: the zone and its slab pool are mapped; the root is
    // written once, before any worker exists.
    unsafe {
        let pool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
        if pool.is_null() {
            return None;
        }
        let root = (*pool).data.cast::<Root>();
        (!root.is_null() && (*root).magic == MAGIC).then_some(root)
    }
}

unsafe extern "C" fn zone_init(zone: *mut ngx_shm_zone_t, _old: *mut c_void) -> ngx_int_t {
    // SAFETY: NGINX calls this with the zone it mapped; `data` is the `SharedZone` set in
    // `configure`, which lives in the main configuration of the cycle being initialised.
    let (pool, state, log) = unsafe {
        (
            (*zone).shm.addr.cast::<ngx_slab_pool_t>(),
            &mut *(*zone).data.cast::<SharedZone>(),
            (*zone).shm.log,
        )
    };
    // SAFETY: the zone is mapped and slab-initialised; the master is single-threaded here
    // and workers do not exist yet, so no lock is needed.
    let root = unsafe {
        let existing = (*pool).data.cast::<Root>();
        if !existing.is_null() && (*existing).magic == MAGIC {
            // Reload with the same name and size: keep sessions, secret, name and counts;
            // the old workers' view of Redis goes with them.
            if let Some(counters) = (*existing).counters.as_ref() {
                counters.forget_redis_states();
            }
            existing
        } else if !existing.is_null() {
            // Another layout in a zone handed over by a reload: the running workers still
            // use it, so it can be neither read nor wiped.
            ngx_log_error!(
                NGX_LOG_EMERG,
                log,
                "sessions: the zone holds a session table of another module version; restart NGINX or give the zone another name"
            );
            return Status::NGX_ERROR.into();
        } else {
            match new_root(pool) {
                Some(root) => {
                    if let SharedZone::Configured(Some(file)) = state {
                        load_state(root, file.as_bytes(), (*zone).shm.name.as_bytes(), log);
                    }
                    root
                }
                None => {
                    ngx_log_error!(
                        NGX_LOG_EMERG,
                        log,
                        "sessions: cannot lay out the session table in its zone"
                    );
                    return Status::NGX_ERROR.into();
                }
            }
        }
    };
    // SAFETY: as above; eviction is the expected way out of a full table, not an error.
    let (secret, name, binding_key) = unsafe {
        (*pool).set_log_nomem(0);
        ((*root).secret, (*root).name, BindingKey((*root).binding_key))
    };
    // SAFETY: `zone` is non-null (NGINX passes the zone it initialises).
    let zone = unsafe { NonNull::new_unchecked(zone) };
    *state = SharedZone::Ready(zone, Box::new(RandomIdentity::new(secret, name)), binding_key);
    log::fingerprint(log, &cookie::fingerprint(&secret), "random");
    Status::NGX_OK.into()
}

/// Allocates and initialises the root and the table in a fresh zone.
///
/// # Safety
/// `pool` is a freshly initialised slab pool, used by nobody else yet.
unsafe fn new_root(pool: *mut ngx_slab_pool_t) -> Option<*mut Root> {
    // SAFETY: the caller's contract; every pointer below comes from the slab allocator and
    // is checked, and the table region is sized by `table::layout`.
    unsafe {
        let root = ngx_slab_alloc_locked(pool, size_of::<Root>()).cast::<Root>();
        if root.is_null() {
            return None;
        }
        // Whole pages (page-aligned, so each worker's cache-line block stays its own).
        let counters = ngx_slab_alloc_locked(pool, size_of::<Counters>()).cast::<Counters>();
        if counters.is_null() {
            return None;
        }
        // All-zero bytes are an empty `Counters` (nothing but atomics).
        ptr::write_bytes(counters, 0, 1);
        // The table takes every page left, in one block (page-aligned, so the 64-byte slots
        // after a power-of-two bucket array are cache-line aligned).
        let page = ngx_pagesize;
        let mut pages = (*pool).pfree;
        let mut region = ptr::null_mut::<u8>();
        while pages > 0 {
            region = ngx_slab_alloc_locked(pool, pages * page).cast();
            if !region.is_null() {
                break;
            }
            pages -= 1;
        }
        if region.is_null() {
            return None;
        }
        let (nbuckets, nslots) = table::layout(pages * page);
        let buckets = region.cast::<u32>();
        let slots = region.add(nbuckets * size_of::<u32>()).cast::<Slot>();
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut secret[..]);
        root.write(Root {
            magic: MAGIC,
            secret,
            name: cookie::random_name(),
            binding_key: BindingKey::random().0,
            header: Header::default(),
            buckets,
            nbuckets,
            slots,
            nslots,
            counters,
        });
        let mut t = SlotTable::new(
            &mut (*root).header,
            core::slice::from_raw_parts_mut(buckets, nbuckets),
            core::slice::from_raw_parts_mut(slots, nslots),
        );
        t.init();
        (*pool).data = root.cast();
        Some(root)
    }
}

/// Fills a fresh zone from its state file: the random secret, name and binding key, then
/// the records alive now. A file that cannot be used leaves the zone as it is, with one
/// `[warn]` (`state_file::read`); `nginx -t` does not read it.
///
/// # Safety
/// `root` is the root [`new_root`] just laid out, used by nobody else yet.
unsafe fn load_state(root: *mut Root, file: &[u8], zone_name: &[u8], log: *mut ngx_log_t) {
    // SAFETY: set by NGINX before the configuration is read.
    if unsafe { ngx_test_config } != 0 {
        return;
    }
    let path = Path::new(OsStr::from_bytes(file));
    let Some(snapshot) = state_file::read(path, zone_name, log) else { return };
    let now = u64::try_from(ngx_time()).unwrap_or(0);
    // SAFETY: the caller's contract: nobody else uses the zone yet.
    let restored = unsafe {
        let id = &snapshot.identity;
        (*root).secret = id.secret;
        (*root).name = id.name;
        (*root).binding_key = id.binding_key;
        state::restore(&mut table_of(root), &snapshot.entries, now)
    };
    state_file::report_loaded(path, zone_name, log, &restored, snapshot.written_at, now);
}

/// The table of a laid-out root.
///
/// # Safety
/// `root` is laid out by [`new_root`] and this process has exclusive access to it (the
/// zone's lock, or no worker yet) for as long as the view lives.
unsafe fn table_of<'a>(root: *mut Root) -> SlotTable<'a> {
    // SAFETY: the caller's contract; the pointers and lengths are the ones `new_root` set.
    unsafe {
        let root = &mut *root;
        SlotTable::new(
            &mut root.header,
            core::slice::from_raw_parts_mut(root.buckets, root.nbuckets),
            core::slice::from_raw_parts_mut(root.slots, root.nslots),
        )
    }
}

/// A zone's table, locked for one critical section; unlocks on drop. The table view it
/// hands out borrows the guard, so it cannot outlive the lock.
pub(crate) struct Locked {
    pool: *mut ngx_slab_pool_t,
    root: *mut Root,
}

impl Locked {
    /// # Safety
    /// `zone` must be a live, mapped zone declared by [`SharedZone::configure`].
    unsafe fn lock(zone: *mut ngx_shm_zone_t) -> Option<Locked> {
        // SAFETY: the caller's contract: the zone and its slab pool are mapped.
        unsafe {
            let pool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
            if pool.is_null() {
                return None;
            }
            let root = (*pool).data.cast::<Root>();
            if root.is_null() || (*root).magic != MAGIC {
                return None;
            }
            ngx_shmtx_lock(ptr::addr_of_mut!((*pool).mutex));
            Some(Locked { pool, root })
        }
    }

    /// The table, for as long as this guard is borrowed.
    pub(crate) fn table(&mut self) -> SlotTable<'_> {
        // SAFETY: the mutex, held until `drop`, gives this process exclusive access to the
        // root and the table, and `&mut self` makes this the only view in this process.
        unsafe { table_of(self.root) }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: we locked this mutex in `lock` and hold it until now.
        unsafe { ngx_shmtx_unlock(ptr::addr_of_mut!((*self.pool).mutex)) };
    }
}
