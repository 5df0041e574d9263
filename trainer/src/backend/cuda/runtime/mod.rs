//! What the rest of the CUDA backend runs on: finding the driver, NVRTC and a device (`probe`),
//! compiling the kernel sources to PTX with an on-disk cache (`nvrtc`), and the opt-in time
//! profile of launches and products (`profile`). Nothing here depends on the other rooms.

pub mod nvrtc;
pub mod probe;
pub mod profile;
