//! The one measurement routine shared by the tuner, `kiln bench` and `benches/`.
//!
//! Each timed run is preceded by a *read* of a buffer of 2x the L2 size (a small
//! grid-stride kernel, [`FLUSH_SOURCE`]), which (1) evicts the inputs from L2, so
//! every run reads them from HBM as a real decode step would, and (2) keeps the
//! GPU busy for tens of microseconds while the host enqueues the events and the
//! launch, so no launch gap enters a measurement of a kernel of a few
//! microseconds (the flush is the "delay kernel"). Events for all runs are
//! recorded first and read once at the end.
//!
//! Why a read and not a memset (what runs 1-14 used): a memset leaves L2 full of
//! dirty lines, and the timed kernel then pays for writing them back to HBM as
//! its own reads evict them: up to 2x the DRAM traffic of a kernel that reads
//! less than the L2 size (the read ceiling measured 2.5 TB/s at 37 MB after a
//! memset, 3.4 back to back). A read leaves clean lines of an unrelated buffer,
//! which is what the layer before a decode GEMM leaves behind (its own weights)
//! and what rotating inputs over more than 2x L2 gives. Every baseline timed
//! through this module (cuBLAS, cuBLASLt) gets the same flush; the Python peers
//! in `benches/peers/` flush the same way.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaFunction, CudaModule, CudaSlice, LaunchConfig, PushKernelArg};
use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{DriverContext, Result, RuntimeError};

/// The L2 flush: read `n` 16-byte vectors (into L2 only: `ld.global.cg`) and
/// fold them into a value that is stored only if it equals a constant the
/// zeroed buffer cannot produce, so the loads cannot be removed and nothing is
/// written.
pub const FLUSH_SOURCE: &str = r#"
extern "C" __global__ void kiln_l2_flush_read(const uint4* __restrict__ buf,
                                              unsigned long long n, unsigned* sink) {
    unsigned acc = 0;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const uint4 v = __ldcg(buf + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) *sink = acc;
}
"#;
const FLUSH_ENTRY: &str = "kiln_l2_flush_read";

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureOptions {
    /// Untimed runs first (module load, clocks ramping up).
    pub warmup: usize,
    /// Timed runs.
    pub reps: usize,
    /// Evict L2 before each timed run.
    pub flush_l2: bool,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            warmup: 3,
            reps: 20,
            flush_l2: true,
        }
    }
}

/// Summary of one measured kernel (or sequence of kernels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub median_us: f64,
    pub p20_us: f64,
    pub p80_us: f64,
    pub min_us: f64,
    pub reps: usize,
    pub l2_flushed: bool,
}

