//! `kiln bench`: re-measure the kernels of a family side by side with their baselines, and
//! gate on regressions against an earlier run.
//!
//! One driver per family: `gemm_bf16` and `gemm_fp8` time their tuned artifact against cuBLAS /
//! cuBLASLt in the same process; `mfa_decode` times its tuned artifact, `mlp_jet` and
//! `mlp_jet_backward` the PINN target nets with the configs dispatch serves (tuned artifact,
//! else the family default), and these three take their baselines from a Python peer's JSON
//! (`--peers`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln_codegen::families::gemm_bf16::GemmBf16;
use kiln_codegen::families::gemm_fp8::GemmFp8;
use kiln_codegen::families::mfa_decode::MfaDecode;
use kiln_codegen::families::mlp_jet::{self, MlpJet};
use kiln_codegen::families::mlp_jet_backward::{self, MlpJetBackward};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::artifact::{Artifact, Baseline, OutputError};
use kiln_runtime::dispatch::{Dispatch, Source};
use kiln_runtime::measure::{Bench, Measurement};
use kiln_runtime::Device;
use kiln_tuner::search::{Evaluator, Prepared};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::table::compact;
use crate::CliResult;

mod gemm;
mod mfa;
mod peers;
mod pinn;
mod report;

use peers::{PeerSource, Peers};

/// The families `kiln bench` has a driver for.
pub const DRIVERS: &str = "gemm_bf16, gemm_fp8, mfa_decode, mlp_jet, mlp_jet_backward";
/// What `--compare` and `--from` files are written as (2: `baseline_us`, `speedup`,
/// `pct_of_roofline` and `max_rel_err` may be null; `weight_tb_s` and `kv_tb_s` optional).
pub const SCHEMA: u32 = 2;
/// A row's `baseline` when it has none.
pub const NO_BASELINE: &str = "none";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "family {family} has no `kiln bench` driver (its GPU tests benchmark it: \
         tests/gpu_parts); drivers: {DRIVERS}"
    )]
    NoDriver { family: String },
    #[error("{option} is for {applies}, not {family}")]
    OptionNotFor {
        option: &'static str,
        family: String,
        applies: &'static str,
    },
    #[error("{}: {reason}", path.display())]
    BenchFile { path: PathBuf, reason: String },
    #[error(
        "{}: holds no {family} problem this kiln can read; re-run `{tune_command}`",
        path.display()
    )]
    EmptyArtifact {
        path: PathBuf,
        family: &'static str,
        tune_command: String,
    },
    #[error("{family} {problem} with {config}: {outcome}: {reason}")]
    Kernel {
        family: &'static str,
        problem: String,
        config: String,
        outcome: &'static str,
        reason: String,
    },
    #[error(
        "--compare {}: no row for any (family, problem) benched here ({families}): nothing to \
         gate on",
        path.display()
    )]
    NothingCompared { path: PathBuf, families: String },
}

/// `5%`, `0.05` or `5` (percent when > 1).
pub fn parse_threshold(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches('%');
    let v: f64 = t
        .parse()
        .map_err(|_| format!("`{s}` is not a threshold (e.g. 5%)"))?;
    Ok(if s.contains('%') || v > 1.0 {
        v / 100.0
    } else {
        v
    })
}

/// The fastest of the configs timed beside the served one (`--candidates`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestCandidate {
    pub config: Value,
    pub median_us: f64,
    pub p20_us: f64,
    pub p80_us: f64,
    /// Configs timed (the served one among them).
    pub of: usize,
}

