//! The state file of `sessions_zone ... state=<file>` (format and loading logic:
//! `sessions_core::state`).
//!
//! - Loading: `shm`'s zone init fills a fresh zone (first start, binary upgrade, a reload
//!   that changed the zone's size) through [`read`] and [`report_loaded`]; a file that
//!   cannot be used is one `[warn]`, never a failed start.
//! - Every `sessions_state_interval`, worker 0 copies the table under the zone's lock and a
//!   thread of its own encodes and writes it (temporary file, fsync, rename), so the event
//!   loop never waits for the disk.
//! - On `nginx -s stop` and `nginx -s quit` the master writes it last ([`exit_master`]):
//!   it exits only once every worker has, so it copies the table as the last request left
//!   it, which worker 0's own exit would not (other workers may still be finishing their
//!   requests after a `quit`). The master keeps the zone mapped, so it can.
//! - Binary upgrade (`USR2`): the new master's zones are new, so it loads the file as last
//!   written (at most one interval old). The old master, once a new binary runs
//!   (`ngx_new_binary`), does not write at its exit: the file is the new generation's.

use core::ptr::{self, addr_of_mut};
use core::sync::atomic::{AtomicPtr, Ordering};
use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ngx::ffi::{
    ngx_add_timer, ngx_cycle_t, ngx_event_t, ngx_exiting, ngx_int_t, ngx_log_t, ngx_msec_t,
    ngx_new_binary, ngx_process, ngx_terminate, ngx_time, ngx_worker, pthread_sigmask, sigfillset,
    sigset_t, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
    SIG_SETMASK,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;

use crate::shm::SharedZone;
use crate::state::{self, Restored, Snapshot, ZoneIdentity};
use crate::table::TableCopy;
use crate::Module;

/// Reads and checks the state file; `None`, after one `[warn]` saying why, when it cannot
/// be used.
pub(crate) fn read(path: &Path, zone: &[u8], log: *mut ngx_log_t) -> Option<Snapshot> {
    let why = match std::fs::read(path) {
        Ok(bytes) => match Snapshot::decode(&bytes) {
            Ok(snapshot) => return Some(snapshot),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    ngx_log_error!(
        NGX_LOG_WARN,
        log,
        "sessions: state file \"{}\" not loaded: {}; zone \"{}\" starts empty, with a new random secret and name",
        path.display(),
        why,
        String::from_utf8_lossy(zone)
    );
    None
}

/// One `[notice]` for a loaded file.
pub(crate) fn report_loaded(
    path: &Path,
    zone: &[u8],
    log: *mut ngx_log_t,
    r: &Restored,
    written_at: u64,
    now: u64,
) {
    ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "sessions: zone \"{}\": {} sessions loaded from state file \"{}\" written {}s ago ({} expired, {} left out for want of room)",
        String::from_utf8_lossy(zone),
        r.loaded,
        path.display(),
        now.saturating_sub(written_at),
        r.expired,
        r.left_out
    );
}

/// The zone and state file of this cycle, if there is a state file.
///
/// # Safety
/// `cycle` is a live cycle.
unsafe fn configured(
    cycle: *mut ngx_cycle_t,
) -> Option<(&'static SharedZone, PathBuf, ngx_msec_t)> {
    // SAFETY: the caller's contract.
    let mcf = Module::main_conf(unsafe { &*cycle })?;
    let (path, interval) = mcf.state_file()?;
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path));
    Some((&mcf.zone, path, interval))
}

fn now() -> u64 {
    u64::try_from(ngx_time()).unwrap_or(0)
}

/// A finished write: what was written and how long it took.
struct Written {
    sessions: usize,
    bytes: usize,
    took: Duration,
}

/// Orders, encodes and writes a copy of the table (the part that runs without the lock,
/// and in worker 0 off the event loop).
fn write(identity: ZoneIdentity, copy: &TableCopy, now: u64, path: &Path) -> io::Result<Written> {
    let start = Instant::now();
    let mut entries = Vec::new();
    copy.live_entries(now, &mut entries);
    let sessions = entries.len();
    let bytes = Snapshot { identity, written_at: now, entries }.encode();
    state::write_atomically(path, &bytes)?;
    Ok(Written { sessions, bytes: bytes.len(), took: start.elapsed() })
}

