//! GPU tier for tuning the PINN families (included by `tests/gpu.rs`; run by `.gpu/gpu-run.sh`
//! with `--ignored`). With KILN_GPU_REPORT set, the test writes a JSON summary there.
//!
//! * `pinn_tune_end_to_end`: `tune_pinn` for `mlp_jet` and `mlp_jet_backward` on small nets (odd point
//!   counts) into a fresh folder with a short search: every entry written, its winner validated
//!   (error within the families' tolerances, each output's error recorded within its bound, no
//!   baseline, the peer note), the saved artifacts
//!   hold every problem, a second run skips them, and dispatch serves each tuned config for its
//!   exact problem.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, quick_tune_options, report};

use kiln_codegen::families::mlp_jet::{MlpJet, MlpJetProblem, Streams};
use kiln_codegen::families::mlp_jet_backward::{Loss, MlpJetBackward, MlpJetBackwardProblem};
use kiln_codegen::Family;
use kiln_runtime::artifact::Artifact;
use kiln_runtime::dispatch::{Dispatch, Source};
use kiln_tuner::pinn::{backward, jet, tune_pinn, PEER_NOTE};
use kiln_tuner::tune::TuneReport;
use serde_json::{json, Value};

/// Check one family's two tuning runs; `tol` bounds every winner's error.
fn check<F: Family>(
    problems: &[F::Problem],
    rep: &TuneReport,
    again: &TuneReport,
    tol: f64,
    dev: &kiln_runtime::Device,
    root: &std::path::Path,
    failures: &mut Vec<Value>,
) {
    for (p, r) in problems.iter().zip(&rep.problems) {
        let Some(e) = r.entry.as_ref().filter(|_| r.status == "tuned") else {
            failures.push(
                json!({"family": F::NAME, "problem": p, "status": r.status, "reason": r.reason}),
            );
            continue;
        };
        let winner_ok = e
            .candidates
            .iter()
            .any(|c| c.config == e.config && c.outcome == "ok");
        // Each output's error is recorded with its bound, and the entry's error is their worst.
        let worst_output = e.outputs.iter().map(|o| o.max_rel_err).fold(0.0, f64::max);
        let outputs_ok = !e.outputs.is_empty()
            && e.outputs.iter().all(|o| o.max_rel_err <= o.bound)
            && worst_output == e.max_rel_err;
        if !(e.max_rel_err <= tol)
            || !winner_ok
            || !outputs_ok
            || e.baseline.is_some()
            || !r.notes.iter().any(|n| n == PEER_NOTE)
        {
            failures.push(json!({"family": F::NAME, "problem": p, "entry": e, "notes": r.notes}));
        }
    }
    match Artifact::load(&rep.artifact) {
        Ok(art) => {
            for p in problems {
                if art.find(&serde_json::to_value(p).unwrap()).is_none() {
                    failures.push(json!({"family": F::NAME, "problem": p, "error": "not in the saved artifact"}));
                }
            }
        }
        Err(e) => failures.push(json!({"family": F::NAME, "error": e.to_string()})),
    }
    if again.problems.iter().any(|r| r.status != "skipped") {
        failures.push(json!({"family": F::NAME, "error": "a second run re-tuned"}));
    }
    let dispatch = Dispatch::<F>::load(root, &dev.info, None);
    for (p, r) in problems.iter().zip(&rep.problems) {
        let sel = dispatch.select(p);
        let tuned = r.entry.as_ref().map(|e| e.config.clone());
        if sel.source != Source::Exact || Some(serde_json::to_value(&sel.config).unwrap()) != tuned
        {
            failures.push(json!({"family": F::NAME, "problem": p, "error": "dispatch does not serve the tuned config",
                "source": sel.source, "notes": dispatch.notes}));
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn pinn_tune_end_to_end() {
    let (dev, compiler) = open();
    let dir = tempfile::tempdir().unwrap();
    let opts = quick_tune_options(dir.path());
    let mut failures = Vec::new();

    let jets = [
        MlpJetProblem::laplacian(2, 64, 3, 1, 4999),
        MlpJetProblem {
            d: 3,
            width: 32,
            depth: 2,
            p: 5,
            points: 777,
            streams: Streams::ValueGradHessdiag,
        },
    ];
    let rep = tune_pinn::<MlpJet>(&dev, &compiler, &jets, &opts).unwrap_or_else(|e| panic!("{e}"));
    let again =
        tune_pinn::<MlpJet>(&dev, &compiler, &jets, &opts).unwrap_or_else(|e| panic!("{e}"));
    // The jets' bound per stream is at least its tolerance (more on ill-conditioned nets).
    let jet_tol = 8.0 * jet::TOL_SECOND;
    check::<MlpJet>(
        &jets,
        &rep,
        &again,
        jet_tol,
        &dev,
        dir.path(),
        &mut failures,
    );
    let jet_report = (rep, again);

    let train = [
        MlpJetBackwardProblem {
            d: 2,
            width: 64,
            depth: 3,
            p: 1,
            points: 3001,
            loss: Loss::LaplacianResidual,
        },
        MlpJetBackwardProblem {
            d: 4,
            width: 32,
            depth: 2,
            p: 3,
            points: 999,
            loss: Loss::Cotangents,
        },
    ];
    let rep = tune_pinn::<MlpJetBackward>(&dev, &compiler, &train, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let again = tune_pinn::<MlpJetBackward>(&dev, &compiler, &train, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    check::<MlpJetBackward>(
        &train,
        &rep,
        &again,
        backward::TOL,
        &dev,
        dir.path(),
        &mut failures,
    );
    report(
        "pinn_tune_end_to_end",
        &json!({"mlp_jet": jet_report.0, "mlp_jet_backward": rep, "failures": failures}),
    );
    assert_no_failures(&failures);
}
