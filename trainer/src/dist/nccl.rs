//! NCCL, loaded at run time as the rest of CUDA is: `libnccl.so.2` (NCCL's soname: the system's
//! `libnccl2` package, or the `nvidia-nccl-cu13` wheel's `nvidia/nccl/lib` on
//! `LD_LIBRARY_PATH`), else `libnccl.so`. Only the calls the data-parallel step makes are bound:
//! the unique id, one communicator per rank, all-reduce (sum of f32 or f64) and broadcast in
//! groups, abort.
//! cudarc's `nccl` module is not used: its loader looks for `libnccl.so` and
//! `libnccl.so.{9..13}` but not `libnccl.so.2`, the one name the wheel ships.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use super::DistError;

/// The bytes of an `ncclUniqueId`.
pub const ID_BYTES: usize = 128;

/// The library names tried, in order.
pub const LIBRARY_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; ID_BYTES],
}

type Comm = *mut c_void;
const FLOAT32: c_int = 7;
const FLOAT64: c_int = 8;
const SUM: c_int = 0;

struct Api {
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        *mut c_void,
    ) -> c_int,
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        *mut c_void,
    ) -> c_int,
    group_start: unsafe extern "C" fn() -> c_int,
    group_end: unsafe extern "C" fn() -> c_int,
    comm_abort: unsafe extern "C" fn(Comm) -> c_int,
    comm_destroy: unsafe extern "C" fn(Comm) -> c_int,
    _library: libloading::Library,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn load() -> Result<Api, String> {
    let mut tried = Vec::new();
    for name in LIBRARY_NAMES {
        // SAFETY: NCCL's initializers are those of a plain shared library; it stays loaded for
        // the process's life (the `Api` is in a static).
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => {
                // SAFETY: the signatures are NCCL's (nccl.h, 2.x).
                unsafe {
                    macro_rules! sym {
                        ($name:literal) => {
                            *library
                                .get($name)
                                .map_err(|e| format!("{name} has no {}: {e}", stringify!($name)))?
                        };
                    }
                    return Ok(Api {
                        get_error_string: sym!(b"ncclGetErrorString"),
                        get_unique_id: sym!(b"ncclGetUniqueId"),
                        comm_init_rank: sym!(b"ncclCommInitRank"),
                        all_reduce: sym!(b"ncclAllReduce"),
                        broadcast: sym!(b"ncclBroadcast"),
                        group_start: sym!(b"ncclGroupStart"),
                        group_end: sym!(b"ncclGroupEnd"),
                        comm_abort: sym!(b"ncclCommAbort"),
                        comm_destroy: sym!(b"ncclCommDestroy"),
                        _library: library,
                    });
                }
            }
            Err(e) => tried.push(format!("{name} ({e})")),
        }
    }
    Err(format!(
        "could not load {}: install the system's libnccl2 package, or `pip install nvidia-nccl-cu13` and put its nvidia/nccl/lib folder on LD_LIBRARY_PATH",
        tried.join(", ")
    ))
}

fn api() -> Result<&'static Api, DistError> {
    API.get_or_init(load)
        .as_ref()
        .map_err(|e| DistError::Nccl(e.clone()))
}

fn check(api: &Api, call: &str, result: c_int) -> Result<(), DistError> {
    if result == 0 {
        return Ok(());
    }
    // SAFETY: NCCL returns a static string for any result code.
    let text = unsafe { CStr::from_ptr((api.get_error_string)(result)) }
        .to_string_lossy()
        .into_owned();
    Err(DistError::Nccl(format!(
        "{call} failed: {text} (code {result})"
    )))
}

/// Whether an NCCL library loads (the reason when it does not).
pub fn available() -> Result<(), DistError> {
    api().map(|_| ())
}

/// A new unique id (rank 0 makes it and sends it to the others).
pub fn unique_id() -> Result<[u8; ID_BYTES], DistError> {
    let api = api()?;
    let mut id = UniqueId {
        internal: [0; ID_BYTES],
    };
    // SAFETY: `id` is a valid out-pointer of NCCL's id type.
    check(api, "ncclGetUniqueId", unsafe {
        (api.get_unique_id)(&mut id)
    })?;
    Ok(id.internal.map(|c| c as u8))
}

/// A rank's NCCL communicator. Collectives are issued on a CUDA stream the caller names; the
/// caller keeps the buffers alive until that stream has run them.
pub struct Communicator {
    raw: Comm,
    api: &'static Api,
    aborted: AtomicBool,
    /// Collectives this rank has issued: every rank issues the same sequence, so a rank whose
    /// count stays behind the others' is the one the job waits for.
    issued: AtomicU64,
    pub rank: usize,
    pub world_size: usize,
}