/// One row of `kiln bench`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRow {
    pub family: String,
    pub problem: Value,
    pub config: Value,
    /// Where `config` came from: the tuned artifact (exact problem or nearest bucket) or the
    /// family's default, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_source: Option<String>,
    pub kiln_us: f64,
    pub kiln_p20_us: f64,
    pub kiln_p80_us: f64,
    /// The baseline's name; [`NO_BASELINE`] when the row has none (a family whose peer is a
    /// Python script benched without `--peers`, or a problem the peer did not time).
    pub baseline: String,
    #[serde(default)]
    pub baseline_us: Option<f64>,
    /// `baseline_us / kiln_us`.
    #[serde(default)]
    pub speedup: Option<f64>,
    /// None where kiln has no ceiling for the work. The PINN families count theirs against the
    /// fp32 FMA issue rate, which their tensor-core configs (tf32x3, split16) can pass.
    #[serde(default)]
    pub pct_of_roofline: Option<f64>,
    /// Weight (B operand) bandwidth, TB/s (GEMM families).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_tb_s: Option<f64>,
    /// mfa_decode: `MfaDecode::min_bytes` (K and V with FP8 scales, Q, O) / time, TB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_tb_s: Option<f64>,
    pub tflops: f64,
    /// The kernel's error against the family's reference in this run; None where the bench
    /// does not validate (rows read from files written before it did).
    #[serde(default)]
    pub max_rel_err: Option<f64>,
    /// Each output's error and bound, where the family checks several (mlp_jet: u, grad,
    /// second; mlp_jet_backward: gradients, loss); `max_rel_err` is their worst.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputError>,
    /// Steady state (`--steady`): per-launch time of back-to-back launches
    /// over inputs rotated past 2x L2, kiln and baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kiln_steady_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_steady_us: Option<f64>,
    /// Other peers timed beside the baseline (gemm_fp8: cuBLASLt with row-wise scales; the
    /// Python peers' slower variants).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_baselines: Vec<Baseline>,
    /// `--candidates`: the fastest legal config, timed beside the served one in the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_candidate: Option<BestCandidate>,
}

impl BenchRow {
    /// A row of `family` timed at `m`, with no baseline and none of the optional figures.
    pub fn measured(family: &str, problem: Value, config: Value, m: &Measurement) -> BenchRow {
        BenchRow {
            family: family.to_string(),
            problem,
            config,
            config_source: None,
            kiln_us: m.median_us,
            kiln_p20_us: m.p20_us,
            kiln_p80_us: m.p80_us,
            baseline: NO_BASELINE.into(),
            baseline_us: None,
            speedup: None,
            pct_of_roofline: None,
            weight_tb_s: None,
            kv_tb_s: None,
            tflops: 0.0,
            max_rel_err: None,
            outputs: Vec::new(),
            kiln_steady_us: None,
            baseline_steady_us: None,
            other_baselines: Vec::new(),
            best_candidate: None,
        }
    }

    /// Name `name`, timed at `us`, as the baseline (the speedup only for a positive time of
    /// kiln's, so no NaN or infinity reaches the file).
    pub fn set_baseline(&mut self, name: &str, us: f64) {
        self.baseline = name.to_string();
        self.baseline_us = Some(us);
        self.speedup = (self.kiln_us.is_finite() && self.kiln_us > 0.0).then(|| us / self.kiln_us);
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchFile {
    pub schema: u32,
    pub device: Value,
    pub method: String,
    /// An empty kernel timed the same way: the floor every row includes.
    #[serde(default)]
    pub empty_kernel_us: Option<f64>,
    /// Where the rows' baselines came from when a Python peer timed them (`--peers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<PeerSource>,
    pub rows: Vec<BenchRow>,
}

/// What `kiln bench` was asked for.
pub struct BenchArgs {
    pub family: Option<String>,
    pub tuned_dir: PathBuf,
    pub json: Option<PathBuf>,
    pub compare: Option<PathBuf>,
    pub threshold: String,
    pub from: Option<PathBuf>,
    pub reps: usize,
    pub steady: bool,
    pub peers: Option<PathBuf>,
    pub candidates: bool,
    /// Report a measured row past the threshold without measuring again to confirm it.
    pub no_confirm: bool,
}

/// The family drivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    GemmBf16,
    GemmFp8,
    MfaDecode,
    MlpJet,
    MlpJetBackward,
}

impl Driver {
    fn of(family: &str) -> Option<Driver> {
        Some(match family {
            GemmBf16::NAME => Driver::GemmBf16,
            GemmFp8::NAME => Driver::GemmFp8,
            MfaDecode::NAME => Driver::MfaDecode,
            MlpJet::NAME => Driver::MlpJet,
            MlpJetBackward::NAME => Driver::MlpJetBackward,
            _ => return None,
        })
    }

