//! The shared-memory session table: one NGINX zone for all workers, guarded by the slab
//! pool's own mutex (the master force-unlocks it when a worker dies mid-section), kept
//! across `nginx -s reload` when name and size are unchanged.
//!
//! Records are fixed-size nodes (128-byte slab slots) in an rbtree keyed by the first 8
//! bytes of the store key, and on one of two LRU queues: *probation* for sessions whose
//! cookie has not come back yet, *protected* for sessions in use. When the zone is full,
//! probation is evicted first, so a flood of cookie-less clients only pushes out other
//! cookie-less clients.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;

use ngx::ffi::{
    ngx_int_t, ngx_log_t, ngx_pagesize, ngx_queue_t, ngx_rbtree_delete, ngx_rbtree_insert,
    ngx_rbtree_insert_value, ngx_rbtree_node_t, ngx_rbtree_t, ngx_shared_memory_add,
    ngx_shm_zone_t, ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_alloc_locked, ngx_slab_free_locked,
    ngx_slab_pool_t, ngx_str_t, NGX_ERROR, NGX_LOG_NOTICE, NGX_OK,
};
use ngx::ffi::{
    ngx_queue_empty, ngx_queue_init, ngx_queue_insert_after, ngx_queue_remove, ngx_rbtree_init,
};
use ngx::ngx_log_error;

use crate::conf::MainConf;
use crate::cookie::{self, Signer, StoreKey};
use crate::session::{Record, StoreError, Table};

const MAGIC: u64 = u64::from_le_bytes(*b"ngxsess1");
/// Nodes evicted at most to make room for one insert.
const MAX_EVICTIONS: usize = 16;
/// Expired nodes reclaimed from each queue's tail per insert (as `limit_req` does).
const EXPIRE_PER_INSERT: usize = 2;

/// What lives at the start of the zone, found again through `shpool->data`.
#[repr(C)]
struct Root {
    magic: u64,
    secret: [u8; 32],
    name: [u8; 16],
    sentinel: ngx_rbtree_node_t,
    tree: ngx_rbtree_t,
    probation: ngx_queue_t,
    protected: ngx_queue_t,
    count: usize,
}

/// One session ID's record in the zone. 128 bytes: one slab slot of that size class.
#[repr(C)]
struct Node {
    rb: ngx_rbtree_node_t,
    lru: ngx_queue_t,
    key_rest: [u8; 8],
    expires: u64,
    record: Record,
    protected: u8,
}

const _: () = assert!(size_of::<Node>() <= 128);

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
            (*existing).tree.insert = Some(ngx_rbtree_insert_value);
            existing
        } else {
            let root = ngx_slab_alloc_locked(pool, size_of::<Root>()).cast::<Root>();
            if root.is_null() {
                return NGX_ERROR as ngx_int_t;
            }
            let mut secret = [0u8; 32];
            rand::Rng::fill(&mut rand::rngs::OsRng, &mut secret[..]);
            root.write(Root {
                magic: MAGIC,
                secret,
                name: cookie::random_name(),
                sentinel: core::mem::zeroed(),
                tree: core::mem::zeroed(),
                probation: core::mem::zeroed(),
                protected: core::mem::zeroed(),
                count: 0,
            });
            ngx_rbtree_init(
                ptr::addr_of_mut!((*root).tree),
                ptr::addr_of_mut!((*root).sentinel),
                Some(ngx_rbtree_insert_value),
            );
            ngx_queue_init(ptr::addr_of_mut!((*root).probation));
            ngx_queue_init(ptr::addr_of_mut!((*root).protected));
            (*pool).data = root.cast();
            root
        }
    };
    // SAFETY: as above; eviction is the expected way out of a full zone, not an error.
    unsafe {
        (*pool).set_log_nomem(0);
        mcf.random = Some(RandomIdentity::new((*root).secret, (*root).name));
        let fp = cookie::fingerprint(&(*root).secret);
        log_fingerprint(log, &fp, "random");
    }
    NGX_OK as ngx_int_t
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

/// A handle on a zone's table for one critical section; unlocks on drop.
pub struct Locked {
    pool: *mut ngx_slab_pool_t,
    root: *mut Root,
    /// The node found by the last lookup, so that get-then-update searches once.
    cached: Option<(StoreKey, *mut Node)>,
}

impl Locked {
    /// Locks the zone's table, or `None` when the zone is not initialised.
    ///
    /// # Safety
    /// `zone` must be a live zone declared by `add_zone`.
    pub unsafe fn lock(zone: *mut ngx_shm_zone_t) -> Option<Locked> {
        let pool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
        if pool.is_null() {
            return None;
        }
        let root = (*pool).data.cast::<Root>();
        if root.is_null() {
            return None;
        }
        ngx_shmtx_lock(ptr::addr_of_mut!((*pool).mutex));
        Some(Locked { pool, root, cached: None })
    }

    fn split(key: &StoreKey) -> (usize, [u8; 8]) {
        let mut hi = [0u8; 8];
        let mut rest = [0u8; 8];
        hi.copy_from_slice(&key.0[..8]);
        rest.copy_from_slice(&key.0[8..]);
        (u64::from_le_bytes(hi) as usize, rest)
    }

