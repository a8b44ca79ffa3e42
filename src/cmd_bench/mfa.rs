//! `kiln bench --family mfa_decode`: every problem of the tuned artifact with the config
//! dispatch picks for it, on the tuner's inputs (`kiln_tuner::mfa_decode::MfaDecodeBench`:
//! random Q, KV pools replicated from a random pattern on the device, every length = context),
//! validated on the tuner's checked sequences, then timed. Bandwidth and roofline count
//! `MfaDecode::min_bytes` (K and V with FP8 scales, Q read, O written) against the ~4.2 TB/s
//! copy ceiling. The baseline is SDPA, from `--peers`.

use std::path::Path;

use kiln_codegen::families::mfa_decode::MfaDecode;
use kiln_codegen::Family;
use kiln_tuner::mfa_decode::MfaDecodeBench;
use kiln_tuner::roofline;

use super::peers::Peers;
use super::{source_label, tuned_problems, validate_and_time, BenchFile, BenchRow, Gpu};

pub const TUNE_COMMAND: &str = "kiln tune --family mfa_decode --preset step3-mfa";

pub fn measure(
    tuned_dir: &Path,
    reps: usize,
    peers: Option<&Peers>,
) -> Result<BenchFile, Box<dyn std::error::Error>> {
    let mut gpu = Gpu::open(reps)?;
    if let Some(peers) = peers {
        peers.check_device(&gpu.device.info.name)?;
    }
    let (device, compiler) = (&gpu.device, &gpu.compiler);
    let (dispatch, problems) =
        tuned_problems::<MfaDecode>(tuned_dir, device, compiler, TUNE_COMMAND)?;
    if let Some(peers) = peers {
        let values = problems
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        peers.require_match(&values)?;
    }
    let mut rows = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let sel = dispatch.select(p);
        let config = sel.config;
        let mut b = MfaDecodeBench::new(device, compiler, &mut gpu.bench, *p, 0x5eed + i as u64)?;
        let (prepared, m) = validate_and_time::<MfaDecode, _>(
            &mut b,
            kiln_tuner::mfa_decode::describe(p),
            &config,
            reps,
        )?;
        let (bytes, us) = (MfaDecode::min_bytes(p), m.median_us);
        let mut row = BenchRow::measured(
            MfaDecode::NAME,
            serde_json::to_value(p)?,
            serde_json::to_value(&config)?,
            &m,
        );
        row.config_source = Some(source_label(&sel.source));
        row.kv_tb_s = Some(bytes / (us * 1e-6) / 1e12);
        // Bound by the KV stream: the floor is its bytes at the copy rate (0 FLOP, as the
        // tuner counts it).
        row.pct_of_roofline = Some(roofline::pct_of_roofline(
            0.0,
            bytes,
            roofline::BF16_FLOPS,
            us,
        ));
        row.tflops = MfaDecode::flops(p) / (us * 1e-6) / 1e12;
        row.max_rel_err = Some(prepared.max_rel_err);
        rows.push(row);
    }
    Ok(gpu.file(
        format!(
            "median of {reps} CUDA-event-timed launches, L2 flushed (a read of a 2x-L2 buffer) \
             before each, after validation on the tuner's checked sequences; KV TB/s and % \
             roofline count MfaDecode::min_bytes (K, V with FP8 scales, Q, O) against the \
             {:.1} TB/s copy ceiling",
            roofline::HBM_BYTES_PER_S / 1e12
        ),
        rows,
        peers,
    )?)
}
