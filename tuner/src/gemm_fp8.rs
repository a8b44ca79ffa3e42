//! Tuning `gemm_fp8` on the GPU: compile, validate against the naive GPU reference on fresh
//! random inputs (output poisoned with NaN first, twice), time with the shared measurement
//! module (L2 flushed), and time cuBLASLt on the same buffers, block-scaled and row-wise, each
//! checked against the reference before it is timed.
//!
//! Everything here goes through the `Family` trait and `GemmFp8Kernel`, so any kernel the
//! family adds is tuned the same way.

use std::collections::HashMap;

use cudarc::driver::CudaSlice;
use half::bf16;
use kiln_codegen::families::gemm_fp8::{GemmFp8, GemmFp8Config, GemmFp8Problem};
use kiln_codegen::{CompileOptions, Compiler};
use kiln_runtime::artifact::Baseline;
use kiln_runtime::launch::gemm_fp8::{Fp8Operands, GemmFp8Kernel, GemmFp8Workspace};
use kiln_runtime::launch::gemm_fp8_ref::{check_reference_problem, GemmFp8Reference, RefError};
use kiln_runtime::measure::{Bench, MeasureOptions, Measurement};
use kiln_runtime::{Device, Result, RuntimeError};
use rayon::prelude::*;

use crate::baseline::{
    CublasLtFp8, Fp8Scaling, LtFailure, CUBLASLT_FP8_BLOCK, CUBLASLT_FP8_ROWWISE,
    CUBLASLT_FP8_ROWWISE_BLOCK_FAILED, CUBLASLT_FP8_ROWWISE_FALLBACK,
};
use crate::search::{config_key, prepared_mut, time_candidate, Evaluator, Failure, Prepared};

mod inputs;
pub use inputs::{
    random_codes, random_inputs, random_scales, row_scales_as_blocks, rowwise_scales, Fp8Inputs,
};

/// Norm-wise relative error a BF16-output FP8 GEMM may show against the reference (fp32
/// accumulation and scale folding, one BF16 rounding), for kiln's kernels and the baselines.
pub const TOLERANCE: f64 = 1e-2;

/// A baseline that was validated and timed.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedBaseline {
    pub median_us: f64,
    pub max_rel_err: f64,
}

/// Both cuBLASLt baselines of one problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8BaselineRuns {
    pub block: std::result::Result<TimedBaseline, LtFailure>,
    pub rowwise: std::result::Result<TimedBaseline, LtFailure>,
}

/// What an artifact entry (or a bench row) records of the baselines.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8BaselineChoice {
    /// The one `speedup` is measured against: block-scaled, else row-wise (named so).
    pub primary: Option<Baseline>,
    /// The others timed (row-wise next to block-scaled).
    pub extra: Vec<Baseline>,
    /// Why a baseline is missing or stands in for another.
    pub notes: Vec<String>,
}

/// The stored baseline is the block-scaled one (same scaling as kiln); where cuBLASLt has none
/// for the shape (NOT_SUPPORTED) or it failed (e.g. a wrong result), the row-wise one stands in
/// and its name says so. A failed baseline is never stored.
pub fn choose_baselines(runs: &Fp8BaselineRuns) -> Fp8BaselineChoice {
    let mut notes = Vec::new();
    let row = |name: &str, t: &TimedBaseline, note: Option<String>| Baseline {
        name: name.to_string(),
        median_us: t.median_us,
        max_rel_err: Some(t.max_rel_err),
        note,
    };
    match (&runs.block, &runs.rowwise) {
        (Ok(b), rowwise) => {
            let primary = Some(row(CUBLASLT_FP8_BLOCK, b, None));
            let extra = match rowwise {
                Ok(r) => vec![row(CUBLASLT_FP8_ROWWISE, r, None)],
                Err(f) => {
                    notes.push(format!("{CUBLASLT_FP8_ROWWISE}: {}", f.reason));
                    Vec::new()
                }
            };
            Fp8BaselineChoice {
                primary,
                extra,
                notes,
            }
        }
        (Err(bf), Ok(r)) => {
            let name = if bf.not_supported {
                CUBLASLT_FP8_ROWWISE_FALLBACK
            } else {
                CUBLASLT_FP8_ROWWISE_BLOCK_FAILED
            };
            notes.push(format!("{CUBLASLT_FP8_BLOCK}: {}", bf.reason));
            Fp8BaselineChoice {
                primary: Some(row(
                    name,
                    r,
                    Some(format!("{CUBLASLT_FP8_BLOCK}: {}", bf.reason)),
                )),
                extra: Vec::new(),
                notes,
            }
        }
        (Err(bf), Err(rf)) => {
            notes.push(format!("{CUBLASLT_FP8_BLOCK}: {}", bf.reason));
            notes.push(format!("{CUBLASLT_FP8_ROWWISE}: {}", rf.reason));
            Fp8BaselineChoice {
                primary: None,
                extra: Vec::new(),
                notes,
            }
        }
    }
}

