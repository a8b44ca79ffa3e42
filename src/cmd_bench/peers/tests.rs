//! Reading peer files and matching their rows to problems.

use super::*;
use kiln_codegen::families::mfa_decode::KvDtype;
use serde_json::json;

/// The rows pinn_torch.py writes for one net: jets and training step, TF32 off and on.
fn pinn_file() -> String {
    let row = |tf32: bool, train: bool, us: Option<f64>| {
        let mut r = json!({"d": 2, "width": 128, "depth": 4, "p": 1, "points": 262144,
            "tf32": tf32, "rel_err_vs_f64": {"u": 1e-6, "grad": if tf32 { 3e-3 } else { 2e-6 }}});
        if train {
            r["train"] = json!(true);
        }
        match us {
            Some(us) => r["us"] = json!(us),
            None => r["error"] = json!("CUDA out of memory"),
        }
        r
    };
    let f = json!({"torch": "2.11.0+cu130", "device": "NVIDIA H200", "how": "median of 20",
        "rows": [row(false, false, Some(9257.0)), row(true, false, Some(6555.0)),
                 row(false, true, Some(31930.0)), row(true, true, None)]});
    // A non-finite error, as Python writes it.
    serde_json::to_string(&f)
        .unwrap()
        .replace("\"grad\":0.003", "\"grad\":NaN")
}

fn sdpa_file() -> String {
    let row = |backend: &str, us: f64| {
        json!({"batch": 128, "context": 4096, "heads": 64, "head_dim": 256,
               "kv_dtype": "bf16", "backend": backend, "kv_mb": 536.9, "us": us})
    };
    json!({"torch": "2.11.0", "device": "NVIDIA H200",
           "rows": [row("flash", 139.8), row("cudnn", 125.3), row("efficient", 300.0),
                    {"batch": 1, "context": 1024, "heads": 64, "head_dim": 256,
                     "kv_dtype": "bf16", "backend": "cudnn", "error": "No available kernel"}]})
    .to_string()
}

fn peers(family: &str, text: &str) -> Result<Peers, PeersError> {
    let script = PeerScript::of_family(family).unwrap();
    Peers::parse(Path::new("peers.json"), family, script, text)
}

fn row(family: &str, problem: Value, us: f64) -> BenchRow {
    let m = kiln_runtime::measure::Measurement::from_samples(vec![us], true);
    BenchRow::measured(family, problem, Value::Null, &m)
}

fn jet(points: u32) -> Value {
    serde_json::to_value(MlpJetProblem::laplacian(2, 128, 4, 1, points)).unwrap()
}