impl Measurement {
    /// Summarise raw per-run times (microseconds).
    pub fn from_samples(mut us: Vec<f64>, l2_flushed: bool) -> Measurement {
        us.retain(|x| x.is_finite());
        us.sort_by(|a, b| a.total_cmp(b));
        let q = |f: f64| -> f64 {
            if us.is_empty() {
                return f64::NAN;
            }
            let pos = f * (us.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            us[lo] + (us[hi] - us[lo]) * (pos - lo as f64)
        };
        Measurement {
            median_us: q(0.5),
            p20_us: q(0.2),
            p80_us: q(0.8),
            min_us: us.first().copied().unwrap_or(f64::NAN),
            reps: us.len(),
            l2_flushed,
        }
    }
}

/// [`FLUSH_SOURCE`] as PTX, compiled by the NVRTC that kiln's compiler uses (found and loaded by
/// `kiln_codegen::toolchain` where the `jit` feature is on, else by the loader).
pub fn flush_ptx() -> Result<cudarc::nvrtc::Ptx> {
    #[cfg(feature = "jit")]
    kiln_codegen::toolchain::toolchain()?;
    cudarc::nvrtc::compile_ptx(FLUSH_SOURCE).map_err(|e| {
        RuntimeError::Timing(format!(
            "NVRTC could not compile the L2 flush kernel ({e}); timing needs libnvrtc.so.13 \
             (run ./setup.sh, or put the CUDA toolkit's lib64 on LD_LIBRARY_PATH)"
        ))
    })
}

/// Holds the L2-flush buffer of one device and the kernel that reads it.
pub struct Bench {
    device: Device,
    flush: CudaSlice<u8>,
    sink: CudaSlice<u32>,
    _flush_module: Arc<CudaModule>,
    flush_fn: CudaFunction,
}

impl Bench {
    /// Allocates the flush buffer (2x L2, zeroed) and compiles the flush kernel
    /// to PTX with NVRTC (the driver finishes it for the GPU).
    pub fn new(device: &Device) -> Result<Bench> {
        let bytes = (2 * device.info.l2_bytes as usize)
            .max(8 << 20)
            .next_multiple_of(16);
        let ptx = flush_ptx()?;
        let module = device
            .ctx
            .load_module(ptx)
            .map_err(|e| RuntimeError::KernelLoad {
                entry: FLUSH_ENTRY.into(),
                code: e.0,
            })?;
        let flush_fn = module
            .load_function(FLUSH_ENTRY)
            .map_err(|e| RuntimeError::KernelLoad {
                entry: FLUSH_ENTRY.into(),
                code: e.0,
            })?;
        Ok(Bench {
            device: device.clone(),
            flush: device.zeros::<u8>(bytes, "the L2 flush buffer")?,
            sink: device.zeros::<u32>(1, "the L2 flush sink")?,
            _flush_module: module,
            flush_fn,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Enqueue the flush: read the whole 2x-L2 buffer, leaving L2 full of clean lines.
    pub fn flush_l2(&mut self) -> Result<()> {
        let stream = self.device.stream.clone();
        let n = (self.flush.len() / 16) as u64;
        let cfg = LaunchConfig {
            grid_dim: (self.device.info.sms.max(1) * 8, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&self.flush_fn);
        b.arg(&self.flush).arg(&n).arg(&mut self.sink);
        // SAFETY: (buf: n x 16 bytes, n, sink: one u32) match FLUSH_SOURCE's signature;
        // the kernel reads buf[0..n) and writes nothing for a zeroed buffer.
        unsafe { b.launch(cfg) }.map(|_| ()).during("flushing L2")
    }

    /// Time `run` (which enqueues work on the device's stream) per `opts`.
    pub fn measure<F>(&mut self, opts: &MeasureOptions, mut run: F) -> Result<Measurement>
    where
        F: FnMut() -> Result<()>,
    {
        let stream = self.device.stream.clone();
        for _ in 0..opts.warmup {
            run()?;
        }
        let ctx = stream.context().clone();
        let event = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .during("creating a timing event")
        };
        let mut pairs: Vec<(CudaEvent, CudaEvent)> = Vec::with_capacity(opts.reps);
        for _ in 0..opts.reps {
            if opts.flush_l2 {
                self.flush_l2()?;
            }
            let (s, e) = (event()?, event()?);
            s.record(&stream).during("recording a timing event")?;
            run()?;
            e.record(&stream).during("recording a timing event")?;
            pairs.push((s, e));
        }
        stream
            .synchronize()
            .during("waiting for timed runs (a kernel may have faulted)")?;
        let mut us = Vec::with_capacity(pairs.len());
        for (s, e) in &pairs {
            us.push(s.elapsed_ms(e).during("reading a timing event")? as f64 * 1e3);
        }
        Ok(Measurement::from_samples(us, opts.flush_l2))
    }
}

impl Bench {
    /// Steady-state time per launch: `per_rep` launches back to back (the
    /// caller rotates their inputs over more than 2x L2, so each one reads
    /// from HBM), timed as one span after an L2 flush, divided by
    /// `per_rep`; the median over `opts.reps` spans. This is how a decode step
    /// runs kernels; the isolated measurement of [`Bench::measure`] adds the
    /// full launch latency to each.
    pub fn measure_stream<F>(
        &mut self,
        opts: &MeasureOptions,
        per_rep: usize,
        mut run: F,
    ) -> Result<Measurement>
    where
        F: FnMut(usize) -> Result<()>,
    {
        let stream = self.device.stream.clone();
        for i in 0..opts.warmup.max(1) * per_rep {
            run(i)?;
        }
        let ctx = stream.context().clone();
        let event = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .during("creating a timing event")
        };
        let mut pairs = Vec::with_capacity(opts.reps);
        for _ in 0..opts.reps {
            self.flush_l2()?;
            let (s, e) = (event()?, event()?);
            s.record(&stream).during("recording a timing event")?;
            for i in 0..per_rep {
                run(i)?;
            }
            e.record(&stream).during("recording a timing event")?;
            pairs.push((s, e));
        }
        stream
            .synchronize()
            .during("waiting for timed runs (a kernel may have faulted)")?;
        let mut us = Vec::with_capacity(pairs.len());
        for (s, e) in &pairs {
            us.push(
                s.elapsed_ms(e).during("reading a timing event")? as f64 * 1e3 / per_rep as f64,
            );
        }
        Ok(Measurement::from_samples(us, true))
    }
}

#[cfg(feature = "jit")]
impl Bench {
    /// An empty kernel (132 blocks of 128 threads) timed exactly like a real
    /// one: the launch and event overhead every measurement includes.
    pub fn empty_kernel_us(
        &mut self,
        compiler: &kiln_codegen::Compiler,
        reps: usize,
    ) -> Result<f64> {
        let src = kiln_codegen::KernelSource {
            family: "empty".into(),
            entry: "kiln_empty".into(),
            source: "extern \"C\" __global__ void kiln_empty() {}".into(),
        };
        let k = compiler.compile(&src, &kiln_codegen::CompileOptions::default())?;
        let kernel = crate::kernel::LoadedKernel::load(&self.device, &k.cubin, "kiln_empty", 0)?;
        let cfg = cudarc::driver::LaunchConfig {
            grid_dim: (132, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let stream = self.device.stream.clone();
        let m = self.measure(
            &MeasureOptions {
                warmup: 3,
                reps,
                flush_l2: true,
            },
            || {
                let mut b = stream.launch_builder(&kernel.func);
                // SAFETY: kiln_empty takes no arguments.
                unsafe { b.launch(cfg) }
                    .map(|_| ())
                    .during("launching the empty kernel")
            },
        )?;
        Ok(m.median_us)
    }
}

/// SM clock (MHz) and temperature (C) as `nvidia-smi` reports them now;
/// `None` where it is not available. Read-only: kiln never changes clocks.
pub fn gpu_clock_and_temperature(ordinal: usize) -> Option<(u32, u32)> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            &format!("--id={ordinal}"),
            "--query-gpu=clocks.sm,temperature.gpu",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.trim().split(',').map(|s| s.trim().parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let m = Measurement::from_samples(vec![5.0, 1.0, 3.0, 2.0, 4.0, f64::NAN], true);
        assert_eq!(m.reps, 5);
        assert_eq!(m.median_us, 3.0);
        assert_eq!(m.min_us, 1.0);
        assert!((m.p20_us - 1.8).abs() < 1e-12);
        assert!((m.p80_us - 4.2).abs() < 1e-12);
    }
}

#[cfg(all(test, feature = "jit"))]
mod flush_tests {
    /// The flush kernel compiles with the project's NVRTC (no GPU needed); skipped without one.
    #[test]
    fn flush_kernel_compiles() {
        if kiln_codegen::toolchain::toolchain().is_err() {
            eprintln!("skipped: no NVRTC (run ./setup.sh)");
            return;
        }
        let ptx = super::flush_ptx().expect("flush kernel compiles");
        let text = ptx.to_src();
        assert!(text.contains(".entry kiln_l2_flush_read"), "{text}");
        assert!(text.contains("ld.global.cg.v4.u32"), "{text}");
        assert!(
            !text.contains("st.global.v4"),
            "the flush must not write its buffer"
        );
    }
}
