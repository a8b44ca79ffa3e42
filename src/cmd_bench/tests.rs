//! `kiln bench`'s flow on the CPU: the regression gate, recorded files, options.

use super::*;

/// One run of `us` microseconds.
pub fn measured(us: f64) -> Measurement {
    Measurement::from_samples(vec![us], true)
}

/// A gemm_bf16 row at M = `m`, twice as fast as its baseline.
pub fn row(m: u32, us: f64) -> BenchRow {
    let mut r = BenchRow::measured(
        "gemm_bf16",
        serde_json::json!({"m": m, "n": 48, "k": 7168}),
        Value::Null,
        &measured(us),
    );
    r.set_baseline("b", 2.0 * us);
    r.pct_of_roofline = Some(50.0);
    r.weight_tb_s = Some(1.0);
    r.tflops = 1.0;
    r.max_rel_err = Some(1e-3);
    r
}

/// A bench file of `rows`.
pub fn file(rows: Vec<BenchRow>) -> BenchFile {
    BenchFile {
        schema: SCHEMA,
        device: Value::Null,
        method: String::new(),
        empty_kernel_us: None,
        peers: None,
        rows,
    }
}

#[test]
fn a_planted_ten_percent_slowdown_fails_and_the_same_file_passes() {
    let old = file(vec![row(1, 10.0), row(32, 20.0)]);
    assert_eq!(compare_bench(&old, &old, 0.05), (Vec::new(), 2));
    let slow = file(vec![row(1, 11.0), row(32, 20.0)]);
    let (r, n) = compare_bench(&old, &slow, 0.05);
    assert_eq!((r.len(), n), (1, 2), "{r:?}");
    assert!(r[0].contains("+10.0%"));
    assert!(compare_bench(&old, &slow, 0.15).0.is_empty());
}

/// A measured row past the threshold is a regression only if a second measurement is past it
/// too; a slowdown that holds is reported with both times.
#[test]
fn a_regression_must_hold_in_a_second_measurement() {
    let old = file(vec![row(1, 10.0), row(32, 20.0)]);
    let first = file(vec![row(1, 11.0), row(32, 21.5)]);
    assert_eq!(compare_bench(&old, &first, 0.05).0.len(), 2);
    // Row M=1 is slow again, row M=32 was noise.
    let second = file(vec![row(1, 10.9), row(32, 20.2)]);
    let r = confirm_regressions(&old, &first, &second, 0.05);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].contains("11.00 and 10.90 us") && r[0].contains("+10.0%, +9.0%"),
        "{r:?}"
    );
    // Nothing past the threshold twice: no regression. A row the second run lacks cannot be
    // cleared.
    assert!(confirm_regressions(&old, &first, &old, 0.05).is_empty());
    let r = confirm_regressions(&old, &first, &file(vec![row(32, 20.0)]), 0.05);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].contains("not in the second measurement"), "{r:?}");
}

/// The new families gate on kiln_us per (family, problem), with or without a baseline; a
/// row of one family never matches another family's row of the same problem.
#[test]
fn the_gate_compares_mfa_and_pinn_rows_per_family_and_problem() {
    let mfa = |b: u32, us: f64| {
        let p = kiln_codegen::families::mfa_decode::MfaDecodeProblem::step3(
            b,
            4096,
            kiln_codegen::families::mfa_decode::KvDtype::Bf16,
            0,
        );
        let mut r = BenchRow::measured(
            MfaDecode::NAME,
            serde_json::to_value(p).unwrap(),
            Value::Null,
            &measured(us),
        );
        r.kv_tb_s = Some(3.5);
        r
    };
    let jet = |fam: &str, us: f64| {
        let p = mlp_jet::pinn_targets()[0];
        BenchRow::measured(
            fam,
            serde_json::to_value(p).unwrap(),
            Value::Null,
            &measured(us),
        )
    };
    let old = file(vec![
        mfa(1, 17.0),
        mfa(128, 150.0),
        jet(MlpJet::NAME, 2400.0),
    ]);
    let new = file(vec![
        mfa(1, 17.5),
        mfa(128, 170.0),
        jet(MlpJet::NAME, 2400.0),
        jet(MlpJetBackward::NAME, 99999.0),
    ]);
    let (r, n) = compare_bench(&old, &new, 0.05);
    assert_eq!(n, 3, "the mlp_jet_backward row has no counterpart");
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].starts_with("mfa_decode") && r[0].contains("batch=128"),
        "{r:?}"
    );
    let slower_jet = file(vec![jet(MlpJet::NAME, 2700.0)]);
    let (r, n) = compare_bench(&old, &slower_jet, 0.05);
    assert_eq!((r.len(), n), (1, 1));
    assert!(r[0].contains("+12.5%"), "{r:?}");
    // Nothing in common: zero compared, which `bench` turns into an error.
    let other = file(vec![jet(MlpJetBackward::NAME, 1.0)]);
    assert_eq!(compare_bench(&old, &other, 0.05).1, 0);
}

/// A file written before the optional fields existed (run 8, committed) reads back with
/// every number in place, and gates against itself.
#[test]
fn a_recorded_schema_1_file_parses_and_gates() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/results/2026-11-29-gemm_bf16-run8.json"
    );
    let f = read_bench_file(Path::new(path)).unwrap();
    assert_eq!(f.schema, 1);
    assert!(!f.rows.is_empty());
    for r in &f.rows {
        assert!(r.baseline_us.is_some() && r.speedup.is_some(), "{r:?}");
        assert!(r.weight_tb_s.is_some() && r.max_rel_err.is_some(), "{r:?}");
    }
    assert_eq!(compare_bench(&f, &f, 0.05), (Vec::new(), f.rows.len()));
    assert!(report::summary(&f).starts_with("geometric-mean speedup over cublas"));
}

#[test]
fn config_sources_read_as_text() {
    assert_eq!(source_label(&Source::Exact), "tuned for this problem");
    let d = source_label(&Source::Default {
        why: "no tuned entry".into(),
    });
    assert_eq!(d, "family default (no tuned entry)");
}

#[test]
fn thresholds_parse() {
    assert_eq!(parse_threshold("5%").unwrap(), 0.05);
    assert_eq!(parse_threshold("0.05").unwrap(), 0.05);
    assert_eq!(parse_threshold("5").unwrap(), 0.05);
    assert!(parse_threshold("x").is_err());
}
