//! GPU tier for tuning `mfa_decode` (included by `tests/gpu.rs`; run by `.gpu/gpu-run.sh` with
//! `--ignored`). With KILN_GPU_REPORT set, the test writes a JSON summary there.
//!
//! * `mfa_decode_tune_end_to_end`: `tune_mfa_decode` on a contiguous BF16 and a paged FP8
//!   problem into a fresh folder, with a short search: both entries written and validated
//!   (no baseline, with a note naming the SDPA peer script), and a second run skips them.

// `!(err <= tol)` on purpose: a NaN error must fail.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::common::{assert_no_failures, open, quick_tune_options, report};

use kiln_codegen::families::mfa_decode::{KvDtype, MfaDecodeProblem};
use kiln_runtime::artifact::Artifact;
use kiln_tuner::mfa_decode::{PEER_NOTE, TOLERANCE};
use kiln_tuner::tune::tune_mfa_decode;
use serde_json::json;

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-bundle.sh, then .gpu/gpu-run.sh"]
fn mfa_decode_tune_end_to_end() {
    let (dev, compiler) = open();
    let dir = tempfile::tempdir().unwrap();
    let problems = [
        MfaDecodeProblem::step3(3, 1000, KvDtype::Bf16, 0),
        MfaDecodeProblem::step3(2, 700, KvDtype::Fp8e4m3, 16),
    ];
    let opts = quick_tune_options(dir.path());
    let rep = tune_mfa_decode(&dev, &compiler, &problems, &opts).unwrap_or_else(|e| panic!("{e}"));
    let again =
        tune_mfa_decode(&dev, &compiler, &problems, &opts).unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for (p, r) in problems.iter().zip(&rep.problems) {
        let Some(e) = r.entry.as_ref().filter(|_| r.status == "tuned") else {
            failures.push(json!({"problem": p, "status": r.status, "reason": r.reason}));
            continue;
        };
        let winner_ok = e
            .candidates
            .iter()
            .any(|c| c.config == e.config && c.outcome == "ok");
        if !(e.max_rel_err <= TOLERANCE)
            || !winner_ok
            || e.baseline.is_some()
            || !r.notes.iter().any(|n| n == PEER_NOTE)
        {
            failures.push(json!({"problem": p, "entry": e, "notes": r.notes}));
        }
    }
    // The artifact on disk has both problems.
    match Artifact::load(&rep.artifact) {
        Ok(art) => {
            for p in &problems {
                if art.find(&serde_json::to_value(p).unwrap()).is_none() {
                    failures.push(json!({"problem": p, "error": "not in the saved artifact"}));
                }
            }
        }
        Err(e) => failures.push(json!({"error": e.to_string()})),
    }
    if again.problems.iter().any(|r| r.status != "skipped") {
        failures.push(json!({"error": "a second run re-tuned", "report": again.problems.iter().map(|r| &r.status).collect::<Vec<_>>()}));
    }
    report(
        "mfa_decode_tune_end_to_end",
        &json!({"report": rep, "failures": failures}),
    );
    assert_no_failures(&failures);
}
