//! Finding the CUDA driver, NVRTC and a device without panicking, and resolving `--device`.
//!
//! cudarc loads its libraries lazily and panics when one is missing, so every path into it goes
//! through this module first: `is_culib_present` tries the same library names cudarc's loader
//! will try (including the versioned `libnvrtc.so.13` of the PyPI wheel) and reports a bool.

use cudarc::driver::result as driver;

use crate::backend::options::DeviceChoice;

/// Where a run will execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedDevice {
    Cpu,
    Cuda(CudaDeviceInfo),
}

/// The device a CUDA run would use (always ordinal 0 for now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// `(major, minor)`, e.g. `(9, 0)` for Hopper.
    pub compute_capability: (i32, i32),
}

impl CudaDeviceInfo {
    /// The NVRTC architecture to compile for: `sm_90` for compute capability 9.0.
    pub fn arch(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!("sm_{major}{minor}")
    }
}

/// What the probe found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaAvailability {
    /// No `libcuda` could be loaded.
    NoDriver,
    /// The driver loaded but reports no usable device; `reason` says what it answered.
    NoDevice { reason: String },
    /// A driver and at least one device; the first one.
    Device(CudaDeviceInfo),
}

/// Why `--device` cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("no CUDA driver found: use `--device cpu`")]
    NoDriver,
    #[error("a CUDA driver is installed but no device is usable ({reason}): use `--device cpu`")]
    NoDevice { reason: String },
}

/// Whether the CUDA driver library (`libcuda.so`) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only opens and closes the shared library by name (dlopen/dlclose); no symbol is
    // called. A failed open is reported as `false`.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC (`libnvrtc.so*`) can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: as in `driver_present`.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Probes the driver and the first device. Never panics: cudarc is called only once the driver
/// library is known to load.
pub fn detect() -> CudaAvailability {
    if !driver_present() {
        return CudaAvailability::NoDriver;
    }
    let no_device = |what: &str, e: driver::DriverError| CudaAvailability::NoDevice {
        reason: format!("{what}: {e}"),
    };
    if let Err(e) = driver::init() {
        return no_device("cuInit failed", e);
    }
    match driver::device::get_count() {
        Ok(0) => {
            return CudaAvailability::NoDevice {
                reason: "the driver reports 0 devices".to_string(),
            }
        }
        Ok(_) => {}
        Err(e) => return no_device("cuDeviceGetCount failed", e),
    }
    let device = match driver::device::get(0) {
        Ok(device) => device,
        Err(e) => return no_device("cuDeviceGet(0) failed", e),
    };
    let name = driver::device::get_name(device).unwrap_or_else(|_| "unknown".to_string());
    use cudarc::driver::sys::CUdevice_attribute as Attr;
    let attribute = |a: Attr| {
        // SAFETY: `device` came from cuDeviceGet on an initialized driver.
        unsafe { driver::device::get_attribute(device, a) }
    };
    let major = attribute(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
    let minor = attribute(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
    match (major, minor) {
        (Ok(major), Ok(minor)) => CudaAvailability::Device(CudaDeviceInfo {
            ordinal: 0,
            name,
            compute_capability: (major, minor),
        }),
        (Err(e), _) | (_, Err(e)) => no_device("cannot read the compute capability", e),
    }
}

/// Resolves `choice` against what the probe found: `Auto` takes CUDA only when a device is
/// usable; `Cuda` without one is an error that names the way out.
pub fn resolve(
    choice: DeviceChoice,
    found: &CudaAvailability,
) -> Result<ResolvedDevice, ProbeError> {
    match (choice, found) {
        (DeviceChoice::Cpu, _) => Ok(ResolvedDevice::Cpu),
        (DeviceChoice::Auto, CudaAvailability::Device(info))
        | (DeviceChoice::Cuda, CudaAvailability::Device(info)) => {
            Ok(ResolvedDevice::Cuda(info.clone()))
        }
        (DeviceChoice::Auto, _) => Ok(ResolvedDevice::Cpu),
        (DeviceChoice::Cuda, CudaAvailability::NoDriver) => Err(ProbeError::NoDriver),
        (DeviceChoice::Cuda, CudaAvailability::NoDevice { reason }) => Err(ProbeError::NoDevice {
            reason: reason.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> CudaAvailability {
        CudaAvailability::Device(CudaDeviceInfo {
            ordinal: 0,
            name: "NVIDIA H100 80GB HBM3".to_string(),
            compute_capability: (9, 0),
        })
    }

    #[test]
    fn auto_picks_cuda_only_with_a_driver_and_a_device() {
        let no_device = CudaAvailability::NoDevice {
            reason: "the driver reports 0 devices".to_string(),
        };
        assert_eq!(
            resolve(DeviceChoice::Auto, &CudaAvailability::NoDriver),
            Ok(ResolvedDevice::Cpu)
        );
        assert_eq!(
            resolve(DeviceChoice::Auto, &no_device),
            Ok(ResolvedDevice::Cpu)
        );
        assert!(matches!(
            resolve(DeviceChoice::Auto, &device()),
            Ok(ResolvedDevice::Cuda(_))
        ));
    }

    #[test]
    fn cuda_without_a_driver_says_use_cpu() {
        let err = resolve(DeviceChoice::Cuda, &CudaAvailability::NoDriver).unwrap_err();
        assert_eq!(err.to_string(), "no CUDA driver found: use `--device cpu`");
        let no_device = CudaAvailability::NoDevice {
            reason: "cuInit failed: CUDA_ERROR_NO_DEVICE".to_string(),
        };
        let err = resolve(DeviceChoice::Cuda, &no_device).unwrap_err();
        assert!(err.to_string().ends_with("use `--device cpu`"), "{err}");
    }

    #[test]
    fn cpu_is_always_cpu() {
        for found in [CudaAvailability::NoDriver, device()] {
            assert_eq!(resolve(DeviceChoice::Cpu, &found), Ok(ResolvedDevice::Cpu));
        }
    }

    #[test]
    fn arch_follows_the_compute_capability() {
        let CudaAvailability::Device(info) = device() else {
            unreachable!()
        };
        assert_eq!(info.arch(), "sm_90");
    }

    #[test]
    fn detect_never_panics() {
        // On a machine without a driver (CI) this is `NoDriver`; on a GPU machine a device.
        let found = detect();
        eprintln!("cuda probe: {found:?}");
    }
}
