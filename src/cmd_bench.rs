//! `kiln bench`: re-measure the tuned kernels of a family side by side with their baselines,
//! and gate on regressions against an earlier run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln_codegen::families::gemm_bf16::{GemmBf16, GemmBf16Config};
use kiln_codegen::families::gemm_fp8::{GemmFp8, GemmFp8Config};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::artifact::{Artifact, Baseline};
use kiln_runtime::dispatch::Dispatch;
use kiln_runtime::launch::gemm_bf16::GemmBf16Reference;
use kiln_runtime::launch::gemm_fp8_ref::GemmFp8Reference;
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use kiln_tuner::baseline::{CublasBf16, CublasLtFp8, Fp8Scaling, CUBLASLT_FP8_BLOCK, CUBLAS_BF16};
use kiln_tuner::gemm_bf16::GemmBf16Bench;
use kiln_tuner::gemm_fp8::{choose_baselines, GemmFp8Bench};
use kiln_tuner::roofline;
use kiln_tuner::search::Evaluator;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::table::{compact, Table};
use crate::CliResult;

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

/// One row of `kiln bench`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRow {
    pub family: String,
    pub problem: Value,
    pub config: Value,
    pub kiln_us: f64,
    pub kiln_p20_us: f64,
    pub kiln_p80_us: f64,
    pub baseline: String,
    pub baseline_us: f64,
    pub speedup: f64,
    pub pct_of_roofline: f64,
    /// Weight (B operand) bandwidth, TB/s.
    pub weight_tb_s: f64,
    pub tflops: f64,
    pub max_rel_err: f64,
    /// Steady state (`--steady`): per-launch time of back-to-back launches
    /// over inputs rotated past 2x L2, kiln and baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kiln_steady_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_steady_us: Option<f64>,
    /// Other peers timed beside the baseline (gemm_fp8: cuBLASLt with row-wise scales).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_baselines: Vec<Baseline>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchFile {
    pub schema: u32,
    pub device: Value,
    pub method: String,
    /// An empty kernel timed the same way: the floor every row includes.
    #[serde(default)]
    pub empty_kernel_us: Option<f64>,
    pub rows: Vec<BenchRow>,
}

