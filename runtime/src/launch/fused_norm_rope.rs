//! Launching `fused_norm_rope`: Step-3's RMSNorm on q_low (before wq) and RoPE on q and k with
//! the KV-cache append (after wq). See the family module for the launch contract.

use cudarc::driver::{CudaSlice, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg};
use half::bf16;
use kiln_codegen::families::fused_norm_rope::{
    FusedNormRope, FusedNormRopeConfig, FusedNormRopeProblem,
};
use kiln_codegen::Family;

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};
use crate::kernel::LoadedKernel;

use super::need;
use crate::launch::mfa_decode::MfaKvLayout;

/// The cache pools a RoPE-append writes (rows of 256 values, as `mfa_decode` reads them).
pub enum KvCacheMut<'a> {
    Bf16 {
        k: &'a mut CudaSlice<bf16>,
        v: &'a mut CudaSlice<bf16>,
    },
    /// e4m3 codes and one fp32 scale per row, for K and for V.
    Fp8 {
        k: &'a mut CudaSlice<u8>,
        v: &'a mut CudaSlice<u8>,
        k_scale: &'a mut CudaSlice<f32>,
        v_scale: &'a mut CudaSlice<f32>,
    },
}

impl KvCacheMut<'_> {
    fn rows(&self) -> usize {
        let d = kiln_codegen::families::fused_norm_rope::HEAD_DIM as usize;
        match self {
            KvCacheMut::Bf16 { k, v } => k.len().min(v.len()) / d,
            KvCacheMut::Fp8 {
                k,
                v,
                k_scale,
                v_scale,
            } => (k.len().min(v.len()) / d)
                .min(k_scale.len())
                .min(v_scale.len()),
        }
    }
    fn is_fp8(&self) -> bool {
        matches!(self, KvCacheMut::Fp8 { .. })
    }
}

/// A loaded `fused_norm_rope` variant: one config, one template branch.
pub struct FusedNormRopeKernel {
    pub config: FusedNormRopeConfig,
    /// The problem it was built for (its op and branch; the batch may differ at launch).
    pub built_for: FusedNormRopeProblem,
    pub kernel: LoadedKernel,
}

fn illegal(p: &FusedNormRopeProblem, c: &str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::IllegalConfig {
        config: c.to_string(),
        problem: format!("{p:?}"),
        reason: reason.into(),
    }
}

fn check(p: &FusedNormRopeProblem, c: &FusedNormRopeConfig) -> Result<()> {
    FusedNormRope::supports(p)?;
    FusedNormRope::check_problem(p, c).map_err(|e| illegal(p, &format!("{c:?}"), e.0))
}

impl FusedNormRopeKernel {
    pub fn from_cubin(
        device: &Device,
        cubin: &[u8],
        problem: &FusedNormRopeProblem,
        config: &FusedNormRopeConfig,
    ) -> Result<Self> {
        check(problem, config)?;
        let entry = FusedNormRope::entry(problem, config);
        let kernel = LoadedKernel::load(device, cubin, &entry, 0)?;
        Ok(FusedNormRopeKernel {
            config: config.clone(),
            built_for: *problem,
            kernel,
        })
    }

    #[cfg(feature = "jit")]
    pub fn compile(
        device: &Device,
        compiler: &kiln_codegen::Compiler,
        problem: &FusedNormRopeProblem,
        config: &FusedNormRopeConfig,
    ) -> Result<Self> {
        check(problem, config)?;
        let cubin = super::compile_cubin::<FusedNormRope>(compiler, problem, config)?;
        Self::from_cubin(device, &cubin, problem, config)
    }

    /// The same source serves `p` (same entry).
    fn serves(&self, p: &FusedNormRopeProblem) -> Result<()> {
        check(p, &self.config)?;
        if FusedNormRope::entry(p, &self.config) != self.kernel.entry {
            return Err(illegal(
                p,
                &self.kernel.entry,
                "the variant was built for another op, row length, KV dtype or layout",
            ));
        }
        Ok(())
    }

    /// `y = rmsnorm(x) * weight` for `batch` rows of `hidden` values.
    pub fn launch_rms_norm(
        &self,
        stream: &CudaStream,
        problem: &FusedNormRopeProblem,
        x: &CudaSlice<bf16>,
        weight: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        self.serves(problem)?;
        let FusedNormRopeProblem::RmsNorm { batch, hidden } = *problem else {
            return Err(illegal(
                problem,
                &self.kernel.entry,
                "not an rms_norm problem",
            ));
        };
        let (b, h) = (batch as usize, hidden as usize);
        need("x", x.len(), b * h)?;
        need("y", y.len(), b * h)?;
        need("weight", weight.len(), h)?;
        let cfg = self
            .kernel
            .config(&FusedNormRope::geometry(problem, &self.config))?;
        let rows = batch as i32;
        let (null, zero) = (0u64, 0i32);
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(x).arg(weight).arg(y);
        for _ in 0..9 {
            launch.arg(&null); // q .. block_table: unused by rms_norm
        }
        launch.arg(&rows).arg(&zero).arg(&zero).arg(&zero);
        // Three checked bf16 buffers, nine null pointers the rms_norm branch never reads, four
        // ints (see `enqueue`).
        self.enqueue(launch, cfg)
    }

