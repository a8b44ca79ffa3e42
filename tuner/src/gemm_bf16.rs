//! Tuning `gemm_bf16` on the GPU: compile, validate against the naive GPU
//! reference on fresh random inputs (output poisoned first), time with the
//! shared measurement module, and time cuBLAS on the same buffers.

use std::collections::HashMap;

use cudarc::driver::CudaSlice;
use half::bf16;
use kiln_codegen::families::gemm_bf16::{GemmBf16, GemmBf16Config, GemmBf16Problem};
use kiln_codegen::{CompileOptions, Compiler, Family};
use kiln_runtime::launch::gemm_bf16::{GemmBf16Kernel, GemmBf16Reference, GemmWorkspace};
use kiln_runtime::measure::{Bench, MeasureOptions, Measurement};
use kiln_runtime::{Device, Result};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::search::{config_key, prepared_mut, time_candidate, Evaluator, Failure, Prepared};

/// Relative (norm-wise) error a BF16-output GEMM may show against the reference.
pub const TOLERANCE: f64 = 1e-2;

/// One problem's buffers and reference output on the device.
pub struct GemmBf16Bench<'a> {
    pub device: &'a Device,
    pub compiler: &'a Compiler,
    pub bench: &'a mut Bench,
    pub problem: GemmBf16Problem,
    a: CudaSlice<bf16>,
    b: CudaSlice<bf16>,
    c: CudaSlice<bf16>,
    reference: Vec<f64>,
    kernels: HashMap<String, (GemmBf16Kernel, GemmWorkspace)>,
    /// Copies of (A, B) spanning more than 2x L2, for steady-state timing.
    rotation: Vec<(CudaSlice<bf16>, CudaSlice<bf16>)>,
    poison: Vec<bf16>,
}

/// ||out - ref|| / ||ref|| and whether anything is NaN or infinite.
pub fn rel_err(out: &[bf16], reference: &[f64]) -> (f64, bool) {
    let (mut num, mut den, mut bad) = (0.0f64, 0.0f64, false);
    for (o, r) in out.iter().zip(reference) {
        let o = o.to_f64();
        bad |= !o.is_finite();
        num += (o - r) * (o - r);
        den += r * r;
    }
    ((num / den.max(1e-300)).sqrt(), bad)
}

impl<'a> GemmBf16Bench<'a> {
    /// Fresh random inputs (uniform in [-1, 1)) and the reference output.
    pub fn new(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        reference: &GemmBf16Reference,
        problem: GemmBf16Problem,
        seed: u64,
    ) -> Result<Self> {
        GemmBf16::supports(&problem)?;
        let (m, n, k) = (problem.m as usize, problem.n as usize, problem.k as usize);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let host_a: Vec<bf16> = (0..m * k)
            .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        let host_b: Vec<bf16> = (0..n * k)
            .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        let a = device.upload(&host_a, "A")?;
        let b = device.upload(&host_b, "B")?;
        let poison = vec![bf16::NAN; m * n];
        let mut c = device.upload(&poison, "C")?;
        reference.launch(&device.stream, &problem, &a, &b, &mut c)?;
        let reference: Vec<f64> = device.download(&c)?.iter().map(|x| x.to_f64()).collect();
        Ok(GemmBf16Bench {
            device,
            compiler,
            bench,
            problem,
            a,
            b,
            c,
            reference,
            kernels: HashMap::new(),
            rotation: Vec::new(),
            poison,
        })
    }

    /// Launch `kernel` once into the poisoned output and compare with the reference.
    fn validate(
        &mut self,
        kernel: &GemmBf16Kernel,
        ws: &mut GemmWorkspace,
    ) -> std::result::Result<f64, Failure> {
        let mut worst = 0.0f64;
        // Twice: the second run shows that split-K counters were left clean.
        for _ in 0..2 {
            self.device
                .stream
                .memcpy_htod(&self.poison, &mut self.c)
                .map_err(|e| Failure {
                    outcome: "launch_failed",
                    reason: format!("poisoning C: {e:?}"),
                })?;
            kernel
                .launch(
                    &self.device.stream,
                    &self.problem,
                    &self.a,
                    &self.b,
                    &mut self.c,
                    ws,
                )
                .map_err(Failure::launch_failed)?;
            let out = self
                .device
                .download(&self.c)
                .map_err(Failure::launch_failed)?;
            let (err, bad) = rel_err(&out, &self.reference);
            if bad || err.is_nan() || err > TOLERANCE {
                return Err(Failure {
                    outcome: "invalid",
                    reason: format!("relative error {err:.3e} (tolerance {TOLERANCE:.0e}), non-finite output: {bad}"),
                });
            }
            worst = worst.max(err);
        }
        Ok(worst)
    }