/// One problem's buffers and reference output on the device.
pub struct GemmFp8Bench<'a> {
    pub device: &'a Device,
    pub compiler: &'a Compiler,
    pub bench: &'a mut Bench,
    reference: &'a GemmFp8Reference,
    pub problem: GemmFp8Problem,
    x: CudaSlice<u8>,
    sx: CudaSlice<f32>,
    w: CudaSlice<u8>,
    sw: CudaSlice<f32>,
    /// The scales on the host (the baselines' plans copy them into cuBLASLt's layouts).
    sx_host: Vec<f32>,
    sw_host: Vec<f32>,
    /// The output every kernel writes (poisoned before each validation).
    y: CudaSlice<bf16>,
    /// The reference product, unrounded.
    expected: CudaSlice<f32>,
    kernels: HashMap<String, (GemmFp8Kernel, GemmFp8Workspace)>,
    /// Copies of (X, W) spanning more than 3x L2, for steady-state timing.
    rotation: Vec<(CudaSlice<u8>, CudaSlice<u8>)>,
}

fn illegal(p: &GemmFp8Problem, reason: String) -> RuntimeError {
    RuntimeError::IllegalConfig {
        config: "gemm_fp8 bench".into(),
        problem: format!("{p:?}"),
        reason,
    }
}

impl<'a> GemmFp8Bench<'a> {
    /// Fresh random inputs (see [`random_inputs`]) and the reference output. Any M the
    /// reference serves is accepted (the family's own limits are checked per config).
    pub fn new(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        reference: &'a GemmFp8Reference,
        problem: GemmFp8Problem,
        seed: u64,
    ) -> Result<Self> {
        check_reference_problem(&problem).map_err(|r| illegal(&problem, r))?;
        let inputs = random_inputs(&problem, seed);
        Self::with_inputs(device, compiler, bench, reference, problem, &inputs)
    }

    /// Given operands (e.g. quantised on the CPU) and the reference output.
    pub fn with_inputs(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        reference: &'a GemmFp8Reference,
        problem: GemmFp8Problem,
        inputs: &Fp8Inputs,
    ) -> Result<Self> {
        check_reference_problem(&problem).map_err(|r| illegal(&problem, r))?;
        let (m, n) = (problem.m as usize, problem.n as usize);
        let x = device.upload(&inputs.x, "X")?;
        let sx = device.upload(&inputs.sx, "SX")?;
        let w = device.upload(&inputs.w, "W")?;
        let sw = device.upload(&inputs.sw, "SW")?;
        let mut y = device.zeros::<bf16>(m * n, "Y")?;
        let mut expected = device.zeros::<f32>(m * n, "the reference output")?;
        let ops = Fp8Operands {
            x: &x,
            sx: &sx,
            w: &w,
            sw: &sw,
        };
        // The BF16 copy goes into the poisoned output: every element written and finite, and
        // within one BF16 rounding of the fp32 one, or the reference is not trusted.
        reference.poison(&device.stream, &mut y)?;
        reference.launch(
            &device.stream,
            &problem,
            &ops,
            Some(&mut expected),
            Some(&mut y),
        )?;
        let check = reference.rel_err(&device.stream, &y, &expected)?;
        if !check.passes(1.0 / 256.0) {
            return Err(illegal(
                &problem,
                format!(
                    "the reference output is not usable: {} of {} outputs non-finite or unwritten, \
                     BF16 copy {:.2e} from the fp32 one",
                    check.non_finite,
                    m * n,
                    check.rel_err
                ),
            ));
        }
        Ok(GemmFp8Bench {
            device,
            compiler,
            bench,
            reference,
            problem,
            x,
            sx,
            w,
            sw,
            sx_host: inputs.sx.clone(),
            sw_host: inputs.sw.clone(),
            y,
            expected,
            kernels: HashMap::new(),
            rotation: Vec::new(),
        })
    }

