//! The shared-memory session table: one NGINX zone for all workers, guarded by the slab
//! pool's own mutex (the master force-unlocks it when a worker dies mid-section), kept
//! across `nginx -s reload` when name and size are unchanged.
//!
//! At the zone's first initialisation the slab pool gives us a small root (magic, the
//! random secret and cookie name, the table header) and one block of whole pages for the
//! table itself: a bucket array and fixed 64-byte slots (`sessions_core::table`).

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;

use ngx::ffi::{
    ngx_int_t, ngx_log_t, ngx_pagesize, ngx_shared_memory_add, ngx_shm_zone_t, ngx_shmtx_lock,
    ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_pool_t, ngx_str_t, NGX_ERROR, NGX_LOG_EMERG,
    NGX_LOG_NOTICE, NGX_OK,
};
use ngx::ngx_log_error;

use crate::conf::MainConf;
use crate::cookie::{self, Signer};
use crate::table::{self, Header, Slot, SlotTable};

const MAGIC: u64 = u64::from_le_bytes(*b"ngxsess2");

/// What lives at the start of the zone, found again through `shpool->data`.
#[repr(C)]
struct Root {
    magic: u64,
    secret: [u8; 32],
    name: [u8; 16],
    header: Header,
    buckets: *mut u32,
    nbuckets: usize,
    slots: *mut Slot,
    nslots: usize,
}

/// The random secret and name of a zone, the same in every worker and kept across
/// reloads because they live in the zone.
#[derive(Clone)]
pub struct RandomIdentity {
    pub signer: Signer,
    pub secret: [u8; 32],
    pub name: [u8; 16],
}

impl RandomIdentity {
    pub fn new(secret: [u8; 32], name: [u8; 16]) -> Self {
        RandomIdentity { signer: Signer::new(&secret), secret, name }
    }
}

pub fn min_zone_size() -> usize {
    // SAFETY: `ngx_pagesize` is set by `ngx_os_init` before configuration is read.
    8 * unsafe { ngx_pagesize }
}

/// Declares the zone (from `sessions_zone` or the implicit default).
pub fn add_zone(
    cf: *mut ngx::ffi::ngx_conf_t,
    name: &[u8],
    size: usize,
    mcf: &mut MainConf,
) -> Result<*mut ngx_shm_zone_t, String> {
    let mut zname = ngx_str_t { len: name.len(), data: name.as_ptr().cast_mut() };
    // SAFETY: `cf` is live; the module static outlives every cycle. NGINX copies nothing
    // of `zname` that it does not keep in the cycle pool (it stores the pointer, which
    // points into the parsed configuration or a static, both living long enough).
    let zone = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut zname,
            size,
            ptr::addr_of_mut!(crate::ngx_http_sessions_module).cast(),
        )
    };
    if zone.is_null() {
        return Err(format!(
            "cannot declare the shared memory zone \"{}\"",
            String::from_utf8_lossy(name)
        ));
    }
    // SAFETY: `zone` was just returned by NGINX for this cycle.
    unsafe {
        if !(*zone).data.is_null() {
            return Err(format!(
                "shared memory zone \"{}\" is already declared",
                String::from_utf8_lossy(name)
            ));
        }
        (*zone).init = Some(zone_init);
        (*zone).data = ptr::from_mut(mcf).cast();
    }
    Ok(zone)
}

unsafe extern "C" fn zone_init(zone: *mut ngx_shm_zone_t, _old: *mut c_void) -> ngx_int_t {
    // SAFETY: NGINX calls this with the zone it mapped; `data` is the `MainConf` set in
    // `add_zone`, alive for the cycle being initialised.
    let (pool, mcf, log) = unsafe {
        (
            (*zone).shm.addr.cast::<ngx_slab_pool_t>(),
            &mut *(*zone).data.cast::<MainConf>(),
            (*zone).shm.log,
        )
    };
    // SAFETY: the zone is mapped and slab-initialised; the master is single-threaded here
    // and workers do not exist yet, so no lock is needed.
    let root = unsafe {
        let existing = (*pool).data.cast::<Root>();
        if !existing.is_null() && (*existing).magic == MAGIC {
            // Reload with the same name and size: keep sessions, secret and name.
            existing
        } else {
            match new_root(pool) {
                Some(root) => root,
                None => {
                    ngx_log_error!(
                        NGX_LOG_EMERG,
                        log,
                        "sessions: cannot lay out the session table in its zone"
                    );
                    return NGX_ERROR as ngx_int_t;
                }
            }
        }
    };
    // SAFETY: as above; eviction is the expected way out of a full table, not an error.
    unsafe {
        (*pool).set_log_nomem(0);
        mcf.random = Some(RandomIdentity::new((*root).secret, (*root).name));
        let fp = cookie::fingerprint(&(*root).secret);
        log_fingerprint(log, &fp, "random");
    }
    NGX_OK as ngx_int_t
}

/// Allocates and initialises the root and the table in a fresh zone.
///
/// # Safety
/// `pool` is a freshly initialised slab pool, used by nobody else yet.
unsafe fn new_root(pool: *mut ngx_slab_pool_t) -> Option<*mut Root> {
    let root = ngx_slab_alloc_locked(pool, size_of::<Root>()).cast::<Root>();
    if root.is_null() {
        return None;
    }
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
        header: Header::default(),
        buckets,
        nbuckets,
        slots,
        nslots,
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

/// One `[notice]` line per secret at start, so that operators can tell whether two
/// instances share a secret without ever seeing it.
pub fn log_fingerprint(log: *mut ngx_log_t, fp: &[u8; 16], kind: &str) {
    if log.is_null() {
        return;
    }
    ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "sessions: secret fingerprint {} ({})",
        core::str::from_utf8(fp).unwrap_or("?"),
        kind
    );
}

/// A zone's table, locked for one critical section; unlocks on drop.
pub struct Locked {
    pool: *mut ngx_slab_pool_t,
    table: SlotTable<'static>,
}

impl Locked {
    /// Locks the zone's table, or `None` when the zone is not initialised.
    ///
    /// # Safety
    /// `zone` must be a live zone declared by `add_zone`; the `Locked` must not outlive
    /// the request handler that made it (the `'static` stands for "while locked").
    pub unsafe fn lock(zone: *mut ngx_shm_zone_t) -> Option<Locked> {
        let pool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
        if pool.is_null() {
            return None;
        }
        let root = (*pool).data.cast::<Root>();
        if root.is_null() || (*root).magic != MAGIC {
            return None;
        }
        ngx_shmtx_lock(ptr::addr_of_mut!((*pool).mutex));
        // The mutex gives this process exclusive access to the root and the table until
        // `drop`, so these are the only references to them.
        let table = SlotTable::new(
            &mut (*root).header,
            core::slice::from_raw_parts_mut((*root).buckets, (*root).nbuckets),
            core::slice::from_raw_parts_mut((*root).slots, (*root).nslots),
        );
        Some(Locked { pool, table })
    }

    pub fn table(&mut self) -> &mut SlotTable<'static> {
        &mut self.table
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: we locked this mutex in `lock` and hold it until now.
        unsafe { ngx_shmtx_unlock(ptr::addr_of_mut!((*self.pool).mutex)) };
    }
}
