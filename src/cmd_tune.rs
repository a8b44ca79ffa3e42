//! `kiln tune` and `kiln bench`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use kiln_codegen::families::gemm_bf16::{GemmBf16, GemmBf16Config, GemmBf16Problem};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::artifact::Artifact;
use kiln_runtime::dispatch::Dispatch;
use kiln_runtime::launch::gemm_bf16::GemmBf16Reference;
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use kiln_tuner::baseline::{CublasBf16, CUBLAS_BF16};
use kiln_tuner::gemm_bf16::GemmBf16Bench;
use kiln_tuner::roofline;
use kiln_tuner::search::Evaluator;
use kiln_tuner::tune::{tune_gemm_bf16, TuneOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::table::Table;
use crate::CliResult;

/// `90s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1.0),
        Some('m') => (&s[..s.len() - 1], 60.0),
        Some('h') => (&s[..s.len() - 1], 3600.0),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 90s, 5m)"))?;
    Ok(Duration::from_secs_f64(v * mult))
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

fn load_problems(
    family: &str,
    file: Option<&Path>,
    preset: Option<&str>,
) -> Result<(String, Vec<Value>), Box<dyn std::error::Error>> {
    if let Some(name) = preset {
        let p = kiln_models::step3::presets::find(name).ok_or_else(|| {
            let names: Vec<_> = kiln_models::step3::presets::all()
                .iter()
                .map(|p| p.name)
                .collect();
            format!("unknown preset `{name}`; presets: {}", names.join(", "))
        })?;
        return Ok((
            p.family.to_string(),
            p.problems.into_iter().map(|(_, v)| v).collect(),
        ));
    }
    let file = file.ok_or("give --problems FILE or --preset NAME")?;
    let v: Value = serde_json::from_slice(
        &std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?,
    )
    .map_err(|e| format!("{}: not JSON ({e})", file.display()))?;
    let list = match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("problems") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(format!(
                    "{}: expected a JSON array of problems or {{\"problems\": [...]}}",
                    file.display()
                )
                .into())
            }
        },
        _ => return Err(format!("{}: expected a JSON array of problems", file.display()).into()),
    };
    Ok((family.to_string(), list))
}

