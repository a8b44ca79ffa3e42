//! Launching `gemm_fp8`: Y[M,N] = X[M,K] . W[N,K]^T in DeepSeek-V3 block FP8 (e4m3 codes,
//! activation scales [M, K/128], weight scales [ceil(N/128), K/128], fp32 scales), BF16 out;
//! and the activation quantiser that produces X and its scales from BF16.

use cudarc::driver::sys as cu;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, PushKernelArg};
use half::bf16;
use kiln_codegen::families::gemm_fp8::{self as fam, GemmFp8, GemmFp8Config, GemmFp8Problem};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;

/// Scratch for split-K: fp32 partial tiles and per-tile arrival counters.
pub type GemmFp8Workspace = super::SplitWorkspace;

/// The FP8 operands of one call: codes and their fp32 scales.
pub struct Fp8Operands<'a> {
    /// Activation codes [M, K].
    pub x: &'a CudaSlice<u8>,
    /// Activation scales [M, K/128].
    pub sx: &'a CudaSlice<f32>,
    /// Weight codes [N, K].
    pub w: &'a CudaSlice<u8>,
    /// Weight scales [ceil(N/128), K/128].
    pub sw: &'a CudaSlice<f32>,
}

/// A `CUtensorMap` passed by value (the family's `tmap_x` and `tmap_w` arguments).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct TensorMapArg(pub cu::CUtensorMap);

// SAFETY: a plain 128-byte, 64-byte-aligned value the driver copies into the kernel's
// parameter buffer, as the kernel declares it (`KilnTensorMap`).
unsafe impl DeviceRepr for TensorMapArg {}

impl TensorMapArg {
    /// The bytes variants that ignore their tensor maps get.
    pub fn unused() -> Self {
        TensorMapArg(cu::CUtensorMap { opaque: [0; 16] })
    }

    /// The tensor map of a row-major u8 matrix of `rows` x `row_bytes` at device address `ptr`,
    /// read in boxes of 128 bytes x `box_rows` rows, 128-byte swizzled, rows past the end
    /// zero-filled (what the wgmma kernel's TMA variants expect; see the family's launch
    /// contract).
    pub fn u8_rows(ptr: u64, rows: u64, row_bytes: u64, box_rows: u32, what: &str) -> Result<Self> {
        if !ptr.is_multiple_of(16) {
            return Err(RuntimeError::IllegalConfig {
                config: "a TMA gemm_fp8 variant".into(),
                problem: format!("{what} at device address {ptr:#x}"),
                reason: "TMA reads need a 16-byte-aligned operand; pass an allocation's start or a 16-byte-aligned offset".into(),
            });
        }
        let dims = [row_bytes, rows];
        let strides = [row_bytes];
        let boxes = [fam::SCALE_BLOCK, box_rows];
        let element_strides = [1u32, 1];
        let mut map = cu::CUtensorMap { opaque: [0; 16] };
        // SAFETY: every pointer argument points at a live array of the rank's length (2, and
        // 1 stride); `ptr` is a device address the caller's slice owns for the launch. The
        // encoder only writes `map`.
        unsafe {
            cu::cuTensorMapEncodeTiled(
                &mut map,
                cu::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
                2,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                cu::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                cu::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                cu::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                cu::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        }
        .result()
        .during(format!(
            "encoding the tensor map of {what} ({rows} x {row_bytes} bytes, box {box_rows} rows)"
        ))?;
        Ok(TensorMapArg(map))
    }
}

/// A loaded `gemm_fp8` variant (one config; its cubin serves every supported problem).
pub struct GemmFp8Kernel {
    pub config: GemmFp8Config,
    pub kernel: LoadedKernel,
}

fn check_problem(p: &GemmFp8Problem, c: &GemmFp8Config) -> Result<()> {
    super::check_serves::<GemmFp8>(p, c)
}

impl GemmFp8Kernel {
    /// Load a variant from its cubin; `problem` is any problem the config serves.
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &GemmFp8Problem,
        config: &GemmFp8Config,
    ) -> Result<Self> {
        check_problem(problem, config)?;
        let entry = GemmFp8::entry(problem, config);
        let smem = GemmFp8::geometry(problem, config).dynamic_smem_bytes;
        let kernel = LoadedKernel::load(device, cubin, &entry, smem)?;
        Ok(GemmFp8Kernel {
            config: config.clone(),
            kernel,
        })
    }

