//! An opt-in time profile of the CUDA backend's work, by kernel and by matrix-product shape:
//! with `REDPACK_CUDA_PROFILE=1` every launch and product synchronizes its stream before and
//! after, and its wall time is added to a table that `report` prints. The synchronization
//! serializes the host and the GPU, so a profiled step is slower than a normal one; the shares
//! are what the table is for. Off (the default), it costs one relaxed atomic load per launch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cudarc::driver::CudaStream;

static STATE: AtomicU8 = AtomicU8::new(0); // 0: unread, 1: off, 2: on
static TABLE: Mutex<Option<HashMap<String, (u64, Duration)>>> = Mutex::new(None);

/// Whether `REDPACK_CUDA_PROFILE` is set (to anything but `0` or the empty string).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("REDPACK_CUDA_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Turns profiling on or off for this process, over the environment variable.
pub fn set_enabled(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Runs `work` on `stream`; when profiling, waits for the stream before and after and records
/// the time under `name()`.
pub fn timed<T, E>(
    stream: &CudaStream,
    name: impl FnOnce() -> String,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if !enabled() {
        return work();
    }
    let _ = stream.synchronize();
    let start = Instant::now();
    let out = work();
    let _ = stream.synchronize();
    let spent = start.elapsed();
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let entry = table
        .get_or_insert_with(HashMap::new)
        .entry(name())
        .or_insert((0, Duration::ZERO));
    entry.0 += 1;
    entry.1 += spent;
    out
}

/// Clears the table (after warm-up steps, say).
pub fn reset() {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    *table = None;
}

/// The table, largest total first: `(name, calls, total time)`.
pub fn entries() -> Vec<(String, u64, Duration)> {
    let table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = table
        .iter()
        .flatten()
        .map(|(k, &(n, t))| (k.clone(), n, t))
        .collect();
    rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// The table as text: per entry its calls, total milliseconds and share of the whole.
pub fn report() -> String {
    let rows = entries();
    let total: Duration = rows.iter().map(|r| r.2).sum();
    let mut out = format!(
        "{:>9} {:>7} {:>6}  what (total {:.1} ms)\n",
        "ms",
        "calls",
        "share",
        total.as_secs_f64() * 1e3
    );
    for (name, calls, t) in rows {
        out.push_str(&format!(
            "{:9.2} {calls:7} {:5.1}%  {name}\n",
            t.as_secs_f64() * 1e3,
            100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-12)
        ));
    }
    out
}
