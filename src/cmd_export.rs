//! `kiln export DIR`: cubins + manifest.json for every tuned kernel of one GPU
//! model. Needs NVRTC, not a GPU.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln_codegen::{all_families, CompileOptions, Compiler, DeviceLimits};
use kiln_runtime::artifact::Artifact;
use kiln_runtime::manifest::{
    Manifest, ManifestArg, ManifestKernel, ManifestScratch, MANIFEST_SCHEMA,
};

use crate::CliResult;

/// The GPU slug to export: `--gpu`, else the device here, else the only folder under `tuned/`.
pub fn pick_gpu(tuned: &Path, gpu: Option<String>) -> Result<String, Box<dyn std::error::Error>> {
    if let Some(g) = gpu {
        return Ok(g);
    }
    if let Ok(d) = kiln_runtime::Device::open(0) {
        return Ok(d.info.slug());
    }
    let dirs: Vec<String> = std::fs::read_dir(tuned)
        .map_err(|e| format!("{}: {e}", tuned.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match dirs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no tuned artifacts under {}: run `kiln tune` on a GPU first",
            tuned.display()
        )
        .into()),
        many => Err(format!(
            "several GPUs under {} ({}): pick one with --gpu",
            tuned.display(),
            many.join(", ")
        )
        .into()),
    }
}

pub fn export(dir: PathBuf, tuned: PathBuf, gpu: Option<String>, arch: &str) -> CliResult {
    let gpu = pick_gpu(&tuned, gpu)?;
    let compiler = Compiler::new()?;
    let opts = CompileOptions {
        arch: kiln_codegen::Arch(arch.to_string()),
        ..Default::default()
    };
    let limits = DeviceLimits::HOPPER;
    std::fs::create_dir_all(&dir)?;
    let mut kernels = Vec::new();
    let mut written = BTreeSet::new();
    for fam in all_families() {
        let path = Artifact::path(&tuned, &gpu, fam.name());
        if !path.exists() {
            continue;
        }
        let art = Artifact::load(&path)?;
        if art.toolchain.template_sha256 != fam.template_sha256() {
            eprintln!("note: {}: the template changed since tuning; exporting the tuned configs recompiled from the current template", path.display());
        }
        for e in &art.entries {
            let (config, source) = match fam.describe(&e.problem, &e.config, &limits) {
                Ok(_) => (e.config.clone(), "tuned"),
                Err(err) => {
                    eprintln!(
                        "note: {} {}: {err}; exporting the default config",
                        fam.name(),
                        e.problem
                    );
                    (fam.default_config(&e.problem)?, "default")
                }
            };
            let desc = fam.describe(&e.problem, &config, &limits)?;
            let src = fam.render_json(&e.problem, &config)?;
            let compiled = compiler.compile(&src, &opts)?;
            let file = format!("{}.cubin", desc.entry);
            if written.insert(file.clone()) {
                std::fs::write(dir.join(&file), &compiled.cubin)?;
            }
            kernels.push(ManifestKernel {
                family: desc.family,
                problem: desc.problem,
                config,
                entry: desc.entry,
                cubin: file,
                cubin_sha256: kiln_codegen::cache::sha256_hex(&compiled.cubin),
                args: desc
                    .args
                    .iter()
                    .map(|a| ManifestArg {
                        name: a.name.into(),
                        c_type: a.c_type.into(),
                    })
                    .collect(),
                geometry: desc.geometry,
                scratch: desc
                    .scratch
                    .iter()
                    .map(|s| ManifestScratch {
                        arg: s.arg.into(),
                        bytes: s.bytes,
                        zero_init: s.zero_init,
                    })
                    .collect(),
                source: source.into(),
                median_us: (source == "tuned").then_some(e.median_us),
            });
        }
    }
    if kernels.is_empty() {
        return Err(format!("no tuned artifacts for {gpu} under {}", tuned.display()).into());
    }
    let manifest = Manifest {
        schema: MANIFEST_SCHEMA,
        kiln: kiln_codegen::KILN_VERSION.into(),
        nvrtc: compiler.toolchain().version_string(),
        arch: arch.into(),
        gpu,
        kernels,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    println!(
        "exported {} kernels ({} cubins) for {} to {}",
        manifest.kernels.len(),
        written.len(),
        manifest.gpu,
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
