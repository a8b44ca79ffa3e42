//! NVRTC compile-only tier: every variant of every family compiles for
//! sm_90a with no GPU, without spills, and a second pass is served from the
//! compile cache. Needs NVRTC (`./setup.sh` installs it); fails otherwise.

use kiln_codegen::cache::CompileCache;
use kiln_codegen::{
    all_families, CachePolicy, CompileOptions, Compiler, DeviceLimits, KernelSource,
};

fn compiler_with_fresh_cache(dir: &std::path::Path, policy: CachePolicy) -> Compiler {
    let tc = kiln_codegen::toolchain::toolchain().unwrap_or_else(|e| panic!("{e}"));
    Compiler::with(tc, CompileCache::new(dir), policy)
}

fn all_sources() -> Vec<KernelSource> {
    let limits = DeviceLimits::HOPPER;
    let mut out = Vec::new();
    for f in all_families() {
        let variants = f.variants(&limits);
        assert!(!variants.is_empty(), "{} has no legal variant", f.name());
        for v in variants {
            out.push(f.render(&v).unwrap_or_else(|e| panic!("{e}")));
        }
    }
    out
}

#[test]
fn every_variant_of_every_family_compiles_then_hits_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with_fresh_cache(dir.path(), CachePolicy::Compile);
    let sources = all_sources();
    let opts = CompileOptions::default();

    let t0 = std::time::Instant::now();
    let first = compiler.compile_many(&sources, &opts);
    let cold = t0.elapsed();
    let mut failures = Vec::new();
    for (src, r) in sources.iter().zip(&first) {
        match r {
            Ok(k) => {
                assert!(!k.cache_hit, "{} hit a fresh cache", k.entry);
                assert!(!k.cubin.is_empty());
                assert!(
                    k.resources.registers > 0,
                    "{}: no ptxas report parsed:\n{}",
                    k.entry,
                    k.log
                );
                assert!(
                    !k.resources.spills(),
                    "{} spills: {:?}",
                    k.entry,
                    k.resources
                );
                // mlp_jet's wgmma paths keep products in flight across the jet update; ptxas
                // serialising them (C7514-C7520: a wgmma or its registers under a branch)
                // costs about half their speed without any other sign.
                assert!(
                    !(k.entry.starts_with("kiln_mlp_jet_") && k.log.contains("are serialized")),
                    "{}: ptxas serialised its wgmma's:\n{}",
                    k.entry,
                    k.log
                );
            }
            Err(e) => failures.push(format!("{}: {e}", src.entry)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} variants failed:\n{}",
        failures.len(),
        sources.len(),
        failures.join("\n")
    );

    // Nothing may compile on the second pass.
    let no_jit = compiler_with_fresh_cache(dir.path(), CachePolicy::NoCompile);
    let t1 = std::time::Instant::now();
    let second = no_jit.compile_many(&sources, &opts);
    let warm = t1.elapsed();
    for r in &second {
        let k = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert!(k.cache_hit);
    }
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.as_ref().unwrap().cubin, b.as_ref().unwrap().cubin);
    }
    eprintln!(
        "{} variants: cold {:.2?}, from cache {:.2?}",
        sources.len(),
        cold,
        warm
    );
}

#[test]
fn a_broken_template_reports_the_log_and_the_dumped_source() {
    let dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with_fresh_cache(dir.path(), CachePolicy::Compile);
    let src = KernelSource {
        family: "broken".into(),
        entry: "kiln_broken".into(),
        source: "extern \"C\" __global__ void kiln_broken(float* x) { x[0] = undeclared_name; }"
            .into(),
    };
    let err = compiler
        .compile(&src, &CompileOptions::default())
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("undeclared_name"), "no NVRTC log in: {msg}");
    let kiln_codegen::CodegenError::CompileFailed {
        dumped: Some(path), ..
    } = &err
    else {
        panic!("expected CompileFailed with a dump, got {err:?}");
    };
    let dumped = std::fs::read_to_string(path).unwrap();
    assert!(dumped.contains("undeclared_name") && dumped.starts_with("// kiln: family broken"));
    assert!(msg.contains(&path.display().to_string()));
}

