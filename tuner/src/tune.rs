//! A tuning run: a family, a list of problems, the search, the baseline, and
//! the artifact written after every problem (so a killed run loses nothing
//! it had measured, and a re-run resumes where it stopped).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kiln_codegen::families::gemm_bf16::{GemmBf16, GemmBf16Problem};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::artifact::{
    Artifact, ArtifactDevice, ArtifactToolchain, Baseline, Entry, Staleness,
};
use kiln_runtime::launch::gemm_bf16::GemmBf16Reference;
use kiln_runtime::measure::{gpu_clock_and_temperature, Bench, MeasureOptions};
use kiln_runtime::{Device, Result, RuntimeError};
use serde::Serialize;

use crate::baseline::{CublasBf16, CUBLAS_BF16};
use crate::gemm_bf16::GemmBf16Bench;
use crate::lock::GpuLock;
use crate::roofline;
use crate::search::{search, SearchOptions};

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

/// Tune `gemm_bf16` for each problem.
pub fn tune_gemm_bf16(
    device: &Device,
    compiler: &Compiler,
    problems: &[GemmBf16Problem],
    opts: &TuneOptions,
) -> Result<TuneReport> {
    let t0 = Instant::now();
    let _lock = GpuLock::acquire(device.ctx.ordinal())?;
    let (clock, temp) = gpu_clock_and_temperature(device.ctx.ordinal()).unzip();
    let header = ArtifactDevice::from_info(&device.info, clock, temp);
    let template = kiln_codegen::registry::template_sha256(GemmBf16::TEMPLATE);
    let toolchain = ArtifactToolchain {
        nvrtc: compiler.toolchain().version_string(),
        kiln: kiln_codegen::KILN_VERSION.to_string(),
        template_sha256: template,
    };
    let path = Artifact::path(&opts.tuned_root, &device.info.slug(), GemmBf16::NAME);
    let mut notes = Vec::new();
    let mut artifact = open_artifact(
        &path,
        GemmBf16::NAME,
        header,
        toolchain,
        &device.info,
        opts.force,
        &mut notes,
    )?;

    let reference = GemmBf16Reference::compile(device, compiler)?;
    let blas = CublasBf16::new(device)?;
    let mut bench = Bench::new(device)?;
    let limits = device.info.limits();

    let bar = if opts.progress {
        ProgressBar::new(problems.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("tune {bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    let mut reports = Vec::new();
    for (i, problem) in problems.iter().enumerate() {
        let started = Instant::now();
        let pjson = serde_json::to_value(problem).expect("problems serialise");
        bar.set_message(format!(
            "m={} n={} k={}: compile, validate, time",
            problem.m, problem.n, problem.k
        ));
        let report = |status: &str, entry: Option<Entry>, reason: Option<String>| ProblemReport {
            problem: pjson.clone(),
            status: status.into(),
            entry,
            reason,
            seconds: started.elapsed().as_secs_f64(),
        };
        if !pending(&artifact, std::slice::from_ref(&pjson), opts.force)[0] {
            reports.push(report(
                "skipped",
                None,
                Some("already tuned (use --force to re-tune)".into()),
            ));
            bar.inc(1);
            continue;
        }
        if opts.budget.is_some_and(|b| t0.elapsed() > b) {
            reports.push(report(
                "out_of_budget",
                None,
                Some("the time budget ran out before this problem".into()),
            ));
            bar.inc(1);
            continue;
        }
        let seed = opts.seed.wrapping_add(i as u64);
        match tune_one(
            device, compiler, &mut bench, &reference, &blas, problem, &limits, seed, opts,
        ) {
            Ok(entry) => {
                artifact.upsert(entry.clone());
                artifact.save(&path)?;
                bar.println(format!(
                    "m={:>5} n={:>6} k={:>5}  {:>9.2} us  cuBLAS {:>9.2} us  x{:.2}  {:>5.1}% roofline  err {:.1e}",
                    problem.m,
                    problem.n,
                    problem.k,
                    entry.median_us,
                    entry.baseline.as_ref().map(|b| b.median_us).unwrap_or(f64::NAN),
                    entry.speedup.unwrap_or(f64::NAN),
                    entry.pct_of_roofline,
                    entry.max_rel_err
                ));
                reports.push(report("tuned", Some(entry), None));
            }
            Err(e) => reports.push(report("failed", None, Some(e.to_string()))),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(TuneReport {
        family: GemmBf16::NAME.into(),
        artifact: path,
        notes,
        problems: reports,
        elapsed_s: t0.elapsed().as_secs_f64(),
    })
}

#[allow(clippy::too_many_arguments)]
fn tune_one(
    device: &Device,
    compiler: &Compiler,
    bench: &mut Bench,
    reference: &GemmBf16Reference,
    blas: &CublasBf16,
    problem: &GemmBf16Problem,
    limits: &kiln_codegen::DeviceLimits,
    seed: u64,
    opts: &TuneOptions,
) -> Result<Entry> {
    let flops = GemmBf16::flops(problem);
    let bytes = GemmBf16::min_bytes(problem);
    let floor = roofline::floor_us(flops, bytes, roofline::BF16_FLOPS);
    let candidates: Vec<_> = GemmBf16::candidates(problem, limits)
        .into_iter()
        .map(|c| {
            let est = GemmBf16::estimate_us(problem, &c, limits);
            (c, est)
        })
        .collect();
    let mut b = GemmBf16Bench::new(device, compiler, bench, reference, *problem, seed)?;
    let result = search(candidates, floor, &mut b, &opts.search);
    let Some((config, m, prepared)) = result.winner else {
        let reasons: Vec<String> = result
            .records
            .iter()
            .filter_map(|r| r.reason.as_ref().map(|x| format!("{}: {x}", r.outcome)))
            .take(3)
            .collect();
        return Err(RuntimeError::NoValidCandidate {
            family: GemmBf16::NAME.into(),
            problem: format!("{problem:?}"),
            reasons: reasons.join(" | "),
        });
    };
    let base_opts = MeasureOptions {
        warmup: 3,
        reps: opts.baseline_reps,
        flush_l2: true,
    };
    let (base, _base_err) = b.time_cublas(blas, &base_opts)?;
    Ok(Entry {
        problem: serde_json::to_value(problem).expect("problems serialise"),
        config: serde_json::to_value(&config).expect("configs serialise"),
        median_us: m.median_us,
        p20_us: m.p20_us,
        p80_us: m.p80_us,
        pct_of_roofline: roofline::pct_of_roofline(flops, bytes, roofline::BF16_FLOPS, m.median_us),
        baseline: Some(Baseline {
            name: CUBLAS_BF16.into(),
            median_us: base.median_us,
        }),
        speedup: Some(base.median_us / m.median_us),
        max_rel_err: prepared.max_rel_err,
        candidates_tried: result.tried,
        tuned_at: now_rfc3339(),
        candidates: result.records,
    })
}
