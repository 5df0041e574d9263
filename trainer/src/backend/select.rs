//! Opening the backend `--device` (and `--precision`) ask for: a `Box<dyn Backend>` for the
//! training loop and evaluation, plus a line for the log that says what was chosen and why.
//! The CUDA backend's switches are read from the environment here, once
//! (`CudaOptions::from_env`).

use super::cpu::CpuBackend;
use super::cuda::runtime::nvrtc::KernelCache;
use super::cuda::runtime::probe::{self, CudaAvailability, ProbeError};
use super::cuda::{CudaBackend, CudaOptions, CudaOptionsError};
use super::options::{DeviceChoice, Precision};
use super::{Backend, BackendError};

/// The environment variables the CUDA backend reads, as `redpack train --help` lists them.
pub const CUDA_ENVIRONMENT: &str = super::cuda::options::ENVIRONMENT;

/// What the CUDA probe finds on this machine: no driver, no usable device, or the device a CUDA
/// run would use.
pub fn probe_cuda() -> CudaAvailability {
    probe::detect()
}

/// Why no backend could be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    CudaOptions(#[from] CudaOptionsError),
    #[error("--precision bf16 needs a CUDA device; the CPU backend computes in f32 only")]
    CpuPrecision,
    #[error("cannot start the {device} backend: {source}")]
    Start {
        device: &'static str,
        #[source]
        source: BackendError,
    },
}

/// An opened backend and what to log about the choice.
pub struct Opened {
    pub backend: Box<dyn Backend>,
    pub note: String,
}

/// Opens the backend for `choice`. `precision` applies to CUDA (`None` = bf16 there); asking
/// for bf16 on the CPU is an error, and `auto` without a CUDA device falls back to the CPU with
/// a note that says why.
pub fn open_backend(
    choice: DeviceChoice,
    threads: Option<usize>,
    precision: Option<Precision>,
) -> Result<Opened, OpenError> {
    open_backend_on(choice, threads, precision, 0)
}

/// `open_backend` on the GPU of ordinal `ordinal` (a data-parallel rank's `LOCAL_RANK`); an
/// ordinal the machine does not have is an error naming the device count.
pub fn open_backend_on(
    choice: DeviceChoice,
    threads: Option<usize>,
    precision: Option<Precision>,
    ordinal: usize,
) -> Result<Opened, OpenError> {
    let found = match choice {
        DeviceChoice::Cpu => CudaAvailability::NoDriver,
        DeviceChoice::Cuda | DeviceChoice::Auto => probe::detect(),
    };
    match probe::resolve(choice, &found)? {
        probe::ResolvedDevice::Cuda(mut info) => {
            if ordinal > 0 {
                let count = cudarc::driver::result::device::get_count().unwrap_or(1);
                if ordinal >= count.max(0) as usize {
                    return Err(OpenError::Start {
                        device: "CUDA",
                        source: BackendError::Device(format!(
                            "device {ordinal} was asked for (LOCAL_RANK), but this machine has {count} GPU(s)"
                        )),
                    });
                }
                info.ordinal = ordinal;
            }
            let precision = precision.unwrap_or_default();
            let options = CudaOptions::from_env()?;
            let dir = KernelCache::default_dir()
                .unwrap_or_else(|| std::env::temp_dir().join("redpack-kernels"));
            let cache = KernelCache::new(dir);
            let backend =
                CudaBackend::new(&info, precision, &cache, options).map_err(|source| {
                    OpenError::Start {
                        device: "CUDA",
                        source,
                    }
                })?;
            let note = format!("device: {}", backend.name());
            Ok(Opened {
                backend: Box::new(backend),
                note,
            })
        }
        probe::ResolvedDevice::Cpu => {
            if precision == Some(Precision::Bf16) {
                return Err(OpenError::CpuPrecision);
            }
            let backend = CpuBackend::new(threads).map_err(|source| OpenError::Start {
                device: "CPU",
                source,
            })?;
            let note = match (choice, &found) {
                (DeviceChoice::Auto, CudaAvailability::NoDriver) => format!(
                    "device: {} (--device auto: no CUDA driver found)",
                    backend.name()
                ),
                (DeviceChoice::Auto, CudaAvailability::NoDevice { reason }) => format!(
                    "device: {} (--device auto: no usable CUDA device: {reason})",
                    backend.name()
                ),
                _ => format!("device: {}", backend.name()),
            };
            Ok(Opened {
                backend: Box::new(backend),
                note,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_and_refuses_bf16() {
        let opened = open_backend(DeviceChoice::Cpu, Some(1), None).unwrap();
        assert!(opened.note.starts_with("device: cpu"), "{}", opened.note);
        assert!(open_backend(DeviceChoice::Cpu, Some(1), Some(Precision::F32)).is_ok());
        let err = open_backend(DeviceChoice::Cpu, Some(1), Some(Precision::Bf16))
            .err()
            .unwrap();
        assert!(err.to_string().contains("f32 only"), "{err}");
    }

    #[test]
    fn auto_without_a_device_says_why_it_took_the_cpu() {
        if let CudaAvailability::Device(_) = probe::detect() {
            return; // a GPU machine: auto takes CUDA, covered by the CUDA tests
        }
        let opened = open_backend(DeviceChoice::Auto, Some(1), None).unwrap();
        assert!(opened.note.contains("--device auto"), "{}", opened.note);
    }

    #[test]
    fn cuda_without_a_device_names_the_way_out() {
        if let CudaAvailability::Device(_) = probe::detect() {
            return;
        }
        let err = open_backend(DeviceChoice::Cuda, Some(1), None)
            .err()
            .unwrap();
        assert!(err.to_string().ends_with("use `--device cpu`"), "{err}");
    }
}