    /// Render, compile (through the compile cache) and load a variant.
    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &GemmFp8Problem,
        config: &GemmFp8Config,
    ) -> Result<Self> {
        check_problem(problem, config)?;
        let cubin = super::compile_cubin::<GemmFp8>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// Scratch sized for `problem` (empty when the config does not split K).
    pub fn workspace(&self, device: &Device, problem: &GemmFp8Problem) -> Result<GemmFp8Workspace> {
        let floats = GemmFp8::workspace_bytes(problem, &self.config) / 4;
        let counters = fam::counters_len(problem, &self.config);
        GemmFp8Workspace::new(device, floats, counters, GemmFp8::NAME)
    }

    /// Enqueue Y = dequant(X) . dequant(W)^T on `stream`.
    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &GemmFp8Problem,
        ops: &Fp8Operands<'_>,
        y: &mut CudaSlice<bf16>,
        ws: &mut GemmFp8Workspace,
    ) -> Result<()> {
        check_problem(problem, &self.config)?;
        let (m, n, k) = (problem.m as usize, problem.n as usize, problem.k as usize);
        let kb = k / fam::SCALE_BLOCK as usize;
        need("X", ops.x.len(), m * k)?;
        need("SX", ops.sx.len(), m * kb)?;
        need("W", ops.w.len(), n * k)?;
        need(
            "SW",
            ops.sw.len(),
            n.div_ceil(fam::SCALE_BLOCK as usize) * kb,
        )?;
        need("Y", y.len(), m * n)?;
        need(
            "workspace",
            ws.partials.len() * 4,
            GemmFp8::workspace_bytes(problem, &self.config),
        )?;
        need(
            "counters",
            ws.counters.len(),
            fam::counters_len(problem, &self.config),
        )?;
        let cfg = self
            .kernel
            .config(&GemmFp8::geometry(problem, &self.config))?;
        let (tmap_x, tmap_w) = match fam::tensor_map_box(&self.config) {
            Some([x_rows, w_rows]) => {
                let (px, _x_read) = ops.x.device_ptr(stream);
                let (pw, _w_read) = ops.w.device_ptr(stream);
                (
                    TensorMapArg::u8_rows(px, m as u64, k as u64, x_rows, "X")?,
                    TensorMapArg::u8_rows(pw, n as u64, k as u64, w_rows, "W")?,
                )
            }
            None => (TensorMapArg::unused(), TensorMapArg::unused()),
        };
        let (mi, ni, ki) = (problem.m as i32, problem.n as i32, problem.k as i32);
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch
            .arg(ops.x)
            .arg(ops.sx)
            .arg(ops.w)
            .arg(ops.sw)
            .arg(y)
            .arg(&mut ws.partials)
            .arg(&mut ws.counters)
            .arg(&mi)
            .arg(&ni)
            .arg(&ki)
            .arg(&tmap_x)
            .arg(&tmap_w);
        // SAFETY: the argument list matches the template's fixed signature (X, SX, W, SW, Y,
        // workspace, counters, M, N, K, tmap_x, tmap_w) listed by `GemmFp8::args()`; the
        // tensor maps describe X and W as checked here (or are ignored); every buffer was checked
        // above against the problem (cudaMalloc pointers are 256-byte aligned and K % 128 == 0
        // keeps the rows the kernel reads 16 bytes at a time aligned), and the geometry comes
        // from the same family code that sized the template.
        unsafe { launch.launch(cfg) }.during(format!("launching {}", self.kernel.entry))?;
        Ok(())
    }
}

/// The activation quantiser: BF16 [M,K] -> e4m3 codes [M,K] and fp32 scales [M, K/128].
pub struct QuantFp8Kernel {
    pub kernel: LoadedKernel,
}

impl QuantFp8Kernel {
    pub fn from_cubin(device: &Device, cubin: &[u8]) -> Result<Self> {
        Ok(QuantFp8Kernel {
            kernel: LoadedKernel::load(device, cubin, fam::QUANT_ENTRY, 0)?,
        })
    }

    #[cfg(feature = "jit")]
    pub fn compile(device: &Device, compiler: &kiln_codegen::Compiler) -> Result<Self> {
        let src = kiln_codegen::KernelSource {
            family: "quant_fp8".into(),
            entry: fam::QUANT_ENTRY.into(),
            source: fam::QUANT_SOURCE.into(),
        };
        let compiled = compiler.compile(&src, &kiln_codegen::CompileOptions::default())?;
        Self::from_cubin(device, &compiled.cubin)
    }

    /// Enqueue the quantisation of `x` ([m, k], k % 128 == 0) into `xq` and `sx`.
    pub fn launch(
        &self,
        stream: &CudaStream,
        m: u32,
        k: u32,
        x: &CudaSlice<bf16>,
        xq: &mut CudaSlice<u8>,
        sx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        // The quantiser shares the GEMM's rules on K (whole 128-channel groups) and dimensions.
        GemmFp8::supports(&GemmFp8Problem { m: 1, n: 1, k })?;
        if m == 0 {
            return Err(RuntimeError::IllegalConfig {
                config: fam::QUANT_ENTRY.into(),
                problem: format!("m {m}, k {k}"),
                reason: "m must be at least 1".into(),
            });
        }
        let (mu, ku) = (m as usize, k as usize);
        need("X", x.len(), mu * ku)?;
        need("XQ", xq.len(), mu * ku)?;
        need("SX", sx.len(), mu * (ku / fam::SCALE_BLOCK as usize))?;
        let cfg = self.kernel.config(&fam::quant_geometry(m, k))?;
        let (mi, ki) = (m as i32, k as i32);
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(x).arg(xq).arg(sx).arg(&mi).arg(&ki);
        // SAFETY: matches the quantiser's signature (X, XQ, SX, M, K); sizes checked above, K %
        // 128 == 0 (checked by `supports`) keeps its 8-byte loads and 4-byte stores aligned.
        unsafe { launch.launch(cfg) }.during("launching the fp8 activation quantiser")?;
        Ok(())
    }
}
