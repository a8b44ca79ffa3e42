//! GPU kernels under criterion, timed by CUDA events (`iter_custom`), L2
//! flushed before each timed launch. Prints a note and exits when there is no GPU.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;
use kiln_codegen::families::gemm_bf16::{GemmBf16, GemmBf16Problem};
use kiln_codegen::{Compiler, Family};
use kiln_runtime::launch::gemm_bf16::GemmBf16Kernel;
use kiln_runtime::measure::{Bench, MeasureOptions};
use kiln_runtime::Device;
use rand::Rng;

fn benches(c: &mut Criterion) {
    let device = match Device::open(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping GPU benches: {e}");
            return;
        }
    };
    let compiler = Compiler::new().expect("NVRTC");
    let mut bench = Bench::new(&device).expect("flush buffer");
    for p in [
        GemmBf16Problem {
            m: 1,
            n: 2560,
            k: 7168,
        },
        GemmBf16Problem {
            m: 128,
            n: 16384,
            k: 2048,
        },
    ] {
        let cfg = GemmBf16::default_config(&p);
        let k = GemmBf16Kernel::compile(&device, &compiler, &p, &cfg).expect("compile");
        // Random data: constant or zero inputs can run faster than real ones.
        let mut rng = rand::rng();
        let mut random = |len: u32| -> Vec<bf16> {
            (0..len)
                .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
                .collect()
        };
        let a = device.upload(&random(p.m * p.k), "A").unwrap();
        let b = device.upload(&random(p.n * p.k), "B").unwrap();
        let mut out = device.zeros::<bf16>((p.m * p.n) as usize, "C").unwrap();
        let mut ws = k.workspace(&device, &p).unwrap();
        c.bench_function(
            &format!("gemm_bf16 default m={} n={} k={}", p.m, p.n, p.k),
            |bch| {
                bch.iter_custom(|iters| {
                    let opts = MeasureOptions {
                        warmup: 1,
                        reps: iters as usize,
                        flush_l2: true,
                    };
                    let m = bench
                        .measure(&opts, || {
                            k.launch(&device.stream, &p, &a, &b, &mut out, &mut ws)
                        })
                        .expect("measure");
                    Duration::from_secs_f64(m.median_us * 1e-6 * iters as f64)
                })
            },
        );
    }
}

criterion_group!(gpu, benches);
criterion_main!(gpu);