    fn is_gemm(self) -> bool {
        matches!(self, Driver::GemmBf16 | Driver::GemmFp8)
    }

    fn is_pinn(self) -> bool {
        matches!(self, Driver::MlpJet | Driver::MlpJetBackward)
    }
}

fn read_bench_file(path: &Path) -> Result<BenchFile, BenchError> {
    let bytes = std::fs::read(path).map_err(|e| BenchError::BenchFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| BenchError::BenchFile {
        path: path.to_path_buf(),
        reason: format!("not a kiln bench file ({e})"),
    })
}

pub fn bench(a: BenchArgs) -> CliResult {
    let threshold = parse_threshold(&a.threshold)?;
    let family = a.family.as_deref().unwrap_or(GemmBf16::NAME);
    kiln_codegen::find_family(family)?;
    let file = match &a.from {
        Some(path) => {
            let mut file = read_bench_file(path)?;
            if let Some(peers_path) = &a.peers {
                // The family the peer serves: --family, else the first row's.
                let fam = a
                    .family
                    .clone()
                    .or_else(|| file.rows.first().map(|r| r.family.clone()))
                    .unwrap_or_else(|| family.to_string());
                let peers = Peers::read(peers_path, &fam)?;
                if let Some(name) = file.device.get("name").and_then(Value::as_str) {
                    peers.check_device(name)?;
                }
                let problems: Vec<Value> = file
                    .rows
                    .iter()
                    .filter(|r| r.family == fam)
                    .map(|r| r.problem.clone())
                    .collect();
                peers.require_match(&problems)?;
                peers.attach(&mut file);
            }
            file
        }
        None => measure(family, &a)?,
    };
    report::print_bench(&file);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&file)?)?;
    }
    let Some(old_path) = a.compare.clone() else {
        return Ok(ExitCode::SUCCESS);
    };
    let old = read_bench_file(&old_path)?;
    let (mut regressions, compared) = compare_bench(&old, &file, threshold);
    // A measured row past the threshold is measured once more (the whole bench: rows share one
    // GPU state), and stays a regression only if it is past the threshold again. The largest
    // FFN GEMMs moved 5-7% between two benches of one GPU call on unchanged code (BENCHMARKS,
    // 2026-11-30, session 12), which a 5% gate would otherwise report.
    if !regressions.is_empty() && a.from.is_none() && !a.no_confirm {
        println!(
            "{} row(s) past {:.1}% against {}: measuring again to confirm",
            regressions.len(),
            threshold * 100.0,
            old_path.display()
        );
        let again = measure(family, &a)?;
        regressions = confirm_regressions(&old, &file, &again, threshold);
    }
    if compared == 0 {
        let mut families: Vec<&str> = file.rows.iter().map(|r| r.family.as_str()).collect();
        families.dedup();
        return Err(BenchError::NothingCompared {
            path: old_path,
            families: families.join(", "),
        }
        .into());
    }
    if regressions.is_empty() {
        println!(
            "no regression past {:.1}% against {} ({compared} rows compared)",
            threshold * 100.0,
            old_path.display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for r in &regressions {
            eprintln!("REGRESSION {r}");
        }
        eprintln!(
            "{} regression(s) past {:.1}% against {}",
            regressions.len(),
            threshold * 100.0,
            old_path.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Check the options against `family`'s driver, read the peers file (before any GPU work, so
/// a bad one costs nothing), and measure.
fn measure(family: &str, a: &BenchArgs) -> Result<BenchFile, Box<dyn std::error::Error>> {
    let driver = Driver::of(family).ok_or_else(|| BenchError::NoDriver {
        family: family.to_string(),
    })?;
    let not_for = |option, applies| BenchError::OptionNotFor {
        option,
        family: family.to_string(),
        applies,
    };
    if a.steady && !driver.is_gemm() {
        return Err(not_for("--steady", "gemm_bf16 and gemm_fp8").into());
    }
    if a.candidates && !driver.is_pinn() {
        return Err(not_for(
            "--candidates",
            "the PINN families (mlp_jet, mlp_jet_backward), whose bench problems are fixed; \
             other families' candidates are measured by `kiln tune`",
        )
        .into());
    }
    let peers = match &a.peers {
        Some(path) => Some(Peers::read(path, family)?),
        None => None,
    };
    let peers = peers.as_ref();
    let (dir, reps) = (a.tuned_dir.as_path(), a.reps);
    Ok(match driver {
        Driver::GemmBf16 => gemm::measure_bf16(dir, reps, a.steady)?,
        Driver::GemmFp8 => gemm::measure_fp8(dir, reps, a.steady)?,
        Driver::MfaDecode => mfa::measure(dir, reps, peers)?,
        Driver::MlpJet => pinn::measure::<MlpJet>(
            &mlp_jet::pinn_targets(),
            kiln_tuner::pinn::jet::time_configs,
            dir,
            reps,
            a.candidates,
            peers,
        )?,
        Driver::MlpJetBackward => pinn::measure::<MlpJetBackward>(
            &mlp_jet_backward::pinn_targets(),
            kiln_tuner::pinn::backward::time_configs,
            dir,
            reps,
            a.candidates,
            peers,
        )?,
    })
}

/// The row of `file` for the same (family, problem) as `row`.
fn counterpart<'a>(file: &'a BenchFile, row: &BenchRow) -> Option<&'a BenchRow> {
    file.rows
        .iter()
        .find(|x| x.family == row.family && x.problem == row.problem)
}

/// Rows of `new` slower than the same (family, problem) in `old` by more than `threshold`, and
/// how many rows of `new` had a counterpart in `old`.
pub fn compare_bench(old: &BenchFile, new: &BenchFile, threshold: f64) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut compared = 0;
    for n in &new.rows {
        let Some(o) = counterpart(old, n) else {
            continue;
        };
        compared += 1;
        let ratio = n.kiln_us / o.kiln_us;
        if ratio > 1.0 + threshold {
            out.push(format!(
                "{} {}: {:.2} us, was {:.2} us (+{:.1}%)",
                n.family,
                compact(&n.problem),
                n.kiln_us,
                o.kiln_us,
                (ratio - 1.0) * 100.0
            ));
        }
    }
    (out, compared)
}