fn log_failure(log: *mut ngx_log_t, path: &Path, e: &io::Error) {
    ngx_log_error!(
        NGX_LOG_ERR,
        log,
        "sessions: cannot write state file \"{}\": {}",
        path.display(),
        e
    );
}

/// What a write thread hands back: its outcome, and the copy's buffer for the next write.
type Finished = (io::Result<Written>, TableCopy);

/// Worker 0's periodic writer: its timer, the write thread in flight, if any, and the
/// buffer the table is copied into (kept from one write to the next, so that the copy
/// under the zone's lock neither allocates nor faults pages in).
struct Writer {
    event: ngx_event_t,
    zone: &'static SharedZone,
    path: PathBuf,
    interval: ngx_msec_t,
    log: *mut ngx_log_t,
    in_flight: Option<JoinHandle<Finished>>,
    buffer: TableCopy,
}

/// The writer of this worker (null elsewhere). Only the worker's own thread touches it.
static WRITER: AtomicPtr<Writer> = AtomicPtr::new(ptr::null_mut());

impl Writer {
    /// Reports the write in flight if it is done (or, with `wait`, once it is).
    fn collect(&mut self, wait: bool) {
        let done = self.in_flight.as_ref().is_some_and(|h| wait || h.is_finished());
        let Some(handle) = self.in_flight.take_if(|_| done) else { return };
        let outcome = match handle.join() {
            Ok((outcome, buffer)) => {
                self.buffer = buffer;
                outcome
            }
            // The thread cannot panic (release builds abort), but say so if it did.
            Err(_) => Err(io::Error::other("writer panicked")),
        };
        match outcome {
            Ok(w) => {
                if ngx::log::DEBUG {
                    ngx::ngx_log_debug!(
                        mask: ngx::log::DebugMask::Core,
                        self.log,
                        "sessions: state file \"{}\": {} sessions, {} bytes, {:?}",
                        self.path.display(),
                        w.sessions,
                        w.bytes,
                        w.took
                    );
                }
            }
            Err(e) => log_failure(self.log, &self.path, &e),
        }
    }

    /// Copies the table and hands it to a new write thread.
    fn start(&mut self) {
        let Some(records) = self.zone.slots_in_use() else { return };
        let mut copy = core::mem::take(&mut self.buffer);
        // Room for some growth until the lock is taken again.
        copy.make_room(records + records / 8 + 64);
        let Some(identity) = self.zone.copy_state(&mut copy) else { return };
        let (path, now) = (self.path.clone(), now());
        match spawn_without_signals(move || (write(identity, &copy, now, &path), copy)) {
            Ok(handle) => self.in_flight = Some(handle),
            Err(e) => log_failure(self.log, &self.path, &e),
        }
    }
}

/// Spawns a thread that receives no signals: NGINX's signal handlers only set flags that
/// the event loop reads when a signal interrupts it, so the worker's own thread must be
/// the one interrupted.
fn spawn_without_signals<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    // SAFETY: plain signal-mask calls on this thread; the new thread inherits the full
    // mask, and this thread's own mask is put back before returning.
    unsafe {
        let mut all: sigset_t = core::mem::zeroed();
        let mut old: sigset_t = core::mem::zeroed();
        sigfillset(&mut all);
        if pthread_sigmask(SIG_SETMASK as i32, &all, &mut old) != 0 {
            return Err(io::Error::other("pthread_sigmask failed"));
        }
        let spawned = std::thread::Builder::new().name("sessions-state".into()).spawn(f);
        pthread_sigmask(SIG_SETMASK as i32, &old, ptr::null_mut());
        spawned
    }
}

