//! The one measurement routine shared by the tuner, `kiln bench` and `benches/`.
//!
//! Each timed run is preceded by a write of 2x the L2 size (a memset), which
//! (1) evicts the inputs from L2, so every run reads them from HBM as a real
//! decode step would, and (2) keeps the GPU busy for tens of microseconds while
//! the host enqueues the events and the launch, so no launch gap enters a
//! measurement of a kernel of a few microseconds (the memset is the "delay
//! kernel"). Events for all runs are recorded first and read once at the end.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice};
use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{DriverContext, Result};

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

/// Holds the L2-flush buffer of one device.
pub struct Bench {
    device: Device,
    flush: CudaSlice<u8>,
}

impl Bench {
    pub fn new(device: &Device) -> Result<Bench> {
        let bytes = (2 * device.info.l2_bytes as usize).max(8 << 20);
        Ok(Bench {
            device: device.clone(),
            flush: device.zeros::<u8>(bytes, "the L2 flush buffer")?,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
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
                stream.memset_zeros(&mut self.flush).during("flushing L2")?;
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
    /// from HBM), timed as one span after a 2x-L2 memset, divided by
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
            stream.memset_zeros(&mut self.flush).during("flushing L2")?;
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
