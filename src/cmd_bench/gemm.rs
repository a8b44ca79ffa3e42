//! `kiln bench --family gemm_bf16 | gemm_fp8`: every problem of the tuned artifact, its tuned
//! config against cuBLAS / cuBLASLt FP8 timed in the same process on the same buffers.

use std::path::Path;

use kiln_codegen::families::gemm_bf16::GemmBf16;
use kiln_codegen::families::gemm_fp8::GemmFp8;
use kiln_codegen::Family;
use kiln_runtime::launch::gemm_bf16::GemmBf16Reference;
use kiln_runtime::launch::gemm_fp8_ref::GemmFp8Reference;
use kiln_runtime::measure::MeasureOptions;
use kiln_tuner::baseline::{CublasBf16, CublasLtFp8, Fp8Scaling, CUBLASLT_FP8_BLOCK, CUBLAS_BF16};
use kiln_tuner::gemm_bf16::GemmBf16Bench;
use kiln_tuner::gemm_fp8::{choose_baselines, GemmFp8Bench};
use kiln_tuner::roofline;

use super::{source_label, tuned_problems, validate_and_time, BenchFile, BenchRow, Gpu};
use crate::table::compact;

type Error = Box<dyn std::error::Error>;

pub fn measure_bf16(tuned_dir: &Path, reps: usize, steady: bool) -> Result<BenchFile, Error> {
    let mut gpu = Gpu::open(reps)?;
    let (device, compiler) = (&gpu.device, &gpu.compiler);
    let (dispatch, problems) =
        tuned_problems::<GemmBf16>(tuned_dir, device, compiler, "kiln tune")?;
    let reference = GemmBf16Reference::compile(device, compiler)?;
    let blas = CublasBf16::new(device)?;
    let mut rows = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let sel = dispatch.select(p);
        let config = sel.config;
        let mut b = GemmBf16Bench::new(
            device,
            compiler,
            &mut gpu.bench,
            &reference,
            *p,
            0x5eed + i as u64,
        )?;
        let (prepared, m) =
            validate_and_time::<GemmBf16, _>(&mut b, format!("{p:?}"), &config, reps)?;
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
        let mut row = BenchRow::measured(
            GemmBf16::NAME,
            serde_json::to_value(p)?,
            serde_json::to_value(config)?,
            &m,
        );
        row.config_source = Some(source_label(&sel.source));
        row.set_baseline(CUBLAS_BF16, base.median_us);
        row.pct_of_roofline = Some(roofline::pct_of_roofline(
            flops,
            bytes,
            roofline::BF16_FLOPS,
            m.median_us,
        ));
        row.weight_tb_s = Some((p.n as f64 * p.k as f64 * 2.0) / (m.median_us * 1e-6) / 1e12);
        row.tflops = flops / (m.median_us * 1e-6) / 1e12;
        row.max_rel_err = Some(prepared.max_rel_err);
        row.kiln_steady_us = kiln_steady_us;
        row.baseline_steady_us = baseline_steady_us;
        rows.push(row);
    }
    Ok(gpu.file(
        format!("median of {reps} CUDA-event-timed runs, L2 flushed (a read of a 2x-L2 buffer) before each; baseline in the same process on the same buffers"),
        rows,
        None,
    )?)
}

pub fn measure_fp8(tuned_dir: &Path, reps: usize, steady: bool) -> Result<BenchFile, Error> {
    let mut gpu = Gpu::open(reps)?;
    let (device, compiler) = (&gpu.device, &gpu.compiler);
    let (dispatch, problems) =
        tuned_problems::<GemmFp8>(tuned_dir, device, compiler, "kiln tune --family gemm_fp8")?;
    let reference = GemmFp8Reference::compile(device, compiler)?;
    let lt = CublasLtFp8::new(device)?;
    let mut rows = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let sel = dispatch.select(p);
        let config = sel.config;
        let mut b = GemmFp8Bench::new(
            device,
            compiler,
            &mut gpu.bench,
            &reference,
            *p,
            0x5eed + i as u64,
        )?;
        let (prepared, m) =
            validate_and_time::<GemmFp8, _>(&mut b, format!("{p:?}"), &config, reps)?;
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
        let mut row = BenchRow::measured(
            GemmFp8::NAME,
            serde_json::to_value(p)?,
            serde_json::to_value(config)?,
            &m,
        );
        row.config_source = Some(source_label(&sel.source));
        row.set_baseline(&base.name, base.median_us);
        row.pct_of_roofline = Some(roofline::pct_of_roofline(
            flops,
            bytes,
            roofline::FP8_FLOPS,
            m.median_us,
        ));
        // e4m3: one byte per weight.
        row.weight_tb_s = Some((p.n as f64 * p.k as f64) / (m.median_us * 1e-6) / 1e12);
        row.tflops = flops / (m.median_us * 1e-6) / 1e12;
        row.max_rel_err = Some(prepared.max_rel_err);
        row.kiln_steady_us = kiln_steady_us;
        row.baseline_steady_us = baseline_steady_us;
        row.other_baselines = choice.extra;
        rows.push(row);
    }
    Ok(gpu.file(
        format!("median of {reps} CUDA-event-timed runs, L2 flushed (a read of a 2x-L2 buffer) before each; baselines (cuBLASLt FP8, block-scaled and row-wise, each validated against the GPU reference first) in the same process on the same buffers"),
        rows,
        None,
    )?)
}
