//! Host-side overheads: rendering a template, a compile-cache hit, a
//! dispatch lookup. Needs NVRTC for the cache-hit bench (./setup.sh).

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_codegen::families::gemm_bf16::{GemmBf16, GemmBf16Problem};
use kiln_codegen::{CompileOptions, Compiler, DeviceLimits, Family};
use kiln_runtime::artifact::{Artifact, ArtifactDevice, ArtifactToolchain, Entry};
use kiln_runtime::dispatch::Dispatch;
use kiln_runtime::DeviceInfo;

fn h200() -> DeviceInfo {
    DeviceInfo {
        name: "NVIDIA H200".into(),
        cc: [9, 0],
        sms: 132,
        l2_bytes: 60 << 20,
        driver: 13000,
        clock_mhz: 1980,
        total_mem_bytes: 141 << 30,
        max_smem_optin_bytes: 227 * 1024,
    }
}

fn benches(c: &mut Criterion) {
    let p = GemmBf16Problem {
        m: 32,
        n: 2560,
        k: 7168,
    };
    let cfg = GemmBf16::default_config(&p);
    c.bench_function("render gemm_bf16", |b| {
        b.iter(|| kiln_codegen::render::render::<GemmBf16>(&p, &cfg).unwrap())
    });

    match Compiler::new() {
        Ok(compiler) => {
            let src = kiln_codegen::render::render::<GemmBf16>(&p, &cfg).unwrap();
            let opts = CompileOptions::default();
            compiler.compile(&src, &opts).unwrap();
            c.bench_function("compile-cache hit gemm_bf16", |b| {
                b.iter(|| compiler.compile(&src, &opts).unwrap())
            });
        }
        Err(e) => eprintln!("skipping the compile-cache bench: {e}"),
    }

    // A dispatch over an artifact of 100 entries.
    let dev = h200();
    let mut art = Artifact::new(
        "gemm_bf16",
        ArtifactDevice::from_info(&dev, None, None),
        ArtifactToolchain {
            nvrtc: "13.0".into(),
            kiln: kiln_codegen::KILN_VERSION.into(),
            template_sha256: kiln_codegen::registry::template_sha256(GemmBf16::TEMPLATE),
        },
    );
    for m in 1..=100u32 {
        let prob = GemmBf16Problem {
            m,
            n: 2560,
            k: 7168,
        };
        art.upsert(Entry {
            problem: serde_json::to_value(prob).unwrap(),
            config: serde_json::to_value(GemmBf16::default_config(&prob)).unwrap(),
            median_us: 10.0,
            p20_us: 9.0,
            p80_us: 11.0,
            pct_of_roofline: 50.0,
            baseline: None,
            speedup: None,
            extra_baselines: Vec::new(),
            max_rel_err: 1e-3,
            outputs: Vec::new(),
            candidates_tried: 1,
            tuned_at: String::new(),
            candidates: Vec::new(),
        });
    }
    let d = Dispatch::<GemmBf16>::from_artifact(art, &dev);
    let q = GemmBf16Problem {
        m: 77,
        n: 2560,
        k: 7168,
    };
    c.bench_function("dispatch select (100 entries)", |b| b.iter(|| d.select(&q)));
    let _ = DeviceLimits::HOPPER;
}

criterion_group!(host, benches);
criterion_main!(host);