#[test]
fn python_non_finite_floats_become_null_outside_strings() {
    assert_eq!(
        strict_json(r#"{"a": NaN, "b": -Infinity, "c": [Infinity], "s": "NaN \"Infinity\""}"#),
        r#"{"a": null, "b": null, "c": [null], "s": "NaN \"Infinity\""}"#
    );
}

#[test]
fn the_fastest_pinn_variant_is_the_baseline_and_the_other_is_kept() {
    let p = peers(MlpJet::NAME, &pinn_file()).unwrap();
    assert_eq!(p.source.torch.as_deref(), Some("2.11.0+cu130"));
    let mut rows = vec![row(MlpJet::NAME, jet(262144), 2624.6)];
    p.apply(&mut rows);
    let r = &rows[0];
    assert_eq!(r.baseline, "torch-autograd-tf32");
    assert_eq!(r.baseline_us, Some(6555.0));
    assert!((r.speedup.unwrap() - 6555.0 / 2624.6).abs() < 1e-12);
    assert_eq!(r.other_baselines.len(), 1);
    let off = &r.other_baselines[0];
    assert_eq!(
        (off.name.as_str(), off.median_us),
        ("torch-autograd-fp32", 9257.0)
    );
    assert_eq!(off.max_rel_err, Some(2e-6));
    // The TF32 variant's NaN error is reported, not hidden.
    let (b, _) = p.baselines(MlpJet::NAME, &jet(262144));
    assert_eq!(b[0].max_rel_err, Some(1e-6));
    assert!(b[0].note.as_deref().unwrap().contains("not finite"));
}

#[test]
fn training_rows_serve_only_mlp_jet_backward_and_a_failed_variant_is_a_note() {
    let p = peers(MlpJetBackward::NAME, &pinn_file()).unwrap();
    let train = MlpJetBackwardProblem {
        d: 2,
        width: 128,
        depth: 4,
        p: 1,
        points: 262144,
        loss: Loss::LaplacianResidual,
    };
    let mut rows = vec![row(
        MlpJetBackward::NAME,
        serde_json::to_value(train).unwrap(),
        10407.8,
    )];
    let notes = p.apply(&mut rows);
    assert_eq!(rows[0].baseline, "torch-autograd-fp32");
    assert_eq!(rows[0].baseline_us, Some(31930.0));
    assert!(rows[0].other_baselines.is_empty());
    assert!(
        notes
            .iter()
            .any(|n| n.contains("torch-autograd-tf32") && n.contains("out of memory")),
        "{notes:?}"
    );
    // Given cotangents are not what the peer trains on.
    let cot = MlpJetBackwardProblem {
        loss: Loss::Cotangents,
        ..train
    };
    let cot = serde_json::to_value(cot).unwrap();
    assert!(p.baselines(MlpJetBackward::NAME, &cot).0.is_empty());
    assert!(p.require_match(&[cot]).is_err());
}

#[test]
fn rows_the_peer_did_not_time_keep_no_baseline() {
    let p = peers(MlpJet::NAME, &pinn_file()).unwrap();
    let mut rows = vec![row(MlpJet::NAME, jet(1000), 10.0)];
    let notes = p.apply(&mut rows);
    assert_eq!(rows[0].baseline, "none");
    assert_eq!((rows[0].baseline_us, rows[0].speedup), (None, None));
    assert!(notes[0].contains("no timed row"), "{notes:?}");
    let e = p.require_match(&[jet(1000)]).unwrap_err();
    assert!(matches!(e, PeersError::NoMatch { count: 1, .. }), "{e}");
}

#[test]
fn sdpa_serves_fp8_and_paged_problems_by_name_as_a_bf16_stand_in() {
    let p = peers(MfaDecode::NAME, &sdpa_file()).unwrap();
    let v = |dtype, page| {
        serde_json::to_value(MfaDecodeProblem::step3(128, 4096, dtype, page)).unwrap()
    };
    let mut rows = vec![
        row(MfaDecode::NAME, v(KvDtype::Bf16, 0), 150.0),
        row(MfaDecode::NAME, v(KvDtype::Fp8e4m3, 16), 170.0),
    ];
    p.apply(&mut rows);
    assert_eq!(rows[0].baseline, "torch-sdpa-cudnn");
    let names: Vec<&str> = rows[0]
        .other_baselines
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(names, ["torch-sdpa-flash", "torch-sdpa-efficient"]);
    assert_eq!(rows[1].baseline, "torch-sdpa-cudnn (bf16 contiguous KV)");
    assert_eq!(rows[1].baseline_us, Some(125.3));
    // A backend that failed on a shape is a note, and that shape has no baseline.
    let one = serde_json::to_value(MfaDecodeProblem::step3(1, 1024, KvDtype::Bf16, 0)).unwrap();
    let (b, notes) = p.baselines(MfaDecode::NAME, &one);
    assert!(
        b.is_empty() && notes[0].contains("No available kernel"),
        "{notes:?}"
    );
}

#[test]
fn a_mismatched_file_or_family_is_a_typed_error() {
    // SDPA's file given for mlp_jet, and the other way round.
    let e = peers(MlpJet::NAME, &sdpa_file()).err().unwrap();
    assert!(matches!(e, PeersError::Shape { .. }), "{e}");
    assert!(e.to_string().contains(PINN_TORCH), "{e}");
    let e = peers(MfaDecode::NAME, &pinn_file()).err().unwrap();
    assert!(e.to_string().contains(MFA_SDPA), "{e}");
    let e = peers(MlpJet::NAME, "{\"rows\": [").err().unwrap();
    assert!(matches!(e, PeersError::NotJson { .. }), "{e}");
    let e = Peers::read(Path::new("/nonexistent/peers.json"), MlpJet::NAME)
        .err()
        .unwrap();
    assert!(matches!(e, PeersError::Read { .. }), "{e}");
    let e = Peers::read(Path::new("/nonexistent/peers.json"), "gemm_bf16")
        .err()
        .unwrap();
    assert!(matches!(e, PeersError::NotApplicable { .. }), "{e}");
    let p = peers(MfaDecode::NAME, &sdpa_file()).unwrap();
    assert!(p.check_device("NVIDIA H200").is_ok());
    let e = p.check_device("NVIDIA H100 80GB HBM3").unwrap_err();
    assert!(e.to_string().contains("same GPU call"), "{e}");
}

#[test]
fn attaching_names_the_peer_in_the_file() {
    let p = peers(MlpJet::NAME, &pinn_file()).unwrap();
    let mut f = BenchFile {
        schema: 2,
        device: Value::Null,
        method: "median of 50".into(),
        empty_kernel_us: None,
        peers: None,
        rows: vec![row(MlpJet::NAME, jet(262144), 2624.6)],
    };
    p.attach(&mut f);
    assert!(f.method.contains(PINN_TORCH) && f.method.contains("median of 20"));
    assert_eq!(f.peers.as_ref().unwrap().script, PINN_TORCH);
    let back: BenchFile = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
    assert_eq!(back.peers, f.peers);
    assert_eq!(back.rows[0].baseline, "torch-autograd-tf32");
}
