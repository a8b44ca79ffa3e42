//! `kiln compile`: render and compile every variant of one or all families.

use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ParallelProgressIterator, ProgressBar, ProgressStyle};
use kiln_codegen::{all_families, find_family, Arch, CompileOptions, Compiler, DeviceLimits};
use rayon::prelude::*;
use serde_json::json;

use crate::table::Table;
use crate::CliResult;

pub fn compile(
    family: Option<String>,
    arch: &str,
    limit: Option<usize>,
    filter: Option<&str>,
    json_out: bool,
) -> CliResult {
    let families = match family {
        Some(name) => vec![find_family(&name)?],
        None => all_families(),
    };
    let compiler = Compiler::new()?;
    let opts = CompileOptions {
        arch: Arch(arch.to_string()),
        ..Default::default()
    };
    let limits = DeviceLimits::HOPPER;

    // Render everything first: a template error is reported before any compile.
    let mut units = Vec::new();
    for f in &families {
        let variants: Vec<_> = f
            .variants(&limits)
            .into_iter()
            .filter(|v| filter.is_none_or(|t| v.entry.contains(t)))
            .collect();
        let take = limit.unwrap_or(variants.len());
        for v in variants.into_iter().take(take) {
            let src = f.render(&v)?;
            units.push((f.name(), v, src));
        }
    }

    let t0 = Instant::now();
    let bar = if json_out {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(units.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("compile {bar:40} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid progress template"),
    );
    let results: Vec<_> = units
        .par_iter()
        .progress_with(bar.clone())
        .map(|(_, _, src)| compiler.compile(src, &opts))
        .collect();
    bar.finish_and_clear();
    let wall_s = t0.elapsed().as_secs_f64();

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for ((family, variant, _), res) in units.iter().zip(results) {
        match res {
            Ok(k) => rows.push(json!({
                "family": family,
                "entry": k.entry,
                "config": variant.config,
                "cache_hit": k.cache_hit,
                "wall_ms": k.wall_ms,
                "compile_ms": k.compile_ms,
                "registers": k.resources.registers,
                "spill_store_bytes": k.resources.spill_store_bytes,
                "spill_load_bytes": k.resources.spill_load_bytes,
                "static_smem_bytes": k.resources.static_smem_bytes,
                "cubin_bytes": k.cubin.len(),
            })),
            Err(e) => failures
                .push(json!({"family": family, "entry": variant.entry, "error": e.to_string()})),
        }
    }
    let hits = rows.iter().filter(|r| r["cache_hit"] == true).count();
    let mut compiled_ms: Vec<f64> = rows
        .iter()
        .filter(|r| r["cache_hit"] == false)
        .filter_map(|r| r["compile_ms"].as_f64())
        .collect();
    compiled_ms.sort_by(|a, b| a.total_cmp(b));
    let median = compiled_ms.get(compiled_ms.len() / 2).copied();
    let spilling = rows
        .iter()
        .filter(|r| r["spill_store_bytes"].as_u64().unwrap_or(0) > 0)
        .count();
    let summary = json!({
        "variants": units.len(),
        "compiled": rows.len() - hits,
        "from_cache": hits,
        "failed": failures.len(),
        "spilling": spilling,
        "wall_s": wall_s,
        "median_compile_ms": median,
        "nvrtc": compiler.toolchain().version_string(),
        "arch": arch,
        "cache_dir": compiler.cache().dir(),
    });

    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"summary": summary, "kernels": rows, "failures": failures})
            )?
        );
    } else {
        let mut t = Table::new(&[
            "family",
            "entry",
            "cache",
            "ms",
            "regs",
            "spill st/ld",
            "smem",
        ]);
        for r in &rows {
            t.row(vec![
                r["family"].as_str().unwrap_or("").into(),
                r["entry"].as_str().unwrap_or("").into(),
                if r["cache_hit"] == true {
                    "hit".into()
                } else {
                    "miss".into()
                },
                format!(
                    "{:.0}",
                    if r["cache_hit"] == true {
                        r["wall_ms"].as_f64()
                    } else {
                        r["compile_ms"].as_f64()
                    }
                    .unwrap_or(0.0)
                ),
                r["registers"].to_string(),
                format!("{}/{}", r["spill_store_bytes"], r["spill_load_bytes"]),
                r["static_smem_bytes"].to_string(),
            ]);
        }
        println!("{}", t.render());
        for f in &failures {
            eprintln!(
                "FAILED {} {}:\n{}\n",
                f["family"].as_str().unwrap_or(""),
                f["entry"].as_str().unwrap_or(""),
                f["error"].as_str().unwrap_or("")
            );
        }
        println!(
            "{} variants in {:.2} s: {} compiled (median {} ms), {} served from the compile cache ({}), {} failed, {} spilling; NVRTC {} for {}",
            units.len(),
            wall_s,
            rows.len() - hits,
            median.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into()),
            hits,
            compiler.cache().dir().display(),
            failures.len(),
            spilling,
            compiler.toolchain().version_string(),
            arch
        );
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