#[test]
fn no_compile_policy_refuses_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with_fresh_cache(dir.path(), CachePolicy::NoCompile);
    let src = KernelSource {
        family: "t".into(),
        entry: "kiln_t".into(),
        source: "extern \"C\" __global__ void kiln_t(float* x) { x[0] = 1.0f; }".into(),
    };
    let err = compiler
        .compile(&src, &CompileOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, kiln_codegen::CodegenError::CacheMissForbidden { .. }),
        "{err}"
    );
}

#[test]
fn the_key_ignores_machine_paths_but_not_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with_fresh_cache(dir.path(), CachePolicy::Compile);
    let a = KernelSource {
        family: "t".into(),
        entry: "k".into(),
        source: "int a;".into(),
    };
    let b = KernelSource {
        family: "t".into(),
        entry: "k".into(),
        source: "int b;".into(),
    };
    let o = CompileOptions::default();
    assert_eq!(compiler.key(&a, &o), compiler.key(&a, &o));
    assert_ne!(compiler.key(&a, &o), compiler.key(&b, &o));
    let lineinfo = CompileOptions {
        extra: vec!["-lineinfo".into()],
        ..Default::default()
    };
    assert_ne!(compiler.key(&a, &o), compiler.key(&a, &lineinfo));
    let annotated = Compiler::annotated_source(&a, &o);
    let root = compiler.toolchain().root.display().to_string();
    assert!(
        !annotated.contains(&root),
        "machine path in the source header"
    );
}

#[test]
fn the_fp8_activation_quantiser_compiles_without_spills() {
    use kiln_codegen::families::gemm_fp8::{QUANT_ENTRY, QUANT_SOURCE};
    let dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with_fresh_cache(dir.path(), CachePolicy::Compile);
    let src = KernelSource {
        family: "quant_fp8".into(),
        entry: QUANT_ENTRY.into(),
        source: QUANT_SOURCE.into(),
    };
    let k = compiler
        .compile(&src, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        k.resources.registers > 0,
        "no ptxas report parsed:\n{}",
        k.log
    );
    assert!(!k.resources.spills(), "{:?}", k.resources);
}

#[test]
fn the_gemm_fp8_reference_compiles_without_spills() {
    use kiln_runtime::launch::gemm_fp8_ref::{REFERENCE_ENTRY, REFERENCE_SOURCE};
    let dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with_fresh_cache(dir.path(), CachePolicy::Compile);
    let src = KernelSource {
        family: "gemm_fp8_ref".into(),
        entry: REFERENCE_ENTRY.into(),
        source: REFERENCE_SOURCE.into(),
    };
    let k = compiler
        .compile(&src, &CompileOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    // The module's three entries are all there (the log reports each function).
    for entry in [
        "kiln_gemm_fp8_ref",
        "kiln_gemm_fp8_ref_err",
        "kiln_gemm_fp8_ref_fill",
    ] {
        assert!(k.log.contains(entry), "{entry} missing from:\n{}", k.log);
    }
    assert!(
        k.resources.registers > 0,
        "no ptxas report parsed:\n{}",
        k.log
    );
    assert!(!k.resources.spills(), "{:?}\n{}", k.resources, k.log);
}

#[test]
fn the_mfa_decode_phase_trace_build_compiles() {
    use kiln_codegen::families::mfa_decode::{KvDtype, MfaDecode, MfaDecodeProblem};
    use kiln_codegen::Family;
    let dir = tempfile::tempdir().unwrap();
    let compiler = compiler_with_fresh_cache(dir.path(), CachePolicy::Compile);
    // The diagnostics build of tests/gpu_parts/mfa.rs (`mfa_decode_trace`): split and unsplit.
    for context in [4096, 64] {
        let p = MfaDecodeProblem::step3(1, context, KvDtype::Bf16, 0);
        let c = MfaDecode::default_config(&p);
        let src = kiln_codegen::families::mfa_decode::render_traced(&p, &c).unwrap();
        assert!(!src
            .source
            .contains(kiln_codegen::families::mfa_decode::TRACE_OFF));
        let k = compiler
            .compile(&src, &CompileOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!k.resources.spills(), "{:?}", k.resources);
        // The trace buffers keep C names (the test reads them with cuModuleGetGlobal).
        for name in ["kiln_mfa_trace_ns", "kiln_mfa_trace_clk"] {
            let needle = format!("\0{name}\0");
            assert!(
                k.cubin
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
                "{name} not in the cubin's symbol names"
            );
        }
    }
}
