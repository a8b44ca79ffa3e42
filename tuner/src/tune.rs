//! A tuning run: a family, a list of problems, the search, the baseline, and
//! the artifact written after every problem (so a killed run loses nothing
//! it had measured, and a re-run resumes where it stopped).
//!
//! [`run_tuning`] holds everything families share (lock, artifact, resume, budget, progress,
//! report); a family brings a [`ProblemTuner`] (its bench, reference and baseline):
//! [`tune_gemm_bf16`], [`tune_gemm_fp8`] and [`tune_mfa_decode`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kiln_codegen::families::gemm_bf16::{GemmBf16, GemmBf16Problem};
use kiln_codegen::families::gemm_fp8::{GemmFp8, GemmFp8Problem};
use kiln_codegen::families::mfa_decode::{MfaDecode, MfaDecodeProblem};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::artifact::{
    Artifact, ArtifactDevice, ArtifactToolchain, Baseline, Entry, Staleness,
};
use kiln_runtime::launch::gemm_bf16::GemmBf16Reference;
use kiln_runtime::launch::gemm_fp8_ref::GemmFp8Reference;
use kiln_runtime::measure::{gpu_clock_and_temperature, Bench, MeasureOptions};
use kiln_runtime::{Device, Result, RuntimeError};
use serde::Serialize;

use crate::baseline::{CublasBf16, CublasLtFp8, CUBLASLT_FP8_ROWWISE, CUBLAS_BF16};
use crate::gemm_bf16::GemmBf16Bench;
use crate::gemm_fp8::{choose_baselines, GemmFp8Bench};
use crate::lock::GpuLock;
use crate::mfa_decode::MfaTuner;
use crate::roofline;
use crate::search::{search, Evaluator, SearchOptions, SearchResult};

#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Re-tune problems the artifact already has.
    pub force: bool,
    /// Stop starting new problems after this long.
    pub budget: Option<Duration>,
    /// Folder holding `<gpu-slug>/<family>.json`.
    pub tuned_root: PathBuf,
    pub search: SearchOptions,
    /// Timed runs for the baseline.
    pub baseline_reps: usize,
    pub seed: u64,
    pub progress: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProblemReport {
    pub problem: serde_json::Value,
    /// `tuned`, `skipped` (already in the artifact), `failed`, `out_of_budget`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<Entry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the entry does not say (e.g. why a baseline is missing or stands in for another).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TuneReport {
    pub family: String,
    pub artifact: PathBuf,
    pub notes: Vec<String>,
    pub problems: Vec<ProblemReport>,
    pub elapsed_s: f64,
}