    fn find(&mut self, key: &StoreKey) -> *mut Node {
        if let Some((k, n)) = self.cached {
            if k == *key {
                return n;
            }
        }
        let (hi, rest) = Self::split(key);
        // SAFETY: the lock is held; the tree's nodes are all `Node`s whose first field is
        // the rbtree node, so the casts recover them.
        unsafe {
            let sentinel = (*self.root).tree.sentinel;
            let mut node = (*self.root).tree.root;
            while node != sentinel {
                if hi < (*node).key {
                    node = (*node).left;
                } else if hi > (*node).key {
                    node = (*node).right;
                } else {
                    let n = node.cast::<Node>();
                    if (*n).key_rest == rest {
                        self.cached = Some((*key, n));
                        return n;
                    }
                    // 64-bit prefix collision with another ID: treat as absent.
                    return ptr::null_mut();
                }
            }
        }
        ptr::null_mut()
    }

    /// Moves `n` to the head of the queue it belongs in now.
    ///
    /// # Safety
    /// Lock held; `n` is a live node in a queue.
    unsafe fn requeue(&mut self, n: *mut Node, protected: bool) {
        ngx_queue_remove(ptr::addr_of_mut!((*n).lru));
        let head = if protected {
            ptr::addr_of_mut!((*self.root).protected)
        } else {
            ptr::addr_of_mut!((*self.root).probation)
        };
        ngx_queue_insert_after(head, ptr::addr_of_mut!((*n).lru));
        (*n).protected = protected as u8;
    }

    /// # Safety
    /// Lock held; `n` is a live node.
    unsafe fn free(&mut self, n: *mut Node) {
        if matches!(self.cached, Some((_, c)) if c == n) {
            self.cached = None;
        }
        ngx_rbtree_delete(ptr::addr_of_mut!((*self.root).tree), ptr::addr_of_mut!((*n).rb));
        ngx_queue_remove(ptr::addr_of_mut!((*n).lru));
        ngx_slab_free_locked(self.pool, n.cast());
        (*self.root).count = (*self.root).count.saturating_sub(1);
    }

    /// The least recently used node of a queue, if any.
    ///
    /// # Safety
    /// Lock held; `q` is one of the root's queues.
    unsafe fn tail(q: *mut ngx_queue_t) -> Option<*mut Node> {
        if ngx_queue_empty(q) {
            return None;
        }
        let last = (*q).prev;
        Some(last.byte_sub(core::mem::offset_of!(Node, lru)).cast::<Node>())
    }

    fn expire_some(&mut self, now: u64) {
        // SAFETY: lock held; queues hold live nodes.
        unsafe {
            for q in [
                ptr::addr_of_mut!((*self.root).probation),
                ptr::addr_of_mut!((*self.root).protected),
            ] {
                for _ in 0..EXPIRE_PER_INSERT {
                    match Self::tail(q) {
                        Some(n) if (*n).expires <= now => self.free(n),
                        _ => break,
                    }
                }
            }
        }
    }

    fn evict_one(&mut self) -> bool {
        // SAFETY: lock held; queues hold live nodes.
        unsafe {
            let victim = Self::tail(ptr::addr_of_mut!((*self.root).probation))
                .or_else(|| Self::tail(ptr::addr_of_mut!((*self.root).protected)));
            match victim {
                Some(n) => {
                    self.free(n);
                    true
                }
                None => false,
            }
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: we locked this mutex in `lock` and hold it until now.
        unsafe { ngx_shmtx_unlock(ptr::addr_of_mut!((*self.pool).mutex)) };
    }
}

impl Table for Locked {
    fn get(&mut self, key: &StoreKey, _now: u64) -> Option<Record> {
        let n = self.find(key);
        if n.is_null() {
            return None;
        }
        // SAFETY: lock held; `n` is live.
        unsafe {
            self.requeue(n, true);
            Some((*n).record)
        }
    }

    fn insert(
        &mut self,
        key: &StoreKey,
        rec: &Record,
        expires: u64,
        established: bool,
        now: u64,
    ) -> Result<(), StoreError> {
        if !self.find(key).is_null() {
            return Err(StoreError::Exists);
        }
        self.expire_some(now);
        let mut n = ptr::null_mut::<Node>();
        for _ in 0..=MAX_EVICTIONS {
            // SAFETY: lock held.
            n = unsafe { ngx_slab_alloc_locked(self.pool, size_of::<Node>()) }.cast();
            if !n.is_null() || !self.evict_one() {
                break;
            }
        }
        if n.is_null() {
            return Err(StoreError::Unavailable);
        }
        let (hi, rest) = Self::split(key);
        // SAFETY: `n` is a fresh slab allocation of `Node` size, aligned for it (slab
        // slots are aligned to their size); lock held.
        unsafe {
            n.write(Node {
                rb: core::mem::zeroed(),
                lru: core::mem::zeroed(),
                key_rest: rest,
                expires,
                record: *rec,
                protected: established as u8,
            });
            (*n).rb.key = hi;
            ngx_rbtree_insert(ptr::addr_of_mut!((*self.root).tree), ptr::addr_of_mut!((*n).rb));
            let head = if established {
                ptr::addr_of_mut!((*self.root).protected)
            } else {
                ptr::addr_of_mut!((*self.root).probation)
            };
            ngx_queue_insert_after(head, ptr::addr_of_mut!((*n).lru));
            (*self.root).count += 1;
        }
        self.cached = Some((*key, n));
        Ok(())
    }

    fn update(&mut self, key: &StoreKey, rec: &Record, expires: u64) {
        let n = self.find(key);
        if !n.is_null() {
            // SAFETY: lock held; `n` is live.
            unsafe {
                (*n).record = *rec;
                (*n).expires = expires;
            }
        }
    }

    fn remove(&mut self, key: &StoreKey) {
        let n = self.find(key);
        if !n.is_null() {
            // SAFETY: lock held; `n` is live.
            unsafe { self.free(n) };
        }
    }
}