// SAFETY: NCCL communicators may be used from one thread and aborted from another (that is what
// ncclCommAbort is for); `aborted` makes destroy and abort exclusive.
unsafe impl Send for Communicator {}
unsafe impl Sync for Communicator {}

impl Communicator {
    /// Joins the communicator of `id` as `rank` of `world_size`, on the calling thread's current
    /// CUDA device; blocks until every rank has joined.
    pub fn init(id: &[u8; ID_BYTES], rank: usize, world_size: usize) -> Result<Self, DistError> {
        let api = api()?;
        let id = UniqueId {
            internal: id.map(|b| b as c_char),
        };
        let mut raw: Comm = std::ptr::null_mut();
        let (world, me) = (
            c_int::try_from(world_size).map_err(|_| DistError::Nccl("world too large".into()))?,
            c_int::try_from(rank).map_err(|_| DistError::Nccl("rank too large".into()))?,
        );
        // SAFETY: `raw` is an out-pointer; `id` is passed by value as NCCL declares it.
        check(api, "ncclCommInitRank", unsafe {
            (api.comm_init_rank)(&mut raw, world, id, me)
        })?;
        Ok(Communicator {
            raw,
            api,
            aborted: AtomicBool::new(false),
            issued: AtomicU64::new(0),
            rank,
            world_size,
        })
    }

    /// Starts a group: the all-reduces until `group_end` go out as one operation.
    pub fn group_start(&self) -> Result<(), DistError> {
        // SAFETY: no arguments.
        check(self.api, "ncclGroupStart", unsafe {
            (self.api.group_start)()
        })
    }

    pub fn group_end(&self) -> Result<(), DistError> {
        // SAFETY: no arguments.
        check(self.api, "ncclGroupEnd", unsafe { (self.api.group_end)() })
    }

    /// In-place sum over the ranks of `count` f32 values at the device address `buffer`, on the
    /// stream `stream`.
    ///
    /// # Safety
    /// `buffer` must be a device allocation of at least `count` f32 values that outlives the
    /// stream's work, and `stream` a live stream of this communicator's device.
    pub unsafe fn all_reduce_f32(
        &self,
        buffer: u64,
        count: usize,
        stream: *mut c_void,
    ) -> Result<(), DistError> {
        // SAFETY: the caller's contract.
        unsafe { self.all_reduce(buffer, count, FLOAT32, stream) }
    }

    /// As [`Self::all_reduce_f32`], for f64 values.
    ///
    /// # Safety
    /// As for [`Self::all_reduce_f32`].
    pub unsafe fn all_reduce_f64(
        &self,
        buffer: u64,
        count: usize,
        stream: *mut c_void,
    ) -> Result<(), DistError> {
        // SAFETY: the caller's contract.
        unsafe { self.all_reduce(buffer, count, FLOAT64, stream) }
    }

    /// # Safety
    /// As for [`Self::all_reduce_f32`].
    unsafe fn all_reduce(
        &self,
        buffer: u64,
        count: usize,
        kind: c_int,
        stream: *mut c_void,
    ) -> Result<(), DistError> {
        if self.aborted.load(Ordering::SeqCst) {
            return Err(DistError::Nccl("the communicator was aborted".into()));
        }
        self.issued.fetch_add(1, Ordering::Relaxed);
        let ptr = buffer as *mut c_void;
        check(self.api, "ncclAllReduce", unsafe {
            (self.api.all_reduce)(ptr, ptr, count, kind, SUM, self.raw, stream)
        })
    }

    /// In-place broadcast of `count` f32 values at the device address `buffer` from rank
    /// `root` to every rank, on the stream `stream`.
    ///
    /// # Safety
    /// As for [`Self::all_reduce_f32`].
    pub unsafe fn broadcast_f32(
        &self,
        buffer: u64,
        count: usize,
        root: usize,
        stream: *mut c_void,
    ) -> Result<(), DistError> {
        if self.aborted.load(Ordering::SeqCst) {
            return Err(DistError::Nccl("the communicator was aborted".into()));
        }
        let root = c_int::try_from(root).map_err(|_| DistError::Nccl("root too large".into()))?;
        self.issued.fetch_add(1, Ordering::Relaxed);
        let ptr = buffer as *mut c_void;
        check(self.api, "ncclBroadcast", unsafe {
            (self.api.broadcast)(ptr, ptr, count, FLOAT32, root, self.raw, stream)
        })
    }

    /// Collectives issued so far.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Aborts the communicator: collectives waiting on other ranks (on any thread) return an
    /// error instead of hanging. Later calls fail.
    pub fn abort(&self) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // SAFETY: the communicator is live (destroy happens only in drop, and not after an
            // abort).
            unsafe { (self.api.comm_abort)(self.raw) };
        }
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // SAFETY: the communicator is live and no other thread holds it (`&mut self`).
            unsafe { (self.api.comm_destroy)(self.raw) };
        }
    }
}
