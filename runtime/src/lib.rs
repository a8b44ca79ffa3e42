//! kiln-runtime: open a GPU, load cubins, launch kernels through one typed,
//! safe call per family, and time them with CUDA events.
//!
//! With the default `jit` feature a kernel can also be rendered and compiled
//! on the spot (through kiln-codegen); without it the runtime launches
//! prebuilt cubins only, and never links tera or NVRTC.

pub mod artifact;
pub mod capi;
pub mod cudalib;
pub mod device;
pub mod dispatch;
pub mod error;
pub mod kernel;
pub mod launch;
pub mod manifest;
pub mod measure;
pub mod timing;

pub use device::{driver_present, gpu_slug, Device, DeviceInfo};
pub use error::{Result, RuntimeError};
pub use kernel::LoadedKernel;

pub use half::bf16;