    /// The reference output (fp32) on the host.
    pub fn reference_output(&self) -> Result<Vec<f32>> {
        self.device.download(&self.expected)
    }

    /// The last output written (BF16) on the host.
    pub fn output(&self) -> Result<Vec<bf16>> {
        self.device.download(&self.y)
    }

    /// The error of the last output against the reference.
    pub fn output_error(&self) -> Result<RefError> {
        self.reference
            .rel_err(&self.device.stream, &self.y, &self.expected)
    }

    /// Launch `kernel` into the poisoned output and compare with the reference; twice (the
    /// second run shows that split scratch was left clean).
    fn validate(
        &mut self,
        kernel: &GemmFp8Kernel,
        ws: &mut GemmFp8Workspace,
    ) -> std::result::Result<f64, Failure> {
        let stream = &self.device.stream;
        let mut worst = 0.0f64;
        for _ in 0..2 {
            self.reference
                .poison(stream, &mut self.y)
                .map_err(Failure::launch_failed)?;
            let ops = Fp8Operands {
                x: &self.x,
                sx: &self.sx,
                w: &self.w,
                sw: &self.sw,
            };
            kernel
                .launch(stream, &self.problem, &ops, &mut self.y, ws)
                .map_err(Failure::launch_failed)?;
            let e = self
                .reference
                .rel_err(stream, &self.y, &self.expected)
                .map_err(Failure::launch_failed)?;
            if !e.passes(TOLERANCE) {
                return Err(Failure {
                    outcome: "invalid",
                    reason: format!(
                        "relative error {:.3e} (tolerance {TOLERANCE:.0e}), {} non-finite outputs",
                        e.rel_err, e.non_finite
                    ),
                });
            }
            worst = worst.max(e.rel_err);
        }
        Ok(worst)
    }

    /// Launches per steady-state span, and the rotation of inputs it cycles through (made on
    /// first use: enough copies of X and W to exceed 3x L2).
    fn ensure_rotation(&mut self) -> Result<usize> {
        if self.rotation.is_empty() {
            let bytes = self.x.len() + self.w.len();
            let copies = (3 * self.device.info.l2_bytes as usize)
                .div_ceil(bytes.max(1))
                .max(2);
            for _ in 0..copies {
                let x = self.device.stream.clone_dtod(&self.x);
                let w = self.device.stream.clone_dtod(&self.w);
                match (x, w) {
                    (Ok(x), Ok(w)) => self.rotation.push((x, w)),
                    (Err(e), _) | (_, Err(e)) => {
                        return Err(RuntimeError::OutOfMemory {
                            what: format!("copying inputs for steady-state timing ({:?})", e.0),
                            bytes: bytes * copies,
                        })
                    }
                }
            }
        }
        Ok(self.rotation.len().max(8))
    }

    /// Steady-state time per launch of a prepared `config`, back to back over rotated inputs.
    pub fn time_steady(&mut self, config: &GemmFp8Config, reps: usize) -> Result<Measurement> {
        let per = self.ensure_rotation()?;
        let problem = self.problem;
        let (kernel, ws) = self
            .kernels
            .get_mut(&config_key(config))
            .ok_or_else(|| illegal(&problem, format!("{} was not prepared", config_key(config))))?;
        let stream = self.device.stream.clone();
        let (rot, sx, sw, y) = (&self.rotation, &self.sx, &self.sw, &mut self.y);
        let opts = MeasureOptions {
            warmup: 1,
            reps,
            flush_l2: true,
        };
        self.bench.measure_stream(&opts, per, |i| {
            let (x, w) = &rot[i % rot.len()];
            let ops = Fp8Operands { x, sx, w, sw };
            kernel.launch(&stream, &problem, &ops, y, ws)
        })
    }

