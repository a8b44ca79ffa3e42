//! Launching `gemm_bf16`: C[M,N] = A[M,K] . B[N,K]^T in BF16 with fp32 accumulation.

use cudarc::driver::{CudaSlice, CudaStream, PushKernelArg};
use half::bf16;
use kiln_codegen::families::gemm_bf16::{self as fam, GemmBf16, GemmBf16Config, GemmBf16Problem};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;

/// Scratch for split-K: fp32 partial tiles and per-tile arrival counters.
pub type GemmWorkspace = super::SplitWorkspace;

/// A loaded `gemm_bf16` variant: one config, one template branch.
pub struct GemmBf16Kernel {
    pub config: GemmBf16Config,
    /// Whether this variant was built for K % 8 == 0 (16-byte row loads).
    pub aligned: bool,
    pub kernel: LoadedKernel,
}

fn check_problem(p: &GemmBf16Problem, c: &GemmBf16Config) -> Result<()> {
    super::check_serves::<GemmBf16>(p, c)
}

impl GemmBf16Kernel {
    /// Load a variant from its cubin; `problem` picks the template branch it was built for.
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &GemmBf16Problem,
        config: &GemmBf16Config,
    ) -> Result<Self> {
        check_problem(problem, config)?;
        let entry = GemmBf16::entry(problem, config);
        let smem = GemmBf16::geometry(problem, config).dynamic_smem_bytes;
        let kernel = LoadedKernel::load(device, cubin, &entry, smem)?;
        Ok(GemmBf16Kernel {
            config: config.clone(),
            aligned: fam::is_aligned(problem),
            kernel,
        })
    }

    /// Render, compile (through the compile cache) and load a variant.
    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &GemmBf16Problem,
        config: &GemmBf16Config,
    ) -> Result<Self> {
        check_problem(problem, config)?;
        let cubin = super::compile_cubin::<GemmBf16>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// Scratch sized for `problem` (empty when the config does not split K).
    pub fn workspace(&self, device: &Device, problem: &GemmBf16Problem) -> Result<GemmWorkspace> {
        let floats = GemmBf16::workspace_bytes(problem, &self.config) / 4;
        let counters = fam::counters_len(problem, &self.config);
        GemmWorkspace::new(device, floats, counters, GemmBf16::NAME)
    }

    /// Enqueue C = A . B^T on `stream`.
    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &GemmBf16Problem,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<bf16>,
        ws: &mut GemmWorkspace,
    ) -> Result<()> {
        check_problem(problem, &self.config)?;
        if fam::is_aligned(problem) != self.aligned {
            return Err(RuntimeError::IllegalConfig {
                config: self.kernel.entry.clone(),
                problem: format!("{problem:?}"),
                reason:
                    "the variant was built for another K alignment class; load the matching one"
                        .into(),
            });
        }
        let (m, n, k) = (problem.m as usize, problem.n as usize, problem.k as usize);
        need("A", a.len(), m * k)?;
        need("B", b.len(), n * k)?;
        need("C", c.len(), m * n)?;
        need(
            "workspace",
            ws.partials.len() * 4,
            GemmBf16::workspace_bytes(problem, &self.config),
        )?;
        need(
            "counters",
            ws.counters.len(),
            fam::counters_len(problem, &self.config),
        )?;
        let cfg = self
            .kernel
            .config(&GemmBf16::geometry(problem, &self.config))?;
        let (mi, ni, ki) = (problem.m as i32, problem.n as i32, problem.k as i32);
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch
            .arg(a)
            .arg(b)
            .arg(c)
            .arg(&mut ws.partials)
            .arg(&mut ws.counters)
            .arg(&mi)
            .arg(&ni)
            .arg(&ki);
        // SAFETY: the argument list matches the template's fixed signature
        // (A, B, C, workspace, counters, M, N, K) listed by `GemmBf16::args()`;
        // buffer sizes were checked above against the problem, and the
        // geometry comes from the same family code that sized the template.
        unsafe { launch.launch(cfg) }.during(format!("launching {}", self.kernel.entry))?;
        Ok(())
    }
}

/// The naive reference kernel: one thread per output, fp32 accumulation.
pub struct GemmBf16Reference {
    pub kernel: LoadedKernel,
}

impl GemmBf16Reference {
    #[cfg(feature = "jit")]
    pub fn compile(device: &Device, compiler: &kiln_codegen::Compiler) -> Result<Self> {
        let src = kiln_codegen::KernelSource {
            family: "gemm_bf16_ref".into(),
            entry: fam::REFERENCE_ENTRY.into(),
            source: fam::REFERENCE_SOURCE.into(),
        };
        let compiled = compiler.compile(&src, &kiln_codegen::CompileOptions::default())?;
        Ok(GemmBf16Reference {
            kernel: LoadedKernel::load(device, &compiled.cubin, fam::REFERENCE_ENTRY, 0)?,
        })
    }

    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &GemmBf16Problem,
        a: &CudaSlice<bf16>,
        b: &CudaSlice<bf16>,
        c: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        GemmBf16::supports(problem)?;
        let (m, n, k) = (problem.m as usize, problem.n as usize, problem.k as usize);
        need("A", a.len(), m * k)?;
        need("B", b.len(), n * k)?;
        need("C", c.len(), m * n)?;
        let cfg = self
            .kernel
            .config(&fam::reference_geometry(problem.m, problem.n))?;
        let (mi, ni, ki) = (problem.m as i32, problem.n as i32, problem.k as i32);
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(a).arg(b).arg(c).arg(&mi).arg(&ni).arg(&ki);
        // SAFETY: matches the reference kernel's signature (A, B, C, M, N, K);
        // sizes checked above.
        unsafe { launch.launch(cfg) }.during("launching the gemm_bf16 reference")?;
        Ok(())
    }
}
