//! Opening a GPU and reading what it is.

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use serde::{Deserialize, Serialize};

use crate::error::{DriverContext, Result, RuntimeError};

/// What a device is; recorded in every tuned artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    /// Compute capability, e.g. `[9, 0]`.
    pub cc: [u32; 2],
    pub sms: u32,
    pub l2_bytes: u64,
    /// CUDA driver API version, e.g. `13000`.
    pub driver: u32,
    /// Maximum SM clock the device reports, MHz.
    pub clock_mhz: u32,
    pub total_mem_bytes: u64,
    pub max_smem_optin_bytes: u32,
}

impl DeviceInfo {
    /// `nvidia-h200` for "NVIDIA H200": the folder name under `tuned/`.
    pub fn slug(&self) -> String {
        gpu_slug(&self.name)
    }

    pub fn limits(&self) -> kiln_codegen::DeviceLimits {
        kiln_codegen::DeviceLimits {
            max_dynamic_smem_per_block: self.max_smem_optin_bytes,
            sms: self.sms,
            ..kiln_codegen::DeviceLimits::HOPPER
        }
    }
}

/// Lower-case, alphanumerics kept, every other run of characters one `-`.
pub fn gpu_slug(name: &str) -> String {
    let mut s = String::new();
    for ch in name.chars() {
        if ch.is_ascii_alphanumeric() {
            s.push(ch.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    s.trim_end_matches('-').to_string()
}

/// An open GPU: its context, a stream kiln launches on, and its description.
#[derive(Clone)]
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub info: DeviceInfo,
}

/// Whether a CUDA driver can be loaded at all (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda by its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl Device {
    /// Open device `ordinal`, or say clearly why not.
    pub fn open(ordinal: usize) -> Result<Device> {
        if !driver_present() {
            return Err(RuntimeError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| RuntimeError::NoDevice {
            ordinal,
            reason: format!("the driver could not count devices ({:?})", e.0),
        })?;
        if ordinal as i32 >= count {
            return Err(RuntimeError::NoDevice {
                ordinal,
                reason: format!("the driver sees {count} device(s)"),
            });
        }
        let ctx = CudaContext::new(ordinal).during("creating the CUDA context")?;
        let stream = ctx.new_stream().during("creating a stream")?;
        let info = read_info(&ctx)?;
        Ok(Device { ctx, stream, info })
    }

    /// A zero-filled device buffer of `len` elements, with out-of-memory reported as such.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| oom_or(e, what, len * std::mem::size_of::<T>()))
    }

    /// Copy a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T], what: &str) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(|e| oom_or(e, what, std::mem::size_of_val(host)))
    }

    /// Copy a device buffer back to the host (synchronises the stream).
    pub fn download<T: DeviceRepr>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .during("copying a buffer to the host")
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .during("synchronising the stream (a kernel may have faulted)")
    }
}

fn oom_or(e: cudarc::driver::DriverError, what: &str, bytes: usize) -> RuntimeError {
    if e.0 == cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        RuntimeError::OutOfMemory {
            what: format!("allocating {what}"),
            bytes,
        }
    } else {
        RuntimeError::Driver {
            what: format!("allocating {what}"),
            code: e.0,
        }
    }
}

fn read_info(ctx: &Arc<CudaContext>) -> Result<DeviceInfo> {
    let attr = |a: Attr| {
        ctx.attribute(a)
            .during(format!("reading device attribute {a:?}"))
    };
    let (major, minor) = ctx
        .compute_capability()
        .during("reading the compute capability")?;
    let mut driver = 0i32;
    // SAFETY: plain out-parameter; the driver is loaded (a context exists).
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    Ok(DeviceInfo {
        name: ctx.name().during("reading the device name")?,
        cc: [major as u32, minor as u32],
        sms: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
        l2_bytes: attr(Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u64,
        driver: driver as u32,
        clock_mhz: (attr(Attr::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? / 1000) as u32,
        total_mem_bytes: ctx.total_mem().during("reading the memory size")? as u64,
        max_smem_optin_bytes: attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
            as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(gpu_slug("NVIDIA H200"), "nvidia-h200");
        assert_eq!(gpu_slug("NVIDIA H100 80GB HBM3"), "nvidia-h100-80gb-hbm3");
        assert_eq!(gpu_slug("  odd__name  "), "odd-name");
    }
}
