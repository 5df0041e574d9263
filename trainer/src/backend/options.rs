//! What a run asks of the backend seam: the device (`--device`) and how a device backend
//! computes matrix products (`--precision`).

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// CUDA when a driver and a device are present, the CPU otherwise.
    Auto,
}

/// How matrix products are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 everywhere (for checking against the CPU).
    F32,
    /// bf16 operands, f32 accumulation and results (mixed precision; the CUDA default).
    #[default]
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}
