//! GPU inputs and timing of the PINN families, `mlp_jet` (u, grad u, Laplacian) and
//! `mlp_jet_backward` (one training step's gradient): one implementation shared by their GPU
//! tests (`tests/gpu_parts/pinn*.rs`) and `kiln bench`.
//!
//! Two ways in: [`jet::time_configs`] / [`backward::time_configs`] time the configs a caller
//! names (the GPU tests' benches, `kiln bench --candidates`) on random inputs of one problem;
//! [`jet::JetBench`] / [`backward::TrainBench`] are the tuner's evaluators (validate each
//! config against the f64 reference, then time it; [`PinnFamily`] names them), which
//! [`tune_pinn`] searches with and `kiln bench` validates its rows through. Every
//! timed run goes through [`kiln_runtime::measure::Bench`] with L2 flushed before it.

use std::marker::PhantomData;

use kiln_codegen::families::mlp_jet::{MlpJet, MlpJetProblem};
use kiln_codegen::families::mlp_jet_backward::{MlpJetBackward, MlpJetBackwardProblem};
use kiln_codegen::{CompileOptions, CompiledKernel, Compiler, Family};
use kiln_runtime::artifact::{Entry, OutputError};
use kiln_runtime::measure::{Bench, Measurement};
use kiln_runtime::{Device, Result as RtResult, RuntimeError};
use rayon::prelude::*;

use crate::roofline;
use crate::search::{config_key, Evaluator, Failure};
use crate::tune::{
    entry_of, run_tuning, search_family, FamilyId, ProblemTuner, TuneOptions, TuneReport, Tuned,
};

pub mod backward;
pub mod jet;

/// One config and its measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Timed<C> {
    pub config: C,
    pub measurement: Measurement,
}

/// The fastest of `times` by median (None when empty).
pub fn fastest<C>(times: &[Timed<C>]) -> Option<&Timed<C>> {
    times
        .iter()
        .min_by(|a, b| a.measurement.median_us.total_cmp(&b.measurement.median_us))
}

/// Why [`jet::time_configs`] or [`backward::time_configs`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum TimingError {
    /// The problem's inputs could not be placed on the device.
    #[error("{family} inputs of {problem}: {source}")]
    Inputs {
        family: &'static str,
        problem: String,
        source: Box<RuntimeError>,
    },
    /// A config could not be compiled, loaded, given its scratch or launched.
    #[error("{family} config {config} on {problem}: {source}")]
    Config {
        family: &'static str,
        /// The config's JSON.
        config: String,
        problem: String,
        source: Box<RuntimeError>,
    },
}

impl TimingError {
    pub fn inputs<F: Family>(p: &F::Problem, source: RuntimeError) -> TimingError {
        TimingError::Inputs {
            family: F::NAME,
            problem: json(p),
            source: Box::new(source),
        }
    }

    pub fn config<F: Family>(p: &F::Problem, c: &F::Config, source: RuntimeError) -> TimingError {
        TimingError::Config {
            family: F::NAME,
            config: json(c),
            problem: json(p),
            source: Box::new(source),
        }
    }
}

fn json<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// Compiles that failed in [`precompile`], one `entry: error` line each.
#[derive(Debug, thiserror::Error)]
#[error("{} kernel(s) failed to compile:\n{}", .0.len(), .0.join("\n"))]
pub struct PrecompileError(pub Vec<String>);

/// Compile every (problem, config) pair in parallel, so the sequential loads that follow are
/// served from the compile cache.
pub fn precompile<F: Family>(
    compiler: &Compiler,
    work: &[(F::Problem, F::Config)],
) -> Result<(), PrecompileError> {
    let errors: Vec<String> = work
        .par_iter()
        .filter_map(|(p, c)| {
            compile_one::<F>(compiler, p, c)
                .err()
                .map(|e| format!("{}: {e}", F::entry(p, c)))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PrecompileError(errors))
    }
}

