//! `kiln bench --family mlp_jet | mlp_jet_backward`: the PINN target nets
//! (`pinn_targets`: u + grad u + Laplacian, or one training step of the Laplacian-residual
//! loss). Neither family has a tuner or a tuned artifact: every row times the family's
//! `default_config`; `--candidates` also times every legal config and reports the fastest
//! beside it. Timing is `kiln_tuner::pinn`, the code the GPU tests time with. The baseline is
//! PyTorch autograd, from `--peers`.

use kiln_codegen::{Compiler, Family};
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use kiln_tuner::pinn::{default_first, fastest, precompile, Timed, TimingError};

use super::peers::Peers;
use super::{BenchFile, BenchRow, BestCandidate, Gpu};

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

pub fn measure<F: Family>(
    problems: &[F::Problem],
    time: TimeFn<F>,
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
    let limits = gpu.device.info.limits();
    let configs: Vec<Vec<F::Config>> = problems
        .iter()
        .map(|p| {
            let d = F::default_config(p);
            if candidates {
                default_first(&d, &F::candidates(p, &limits))
            } else {
                vec![d]
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
    for (i, ((p, cs), value)) in problems.iter().zip(&configs).zip(values).enumerate() {
        let timed = time(
            &gpu.device,
            &gpu.compiler,
            &mut gpu.bench,
            p,
            cs,
            &opts,
            0x5eed + i as u64,
        )?;
        // The default is first (`default_first`, or alone).
        let default = timed
            .first()
            .ok_or_else(|| format!("{}: no config was timed", F::NAME))?;
        let us = default.measurement.median_us;
        let mut row = BenchRow::measured(
            F::NAME,
            value,
            serde_json::to_value(&default.config)?,
            &default.measurement,
        );
        row.config_source = Some(format!(
            "family default ({} has no tuned artifact)",
            F::NAME
        ));
        row.tflops = F::flops(p) / (us * 1e-6) / 1e12;
        if candidates {
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
            "the family default config of every target net (no tuned artifact{}); median of \
             {reps} CUDA-event-timed calls after 3 warm-up, L2 flushed (a read of a 2x-L2 \
             buffer) before each; fp32; TFLOP/s counts products only (the flops of {}); not \
             validated here (the GPU tests validate every config on these nets)",
            if candidates {
                "; --candidates: every legal config also timed, the fastest reported beside it"
            } else {
                ""
            },
            F::NAME
        ),
        rows,
        peers,
    )?)
}