/// The rows of `first` past `threshold` against `old` that are past it in `second` too (a
/// second measurement of the same rows), each reported with both times. A row the second
/// measurement lacks cannot be cleared, so it stays a regression.
pub fn confirm_regressions(
    old: &BenchFile,
    first: &BenchFile,
    second: &BenchFile,
    threshold: f64,
) -> Vec<String> {
    let find = |f: &BenchFile, r: &BenchRow| counterpart(f, r).map(|x| x.kiln_us);
    let mut out = Vec::new();
    for n in &first.rows {
        let Some(was) = find(old, n) else {
            continue;
        };
        let worse = |us: f64| us / was > 1.0 + threshold;
        if !worse(n.kiln_us) {
            continue;
        }
        let Some(again) = find(second, n) else {
            out.push(format!(
                "{} {}: {:.2} us, was {:.2} us (+{:.1}%; not in the second measurement)",
                n.family,
                compact(&n.problem),
                n.kiln_us,
                was,
                (n.kiln_us / was - 1.0) * 100.0
            ));
            continue;
        };
        if worse(again) {
            out.push(format!(
                "{} {}: {:.2} and {:.2} us (measured twice), was {:.2} us (+{:.1}%, +{:.1}%)",
                n.family,
                compact(&n.problem),
                n.kiln_us,
                again,
                was,
                (n.kiln_us / was - 1.0) * 100.0,
                (again / was - 1.0) * 100.0
            ));
        }
    }
    out
}

/// Device 0, the compiler, the timing harness and the empty-kernel floor: what every driver
/// opens first.
struct Gpu {
    device: Device,
    compiler: Compiler,
    bench: Bench,
    empty_kernel_us: f64,
}