/// Render `c` for `p` and compile it (through the cache).
fn compile_one<F: Family>(
    compiler: &Compiler,
    p: &F::Problem,
    c: &F::Config,
) -> kiln_codegen::Result<CompiledKernel> {
    kiln_codegen::render::render::<F>(p, c)
        .and_then(|src| compiler.compile(&src, &CompileOptions::default()))
}

/// Compile each of `configs` for `p` in parallel (through the cache): the compiled kernel, or
/// the config's `compile_failed`.
pub(crate) fn compile_all<F: Family>(
    compiler: &Compiler,
    p: &F::Problem,
    configs: &[F::Config],
) -> Vec<std::result::Result<CompiledKernel, Failure>> {
    configs
        .par_iter()
        .map(|c| {
            compile_one::<F>(compiler, p, c).map_err(|e| Failure {
                outcome: "compile_failed",
                reason: e.to_string(),
            })
        })
        .collect()
}

/// An evaluator's `prepare` for the PINN families: compile `configs` in parallel, then load
/// and validate each in order with `load` (its per-output errors and its prepared state, kept
/// in `kernels` under the config's key), reporting each config's errors (the worst of them as
/// its `max_rel_err`) and registers.
pub(crate) fn prepare_each<F: Family, K>(
    compiler: &Compiler,
    p: &F::Problem,
    configs: &[F::Config],
    kernels: &mut std::collections::HashMap<String, K>,
    mut load: impl FnMut(
        &F::Config,
        &CompiledKernel,
    ) -> std::result::Result<(Vec<OutputError>, K), Failure>,
) -> Vec<std::result::Result<crate::search::Prepared, Failure>> {
    let compiled = compile_all::<F>(compiler, p, configs);
    configs
        .iter()
        .zip(compiled)
        .map(|(c, compiled)| {
            let compiled = compiled?;
            let (outputs, state) = load(c, &compiled)?;
            kernels.insert(config_key(c), state);
            Ok(crate::search::Prepared {
                max_rel_err: outputs.iter().map(|o| o.max_rel_err).fold(0.0, f64::max),
                registers: Some(compiled.resources.registers),
                outputs,
            })
        })
        .collect()
}

/// The note every PINN tuning report carries: where its baseline is measured.
pub const PEER_NOTE: &str = "no baseline in the artifact: the peer (PyTorch autograd, TF32 off \
    and on) is timed by benches/peers/pinn_torch.py; `kiln bench --family mlp_jet | \
    mlp_jet_backward --peers FILE` sets the two side by side";

/// The floor a PINN entry's % roofline is counted against: its products at the fp32 FMA rate.
/// tf32x3 configs (three TF32 tensor-core products per multiply-add) can pass it, so it is
/// not a bound: the search gets no floor (it never stops early on "reached the roofline").
fn fp32_floor_us(flops: f64) -> f64 {
    roofline::floor_us(flops, 0.0, roofline::FP32_FLOPS)
}

/// The floor the search stops at: none (see [`fp32_floor_us`]).
const NO_FLOOR_US: f64 = 0.0;

/// What the PINN tuners and `kiln bench` need of a family beyond [`Family`]: the evaluator
/// that validates and times its configs on one problem, and how reports name a problem.
pub trait PinnFamily: Family {
    type Eval<'a>: Evaluator<Self::Config>;
    /// Inputs of `problem` drawn from `seed`, on the device, with their reference.
    fn evaluator<'a>(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        problem: &Self::Problem,
        seed: u64,
    ) -> RtResult<Self::Eval<'a>>;
    /// e.g. `d=2 w128 l4 p1 N=262144 ValueGradLaplacian`.
    fn describe(problem: &Self::Problem) -> String;
}

/// How reports name a PINN net, e.g. `d=2 w128 l4 p1 N=262144`.
fn net(d: u32, width: u32, depth: u32, p: u32, points: u32) -> String {
    format!("d={d} w{width} l{depth} p{p} N={points}")
}

/// Validation against the f64 reference at sampled points of the full problem.
impl PinnFamily for MlpJet {
    type Eval<'a> = jet::JetBench<'a>;