fn now_rfc3339() -> String {
    // Civil-from-days (Howard Hinnant's algorithm), UTC, second precision.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Open (or start) the artifact at `path` for `device`; refuses a foreign or
/// unreadable one unless `force`, and starts afresh when the template changed.
pub fn open_artifact(
    path: &Path,
    family: &str,
    header: ArtifactDevice,
    toolchain: ArtifactToolchain,
    device: &kiln_runtime::DeviceInfo,
    force: bool,
    notes: &mut Vec<String>,
) -> Result<Artifact> {
    let fresh = || Artifact::new(family, header.clone(), toolchain.clone());
    if !path.exists() {
        return Ok(fresh());
    }
    match Artifact::load(path) {
        Err(e) if force => {
            notes.push(format!("{e}; --force: starting a new artifact"));
            Ok(fresh())
        }
        Err(e) => Err(RuntimeError::Artifact {
            path: path.display().to_string(),
            reason: format!(
                "{e}. Nothing was changed; fix or remove it, or pass --force to replace it"
            ),
        }),
        Ok(art) => {
            let stale = art.staleness(device, &toolchain.template_sha256, Some(&toolchain.nvrtc));
            if stale
                .iter()
                .any(|s| matches!(s, Staleness::OtherGpu { .. }))
                && !force
            {
                return Err(RuntimeError::Artifact {
                    path: path.display().to_string(),
                    reason: format!(
                        "{}. Nothing was changed; pass --force to replace it, or --tuned-dir another folder",
                        stale[0]
                    ),
                });
            }
            if stale.is_empty() {
                let mut art = art;
                art.device = header;
                art.toolchain = toolchain;
                return Ok(art);
            }
            notes.extend(
                stale
                    .iter()
                    .map(|s| format!("{}: {s}; its entries are re-tuned", path.display())),
            );
            Ok(fresh())
        }
    }
}

/// Which problems still need tuning: those the artifact lacks, or all with `force`.
pub fn pending(artifact: &Artifact, problems: &[serde_json::Value], force: bool) -> Vec<bool> {
    problems
        .iter()
        .map(|p| force || artifact.find(p).is_none())
        .collect()
}

/// The result of tuning one problem: its artifact entry, and anything a reader should know
/// that the entry does not say (e.g. why a baseline is missing).
#[derive(Clone, Debug)]
pub struct Tuned {
    pub entry: Entry,
    pub notes: Vec<String>,
}

/// A family's part of a tuning run: tuning one problem. Everything around it (the GPU lock,
/// opening and saving the artifact, resume, budget, progress bar and report) is [`run_tuning`]'s,
/// the same for every family.
pub trait ProblemTuner {
    type Problem: Serialize;
    /// How progress messages name a problem, e.g. `m=1 n=48 k=7168`.
    fn describe(&self, problem: &Self::Problem) -> String;
    /// Search the family's candidates for `problem` and time its baseline.
    fn tune(
        &mut self,
        bench: &mut Bench,
        problem: &Self::Problem,
        seed: u64,
        opts: &TuneOptions,
    ) -> Result<Tuned>;
    /// The line printed when a problem is tuned.
    fn line(&self, problem: &Self::Problem, entry: &Entry) -> String;
}

/// Which family an artifact belongs to, and the template its staleness is judged by.
#[derive(Clone, Copy, Debug)]
pub struct FamilyId {
    pub name: &'static str,
    pub template: &'static str,
}

/// Tune `problems` for one family: take the GPU lock, open (or start) its artifact, build the
/// family's tuner with `setup` (references, baselines), then tune each pending problem and save
/// the artifact after each one.
pub fn run_tuning<T: ProblemTuner>(
    device: &Device,
    compiler: &Compiler,
    family: FamilyId,
    problems: &[T::Problem],
    opts: &TuneOptions,
    setup: impl FnOnce() -> Result<T>,
) -> Result<TuneReport> {
    let t0 = Instant::now();
    let _lock = GpuLock::acquire(device.ctx.ordinal())?;
    let (clock, temp) = gpu_clock_and_temperature(device.ctx.ordinal()).unzip();
    let header = ArtifactDevice::from_info(&device.info, clock, temp);
    let template = kiln_codegen::registry::template_sha256(family.template);
    let toolchain = ArtifactToolchain {
        nvrtc: compiler.toolchain().version_string(),
        kiln: kiln_codegen::KILN_VERSION.to_string(),
        template_sha256: template,
    };
    let path = Artifact::path(&opts.tuned_root, &device.info.slug(), family.name);
    let mut notes = Vec::new();
    let mut artifact = open_artifact(
        &path,
        family.name,
        header,
        toolchain,
        &device.info,
        opts.force,
        &mut notes,
    )?;

    let mut tuner = setup()?;
    let mut bench = Bench::new(device)?;

    let bar = if opts.progress {
        ProgressBar::new(problems.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("tune {bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    let reports = tune_problems(
        &mut artifact,
        &path,
        problems,
        opts,
        t0,
        &bar,
        &mut tuner,
        |tuner, p, seed| tuner.tune(&mut bench, p, seed, opts),
    )?;
    bar.finish_and_clear();
    Ok(TuneReport {
        family: family.name.into(),
        artifact: path,
        notes,
        problems: reports,
        elapsed_s: t0.elapsed().as_secs_f64(),
    })
}

/// The loop of a tuning run, without a GPU of its own: for each problem, skip it when the
/// artifact has it (unless `force`), stop starting new ones past the budget (counted from
/// `t0`), otherwise tune it with `tune` and save the artifact at `path` at once, so a killed
/// run keeps every problem it finished and a re-run resumes after them.
#[allow(clippy::too_many_arguments)]
pub fn tune_problems<T: ProblemTuner>(
    artifact: &mut Artifact,
    path: &Path,
    problems: &[T::Problem],
    opts: &TuneOptions,
    t0: Instant,
    bar: &ProgressBar,
    tuner: &mut T,
    mut tune: impl FnMut(&mut T, &T::Problem, u64) -> Result<Tuned>,
) -> Result<Vec<ProblemReport>> {
    let mut reports = Vec::new();
    for (i, problem) in problems.iter().enumerate() {
        let started = Instant::now();
        let pjson = serde_json::to_value(problem).expect("problems serialise");
        bar.set_message(format!(
            "{}: compile, validate, time",
            tuner.describe(problem)
        ));
        let report = |status: &str,
                      entry: Option<Entry>,
                      reason: Option<String>,
                      notes: Vec<String>| ProblemReport {
            problem: pjson.clone(),
            status: status.into(),
            entry,
            reason,
            notes,
            seconds: started.elapsed().as_secs_f64(),
        };
        if !pending(artifact, std::slice::from_ref(&pjson), opts.force)[0] {
            reports.push(report(
                "skipped",
                None,
                Some("already tuned (use --force to re-tune)".into()),
                Vec::new(),
            ));
            bar.inc(1);
            continue;
        }
        if opts.budget.is_some_and(|b| t0.elapsed() > b) {
            reports.push(report(
                "out_of_budget",
                None,
                Some("the time budget ran out before this problem".into()),
                Vec::new(),
            ));
            bar.inc(1);
            continue;
        }
        let seed = opts.seed.wrapping_add(i as u64);
        match tune(tuner, problem, seed) {
            Ok(Tuned { entry, notes }) => {
                artifact.upsert(entry.clone());
                artifact.save(path)?;
                bar.println(tuner.line(problem, &entry));
                reports.push(report("tuned", Some(entry), None, notes));
            }
            Err(e) => reports.push(report("failed", None, Some(e.to_string()), Vec::new())),
        }
        bar.inc(1);
    }
    Ok(reports)
}

/// The best of `candidates` for one problem, by [`search`] over `evaluator`; a typed error with
/// the first few reasons when none passed.
pub(crate) fn search_family<F: Family, E: Evaluator<F::Config>>(
    problem: &F::Problem,
    limits: &kiln_codegen::DeviceLimits,
    floor_us: f64,
    evaluator: &mut E,
    opts: &TuneOptions,
) -> Result<SearchResult<F::Config>> {
    // The family's default config (what dispatch serves untuned) always joins the shortlist: it
    // ranks first, so a wrong analytical estimate can never leave a tuned entry slower than
    // the default (run 21: mfa_decode's latency model ranked the measured B=128 defaults out).
    let default_key = serde_json::to_string(&F::default_config(problem)).ok();
    let candidates: Vec<_> = F::candidates(problem, limits)
        .into_iter()
        .map(|c| {
            let est = if serde_json::to_string(&c).ok() == default_key {
                f64::NEG_INFINITY
            } else {
                F::estimate_us(problem, &c, limits)
            };
            (c, est)
        })
        .collect();
    let result = search(candidates, floor_us, evaluator, &opts.search);
    if result.winner.is_none() {
        // The reasons of candidates that ran (compile, launch, validation) before those the
        // estimate pruned: they say why nothing passed.
        let mut records: Vec<_> = result.records.iter().collect();
        records.sort_by_key(|r| r.outcome == "pruned");
        let reasons: Vec<String> = records
            .iter()
            .filter_map(|r| r.reason.as_ref().map(|x| format!("{}: {x}", r.outcome)))
            .take(3)
            .collect();
        return Err(RuntimeError::NoValidCandidate {
            family: F::NAME.into(),
            problem: format!("{problem:?}"),
            reasons: reasons.join(" | "),
        });
    }
    Ok(result)
}

/// The artifact entry of a search's winner; `floor_us` is the problem's roofline time.
pub(crate) fn entry_of<F: Family>(
    problem: &F::Problem,
    result: SearchResult<F::Config>,
    floor_us: f64,
    baseline: Option<Baseline>,
    extra_baselines: Vec<Baseline>,
) -> Entry {
    let (config, m, prepared) = result.winner.expect("search_family returns a winner");
    Entry {
        problem: serde_json::to_value(problem).expect("problems serialise"),
        config: serde_json::to_value(&config).expect("configs serialise"),
        median_us: m.median_us,
        p20_us: m.p20_us,
        p80_us: m.p80_us,
        pct_of_roofline: 100.0 * floor_us / m.median_us,
        speedup: baseline.as_ref().map(|b| b.median_us / m.median_us),
        baseline,
        extra_baselines,
        max_rel_err: prepared.max_rel_err,
        outputs: prepared.outputs,
        candidates_tried: result.tried,
        tuned_at: now_rfc3339(),
        candidates: result.records,
    }
}

/// `gemm_bf16`'s tuner: the naive GPU reference and cuBLAS.
struct Bf16Tuner<'d> {
    device: &'d Device,
    compiler: &'d Compiler,
    reference: GemmBf16Reference,
    blas: CublasBf16,
    limits: kiln_codegen::DeviceLimits,
}

impl ProblemTuner for Bf16Tuner<'_> {
    type Problem = GemmBf16Problem;

    fn describe(&self, p: &GemmBf16Problem) -> String {
        format!("m={} n={} k={}", p.m, p.n, p.k)
    }

    fn tune(
        &mut self,
        bench: &mut Bench,
        problem: &GemmBf16Problem,
        seed: u64,
        opts: &TuneOptions,
    ) -> Result<Tuned> {
        let floor = roofline::floor_us(
            GemmBf16::flops(problem),
            GemmBf16::min_bytes(problem),
            roofline::BF16_FLOPS,
        );
        let mut b = GemmBf16Bench::new(
            self.device,
            self.compiler,
            bench,
            &self.reference,
            *problem,
            seed,
        )?;
        let result = search_family::<GemmBf16, _>(problem, &self.limits, floor, &mut b, opts)?;
        let base_opts = MeasureOptions {
            warmup: 3,
            reps: opts.baseline_reps,
            flush_l2: true,
        };
        let (base, _base_err) = b.time_cublas(&self.blas, &base_opts)?;
        let baseline = Baseline::timed(CUBLAS_BF16, base.median_us);
        Ok(Tuned {
            entry: entry_of::<GemmBf16>(problem, result, floor, Some(baseline), Vec::new()),
            notes: Vec::new(),
        })
    }

    fn line(&self, problem: &GemmBf16Problem, entry: &Entry) -> String {
        format!(
            "m={:>5} n={:>6} k={:>5}  {:>9.2} us  cuBLAS {:>9.2} us  x{:.2}  {:>5.1}% roofline  err {:.1e}",
            problem.m,
            problem.n,
            problem.k,
            entry.median_us,
            entry.baseline.as_ref().map(|b| b.median_us).unwrap_or(f64::NAN),
            entry.speedup.unwrap_or(f64::NAN),
            entry.pct_of_roofline,
            entry.max_rel_err
        )
    }
}

/// Tune `gemm_bf16` for each problem.
pub fn tune_gemm_bf16(
    device: &Device,
    compiler: &Compiler,
    problems: &[GemmBf16Problem],
    opts: &TuneOptions,
) -> Result<TuneReport> {
    let family = FamilyId {
        name: GemmBf16::NAME,
        template: GemmBf16::TEMPLATE,
    };
    run_tuning(device, compiler, family, problems, opts, || {
        Ok(Bf16Tuner {
            device,
            compiler,
            reference: GemmBf16Reference::compile(device, compiler)?,
            blas: CublasBf16::new(device)?,
            limits: device.info.limits(),
        })
    })
}

/// `gemm_fp8`'s tuner: the naive GPU reference and cuBLASLt (block-scaled, row-wise).
struct Fp8Tuner<'d> {
    device: &'d Device,
    compiler: &'d Compiler,
    reference: GemmFp8Reference,
    lt: CublasLtFp8,
    limits: kiln_codegen::DeviceLimits,
}