impl Gpu {
    fn open(reps: usize) -> Result<Gpu, Box<dyn std::error::Error>> {
        let device = Device::open(0)?;
        let compiler = Compiler::new()?;
        let mut bench = Bench::new(&device)?;
        let empty_kernel_us = bench.empty_kernel_us(&compiler, reps)?;
        Ok(Gpu {
            device,
            compiler,
            bench,
            empty_kernel_us,
        })
    }

    /// The bench file of `rows` measured on this GPU the way `method` says, with the peer
    /// baselines of `peers` filled in.
    fn file(
        &self,
        method: String,
        rows: Vec<BenchRow>,
        peers: Option<&Peers>,
    ) -> Result<BenchFile, serde_json::Error> {
        let mut file = BenchFile {
            schema: SCHEMA,
            device: serde_json::to_value(&self.device.info)?,
            empty_kernel_us: Some(self.empty_kernel_us),
            method,
            peers: None,
            rows,
        };
        if let Some(peers) = peers {
            peers.attach(&mut file);
        }
        Ok(file)
    }
}

/// How a row names where its config came from.
fn source_label(s: &Source) -> String {
    match s {
        Source::Exact => "tuned for this problem".into(),
        Source::Bucket {
            tuned_for,
            distance,
        } => format!(
            "tuned for {} (nearest bucket, distance {distance})",
            compact(tuned_for)
        ),
        Source::Default { why } => format!("family default ({why})"),
    }
}

/// A family's dispatch table and the problems of its artifact.
type TunedProblems<F> = (Dispatch<F>, Vec<<F as Family>::Problem>);

/// The dispatch table of family `F` loaded from `tuned_dir` for this device (its notes printed)
/// and the problems its artifact holds; an error naming `tune_command` when there is no usable
/// artifact or it holds no readable problem.
fn tuned_problems<F: Family>(
    tuned_dir: &Path,
    device: &Device,
    compiler: &Compiler,
    tune_command: &str,
) -> Result<TunedProblems<F>, Box<dyn std::error::Error>> {
    let path = Artifact::path(tuned_dir, &device.info.slug(), F::NAME);
    let dispatch = Dispatch::<F>::load(
        tuned_dir,
        &device.info,
        Some(&compiler.toolchain().version_string()),
    );
    for n in &dispatch.notes {
        eprintln!("note: {n}");
    }
    let art = dispatch.artifact().ok_or_else(|| {
        format!(
            "no usable artifact at {}: run `{tune_command}` first",
            path.display()
        )
    })?;
    let problems: Vec<F::Problem> = art
        .entries
        .iter()
        .filter_map(|e| serde_json::from_value(e.problem.clone()).ok())
        .collect();
    if problems.is_empty() {
        return Err(BenchError::EmptyArtifact {
            path,
            family: F::NAME,
            tune_command: tune_command.to_string(),
        }
        .into());
    }
    Ok((dispatch, problems))
}

/// Validate `config` on `problem` through a tuner's family bench, then time it with `reps`
/// runs: the validated state and the measurement, or the kernel's failure (either step) as a
/// typed error naming the family, `problem` (as the family describes it) and the config.
fn validate_and_time<F: Family, E: Evaluator<F::Config>>(
    bench: &mut E,
    problem: String,
    config: &F::Config,
    reps: usize,
) -> Result<(Prepared, Measurement), BenchError> {
    let kernel_error = |outcome, reason| BenchError::Kernel {
        family: F::NAME,
        problem: problem.clone(),
        config: serde_json::to_string(config).unwrap_or_else(|_| format!("{config:?}")),
        outcome,
        reason,
    };
    let prepared = match bench.prepare(std::slice::from_ref(config)).pop() {
        Some(Ok(prepared)) => prepared,
        Some(Err(f)) => return Err(kernel_error(f.outcome, f.reason)),
        None => return Err(kernel_error("launch_failed", "not prepared".into())),
    };
    let m = bench
        .time(config, reps)
        .map_err(|f| kernel_error(f.outcome, f.reason))?;
    Ok((prepared, m))
}

#[cfg(test)]
mod tests;