unsafe extern "C" fn on_timer(ev: *mut ngx_event_t) {
    // SAFETY: the event is the one embedded in this worker's `Writer`, whose `data` points
    // back at it; it lives until `exit_process`.
    let w = unsafe { &mut *(*ev).data.cast::<Writer>() };
    // SAFETY: plain reads of NGINX's process flags, set by its signal handlers.
    if unsafe { ngx_exiting != 0 || ngx_terminate != 0 } {
        // A worker of an older configuration: the new worker 0, or the master at the
        // end, writes the file now.
        return;
    }
    w.collect(false);
    // One write at a time: a disk slower than the interval skips a round.
    if w.in_flight.is_none() {
        w.start();
    }
    // SAFETY: the event is initialised and owned by this worker.
    unsafe { ngx_add_timer(&mut w.event, w.interval) };
}

/// `init_process`: worker 0 (or the single process) arms the periodic write.
pub(crate) unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: plain reads of NGINX's process globals, set before `init_process`.
    let (process, worker) = unsafe { (ngx_process as u32, ngx_worker) };
    let writer_process =
        process == NGX_PROCESS_SINGLE || (process == NGX_PROCESS_WORKER && worker == 0);
    if !writer_process {
        return ngx::core::Status::NGX_OK.into();
    }
    // SAFETY: NGINX passes the live cycle.
    let Some((zone, path, interval)) = (unsafe { configured(cycle) }) else {
        return ngx::core::Status::NGX_OK.into();
    };
    // SAFETY: the cycle's log lives as long as the cycle (this process).
    let log = unsafe { (*cycle).log };
    let writer = Box::into_raw(Box::new(Writer {
        // SAFETY: an all-zero `ngx_event_t` is an idle event (NGINX `ngx_pcalloc`s them).
        event: unsafe { core::mem::zeroed() },
        zone,
        path,
        interval,
        log,
        in_flight: None,
        buffer: TableCopy::default(),
    }));
    // SAFETY: `writer` was just allocated and is owned by this process until
    // `exit_process`; the timer must not keep a shutting-down worker alive (cancelable).
    unsafe {
        let ev = addr_of_mut!((*writer).event);
        (*ev).data = writer.cast();
        (*ev).handler = Some(on_timer);
        (*ev).log = log;
        (*ev).set_cancelable(1);
        ngx_add_timer(ev, interval);
    }
    WRITER.store(writer, Ordering::Relaxed);
    ngx::core::Status::NGX_OK.into()
}

/// `exit_process`: waits for a write in flight (a thread killed mid-write would leave
/// its temporary file) and frees the writer.
pub(crate) fn exit_process() {
    let writer = WRITER.swap(ptr::null_mut(), Ordering::Relaxed);
    if writer.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `init_process`; the timer no longer runs (the
    // worker is exiting), and the swap above makes this the only owner.
    let mut writer = unsafe { Box::from_raw(writer) };
    writer.collect(true);
}

/// `exit_master`: the last write, once every worker has exited.
pub(crate) unsafe extern "C" fn exit_master(cycle: *mut ngx_cycle_t) {
    // SAFETY: NGINX passes the live cycle.
    let Some((zone, path, _)) = (unsafe { configured(cycle) }) else { return };
    // SAFETY: as above.
    let log = unsafe { (*cycle).log };
    // SAFETY: plain read of the master's record of a running new binary.
    if unsafe { ngx_new_binary } != 0 {
        ngx_log_error!(
            NGX_LOG_NOTICE,
            log,
            "sessions: state file \"{}\" left to the new binary, which loaded it",
            path.display()
        );
        return;
    }
    // No worker is left to wait for the lock: the copy may allocate.
    let mut copy = TableCopy::default();
    let Some(identity) = zone.copy_state(&mut copy) else { return };
    match write(identity, &copy, now(), &path) {
        Ok(w) => {
            ngx_log_error!(
                NGX_LOG_NOTICE,
                log,
                "sessions: {} sessions written to state file \"{}\" ({} bytes, {} ms)",
                w.sessions,
                path.display(),
                w.bytes,
                w.took.as_millis()
            );
        }
        Err(e) => log_failure(log, &path, &e),
    }
}