impl ProblemTuner for Fp8Tuner<'_> {
    type Problem = GemmFp8Problem;

    fn describe(&self, p: &GemmFp8Problem) -> String {
        format!("m={} n={} k={}", p.m, p.n, p.k)
    }

    fn tune(
        &mut self,
        bench: &mut Bench,
        problem: &GemmFp8Problem,
        seed: u64,
        opts: &TuneOptions,
    ) -> Result<Tuned> {
        GemmFp8::supports(problem)?;
        let floor = roofline::floor_us(
            GemmFp8::flops(problem),
            GemmFp8::min_bytes(problem),
            roofline::FP8_FLOPS,
        );
        let mut b = GemmFp8Bench::new(
            self.device,
            self.compiler,
            bench,
            &self.reference,
            *problem,
            seed,
        )?;
        let result = search_family::<GemmFp8, _>(problem, &self.limits, floor, &mut b, opts)?;
        let base_opts = MeasureOptions {
            warmup: 3,
            reps: opts.baseline_reps,
            flush_l2: true,
        };
        let choice = choose_baselines(&b.run_baselines(&self.lt, &base_opts));
        Ok(Tuned {
            entry: entry_of::<GemmFp8>(problem, result, floor, choice.primary, choice.extra),
            notes: choice.notes,
        })
    }

    fn line(&self, problem: &GemmFp8Problem, entry: &Entry) -> String {
        let rowwise = entry
            .extra_baselines
            .iter()
            .find(|b| b.name == CUBLASLT_FP8_ROWWISE)
            .map(|b| format!("  rowwise {:.2} us", b.median_us))
            .unwrap_or_default();
        format!(
            "m={:>5} n={:>6} k={:>5}  {:>9.2} us  {} {:>9.2} us{rowwise}  x{:.2}  {:>5.1}% roofline  err {:.1e}",
            problem.m,
            problem.n,
            problem.k,
            entry.median_us,
            entry.baseline.as_ref().map(|b| b.name.as_str()).unwrap_or("no baseline"),
            entry.baseline.as_ref().map(|b| b.median_us).unwrap_or(f64::NAN),
            entry.speedup.unwrap_or(f64::NAN),
            entry.pct_of_roofline,
            entry.max_rel_err
        )
    }
}