    fn evaluator<'a>(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        problem: &MlpJetProblem,
        seed: u64,
    ) -> RtResult<jet::JetBench<'a>> {
        jet::JetBench::new(device, compiler, bench, *problem, seed)
    }

    fn describe(p: &MlpJetProblem) -> String {
        format!(
            "{} {:?}",
            net(p.d, p.width, p.depth, p.p, p.points),
            p.streams
        )
    }
}

/// Validation against the f64 reference on a reduced point count, and bitwise repeatability
/// at the full one.
impl PinnFamily for MlpJetBackward {
    type Eval<'a> = backward::TrainBench<'a>;

    fn evaluator<'a>(
        device: &'a Device,
        compiler: &'a Compiler,
        bench: &'a mut Bench,
        problem: &MlpJetBackwardProblem,
        seed: u64,
    ) -> RtResult<backward::TrainBench<'a>> {
        backward::TrainBench::new(device, compiler, bench, *problem, seed)
    }

    fn describe(p: &MlpJetBackwardProblem) -> String {
        format!("{} {:?}", net(p.d, p.width, p.depth, p.p, p.points), p.loss)
    }
}

/// A PINN family's tuner: its evaluator, no baseline.
struct PinnTuner<'d, F> {
    device: &'d Device,
    compiler: &'d Compiler,
    limits: kiln_codegen::DeviceLimits,
    family: PhantomData<F>,
}

impl<F: PinnFamily> ProblemTuner for PinnTuner<'_, F> {
    type Problem = F::Problem;

    fn describe(&self, p: &F::Problem) -> String {
        F::describe(p)
    }

    fn tune(
        &mut self,
        bench: &mut Bench,
        problem: &F::Problem,
        seed: u64,
        opts: &TuneOptions,
    ) -> RtResult<Tuned> {
        let floor = fp32_floor_us(F::flops(problem));
        let mut b = F::evaluator(self.device, self.compiler, bench, problem, seed)?;
        let result = search_family::<F, _>(problem, &self.limits, NO_FLOOR_US, &mut b, opts)?;
        Ok(Tuned {
            entry: entry_of::<F>(problem, result, floor, None, Vec::new()),
            notes: vec![PEER_NOTE.into()],
        })
    }

    fn line(&self, p: &F::Problem, entry: &Entry) -> String {
        line(&F::describe(p), F::flops(p), entry)
    }
}

/// The line printed when a PINN problem is tuned: time, TFLOP/s, error (each output's, over
/// its bound, where the family reports them), config.
fn line(problem: &str, flops: f64, entry: &Entry) -> String {
    let err = if entry.outputs.is_empty() {
        format!("{:.1e}", entry.max_rel_err)
    } else {
        entry
            .outputs
            .iter()
            .map(|o| format!("{} {:.1e}/{:.0e}", o.name, o.max_rel_err, o.bound))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "{problem:<32} {:>10.1} us  {:>5.1} TFLOP/s  err {err}  {}",
        entry.median_us,
        flops / (entry.median_us * 1e-6) / 1e12,
        entry.config
    )
}

/// Tune a PINN family (`mlp_jet` or `mlp_jet_backward`) for each problem. No baseline is
/// stored: the PyTorch peer runs outside the process, and each problem's report notes so.
pub fn tune_pinn<F: PinnFamily>(
    device: &Device,
    compiler: &Compiler,
    problems: &[F::Problem],
    opts: &TuneOptions,
) -> RtResult<TuneReport> {
    let family = FamilyId {
        name: F::NAME,
        template: F::TEMPLATE,
    };
    run_tuning(device, compiler, family, problems, opts, || {
        Ok(PinnTuner::<F> {
            device,
            compiler,
            limits: device.info.limits(),
            family: PhantomData,
        })
    })
}

