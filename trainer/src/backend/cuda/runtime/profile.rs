//! An opt-in time profile of the CUDA backend's work, by kernel and by matrix-product shape
//! (`REDPACK_CUDA_PROFILE=1`, or `Profiler::set_enabled`): when on, every launch and product
//! synchronizes its stream before and after, and its wall time is added to a table that
//! `report` prints. The synchronization serializes the host and the GPU, so a profiled step is
//! slower than a normal one; the shares are what the table is for. Off, it costs one relaxed
//! atomic load per launch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::driver::CudaStream;

/// One backend's time table, shared by its kernels and its cuBLAS handle (clones share the
/// table and the switch). `Profiler::default()` is off.
#[derive(Debug, Clone, Default)]
pub struct Profiler {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    on: AtomicBool,
    table: Mutex<HashMap<String, (u64, Duration)>>,
}

impl Profiler {
    /// A profiler, on or off.
    pub fn new(on: bool) -> Profiler {
        let profiler = Profiler::default();
        profiler.set_enabled(on);
        profiler
    }

    /// Whether launches and products are being timed.
    pub fn enabled(&self) -> bool {
        self.shared.on.load(Ordering::Relaxed)
    }

    /// Turns timing on or off.
    pub fn set_enabled(&self, on: bool) {
        self.shared.on.store(on, Ordering::Relaxed);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Duration)>> {
        // Each entry is updated whole, so a panic elsewhere cannot leave one half-written.
        self.shared.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` on `stream`; when on, waits for the stream before and after and records the
    /// time under `name()`.
    pub fn timed<T, E>(
        &self,
        stream: &CudaStream,
        name: impl FnOnce() -> String,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if !self.enabled() {
            return work();
        }
        let _ = stream.synchronize();
        let start = Instant::now();
        let out = work();
        let _ = stream.synchronize();
        let spent = start.elapsed();
        let mut table = self.table();
        let entry = table.entry(name()).or_insert((0, Duration::ZERO));
        entry.0 += 1;
        entry.1 += spent;
        out
    }

    /// Clears the table (after warm-up steps, say).
    pub fn reset(&self) {
        self.table().clear();
    }

    /// The table, largest total first: `(name, calls, total time)`.
    pub fn entries(&self) -> Vec<(String, u64, Duration)> {
        let mut rows: Vec<_> = self
            .table()
            .iter()
            .map(|(k, &(n, t))| (k.clone(), n, t))
            .collect();
        rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        rows
    }

    /// The table as text: per entry its calls, total milliseconds and share of the whole.
    pub fn report(&self) -> String {
        let rows = self.entries();
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
}
