//! `kiln bench`'s tables and closing line.

use serde_json::Value;

use super::peers::PeerScript;
use super::{BenchFile, BenchRow, NO_BASELINE};
use crate::table::{compact, Table};
use kiln_codegen::families::mfa_decode::MfaDecode;
use kiln_codegen::families::mlp_jet::{self, MlpJet};
use kiln_codegen::families::mlp_jet_backward::{self, MlpJetBackward};
use kiln_codegen::Family;

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

/// How the tables name a problem: the family's short form where it has one
/// (`B=128 L=4096 fp8 paged16`, `d=2 width=128 depth=4 p=1 N=262144`), else its fields.
fn describe(family: &str, problem: &Value) -> String {
    fn parse<P: serde::de::DeserializeOwned>(v: &Value) -> Option<P> {
        serde_json::from_value(v.clone()).ok()
    }
    let net =
        |d, width, depth, p, points| format!("d={d} width={width} depth={depth} p={p} N={points}");
    let short = match family {
        MfaDecode::NAME => parse(problem).map(|p| kiln_tuner::mfa_decode::describe(&p)),
        MlpJet::NAME => parse::<mlp_jet::MlpJetProblem>(problem).map(|p| {
            let n = net(p.d, p.width, p.depth, p.p, p.points);
            match p.streams {
                mlp_jet::Streams::ValueGradLaplacian => n,
                s => format!("{n} {s:?}"),
            }
        }),
        MlpJetBackward::NAME => {
            parse::<mlp_jet_backward::MlpJetBackwardProblem>(problem).map(|p| {
                let n = net(p.d, p.width, p.depth, p.p, p.points);
                match p.loss {
                    mlp_jet_backward::Loss::LaplacianResidual => n,
                    l => format!("{n} {l:?}"),
                }
            })
        }
        _ => None,
    };
    short.unwrap_or_else(|| compact(problem))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// Geometric mean of the rows' speedups; None without any.
fn geo_mean<'a>(rows: impl Iterator<Item = &'a BenchRow>) -> Option<(f64, usize)> {
    let s: Vec<f64> = rows
        .filter_map(|r| r.speedup)
        .filter(|s| s.is_finite() && *s > 0.0)
        .collect();
    (!s.is_empty()).then(|| {
        let g = (s.iter().map(|x| x.ln()).sum::<f64>() / s.len() as f64).exp();
        (g, s.len())
    })
}