/// max |got - want| / max |want| over a stream or tensor (infinite for a NaN; 0 when empty).
pub fn max_rel<G: Copy + Into<f64>>(got: &[G], want: &[f64]) -> f64 {
    worst_over(got.iter().zip(want).map(|(g, w)| ((*g).into(), *w, 0.0)))
}

/// [`max_rel`] for entries that are sums over points: max |got - want| over the larger of
/// max |want| and max `scale`, where `scale[i]` is the sum of the absolute values of the terms
/// `want[i]` adds up. fp32 arithmetic cannot get such an entry closer than its rounding at
/// that scale, however much the terms cancel (a 859-fold cancelling bias gradient failed a
/// plain relative check at fp32 rounding, run 10 of 2026-11-30 session 10). A missing or
/// wrong term still shows at its own size against the scale. Infinite for a NaN.
pub fn max_rel_scaled<G: Copy + Into<f64>>(got: &[G], want: &[f64], scale: &[f64]) -> f64 {
    assert_eq!(want.len(), scale.len(), "one scale per entry");
    worst_over(
        got.iter()
            .zip(want)
            .zip(scale)
            .map(|((g, w), s)| ((*g).into(), *w, *s)),
    )
}

/// max |got - want| / max(|want|, scale) over (got, want, scale) entries: infinite for a NaN,
/// 0 when there are none.
fn worst_over(entries: impl Iterator<Item = (f64, f64, f64)>) -> f64 {
    let (mut num, mut den, mut any) = (0.0f64, 0.0f64, false);
    for (g, w, s) in entries {
        any = true;
        let e = (g - w).abs();
        num = if e.is_nan() {
            f64::INFINITY
        } else {
            num.max(e)
        };
        den = den.max(w.abs()).max(s);
    }
    if any {
        num / den.max(1e-30)
    } else {
        0.0
    }
}

