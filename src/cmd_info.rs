//! `kiln info` and `kiln list`.

use std::process::ExitCode;

use kiln_codegen::{all_families, DeviceLimits};
use serde_json::json;

use crate::table::Table;
use crate::CliResult;

pub fn info(json_out: bool) -> CliResult {
    let device = match kiln_runtime::Device::open(0) {
        Ok(d) => json!({"ok": true, "info": d.info, "slug": d.info.slug()}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    let toolchain = match kiln_codegen::toolchain::toolchain() {
        Ok(t) => json!({
            "ok": true,
            "nvrtc_version": t.version_string(),
            "found_by": t.found_by,
            "root": t.root,
            "nvrtc_lib": t.nvrtc_lib,
            "include_dirs": t.include_dirs,
        }),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    let cache = kiln_codegen::toolchain::cache_dir();
    let out = json!({
        "kiln": kiln_codegen::KILN_VERSION,
        "device": device,
        "toolchain": toolchain,
        "cache_dir": cache,
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("kiln {}", kiln_codegen::KILN_VERSION);
    if out["device"]["ok"] == true {
        let i = &out["device"]["info"];
        println!(
            "device:    {} (sm_{}{}, {} SMs, L2 {} MiB, {} GiB, max clock {} MHz, driver {})",
            i["name"].as_str().unwrap_or("?"),
            i["cc"][0],
            i["cc"][1],
            i["sms"],
            i["l2_bytes"].as_u64().unwrap_or(0) >> 20,
            i["total_mem_bytes"].as_u64().unwrap_or(0) >> 30,
            i["clock_mhz"],
            i["driver"]
        );
    } else {
        println!(
            "device:    none ({})",
            out["device"]["error"].as_str().unwrap_or("?")
        );
    }
    if out["toolchain"]["ok"] == true {
        let t = &out["toolchain"];
        println!(
            "nvrtc:     {} (found by {})",
            t["nvrtc_version"].as_str().unwrap_or("?"),
            t["found_by"].as_str().unwrap_or("?")
        );
        println!("library:   {}", t["nvrtc_lib"].as_str().unwrap_or("?"));
        for d in t["include_dirs"].as_array().into_iter().flatten() {
            println!("headers:   {}", d.as_str().unwrap_or("?"));
        }
    } else {
        println!(
            "nvrtc:     not available: {}",
            out["toolchain"]["error"].as_str().unwrap_or("?")
        );
    }
    println!("cache:     {}", cache.display());
    Ok(ExitCode::SUCCESS)
}

pub fn list(json_out: bool) -> CliResult {
    let limits = DeviceLimits::HOPPER;
    let rows: Vec<_> = all_families()
        .into_iter()
        .map(|f| {
            json!({
                "family": f.name(),
                "space": f.raw_space_size(),
                "legal": f.space_size(&limits),
                "variants": f.variants(&limits).len(),
                "template_sha256": f.template_sha256(),
            })
        })
        .collect();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&[
        "family",
        "space",
        "legal (sm_90a)",
        "variants (x template branches)",
        "template sha256",
    ]);
    for r in &rows {
        t.row(vec![
            r["family"].as_str().unwrap_or("").to_string(),
            r["space"].to_string(),
            r["legal"].to_string(),
            r["variants"].to_string(),
            r["template_sha256"].as_str().unwrap_or("")[..12].to_string(),
        ]);
    }
    println!("{}", t.render());
    Ok(ExitCode::SUCCESS)
}