/// Tune `gemm_fp8` for each problem. The stored baseline is cuBLASLt with the same block
/// scaling; where it has none for a shape, cuBLASLt with row-wise scales, named so; the
/// row-wise time is kept beside the block one otherwise.
pub fn tune_gemm_fp8(
    device: &Device,
    compiler: &Compiler,
    problems: &[GemmFp8Problem],
    opts: &TuneOptions,
) -> Result<TuneReport> {
    let family = FamilyId {
        name: GemmFp8::NAME,
        template: GemmFp8::TEMPLATE,
    };
    run_tuning(device, compiler, family, problems, opts, || {
        Ok(Fp8Tuner {
            device,
            compiler,
            reference: GemmFp8Reference::compile(device, compiler)?,
            lt: CublasLtFp8::new(device)?,
            limits: device.info.limits(),
        })
    })
}

/// Tune `mfa_decode` for each problem. No baseline is stored: the peer (PyTorch SDPA) is timed
/// outside the process, and each problem's report notes so.
pub fn tune_mfa_decode(
    device: &Device,
    compiler: &Compiler,
    problems: &[MfaDecodeProblem],
    opts: &TuneOptions,
) -> Result<TuneReport> {
    let family = FamilyId {
        name: MfaDecode::NAME,
        template: MfaDecode::TEMPLATE,
    };
    run_tuning(device, compiler, family, problems, opts, || {
        Ok(MfaTuner {
            device,
            compiler,
            limits: device.info.limits(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{Failure, Prepared};
    use kiln_codegen::families::mlp_jet_backward::{pinn_targets, MlpJetBackward};
    use kiln_runtime::measure::Measurement;

    /// Every candidate fails validation.
    struct Invalid;

    impl<C> Evaluator<C> for Invalid {
        fn prepare(&mut self, configs: &[C]) -> Vec<std::result::Result<Prepared, Failure>> {
            configs
                .iter()
                .map(|_| {
                    Err(Failure {
                        outcome: "invalid",
                        reason: "relative error 1e0".into(),
                    })
                })
                .collect()
        }
        fn time(&mut self, _: &C, _: usize) -> std::result::Result<Measurement, Failure> {
            unreachable!("nothing was prepared")
        }
    }

    #[test]
    fn a_failed_search_names_why_the_candidates_that_ran_failed() {
        let opts = TuneOptions {
            force: false,
            budget: None,
            tuned_root: PathBuf::from("unused"),
            search: SearchOptions {
                shortlist: 4,
                exhaustive_max: 4,
                per_class_min: 0,
                ..Default::default()
            },
            baseline_reps: 1,
            seed: 1,
            progress: false,
        };
        let p = pinn_targets()[1];
        let limits = kiln_codegen::DeviceLimits::HOPPER;
        // More candidates than the shortlist: some are pruned, the rest fail validation.
        assert!(MlpJetBackward::candidates(&p, &limits).len() > 4);
        let Err(err) = search_family::<MlpJetBackward, _>(&p, &limits, 0.0, &mut Invalid, &opts)
        else {
            panic!("no candidate passes validation, yet the search succeeded");
        };
        let err = err.to_string();
        assert!(err.contains("invalid: relative error 1e0"), "{err}");
        assert!(!err.contains("pruned"), "{err}");
    }
}