#[allow(clippy::too_many_arguments)]
pub fn bench(
    family: Option<String>,
    tuned_dir: PathBuf,
    json: Option<PathBuf>,
    compare: Option<PathBuf>,
    threshold: String,
    from: Option<PathBuf>,
    reps: usize,
    steady: bool,
) -> CliResult {
    let threshold = parse_threshold(&threshold)?;
    if let Some(f) = &family {
        kiln_codegen::find_family(f)?;
        if f != GemmBf16::NAME && f != GemmFp8::NAME && from.is_none() {
            return Err(format!(
                "family {f} has no `kiln bench` driver yet (its GPU tests benchmark it: tests/gpu_parts); gemm_bf16 and gemm_fp8 have"
            )
            .into());
        }
    }
    let file = match &from {
        Some(path) => serde_json::from_slice::<BenchFile>(
            &std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )
        .map_err(|e| format!("{}: not a kiln bench file ({e})", path.display()))?,
        None if family.as_deref() == Some(GemmFp8::NAME) => measure_fp8(&tuned_dir, reps, steady)?,
        None => measure_bf16(&tuned_dir, reps, steady)?,
    };
    print_bench(&file);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&file)?)?;
    }
    let Some(old_path) = compare else {
        return Ok(ExitCode::SUCCESS);
    };
    let old: BenchFile = serde_json::from_slice(
        &std::fs::read(&old_path).map_err(|e| format!("{}: {e}", old_path.display()))?,
    )
    .map_err(|e| format!("{}: not a kiln bench file ({e})", old_path.display()))?;
    let regressions = compare_bench(&old, &file, threshold);
    if regressions.is_empty() {
        println!(
            "no regression past {:.1}% against {}",
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

/// Rows of `new` slower than the same problem in `old` by more than `threshold`.
pub fn compare_bench(old: &BenchFile, new: &BenchFile, threshold: f64) -> Vec<String> {
    let mut out = Vec::new();
    for n in &new.rows {
        let Some(o) = old
            .rows
            .iter()
            .find(|o| o.family == n.family && o.problem == n.problem)
        else {
            continue;
        };
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
    out
}

/// A family's dispatch table and the problems of its artifact.
type TunedProblems<F> = (Dispatch<F>, Vec<<F as Family>::Problem>);

/// The dispatch table of family `F` loaded from `tuned_dir` for this device (its notes printed)
/// and the problems its artifact holds; an error naming `tune_command` when there is no usable
/// artifact.
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
    let problems = art
        .entries
        .iter()
        .filter_map(|e| serde_json::from_value(e.problem.clone()).ok())
        .collect();
    Ok((dispatch, problems))
}

fn measure_bf16(
    tuned_dir: &Path,
    reps: usize,
    steady: bool,
) -> Result<BenchFile, Box<dyn std::error::Error>> {
    let device = Device::open(0)?;
    let compiler = Compiler::new()?;
    let (dispatch, problems) =
        tuned_problems::<GemmBf16>(tuned_dir, &device, &compiler, "kiln tune")?;
    let reference = GemmBf16Reference::compile(&device, &compiler)?;
    let blas = CublasBf16::new(&device)?;
    let mut bench = Bench::new(&device)?;
    let empty_kernel_us = Some(bench.empty_kernel_us(&compiler, reps)?);
    let mut rows = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let sel = dispatch.select(p);
        let config: GemmBf16Config = sel.config;
        let mut b = GemmBf16Bench::new(
            &device,
            &compiler,
            &mut bench,
            &reference,
            *p,
            0x5eed + i as u64,
        )?;
        let prepared = b
            .prepare(std::slice::from_ref(&config))
            .pop()
            .expect("one result");
        let prepared =
            prepared.map_err(|f| format!("{p:?} {config:?}: {}: {}", f.outcome, f.reason))?;
        let m = b
            .time(&config, reps)
            .map_err(|f| format!("{p:?}: {}", f.reason))?;
        let (base, _) = b.time_cublas(
            &blas,
            &MeasureOptions {
                warmup: 3,
                reps,
                flush_l2: true,
            },
        )?;
        let (kiln_steady_us, baseline_steady_us) = if steady {
            let k = b.time_steady(&config, 15)?.median_us;
            (Some(k), Some(b.time_steady_cublas(&blas, 15)?.median_us))
        } else {
            (None, None)
        };
        let flops = GemmBf16::flops(p);
        let bytes = GemmBf16::min_bytes(p);
        rows.push(BenchRow {
            family: GemmBf16::NAME.into(),
            problem: serde_json::to_value(p)?,
            config: serde_json::to_value(&config)?,
            kiln_us: m.median_us,
            kiln_p20_us: m.p20_us,
            kiln_p80_us: m.p80_us,
            baseline: CUBLAS_BF16.into(),
            baseline_us: base.median_us,
            speedup: base.median_us / m.median_us,
            pct_of_roofline: roofline::pct_of_roofline(
                flops,
                bytes,
                roofline::BF16_FLOPS,
                m.median_us,
            ),
            weight_tb_s: (p.n as f64 * p.k as f64 * 2.0) / (m.median_us * 1e-6) / 1e12,
            tflops: flops / (m.median_us * 1e-6) / 1e12,
            max_rel_err: prepared.max_rel_err,
            kiln_steady_us,
            baseline_steady_us,
            other_baselines: Vec::new(),
        });
    }
    Ok(BenchFile {
        schema: 1,
        device: serde_json::to_value(&device.info)?,
        empty_kernel_us,
        method: format!("median of {reps} CUDA-event-timed runs, L2 flushed (a read of a 2x-L2 buffer) before each; baseline in the same process on the same buffers"),
        rows,
    })
}

fn measure_fp8(
    tuned_dir: &Path,
    reps: usize,
    steady: bool,
) -> Result<BenchFile, Box<dyn std::error::Error>> {
    let device = Device::open(0)?;
    let compiler = Compiler::new()?;
    let (dispatch, problems) =
        tuned_problems::<GemmFp8>(tuned_dir, &device, &compiler, "kiln tune --family gemm_fp8")?;
    let reference = GemmFp8Reference::compile(&device, &compiler)?;
    let lt = CublasLtFp8::new(&device)?;
    let mut bench = Bench::new(&device)?;
    let empty_kernel_us = Some(bench.empty_kernel_us(&compiler, reps)?);
    let mut rows = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let config: GemmFp8Config = dispatch.select(p).config;
        let mut b = GemmFp8Bench::new(
            &device,
            &compiler,
            &mut bench,
            &reference,
            *p,
            0x5eed + i as u64,
        )?;
        let prepared = b
            .prepare(std::slice::from_ref(&config))
            .pop()
            .expect("one result");
        let prepared =
            prepared.map_err(|f| format!("{p:?} {config:?}: {}: {}", f.outcome, f.reason))?;
        let m = b
            .time(&config, reps)
            .map_err(|f| format!("{p:?}: {}", f.reason))?;
        let choice = choose_baselines(&b.run_baselines(
            &lt,
            &MeasureOptions {
                warmup: 3,
                reps,
                flush_l2: true,
            },
        ));
        for n in &choice.notes {
            eprintln!("note {}: {n}", compact(&serde_json::to_value(p)?));
        }
        let base = choice.primary.ok_or_else(|| {
            format!(
                "{p:?}: no cuBLASLt baseline could be measured: {}",
                choice.notes.join("; ")
            )
        })?;
        let (kiln_steady_us, baseline_steady_us) = if steady {
            let scaling = if base.name == CUBLASLT_FP8_BLOCK {
                Fp8Scaling::Block128
            } else {
                Fp8Scaling::RowWise
            };
            let k = b.time_steady(&config, 15)?.median_us;
            (
                Some(k),
                Some(b.time_steady_baseline(&lt, scaling, 15)?.median_us),
            )
        } else {
            (None, None)
        };
        let flops = GemmFp8::flops(p);
        let bytes = GemmFp8::min_bytes(p);
        rows.push(BenchRow {
            family: GemmFp8::NAME.into(),
            problem: serde_json::to_value(p)?,
            config: serde_json::to_value(&config)?,
            kiln_us: m.median_us,
            kiln_p20_us: m.p20_us,
            kiln_p80_us: m.p80_us,
            baseline: base.name.clone(),
            baseline_us: base.median_us,
            speedup: base.median_us / m.median_us,
            pct_of_roofline: roofline::pct_of_roofline(
                flops,
                bytes,
                roofline::FP8_FLOPS,
                m.median_us,
            ),
            // e4m3: one byte per weight.
            weight_tb_s: (p.n as f64 * p.k as f64) / (m.median_us * 1e-6) / 1e12,
            tflops: flops / (m.median_us * 1e-6) / 1e12,
            max_rel_err: prepared.max_rel_err,
            kiln_steady_us,
            baseline_steady_us,
            other_baselines: choice.extra,
        });
    }
    Ok(BenchFile {
        schema: 1,
        device: serde_json::to_value(&device.info)?,
        empty_kernel_us,
        method: format!("median of {reps} CUDA-event-timed runs, L2 flushed (a read of a 2x-L2 buffer) before each; baselines (cuBLASLt FP8, block-scaled and row-wise, each validated against the GPU reference first) in the same process on the same buffers"),
        rows,
    })
}