/// `default` first, then every other config of `candidates` in their order: what a bench
/// times when it reports the default beside the best candidate.
pub fn default_first<C: PartialEq + Clone>(default: &C, candidates: &[C]) -> Vec<C> {
    let mut out = vec![default.clone()];
    out.extend(candidates.iter().filter(|c| *c != default).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(c: u32, us: f64) -> Timed<u32> {
        Timed {
            config: c,
            measurement: Measurement::from_samples(vec![us], true),
        }
    }

    #[test]
    fn the_fastest_is_the_lowest_median_and_none_of_nothing() {
        let t = [timed(1, 5.0), timed(2, 3.0), timed(3, 4.0)];
        assert_eq!(fastest(&t).unwrap().config, 2);
        assert!(fastest::<u32>(&[]).is_none());
    }

    #[test]
    fn reduced_training_checks_cost_about_the_same_and_stay_odd() {
        use kiln_codegen::families::mlp_jet_backward::pinn_targets;
        let n: Vec<u32> = pinn_targets()
            .iter()
            .map(backward::checked_points)
            .collect();
        // 2^28 / (streams x width^2): 3 x 64^2, 4 x 128^2, 22 x 128^2.
        assert_eq!(n, [21845, 4097, 745]);
        let tiny = MlpJetBackwardProblem {
            points: 100,
            ..pinn_targets()[0]
        };
        assert_eq!(
            backward::checked_points(&tiny),
            100,
            "a small problem is checked whole"
        );
        let mid = MlpJetBackwardProblem {
            points: 300,
            ..pinn_targets()[2]
        };
        assert_eq!(backward::checked_points(&mid), 300);
    }

    #[test]
    fn relative_errors_fail_nan_and_ignore_empty_streams() {
        assert_eq!(max_rel(&[1.0, 2.0], &[1.0, 2.5]), 0.2);
        // A cancelling sum: the error against its terms' scale, not its own size.
        assert!((max_rel_scaled(&[1e-3 + 1e-6], &[1e-3], &[1.0]) - 1e-6).abs() < 1e-15);
        assert!(max_rel_scaled(&[1e-3 + 1e-6], &[1e-3], &[1.0]) < max_rel(&[1e-3 + 1e-6], &[1e-3]));
        // Without cancellation (scale = |want|) it is max_rel.
        assert_eq!(max_rel_scaled(&[1.0, 2.0], &[1.0, 2.5], &[1.0, 2.5]), 0.2);
        assert!(max_rel_scaled(&[f32::NAN], &[1.0], &[1.0]).is_infinite());
        assert!(max_rel(&[f64::NAN], &[1.0]).is_infinite());
        assert_eq!(max_rel::<f64>(&[], &[]), 0.0);
        assert!(max_rel(&[f32::NAN], &[1.0]).is_infinite());
        assert!(backward::worst(&[1e-6, f64::NAN]).is_infinite());
        assert_eq!(backward::worst(&[1e-6, 3e-6]), 3e-6);
    }

    #[test]
    fn tune_lines_name_the_net_time_and_rate() {
        let e = Entry {
            problem: serde_json::json!({}),
            config: serde_json::json!({"rows": 4}),
            median_us: 2000.0,
            p20_us: 1990.0,
            p80_us: 2010.0,
            pct_of_roofline: 50.0,
            baseline: None,
            speedup: None,
            extra_baselines: Vec::new(),
            max_rel_err: 3e-6,
            outputs: Vec::new(),
            candidates_tried: 5,
            tuned_at: String::new(),
            candidates: Vec::new(),
        };
        let l = line(&net(2, 128, 4, 1, 262144), 1e11, &e);
        assert!(l.contains("d=2 w128 l4 p1 N=262144"), "{l}");
        assert!(l.contains("2000.0 us") && l.contains("50.0 TFLOP/s"), "{l}");
        assert!(l.contains("\"rows\":4"), "{l}");
        assert!(l.contains("err 3.0e-6"), "{l}");
        let with_outputs = Entry {
            outputs: vec![
                OutputError {
                    name: "u".into(),
                    max_rel_err: 3e-6,
                    bound: 1e-5,
                    fp32_floor: Some(1e-7),
                },
                OutputError {
                    name: "second".into(),
                    max_rel_err: 2.5e-5,
                    bound: 1e-4,
                    fp32_floor: Some(1e-6),
                },
            ],
            ..e
        };
        let l = line(&net(2, 128, 4, 1, 262144), 1e11, &with_outputs);
        assert!(l.contains("err u 3.0e-6/1e-5 second 2.5e-5/1e-4"), "{l}");
    }

    #[test]
    fn jet_outputs_name_each_computed_stream_with_its_bound_and_floor() {
        use kiln_codegen::families::mlp_jet::Streams;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let lap = MlpJetProblem::laplacian(2, 32, 2, 3, 40);
        let case = jet::JetCase::new(&mut rng, lap, Some(8));
        let errs = [1e-6, 2e-6, 3e-5];
        let o = case.outputs(&errs);
        let names: Vec<&str> = o.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["u", "grad", "second"]);
        for (s, e) in o.iter().enumerate() {
            assert_eq!(e.max_rel_err, errs[s]);
            assert_eq!(e.bound, case.bound[s]);
            assert_eq!(e.fp32_floor, Some(case.floor[s]));
        }
        // The second-order bound is the looser tolerance (or the net's floor above it).
        assert!(o[2].bound >= jet::TOL_SECOND && o[0].bound >= jet::TOL_FIRST);
        // A value-only net has no gradient or second-order output to report.
        let value = MlpJetProblem {
            streams: Streams::Value,
            ..lap
        };
        let case = jet::JetCase::new(&mut rng, value, Some(8));
        let o = case.outputs(&[4e-7, 0.0, 0.0]);
        assert_eq!(o.len(), 1);
        assert_eq!((o[0].name.as_str(), o[0].max_rel_err), ("u", 4e-7));
    }

    #[test]
    fn the_default_comes_first_once() {
        assert_eq!(default_first(&3, &[1, 3, 2]), vec![3, 1, 2]);
        assert_eq!(default_first(&9, &[1, 2]), vec![9, 1, 2]);
    }
}