    /// Steady-state time per cuBLASLt call with `scaling`, over the same rotated inputs.
    pub fn time_steady_baseline(
        &mut self,
        lt: &CublasLtFp8,
        scaling: Fp8Scaling,
        reps: usize,
    ) -> Result<Measurement> {
        let per = self.ensure_rotation()?;
        let (sx, sw) = self.plan_scales(scaling);
        let plan = lt.plan(&self.problem, scaling, &sx, &sw)?;
        let (rot, y) = (&self.rotation, &mut self.y);
        let opts = MeasureOptions {
            warmup: 1,
            reps,
            flush_l2: true,
        };
        self.bench.measure_stream(&opts, per, |i| {
            let (x, w) = &rot[i % rot.len()];
            plan.run(lt, x, w, y)
        })
    }

    /// The scales a baseline with `scaling` is given, in kiln's layouts.
    fn plan_scales(&self, scaling: Fp8Scaling) -> (Vec<f32>, Vec<f32>) {
        match scaling {
            Fp8Scaling::Block128 => (self.sx_host.clone(), self.sw_host.clone()),
            Fp8Scaling::RowWise => rowwise_scales(&self.problem, &self.sx_host, &self.sw_host),
        }
    }

    /// Plan, validate (poisoned output, against the reference for the scales it was given),
    /// then time one cuBLASLt baseline. A wrong result is a failure that says the scale layout
    /// is the likely cause; it is never timed.
    pub fn run_baseline(
        &mut self,
        lt: &CublasLtFp8,
        scaling: Fp8Scaling,
        opts: &MeasureOptions,
    ) -> std::result::Result<TimedBaseline, LtFailure> {
        let fail = |reason: String| LtFailure {
            not_supported: false,
            reason,
        };
        let rt = |e: RuntimeError| fail(e.to_string());
        let (sx, sw) = self.plan_scales(scaling);
        let plan = lt.plan(&self.problem, scaling, &sx, &sw)?;
        let stream = self.device.stream.clone();
        self.reference.poison(&stream, &mut self.y).map_err(rt)?;
        plan.run(lt, &self.x, &self.w, &mut self.y).map_err(rt)?;
        let err = match scaling {
            Fp8Scaling::Block128 => self
                .reference
                .rel_err(&stream, &self.y, &self.expected)
                .map_err(rt)?,
            Fp8Scaling::RowWise => {
                // The reference on scales constant along K: what row-wise scaling computes.
                let p = self.problem;
                let (bx, bw) = row_scales_as_blocks(&p, &sx, &sw);
                let bx = self.device.upload(&bx, "row-wise SX").map_err(rt)?;
                let bw = self.device.upload(&bw, "row-wise SW").map_err(rt)?;
                let mut want = self
                    .device
                    .zeros::<f32>(self.y.len(), "the row-wise reference")
                    .map_err(rt)?;
                let ops = Fp8Operands {
                    x: &self.x,
                    sx: &bx,
                    w: &self.w,
                    sw: &bw,
                };
                self.reference
                    .launch(&stream, &p, &ops, Some(&mut want), None)
                    .map_err(rt)?;
                self.reference
                    .rel_err(&stream, &self.y, &want)
                    .map_err(rt)?
            }
        };
        if !err.passes(TOLERANCE) {
            return Err(fail(format!(
                "its output is wrong (relative error {:.3e} against the reference, tolerance \
                 {TOLERANCE:.0e}, {} non-finite): the scale layout handed to cuBLASLt ({}) does \
                 not match what this cuBLASLt reads; not used as a baseline",
                err.rel_err,
                err.non_finite,
                match scaling {
                    Fp8Scaling::Block128 =>
                        "SX transposed to [K/128][M], SW as [ceil(N/128)][round_up(K/128, 4)]",
                    Fp8Scaling::RowWise => "SX [M], SW [N]",
                }
            )));
        }
        let (x, w, y) = (&self.x, &self.w, &mut self.y);
        let m = self
            .bench
            .measure(opts, || plan.run(lt, x, w, y))
            .map_err(rt)?;
        Ok(TimedBaseline {
            median_us: m.median_us,
            max_rel_err: err.rel_err,
        })
    }

    /// Both baselines, block-scaled first.
    pub fn run_baselines(&mut self, lt: &CublasLtFp8, opts: &MeasureOptions) -> Fp8BaselineRuns {
        Fp8BaselineRuns {
            block: self.run_baseline(lt, Fp8Scaling::Block128, opts),
            rowwise: self.run_baseline(lt, Fp8Scaling::RowWise, opts),
        }
    }
}

