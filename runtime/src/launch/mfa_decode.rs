//! Launching `mfa_decode`: Step-3 MFA decode attention (64 query heads sharing one K/V head of
//! 256) over a contiguous or paged, BF16 or FP8 KV cache. See the family module for the
//! launch contract.

use cudarc::driver::{CudaStream, PushKernelArg};
use half::bf16;
use kiln_codegen::families::mfa_decode::{
    self as fam, KvDtype, MfaDecode, MfaDecodeConfig, MfaDecodeProblem, HEADS, HEAD_DIM,
};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;

/// The device buffer type the launch takes, so callers can name it without depending on cudarc.
pub use cudarc::driver::CudaSlice;

/// Scratch for split sequences: partials (bf16 O / l and fp32 row statistics, allocated as f32)
/// and per-sequence counters.
pub type MfaWorkspace = super::SplitWorkspace;

/// The K and V pools a launch reads (rows of 256 values; see [`MfaKvLayout`] for the rows).
pub enum MfaKvCache<'a> {
    Bf16 {
        k: &'a CudaSlice<bf16>,
        v: &'a CudaSlice<bf16>,
    },
    /// e4m3 codes and one fp32 scale per row (token), for K and for V.
    Fp8 {
        k: &'a CudaSlice<u8>,
        v: &'a CudaSlice<u8>,
        k_scale: &'a CudaSlice<f32>,
        v_scale: &'a CudaSlice<f32>,
    },
}

/// Where token `t` of sequence `b` lives in the pools.
pub enum MfaKvLayout<'a> {
    /// Pools `[batch, max_len, 256]`: row `b * max_len + t`.
    Contiguous { max_len: u32 },
    /// Pools `[num_pages, page_size, 256]`: row `block_table[b * max_pages + t / page_size] *
    /// page_size + t % page_size` (page_size comes from the problem).
    Paged {
        block_table: &'a CudaSlice<i32>,
        max_pages: u32,
    },
}

impl MfaKvCache<'_> {
    fn dtype(&self) -> KvDtype {
        match self {
            MfaKvCache::Bf16 { .. } => KvDtype::Bf16,
            MfaKvCache::Fp8 { .. } => KvDtype::Fp8e4m3,
        }
    }
    /// Rows the smaller of the two pools (and their scales) holds.
    fn rows(&self) -> usize {
        let d = HEAD_DIM as usize;
        match self {
            MfaKvCache::Bf16 { k, v } => k.len().min(v.len()) / d,
            MfaKvCache::Fp8 {
                k,
                v,
                k_scale,
                v_scale,
            } => (k.len().min(v.len()) / d)
                .min(k_scale.len())
                .min(v_scale.len()),
        }
    }
}

/// A loaded `mfa_decode` variant: one config, one template branch (KV dtype, paging).
pub struct MfaDecodeKernel {
    pub config: MfaDecodeConfig,
    pub kv_dtype: KvDtype,
    pub paged: bool,
    pub kernel: LoadedKernel,
}

fn check_problem(p: &MfaDecodeProblem, c: &MfaDecodeConfig) -> Result<()> {
    super::check_serves::<MfaDecode>(p, c)
}

fn mismatch(entry: &str, p: &MfaDecodeProblem, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::IllegalConfig {
        config: entry.to_string(),
        problem: format!("{p:?}"),
        reason: reason.into(),
    }
}