    /// Launches per steady-state span, and the rotation of inputs it cycles
    /// through (made on first use: enough copies of A and B to exceed 3x L2).
    fn ensure_rotation(&mut self) -> Result<usize> {
        if self.rotation.is_empty() {
            let bytes = 2 * (self.a.len() + self.b.len());
            let copies = (3 * self.device.info.l2_bytes as usize)
                .div_ceil(bytes.max(1))
                .max(2);
            for _ in 0..copies {
                let a = self.device.stream.clone_dtod(&self.a);
                let b = self.device.stream.clone_dtod(&self.b);
                match (a, b) {
                    (Ok(a), Ok(b)) => self.rotation.push((a, b)),
                    (Err(e), _) | (_, Err(e)) => {
                        return Err(kiln_runtime::RuntimeError::OutOfMemory {
                            what: format!("copying inputs for steady-state timing ({:?})", e.0),
                            bytes: bytes * copies,
                        })
                    }
                }
            }
        }
        Ok(self.rotation.len().max(8))
    }

    /// Steady-state time per launch of `config`, back to back over rotated inputs.
    pub fn time_steady(&mut self, config: &GemmBf16Config, reps: usize) -> Result<Measurement> {
        let per = self.ensure_rotation()?;
        let (kernel, ws) = self.kernels.get_mut(&config_key(config)).ok_or_else(|| {
            kiln_runtime::RuntimeError::IllegalConfig {
                config: config_key(config),
                problem: format!("{:?}", self.problem),
                reason: "not prepared".into(),
            }
        })?;
        let stream = self.device.stream.clone();
        let (p, rot, c) = (&self.problem, &self.rotation, &mut self.c);
        let opts = MeasureOptions {
            warmup: 1,
            reps,
            flush_l2: true,
        };
        self.bench.measure_stream(&opts, per, |i| {
            let (a, b) = &rot[i % rot.len()];
            kernel.launch(&stream, p, a, b, c, ws)
        })
    }

    /// Steady-state time per cuBLAS call, back to back over the same rotated inputs.
    pub fn time_steady_cublas(
        &mut self,
        blas: &crate::baseline::CublasBf16,
        reps: usize,
    ) -> Result<Measurement> {
        let per = self.ensure_rotation()?;
        let p = self.problem;
        let (rot, c) = (&self.rotation, &mut self.c);
        let opts = MeasureOptions {
            warmup: 1,
            reps,
            flush_l2: true,
        };
        self.bench.measure_stream(&opts, per, |i| {
            let (a, b) = &rot[i % rot.len()];
            blas.gemm(p.m, p.n, p.k, a, b, c)
        })
    }

    /// Time cuBLAS on the same buffers; also checks its result.
    pub fn time_cublas(
        &mut self,
        blas: &crate::baseline::CublasBf16,
        opts: &MeasureOptions,
    ) -> Result<(Measurement, f64)> {
        let p = self.problem;
        blas.gemm(p.m, p.n, p.k, &self.a, &self.b, &mut self.c)?;
        let (err, _) = rel_err(&self.device.download(&self.c)?, &self.reference);
        let (a, b, c) = (&self.a, &self.b, &mut self.c);
        let m = self
            .bench
            .measure(opts, || blas.gemm(p.m, p.n, p.k, a, b, c))?;
        Ok((m, err))
    }
}

impl Evaluator<GemmBf16Config> for GemmBf16Bench<'_> {
    fn prepare(
        &mut self,
        configs: &[GemmBf16Config],
    ) -> Vec<std::result::Result<Prepared, Failure>> {
        let opts = CompileOptions::default();
        let problem = self.problem;
        let compiler = self.compiler;
        let compiled: Vec<_> = configs
            .par_iter()
            .map(|c| {
                kiln_codegen::render::render::<GemmBf16>(&problem, c)
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
                let kernel = GemmBf16Kernel::from_cubin(self.device, &k.cubin, &problem, c)
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
        config: &GemmBf16Config,
        reps: usize,
    ) -> std::result::Result<Measurement, Failure> {
        let (kernel, ws) = prepared_mut(&mut self.kernels, config)?;
        let stream = self.device.stream.clone();
        let (p, a, b, c) = (&self.problem, &self.a, &self.b, &mut self.c);
        time_candidate(self.bench, reps, || kernel.launch(&stream, p, a, b, c, ws))
    }
}