    /// RoPE `q [batch, heads, 256]` in place and `k_new [batch, 256]` at `positions[b]`, then
    /// write k and `v_new` into the cache row of that position (negative position: skipped).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_rope_append(
        &self,
        stream: &CudaStream,
        problem: &FusedNormRopeProblem,
        q: &mut CudaSlice<bf16>,
        k_new: &CudaSlice<bf16>,
        v_new: &CudaSlice<bf16>,
        positions: &CudaSlice<i32>,
        cache: &mut KvCacheMut,
        layout: &MfaKvLayout,
    ) -> Result<()> {
        self.serves(problem)?;
        let FusedNormRopeProblem::RopeAppend {
            batch,
            heads,
            head_dim,
            kv_dtype,
            page_size,
        } = *problem
        else {
            return Err(illegal(
                problem,
                &self.kernel.entry,
                "not a rope_append problem",
            ));
        };
        let entry = &self.kernel.entry;
        if cache.is_fp8() != kv_dtype.is_fp8() {
            return Err(illegal(
                problem,
                entry,
                "the cache dtype differs from the problem's",
            ));
        }
        let (b, d) = (batch as usize, head_dim as usize);
        need("q", q.len(), b * heads as usize * d)?;
        need("k_new", k_new.len(), b * d)?;
        need("v_new", v_new.len(), b * d)?;
        need("positions", positions.len(), b)?;
        let rows = cache.rows();
        if i32::try_from(rows).is_err() {
            return Err(illegal(
                problem,
                entry,
                "the pool's row count exceeds 2^31 - 1",
            ));
        }
        let (max_len, max_pages) = match layout {
            MfaKvLayout::Contiguous { max_len } => {
                if page_size > 0 {
                    return Err(illegal(
                        problem,
                        entry,
                        "a paged problem needs MfaKvLayout::Paged",
                    ));
                }
                let need_rows = b as u64 * *max_len as u64;
                if need_rows > i32::MAX as u64 {
                    return Err(illegal(problem, entry, "batch * max_len exceeds 2^31 - 1"));
                }
                need("KV cache rows", rows, need_rows as usize)?;
                (*max_len as i32, 0)
            }
            MfaKvLayout::Paged {
                block_table,
                max_pages,
            } => {
                if page_size == 0 {
                    return Err(illegal(
                        problem,
                        entry,
                        "a contiguous problem needs MfaKvLayout::Contiguous",
                    ));
                }
                need("block_table", block_table.len(), b * *max_pages as usize)?;
                need("KV cache rows", rows, page_size as usize)?;
                let mp = i32::try_from(*max_pages)
                    .map_err(|_| illegal(problem, entry, "max_pages exceeds 2^31 - 1"))?;
                (0, mp)
            }
        };
        let cfg = self
            .kernel
            .config(&FusedNormRope::geometry(problem, &self.config))?;
        let (null, rows_arg, ps) = (0u64, batch as i32, page_size as i32);
        let mut launch = stream.launch_builder(&self.kernel.func);
        launch.arg(&null).arg(&null).arg(&null); // x, weight, y: unused by rope_append
        launch.arg(q).arg(k_new).arg(v_new).arg(positions);
        match cache {
            KvCacheMut::Bf16 { k, v } => {
                launch.arg(&mut **k).arg(&mut **v).arg(&null).arg(&null);
            }
            KvCacheMut::Fp8 {
                k,
                v,
                k_scale,
                v_scale,
            } => {
                launch
                    .arg(&mut **k)
                    .arg(&mut **v)
                    .arg(&mut **k_scale)
                    .arg(&mut **v_scale);
            }
        }
        match layout {
            MfaKvLayout::Contiguous { .. } => {
                launch.arg(&null);
            }
            MfaKvLayout::Paged { block_table, .. } => {
                launch.arg(*block_table);
            }
        }
        launch.arg(&rows_arg).arg(&max_len).arg(&max_pages).arg(&ps);
        // Three null pointers the rope branch never reads, then q, k_new, v_new, positions, the
        // cache pools and scales (null scales for BF16, never read), the block table (null when
        // contiguous), four ints (see `enqueue`). Positions and page ids are device data the
        // caller vouches for (the kernel skips negative positions and rows past the cache).
        self.enqueue(launch, cfg)
    }

    /// The family's one launch.
    fn enqueue(&self, mut launch: LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
        // SAFETY: both callers push exactly the template's one signature (x, weight, y, q,
        // k_new, v_new, positions, k_cache, v_cache, k_scale, v_scale, block_table, rows,
        // max_len, max_pages, page_size) listed by `FusedNormRope::args()`: twelve device
        // pointers (null where this op's branch never reads them) and four ints, with the
        // buffers it reads or writes size-checked against the problem, and `cfg` from the
        // family's geometry for the same (problem, config) the kernel was rendered for.
        unsafe { launch.launch(cfg) }.during(format!("launching {}", self.kernel.entry))?;
        Ok(())
    }
}