impl MfaDecodeKernel {
    /// Load a variant from its cubin; `problem` picks the template branch it was built for.
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &MfaDecodeProblem,
        config: &MfaDecodeConfig,
    ) -> Result<Self> {
        check_problem(problem, config)?;
        let entry = MfaDecode::entry(problem, config);
        let smem = MfaDecode::geometry(problem, config).dynamic_smem_bytes;
        let kernel = LoadedKernel::load(device, cubin, &entry, smem)?;
        Ok(MfaDecodeKernel {
            config: config.clone(),
            kv_dtype: problem.kv_dtype,
            paged: problem.paged(),
            kernel,
        })
    }

    /// Render, compile (through the compile cache) and load a variant.
    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &MfaDecodeProblem,
        config: &MfaDecodeConfig,
    ) -> Result<Self> {
        check_problem(problem, config)?;
        let cubin = super::compile_cubin::<MfaDecode>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// Scratch sized for `problem` (minimal buffers when the config does not split).
    pub fn workspace(&self, device: &Device, problem: &MfaDecodeProblem) -> Result<MfaWorkspace> {
        let floats = MfaDecode::workspace_bytes(problem, &self.config) / 4;
        let counters = fam::counters_len(problem, &self.config);
        MfaWorkspace::new(device, floats, counters, MfaDecode::NAME)
    }

    /// Enqueue `out = softmax(q k^T / 16) v` for every sequence of the batch on `stream`.
    /// `q`, `out`: `[batch, 64, 256]`; `seq_lens`: `[batch]` (device), each clamped to
    /// `[0, problem.context]`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        stream: &CudaStream,
        problem: &MfaDecodeProblem,
        q: &CudaSlice<bf16>,
        cache: &MfaKvCache,
        layout: &MfaKvLayout,
        seq_lens: &CudaSlice<i32>,
        out: &mut CudaSlice<bf16>,
        ws: &mut MfaWorkspace,
    ) -> Result<()> {
        check_problem(problem, &self.config)?;
        let entry = &self.kernel.entry;
        if problem.kv_dtype != self.kv_dtype || problem.paged() != self.paged {
            return Err(mismatch(
                entry,
                problem,
                "the variant was built for another KV dtype or cache layout; load the matching one",
            ));
        }
        if cache.dtype() != problem.kv_dtype {
            return Err(mismatch(
                entry,
                problem,
                format!("the cache holds {:?}", cache.dtype()),
            ));
        }
        let batch = problem.batch as usize;
        let per_seq = (HEADS * HEAD_DIM) as usize;
        need("q", q.len(), batch * per_seq)?;
        need("out", out.len(), batch * per_seq)?;
        need("seq_lens", seq_lens.len(), batch)?;
        need(
            "workspace",
            ws.partials.len() * 4,
            MfaDecode::workspace_bytes(problem, &self.config),
        )?;
        need(
            "counters",
            ws.counters.len(),
            fam::counters_len(problem, &self.config),
        )?;
        // The kernel indexes pool rows with int.
        let rows = cache.rows();
        let fits_int = |what: &str, v: u64| -> Result<i32> {
            i32::try_from(v)
                .map_err(|_| mismatch(entry, problem, format!("{what} {v} exceeds 2^31 - 1")))
        };
        fits_int("the pool's row count", rows as u64)?;
        let (max_len, max_pages) = match layout {
            MfaKvLayout::Contiguous { max_len } => {
                if problem.paged() {
                    return Err(mismatch(
                        entry,
                        problem,
                        "a paged problem needs MfaKvLayout::Paged",
                    ));
                }
                if *max_len < problem.context {
                    return Err(mismatch(
                        entry,
                        problem,
                        format!("max_len {max_len} is below context {}", problem.context),
                    ));
                }
                let need_rows = batch as u64 * *max_len as u64;
                fits_int("batch * max_len", need_rows)?;
                need("KV cache rows", rows, need_rows as usize)?;
                (*max_len as i32, 0i32)
            }
            MfaKvLayout::Paged {
                block_table,
                max_pages,
            } => {
                if !problem.paged() {
                    return Err(mismatch(
                        entry,
                        problem,
                        "a contiguous problem (page_size 0) needs MfaKvLayout::Contiguous",
                    ));
                }
                let pages_needed = problem.context.div_ceil(problem.page_size);
                if *max_pages < pages_needed {
                    return Err(mismatch(
                        entry,
                        problem,
                        format!(
                            "max_pages {max_pages} is below ceil(context / page_size) = {pages_needed}"
                        ),
                    ));
                }
                let table = batch as u64 * *max_pages as u64;
                need("block_table", block_table.len(), table as usize)?;
                need("KV cache rows", rows, problem.page_size as usize)?;
                (0i32, fits_int("max_pages", *max_pages as u64)?)
            }
        };
        let geometry = MfaDecode::geometry(problem, &self.config);
        let cfg = self.kernel.config(&geometry)?;
        let context = problem.context as i32;
        let page_size = problem.page_size as i32;
        let null = 0u64;
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(q);
        match cache {
            MfaKvCache::Bf16 { k, v } => {
                launch.arg(*k).arg(*v).arg(&null).arg(&null);
            }
            MfaKvCache::Fp8 {
                k,
                v,
                k_scale,
                v_scale,
            } => {
                launch.arg(*k).arg(*v).arg(*k_scale).arg(*v_scale);
            }
        }
        launch.arg(seq_lens);
        match layout {
            MfaKvLayout::Contiguous { .. } => {
                launch.arg(&null);
            }
            MfaKvLayout::Paged { block_table, .. } => {
                launch.arg(*block_table);
            }
        }
        launch
            .arg(out)
            .arg(&mut ws.partials)
            .arg(&mut ws.counters)
            .arg(&context)
            .arg(&max_len)
            .arg(&max_pages)
            .arg(&page_size);
        // SAFETY: the argument list matches the template's fixed signature (q, k_cache, v_cache,
        // k_scale, v_scale, seq_lens, block_table, out, workspace, counters, context, max_len,
        // max_pages, page_size) listed by `MfaDecode::args()`: eight device pointers (null for
        // the scales of a BF16 cache and the block table of a contiguous one, which that
        // branch never reads), then four ints. Buffer sizes were checked above against the
        // problem and layout; the geometry comes from the same family code that sized the
        // template. Page ids inside `block_table` are device data the caller vouches for.
        unsafe { launch.launch(cfg) }.during(format!("launching {entry}"))?;
        Ok(())
    }
}