pub fn print_bench(f: &BenchFile) {
    let names = baseline_names(&f.rows);
    // One baseline for every row (gemm_bf16): its name is in the summary line; several (gemm_fp8
    // where block-scaled cuBLASLt is not supported for a shape, a peer's variants, rows without
    // one): each row names its own.
    let named = names.len() > 1;
    let any = |pick: fn(&BenchRow) -> Option<f64>| f.rows.iter().any(|r| pick(r).is_some());
    let (roof, weights, kv, errs) = (
        any(|r| r.pct_of_roofline),
        any(|r| r.weight_tb_s),
        any(|r| r.kv_tb_s),
        any(|r| r.max_rel_err),
    );
    let mut header = vec!["family", "problem", "kiln us", "baseline us", "speedup"];
    let optional = [
        (roof, "% roofline"),
        (weights, "W TB/s"),
        (kv, "KV TB/s"),
        (true, "TFLOP/s"),
        (errs, "rel err"),
        (named, "baseline"),
    ];
    header.extend(optional.iter().filter(|(on, _)| *on).map(|(_, h)| *h));
    let mut t = Table::new(&header);
    for r in &f.rows {
        let cells = [
            (roof, opt(r.pct_of_roofline, 1)),
            (weights, opt(r.weight_tb_s, 2)),
            (kv, opt(r.kv_tb_s, 2)),
            (true, format!("{:.1}", r.tflops)),
            (
                errs,
                r.max_rel_err
                    .map(|e| format!("{e:.1e}"))
                    .unwrap_or_else(|| "-".into()),
            ),
            (named, r.baseline.clone()),
        ];
        let mut row = vec![
            r.family.clone(),
            describe(&r.family, &r.problem),
            format!("{:.2}", r.kiln_us),
            opt(r.baseline_us, 2),
            opt(r.speedup, 2),
        ];
        row.extend(cells.into_iter().filter(|(on, _)| *on).map(|(_, c)| c));
        t.row(row);
    }
    println!("{}", t.render());
    if f.rows.iter().any(|r| !r.other_baselines.is_empty()) {
        let mut t = Table::new(&["family", "problem", "other baseline", "us", "kiln speedup"]);
        for r in &f.rows {
            for o in &r.other_baselines {
                t.row(vec![
                    r.family.clone(),
                    describe(&r.family, &r.problem),
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
    if f.rows.iter().any(|r| r.best_candidate.is_some()) {
        let mut t = Table::new(&[
            "family",
            "problem",
            "served us",
            "best us",
            "served / best",
            "best config (of N timed)",
        ]);
        for r in &f.rows {
            if let Some(b) = &r.best_candidate {
                t.row(vec![
                    r.family.clone(),
                    describe(&r.family, &r.problem),
                    format!("{:.2}", r.kiln_us),
                    format!("{:.2}", b.median_us),
                    format!("{:.2}", r.kiln_us / b.median_us),
                    format!("{} (of {})", compact(&b.config), b.of),
                ]);
            }
        }
        println!(
            "every legal config timed (--candidates); the rows above time the config dispatch serves:\n{}",
            t.render()
        );
    }
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
            let wb = r.weight_tb_s.map(|w| w * r.kiln_us / k);
            t.row(vec![
                r.family.clone(),
                describe(&r.family, &r.problem),
                format!("{k:.2}"),
                format!("{b:.2}"),
                format!("{:.2}", b / k),
                opt(wb, 2),
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
    println!("{}", summary(f));
}

/// The closing line: the geometric-mean speedup over the baselines (also over the M <= 32
/// rows of a GEMM file), or why there is none, then how the file was measured.
pub fn summary(f: &BenchFile) -> String {
    let names: Vec<&str> = baseline_names(&f.rows)
        .into_iter()
        .filter(|n| *n != NO_BASELINE)
        .collect();
    let Some((all, n)) = geo_mean(f.rows.iter()) else {
        let hint = f
            .rows
            .iter()
            .find_map(|r| PeerScript::of_family(&r.family))
            .map(|s| format!(" (pass --peers with the JSON of {})", s.path()))
            .unwrap_or_default();
        return format!(
            "no baseline for any of the {} rows{hint}. {}",
            f.rows.len(),
            f.method
        );
    };
    let mut line = format!(
        "geometric-mean speedup over {}: {all:.3} ({n} of {} rows)",
        names.join(" / "),
        f.rows.len()
    );
    let small: Vec<&BenchRow> = f
        .rows
        .iter()
        .filter(|r| r.problem["m"].as_u64().is_some_and(|m| m <= 32))
        .collect();
    if let Some((g, k)) = geo_mean(small.into_iter()) {
        line.push_str(&format!(", {g:.3} (M <= 32, {k} rows)"));
    }
    format!("{line}. {}", f.method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd_bench::tests::{file, measured, row};
    use kiln_runtime::artifact::Baseline;
    use serde::Serialize;

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
        // A gemm_bf16 row serialises as before (no empty list, no new optional field), and a
        // file without the field reads back.
        let old = serde_json::to_value(file(vec![row(1, 10.0)])).unwrap();
        let r0 = &old["rows"][0];
        for absent in [
            "other_baselines",
            "kv_tb_s",
            "best_candidate",
            "config_source",
        ] {
            assert!(r0.get(absent).is_none(), "{absent}: {r0}");
        }
        assert_eq!(r0["speedup"], 2.0);
        let back: BenchFile = serde_json::from_value(old).unwrap();
        assert!(back.rows[0].other_baselines.is_empty());
    }

    #[test]
    fn rows_without_a_baseline_write_no_nan_and_say_so() {
        let p = serde_json::to_value(mlp_jet::pinn_targets()[1]).unwrap();
        let mut r = BenchRow::measured(MlpJet::NAME, p, Value::Null, &measured(2600.0));
        r.tflops = 39.5;
        let f = file(vec![r]);
        let text = serde_json::to_string(&f).unwrap();
        assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
        let back: BenchFile = serde_json::from_str(&text).unwrap();
        let r = &back.rows[0];
        assert_eq!(r.baseline, NO_BASELINE);
        assert_eq!(
            (r.baseline_us, r.speedup, r.max_rel_err),
            (None, None, None)
        );
        let s = summary(&back);
        assert!(
            s.starts_with("no baseline for any of the 1 rows")
                && s.contains("--peers")
                && s.contains(crate::cmd_bench::peers::PINN_TORCH),
            "{s}"
        );
        print_bench(&back);
        // A zero time never becomes an infinite speedup.
        let mut z = BenchRow::measured(MlpJet::NAME, Value::Null, Value::Null, &measured(0.0));
        z.set_baseline("x", 5.0);
        assert_eq!(z.speedup, None);
    }

    #[test]
    fn the_summary_averages_only_rows_with_a_baseline() {
        let mut rows = vec![row(1, 10.0), row(64, 10.0)];
        rows[1].set_baseline("b", 40.0);
        let mut none = row(128, 10.0);
        none.baseline = NO_BASELINE.into();
        none.baseline_us = None;
        none.speedup = None;
        rows.push(none);
        let s = summary(&file(rows));
        // sqrt(2 x 4) over two rows; M <= 32: the first only.
        assert!(
            s.starts_with(
                "geometric-mean speedup over b: 2.828 (2 of 3 rows), 2.000 (M <= 32, 1 rows)"
            ),
            "{s}"
        );
    }

    #[test]
    fn tables_name_problems_in_their_family_s_short_form() {
        let mfa = kiln_codegen::families::mfa_decode::MfaDecodeProblem::step3(
            128,
            4096,
            kiln_codegen::families::mfa_decode::KvDtype::Fp8e4m3,
            16,
        );
        fn v<T: Serialize>(x: &T) -> Value {
            serde_json::to_value(x).unwrap()
        }
        assert_eq!(
            describe(MfaDecode::NAME, &v(&mfa)),
            "B=128 L=4096 fp8 paged16"
        );
        let jet = mlp_jet::pinn_targets()[1];
        assert_eq!(
            describe(MlpJet::NAME, &v(&jet)),
            "d=2 width=128 depth=4 p=1 N=262144"
        );
        let train = mlp_jet_backward::pinn_targets()[2];
        assert_eq!(
            describe(MlpJetBackward::NAME, &v(&train)),
            "d=20 width=128 depth=4 p=1 N=65536"
        );
        // Another family, or a problem of the wrong shape: its fields.
        let g = serde_json::json!({"m": 1, "n": 48});
        assert_eq!(describe("gemm_bf16", &g), "m=1 n=48");
        assert_eq!(describe(MfaDecode::NAME, &g), "m=1 n=48");
    }
}