/// The distinct baseline names of `rows`, in order of first appearance.
fn baseline_names(rows: &[BenchRow]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if !names.contains(&r.baseline.as_str()) {
            names.push(&r.baseline);
        }
    }
    names
}

fn print_bench(f: &BenchFile) {
    let names = baseline_names(&f.rows);
    // One baseline for every row (gemm_bf16): its name is in the summary line; several (gemm_fp8
    // where block-scaled cuBLASLt is not supported for a shape): each row names its own.
    let named = names.len() > 1;
    let mut header = vec![
        "family",
        "problem",
        "kiln us",
        "baseline us",
        "speedup",
        "% roofline",
        "W TB/s",
        "TFLOP/s",
        "rel err",
    ];
    if named {
        header.push("baseline");
    }
    let mut t = Table::new(&header);
    for r in &f.rows {
        let mut row = vec![
            r.family.clone(),
            compact(&r.problem),
            format!("{:.2}", r.kiln_us),
            format!("{:.2}", r.baseline_us),
            format!("{:.2}", r.speedup),
            format!("{:.1}", r.pct_of_roofline),
            format!("{:.2}", r.weight_tb_s),
            format!("{:.1}", r.tflops),
            format!("{:.1e}", r.max_rel_err),
        ];
        if named {
            row.push(r.baseline.clone());
        }
        t.row(row);
    }
    println!("{}", t.render());
    if f.rows.iter().any(|r| !r.other_baselines.is_empty()) {
        let mut t = Table::new(&["family", "problem", "other baseline", "us", "kiln speedup"]);
        for r in &f.rows {
            for o in &r.other_baselines {
                t.row(vec![
                    r.family.clone(),
                    compact(&r.problem),
                    o.name.clone(),
                    format!("{:.2}", o.median_us),
                    format!("{:.2}", o.median_us / r.kiln_us),
                ]);
            }
        }
        println!(
            "other baselines timed in the same run (not used for the speedup above):\n{}",
            t.render()
        );
    }
    let geo = |rows: Vec<&BenchRow>| -> f64 {
        if rows.is_empty() {
            return f64::NAN;
        }
        (rows.iter().map(|r| r.speedup.ln()).sum::<f64>() / rows.len() as f64).exp()
    };
    let small: Vec<&BenchRow> = f
        .rows
        .iter()
        .filter(|r| r.problem["m"].as_u64().is_some_and(|m| m <= 32))
        .collect();
    if f.rows.iter().any(|r| r.kiln_steady_us.is_some()) {
        let mut t = Table::new(&[
            "family",
            "problem",
            "steady kiln us",
            "steady baseline us",
            "speedup",
            "W TB/s",
        ]);
        for r in f.rows.iter().filter(|r| r.kiln_steady_us.is_some()) {
            let (k, b) = (
                r.kiln_steady_us.unwrap_or(f64::NAN),
                r.baseline_steady_us.unwrap_or(f64::NAN),
            );
            let wb = r.weight_tb_s * r.kiln_us / k;
            t.row(vec![
                r.family.clone(),
                compact(&r.problem),
                format!("{k:.2}"),
                format!("{b:.2}"),
                format!("{:.2}", b / k),
                format!("{wb:.2}"),
            ]);
        }
        println!(
            "steady state (back-to-back launches over inputs rotated past 3x L2):\n{}",
            t.render()
        );
    }
    if let Some(e) = f.empty_kernel_us {
        println!(
            "an empty kernel measures {e:.2} us this way (launch + event overhead in every row)"
        );
    }
    println!(
        "geometric-mean speedup over {}: {:.3} (all {} rows), {:.3} (M <= 32, {} rows). {}",
        if names.is_empty() {
            "baseline".to_string()
        } else {
            names.join(" / ")
        },
        geo(f.rows.iter().collect()),
        f.rows.len(),
        geo(small.clone()),
        small.len(),
        f.method
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: u32, us: f64) -> BenchRow {
        BenchRow {
            family: "gemm_bf16".into(),
            problem: serde_json::json!({"m": m, "n": 48, "k": 7168}),
            config: Value::Null,
            kiln_us: us,
            kiln_p20_us: us,
            kiln_p80_us: us,
            baseline: "b".into(),
            baseline_us: 2.0 * us,
            speedup: 2.0,
            pct_of_roofline: 50.0,
            weight_tb_s: 1.0,
            tflops: 1.0,
            max_rel_err: 1e-3,
            kiln_steady_us: None,
            baseline_steady_us: None,
            other_baselines: Vec::new(),
        }
    }

    fn file(rows: Vec<BenchRow>) -> BenchFile {
        BenchFile {
            schema: 1,
            device: Value::Null,
            method: String::new(),
            empty_kernel_us: None,
            rows,
        }
    }

    #[test]
    fn a_planted_ten_percent_slowdown_fails_and_the_same_file_passes() {
        let old = file(vec![row(1, 10.0), row(32, 20.0)]);
        assert!(compare_bench(&old, &old, 0.05).is_empty());
        let slow = file(vec![row(1, 11.0), row(32, 20.0)]);
        let r = compare_bench(&old, &slow, 0.05);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains("+10.0%"));
        assert!(compare_bench(&old, &slow, 0.15).is_empty());
    }

    #[test]
    fn fp8_rows_with_other_baselines_read_back_and_old_files_still_parse() {
        let mut r = row(1, 10.0);
        r.family = "gemm_fp8".into();
        r.baseline = "cublaslt-fp8-rowwise (block NOT_SUPPORTED)".into();
        let mut s = row(32, 10.0);
        s.family = "gemm_fp8".into();
        s.baseline = "cublaslt-fp8-block128".into();
        s.other_baselines = vec![Baseline::timed("cublaslt-fp8-rowwise", 30.0)];
        let f = file(vec![r, s]);
        let text = serde_json::to_string(&f).unwrap();
        let back: BenchFile = serde_json::from_str(&text).unwrap();
        assert_eq!(back.rows[1].other_baselines[0].name, "cublaslt-fp8-rowwise");
        assert_eq!(
            baseline_names(&back.rows),
            vec![
                "cublaslt-fp8-rowwise (block NOT_SUPPORTED)",
                "cublaslt-fp8-block128"
            ]
        );
        print_bench(&back);
        // A gemm_bf16 row serialises as before (no empty list), and a file without the field
        // reads back.
        let old = serde_json::to_value(file(vec![row(1, 10.0)])).unwrap();
        assert!(old["rows"][0].get("other_baselines").is_none());
        let back: BenchFile = serde_json::from_value(old).unwrap();
        assert!(back.rows[0].other_baselines.is_empty());
    }

    #[test]
    fn thresholds_parse() {
        assert_eq!(parse_threshold("5%").unwrap(), 0.05);
        assert_eq!(parse_threshold("0.05").unwrap(), 0.05);
        assert_eq!(parse_threshold("5").unwrap(), 0.05);
        assert!(parse_threshold("x").is_err());
    }
}