fn gemm_problems(list: &[Value]) -> Result<Vec<GemmBf16Problem>, Box<dyn std::error::Error>> {
    list.iter()
        .map(|v| {
            serde_json::from_value(v.clone()).map_err(|e| {
                format!("problem {v}: {e} (gemm_bf16 problems are {{\"m\", \"n\", \"k\"}})").into()
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn tune(
    family: Option<String>,
    problems: Option<PathBuf>,
    preset: Option<String>,
    budget: Option<String>,
    force: bool,
    tuned_dir: PathBuf,
    json: Option<PathBuf>,
    seed: Option<u64>,
) -> CliResult {
    let (fam, list) = load_problems(
        family.as_deref().unwrap_or("gemm_bf16"),
        problems.as_deref(),
        preset.as_deref(),
    )?;
    if let Some(f) = &family {
        if *f != fam {
            return Err(format!("preset is for family {fam}, not {f}").into());
        }
    }
    if fam != GemmBf16::NAME {
        kiln_codegen::find_family(&fam)?;
        return Err(format!("family {fam} has no tuner yet").into());
    }
    let problems = gemm_problems(&list)?;
    let budget = budget.as_deref().map(parse_duration).transpose()?;
    let device = Device::open(0)?;
    let compiler = Compiler::new()?;
    let opts = TuneOptions {
        force,
        budget,
        tuned_root: tuned_dir,
        search: Default::default(),
        baseline_reps: 40,
        seed: seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        }),
        progress: true,
    };
    let report = tune_gemm_bf16(&device, &compiler, &problems, &opts)?;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    let mut t = Table::new(&[
        "problem",
        "status",
        "kiln us",
        "cuBLAS us",
        "speedup",
        "% roofline",
        "max rel err",
        "tried",
        "s",
    ]);
    for p in &report.problems {
        let e = p.entry.as_ref();
        t.row(vec![
            compact(&p.problem),
            p.status.clone(),
            e.map(|e| format!("{:.2}", e.median_us)).unwrap_or_default(),
            e.and_then(|e| e.baseline.as_ref())
                .map(|b| format!("{:.2}", b.median_us))
                .unwrap_or_default(),
            e.and_then(|e| e.speedup)
                .map(|s| format!("{s:.2}"))
                .unwrap_or_default(),
            e.map(|e| format!("{:.1}", e.pct_of_roofline))
                .unwrap_or_default(),
            e.map(|e| format!("{:.1e}", e.max_rel_err))
                .unwrap_or_default(),
            e.map(|e| e.candidates_tried.to_string())
                .unwrap_or_default(),
            format!("{:.1}", p.seconds),
        ]);
    }
    println!("{}", t.render());
    for p in report.problems.iter().filter(|p| p.status == "failed") {
        eprintln!(
            "failed {}: {}",
            compact(&p.problem),
            p.reason.as_deref().unwrap_or("")
        );
    }
    println!(
        "tuned {} problems in {:.1} s -> {}",
        report
            .problems
            .iter()
            .filter(|p| p.status == "tuned")
            .count(),
        report.elapsed_s,
        report.artifact.display()
    );
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    let failed = report.problems.iter().any(|p| p.status == "failed");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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
        if f != GemmBf16::NAME && from.is_none() {
            return Err(format!(
                "family {f} has no `kiln bench` driver yet (its GPU tests benchmark it: tests/gpu_parts); gemm_bf16 has"
            )
            .into());
        }
    }
    let file = match &from {
        Some(path) => serde_json::from_slice::<BenchFile>(
            &std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )
        .map_err(|e| format!("{}: not a kiln bench file ({e})", path.display()))?,
        None => measure_all(&tuned_dir, reps, steady)?,
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

fn measure_all(
    tuned_dir: &Path,
    reps: usize,
    steady: bool,
) -> Result<BenchFile, Box<dyn std::error::Error>> {
    let device = Device::open(0)?;
    let compiler = Compiler::new()?;
    let path = Artifact::path(tuned_dir, &device.info.slug(), GemmBf16::NAME);
    let dispatch = Dispatch::<GemmBf16>::load(
        tuned_dir,
        &device.info,
        Some(&compiler.toolchain().version_string()),
    );
    for n in &dispatch.notes {
        eprintln!("note: {n}");
    }
    let art = dispatch.artifact().ok_or_else(|| {
        format!(
            "no usable artifact at {}: run `kiln tune` first",
            path.display()
        )
    })?;
    let problems: Vec<GemmBf16Problem> = art
        .entries
        .iter()
        .filter_map(|e| serde_json::from_value(e.problem.clone()).ok())
        .collect();
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
        });
    }
    Ok(BenchFile {
        schema: 1,
        device: serde_json::to_value(&device.info)?,
        empty_kernel_us,
        method: format!("median of {reps} CUDA-event-timed runs, L2 flushed (2x L2 memset) before each; baseline in the same process on the same buffers"),
        rows,
    })
}

fn print_bench(f: &BenchFile) {
    let mut t = Table::new(&[
        "family",
        "problem",
        "kiln us",
        "baseline us",
        "speedup",
        "% roofline",
        "W TB/s",
        "TFLOP/s",
        "rel err",
    ]);
    for r in &f.rows {
        t.row(vec![
            r.family.clone(),
            compact(&r.problem),
            format!("{:.2}", r.kiln_us),
            format!("{:.2}", r.baseline_us),
            format!("{:.2}", r.speedup),
            format!("{:.1}", r.pct_of_roofline),
            format!("{:.2}", r.weight_tb_s),
            format!("{:.1}", r.tflops),
            format!("{:.1e}", r.max_rel_err),
        ]);
    }
    println!("{}", t.render());
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
        f.rows
            .first()
            .map(|r| r.baseline.as_str())
            .unwrap_or("baseline"),
        geo(f.rows.iter().collect()),
        f.rows.len(),
        geo(small.clone()),
        small.len(),
        f.method
    );
}

/// `{"m":1,"n":48}` -> `m=1 n=48`.
pub fn compact(v: &Value) -> String {
    match v.as_object() {
        Some(o) => o
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        None => v.to_string(),
    }
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
    fn thresholds_and_durations_parse() {
        assert_eq!(parse_threshold("5%").unwrap(), 0.05);
        assert_eq!(parse_threshold("0.05").unwrap(), 0.05);
        assert_eq!(parse_threshold("5").unwrap(), 0.05);
        assert!(parse_threshold("x").is_err());
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
    }
}
