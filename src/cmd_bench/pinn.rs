//! `kiln bench --family mlp_jet | mlp_jet_backward`: the PINN target nets
//! (`pinn_targets`: u + grad u + Laplacian, or one training step of the Laplacian-residual
//! loss). Each row runs the config dispatch serves (the tuned artifact's entry for the net, else
//! the family default, as the row's `config_source` says), validated first through the tuner's
//! evaluator (`kiln_tuner::pinn::PinnFamily::evaluator`: the f64 reference, outputs poisoned),
//! then timed. `--candidates` also times every legal config
//! (`kiln_tuner::pinn::*::time_configs`, the code the GPU tests' benches time with) and reports
//! the fastest beside it. The baseline is PyTorch autograd, from `--peers`.

use std::path::Path;

use kiln_codegen::families::mlp_jet::MlpJet;
use kiln_codegen::{Compiler, Family};
use kiln_runtime::dispatch::Dispatch;
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use kiln_tuner::pinn::{default_first, fastest, precompile, PinnFamily, Timed, TimingError};
use kiln_tuner::roofline;

use super::peers::Peers;
use super::{source_label, validate_and_time, BenchFile, BenchRow, BestCandidate, Gpu};

/// The timing entry of a PINN family (`kiln_tuner::pinn::jet::time_configs`,
/// `kiln_tuner::pinn::backward::time_configs`).
pub type TimeFn<F> = fn(
    &Device,
    &Compiler,
    &mut Bench,
    &<F as Family>::Problem,
    &[<F as Family>::Config],
    &MeasureOptions,
    u64,
) -> Result<Vec<Timed<<F as Family>::Config>>, TimingError>;

/// The tune command a missing or stale PINN artifact points to.
pub fn tune_command(family: &str) -> String {
    let preset = if family == MlpJet::NAME {
        "pinn-jets"
    } else {
        "pinn-train"
    };
    format!("kiln tune --family {family} --preset {preset}")
}

pub fn measure<F: PinnFamily>(
    problems: &[F::Problem],
    time: TimeFn<F>,
    tuned_dir: &Path,
    reps: usize,
    candidates: bool,
    peers: Option<&Peers>,
) -> Result<BenchFile, Box<dyn std::error::Error>> {
    let values = problems
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(peers) = peers {
        // Before any GPU work: the problems do not depend on the device.
        peers.require_match(&values)?;
    }
    let mut gpu = Gpu::open(reps)?;
    if let Some(peers) = peers {
        peers.check_device(&gpu.device.info.name)?;
    }
    let dispatch = Dispatch::<F>::load(
        tuned_dir,
        &gpu.device.info,
        Some(&gpu.compiler.toolchain().version_string()),
    );
    for n in &dispatch.notes {
        eprintln!("note: {n} (tune with `{}`)", tune_command(F::NAME));
    }
    let limits = gpu.device.info.limits();
    let served: Vec<_> = problems.iter().map(|p| dispatch.select(p)).collect();
    let configs: Vec<Vec<F::Config>> = problems
        .iter()
        .zip(&served)
        .map(|(p, s)| {
            if candidates {
                default_first(&s.config, &F::candidates(p, &limits))
            } else {
                vec![s.config.clone()]
            }
        })
        .collect();
    let work: Vec<(F::Problem, F::Config)> = problems
        .iter()
        .zip(&configs)
        .flat_map(|(p, cs)| cs.iter().map(move |c| (p.clone(), c.clone())))
        .collect();
    precompile::<F>(&gpu.compiler, &work)?;
    let opts = MeasureOptions {
        warmup: 3,
        reps,
        flush_l2: true,
    };
    let mut rows = Vec::new();
    for (i, ((p, sel), value)) in problems.iter().zip(&served).zip(values).enumerate() {
        let seed = 0x5eed + i as u64;
        let (prepared, m) = {
            let mut b = F::evaluator(&gpu.device, &gpu.compiler, &mut gpu.bench, p, seed)
                .map_err(|e| format!("{} {p:?}: {e}", F::NAME))?;
            validate_and_time::<F, _>(&mut b, format!("{p:?}"), &sel.config, reps)?
        };
        let us = m.median_us;
        let mut row = BenchRow::measured(F::NAME, value, serde_json::to_value(&sel.config)?, &m);
        row.config_source = Some(source_label(&sel.source));
        row.tflops = F::flops(p) / (us * 1e-6) / 1e12;
        row.pct_of_roofline = Some(roofline::pct_of_roofline(
            F::flops(p),
            0.0,
            roofline::FP32_FLOPS,
            us,
        ));
        row.max_rel_err = Some(prepared.max_rel_err);
        row.outputs = prepared.outputs;
        if candidates {
            let timed = time(
                &gpu.device,
                &gpu.compiler,
                &mut gpu.bench,
                p,
                &configs[i],
                &opts,
                seed,
            )?;
            if let Some(best) = fastest(&timed) {
                row.best_candidate = Some(BestCandidate {
                    config: serde_json::to_value(&best.config)?,
                    median_us: best.measurement.median_us,
                    p20_us: best.measurement.p20_us,
                    p80_us: best.measurement.p80_us,
                    of: timed.len(),
                });
            }
        }
        rows.push(row);
    }
    Ok(gpu.file(
        format!(
            "the config dispatch serves for every target net (the tuned artifact's, else the \
             family default: see config_source), validated against the f64 reference with its \
             outputs poisoned, then median of {reps} CUDA-event-timed calls after 2 warm-up, \
             L2 flushed (a read of a 2x-L2 buffer) before each{}; fp32; TFLOP/s counts products \
             only (the flops of {}); % roofline against the {:.1} TFLOP/s fp32 FMA issue rate \
             (a datasheet figure; tensor-core configs, tf32x3 and split16, can pass it)",
            if candidates {
                "; --candidates: every legal config also timed (3 warm-up, not validated here: \
                 the GPU tests validate every config on these nets), the fastest reported \
                 beside it"
            } else {
                ""
            },
            F::NAME,
            roofline::FP32_FLOPS / 1e12
        ),
        rows,
        peers,
    )?)
}
