//! A kernel loaded from a cubin, ready to launch.

use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute as FnAttr;
use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig};
use kiln_codegen::LaunchGeometry;

use crate::device::Device;
use crate::error::{Result, RuntimeError};

/// Shared memory a block may use without opting in.
pub(crate) const DEFAULT_SMEM_LIMIT: u32 = 48 * 1024;

#[derive(Clone, Debug)]
pub struct LoadedKernel {
    pub entry: String,
    pub func: CudaFunction,
    pub module: Arc<CudaModule>,
    /// Dynamic shared memory this function has been opted in to.
    pub max_dynamic_smem: u32,
}

impl LoadedKernel {
    /// Load `entry` from `cubin` and allow it `dynamic_smem` bytes of dynamic shared memory.
    pub fn load(
        device: &Device,
        cubin: &[u8],
        entry: &str,
        dynamic_smem: u32,
    ) -> Result<LoadedKernel> {
        let load_err = |e: cudarc::driver::DriverError| RuntimeError::KernelLoad {
            entry: entry.to_string(),
            code: e.0,
        };
        if dynamic_smem > device.info.max_smem_optin_bytes {
            return Err(RuntimeError::IllegalConfig {
                config: entry.to_string(),
                problem: String::new(),
                reason: format!(
                    "needs {dynamic_smem} B of shared memory, the device allows {}",
                    device.info.max_smem_optin_bytes
                ),
            });
        }
        let module = device
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin.to_vec()))
            .map_err(load_err)?;
        let func = module.load_function(entry).map_err(load_err)?;
        if dynamic_smem > DEFAULT_SMEM_LIMIT {
            func.set_attribute(
                FnAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                dynamic_smem as i32,
            )
            .map_err(load_err)?;
        }
        Ok(LoadedKernel {
            entry: entry.to_string(),
            func,
            module,
            max_dynamic_smem: dynamic_smem,
        })
    }

    /// Another entry of the same module (e.g. a family's `<entry>_reduce`), needing no more
    /// than the default dynamic shared memory.
    pub fn sibling(&self, entry: &str) -> Result<CudaFunction> {
        self.module
            .load_function(entry)
            .map_err(|e| RuntimeError::KernelLoad {
                entry: entry.to_string(),
                code: e.0,
            })
    }

    /// The launch configuration for `geometry`, checked against what the kernel was opted in to.
    pub fn config(&self, g: &LaunchGeometry) -> Result<LaunchConfig> {
        if g.dynamic_smem_bytes > self.max_dynamic_smem.max(DEFAULT_SMEM_LIMIT) {
            return Err(RuntimeError::IllegalConfig {
                config: self.entry.clone(),
                problem: String::new(),
                reason: format!(
                    "launch asks for {} B of dynamic shared memory, the kernel was loaded for {}",
                    g.dynamic_smem_bytes, self.max_dynamic_smem
                ),
            });
        }
        Ok(LaunchConfig {
            grid_dim: (g.grid[0], g.grid[1], g.grid[2]),
            block_dim: (g.block[0], g.block[1], g.block[2]),
            shared_mem_bytes: g.dynamic_smem_bytes,
        })
    }
}