impl Evaluator<GemmFp8Config> for GemmFp8Bench<'_> {
    fn prepare(
        &mut self,
        configs: &[GemmFp8Config],
    ) -> Vec<std::result::Result<Prepared, Failure>> {
        let opts = CompileOptions::default();
        let problem = self.problem;
        let compiler = self.compiler;
        let compiled: Vec<_> = configs
            .par_iter()
            .map(|c| {
                kiln_codegen::render::render::<GemmFp8>(&problem, c)
                    .and_then(|src| compiler.compile(&src, &opts))
                    .map_err(|e| Failure {
                        outcome: "compile_failed",
                        reason: e.to_string(),
                    })
            })
            .collect();
        let mut out = Vec::with_capacity(configs.len());
        for (c, compiled) in configs.iter().zip(compiled) {
            let res = compiled.and_then(|k| {
                let kernel = GemmFp8Kernel::from_cubin(self.device, &k.cubin, &problem, c)
                    .map_err(Failure::launch_failed)?;
                let mut ws = kernel
                    .workspace(self.device, &problem)
                    .map_err(Failure::launch_failed)?;
                let err = self.validate(&kernel, &mut ws)?;
                self.kernels.insert(config_key(c), (kernel, ws));
                Ok(Prepared {
                    max_rel_err: err,
                    registers: Some(k.resources.registers),
                    ..Default::default()
                })
            });
            out.push(res);
        }
        out
    }

    fn time(
        &mut self,
        config: &GemmFp8Config,
        reps: usize,
    ) -> std::result::Result<Measurement, Failure> {
        let (kernel, ws) = prepared_mut(&mut self.kernels, config)?;
        let stream = self.device.stream.clone();
        let p = &self.problem;
        let ops = Fp8Operands {
            x: &self.x,
            sx: &self.sx,
            w: &self.w,
            sw: &self.sw,
        };
        let y = &mut self.y;
        time_candidate(self.bench, reps, || kernel.launch(&stream, p, &ops, y, ws))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(us: f64) -> TimedBaseline {
        TimedBaseline {
            median_us: us,
            max_rel_err: 1e-3,
        }
    }

    fn failure(not_supported: bool) -> LtFailure {
        LtFailure {
            not_supported,
            reason: "why".into(),
        }
    }

    #[test]
    fn the_block_baseline_is_stored_and_rowwise_kept_beside_it() {
        let c = choose_baselines(&Fp8BaselineRuns {
            block: Ok(timed(10.0)),
            rowwise: Ok(timed(12.0)),
        });
        let p = c.primary.unwrap();
        assert_eq!((p.name.as_str(), p.median_us), (CUBLASLT_FP8_BLOCK, 10.0));
        assert_eq!(c.extra.len(), 1);
        assert_eq!(c.extra[0].name, CUBLASLT_FP8_ROWWISE);
        assert!(c.notes.is_empty());
    }

    #[test]
    fn rowwise_stands_in_when_block_is_not_supported_and_says_so() {
        let c = choose_baselines(&Fp8BaselineRuns {
            block: Err(failure(true)),
            rowwise: Ok(timed(12.0)),
        });
        let p = c.primary.unwrap();
        assert_eq!(p.name, "cublaslt-fp8-rowwise (block NOT_SUPPORTED)");
        assert_eq!(p.median_us, 12.0);
        assert!(p.note.unwrap().contains("why"));
        assert!(c.extra.is_empty());
        // A block baseline that failed otherwise (e.g. a wrong result) is named differently.
        let c = choose_baselines(&Fp8BaselineRuns {
            block: Err(failure(false)),
            rowwise: Ok(timed(12.0)),
        });
        assert_eq!(c.primary.unwrap().name, CUBLASLT_FP8_ROWWISE_BLOCK_FAILED);
    }

    #[test]
    fn no_baseline_is_stored_when_both_fail() {
        let c = choose_baselines(&Fp8BaselineRuns {
            block: Err(failure(true)),
            rowwise: Err(failure(false)),
        });
        assert!(c.primary.is_none() && c.extra.is_empty());
        assert_eq!(c.notes.len(), 2);
    }
}
