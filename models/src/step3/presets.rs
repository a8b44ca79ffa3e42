//! Named problem lists for `kiln tune --preset NAME`.

use kiln_codegen::families::gemm_bf16::GemmBf16Problem;
use kiln_codegen::families::gemm_fp8::GemmFp8Problem;
use kiln_codegen::families::mfa_decode::{KvDtype, MfaDecodeProblem};

use super::Step3Config;

/// Decode batch sizes (tokens per attention GPU per step) the BF16 preset covers.
pub const DECODE_BATCHES: [u32; 4] = [1, 32, 128, 256];

/// Decode batch sizes the FP8 decode preset covers (tokens per attention GPU per step).
pub const FP8_DECODE_BATCHES: [u32; 6] = [1, 16, 32, 64, 128, 256];
/// FFN micro-batch sizes the FP8 FFN preset covers (the paper's operating point is M = 2048).
pub const FP8_FFN_BATCHES: [u32; 3] = [512, 2048, 4096];

/// A preset: a family and its problems (as JSON, the family's problem schema).
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub family: &'static str,
    pub about: &'static str,
    pub problems: Vec<(String, serde_json::Value)>,
}

/// `step3-bf16`: router and LM head, and the attention projections, each for
/// every decode batch size, as BF16 GEMMs.
pub fn step3_bf16() -> Preset {
    let c = Step3Config::step3();
    let mut layers = vec![c.router(), c.lm_head()];
    layers.extend(c.attention_linears());
    let mut problems = Vec::new();
    for (name, n, k) in layers {
        for m in DECODE_BATCHES {
            let p = GemmBf16Problem { m, n, k };
            problems.push((
                format!("{name} M={m}"),
                serde_json::to_value(p).expect("problems serialise"),
            ));
        }
    }
    Preset {
        name: "step3-bf16",
        family: "gemm_bf16",
        about: "Step-3 decode GEMMs in BF16: router, LM head, qkv, wq, o_proj for M in {1, 32, 128, 256}",
        problems,
    }
}

fn fp8_problems(layers: &[(&str, u32, u32)], batches: &[u32]) -> Vec<(String, serde_json::Value)> {
    let mut problems = Vec::new();
    for &(name, n, k) in layers {
        for &m in batches {
            let p = GemmFp8Problem { m, n, k };
            problems.push((
                format!("{name} M={m}"),
                serde_json::to_value(p).expect("problems serialise"),
            ));
        }
    }
    problems
}

/// `step3-fp8-decode`: the attention projections (qkv, wq, o_proj) in block FP8 for every
/// decode batch size.
pub fn step3_fp8_decode() -> Preset {
    let c = Step3Config::step3();
    Preset {
        name: "step3-fp8-decode",
        family: "gemm_fp8",
        about: "Step-3 attention projections in block FP8: qkv 7168->2560, wq 2048->16384, o_proj 16384->7168 for M in {1, 16, 32, 64, 128, 256}",
        problems: fp8_problems(&c.attention_linears(), &FP8_DECODE_BATCHES),
    }
}

/// `step3-fp8-ffn`: the dense FFN and shared-expert projections in block FP8 for FFN
/// micro-batches.
pub fn step3_fp8_ffn() -> Preset {
    let c = Step3Config::step3();
    Preset {
        name: "step3-fp8-ffn",
        family: "gemm_fp8",
        about: "Step-3 FFN projections in block FP8: 7168->36864, 18432->7168, 7168->10240, 5120->7168 for M in {512, 2048, 4096}",
        problems: fp8_problems(&c.ffn_linears(), &FP8_FFN_BATCHES),
    }
}

/// `step3-fp8`: both FP8 presets.
pub fn step3_fp8() -> Preset {
    let mut problems = step3_fp8_decode().problems;
    problems.extend(step3_fp8_ffn().problems);
    Preset {
        name: "step3-fp8",
        family: "gemm_fp8",
        about: "step3-fp8-decode and step3-fp8-ffn",
        problems,
    }
}

/// Decode batch sizes the MFA attention preset covers.
pub const MFA_BATCHES: [u32; 4] = [1, 8, 32, 128];
/// Context lengths the MFA attention preset covers.
pub const MFA_CONTEXTS: [u32; 5] = [1024, 4096, 8192, 32768, 65536];

/// `step3-mfa`: Step-3 MFA decode attention (64 query heads sharing one K/V head of 256) for
/// every batch x context with a contiguous BF16 cache, then at B = 128 L = 4K an FP8 cache,
/// paged FP8 and paged BF16 caches (pages of 16 tokens), and one FP8 sequence of 4K.
pub fn step3_mfa() -> Preset {
    let mut shapes = Vec::new();
    for batch in MFA_BATCHES {
        for context in MFA_CONTEXTS {
            shapes.push(MfaDecodeProblem::step3(batch, context, KvDtype::Bf16, 0));
        }
    }
    shapes.push(MfaDecodeProblem::step3(128, 4096, KvDtype::Fp8e4m3, 0));
    shapes.push(MfaDecodeProblem::step3(128, 4096, KvDtype::Fp8e4m3, 16));
    shapes.push(MfaDecodeProblem::step3(128, 4096, KvDtype::Bf16, 16));
    shapes.push(MfaDecodeProblem::step3(1, 4096, KvDtype::Fp8e4m3, 0));
    let problems = shapes
        .into_iter()
        .map(|p| {
            let dtype = if p.kv_dtype == KvDtype::Bf16 {
                "bf16"
            } else {
                "fp8"
            };
            let paged = if p.paged() {
                format!(" paged{}", p.page_size)
            } else {
                String::new()
            };
            (
                format!("mfa B={} L={} {dtype}{paged}", p.batch, p.context),
                serde_json::to_value(p).expect("problems serialise"),
            )
        })
        .collect();
    Preset {
        name: "step3-mfa",
        family: "mfa_decode",
        about: "Step-3 MFA decode attention: B in {1, 8, 32, 128} x L in {1K, 4K, 8K, 32K, 64K} BF16, and at B=128 L=4K FP8, paged FP8 and paged BF16 (16-token pages), and B=1 L=4K FP8",
        problems,
    }
}

pub fn all() -> Vec<Preset> {
    vec![
        step3_bf16(),
        step3_fp8_decode(),
        step3_fp8_ffn(),
        step3_fp8(),
        step3_mfa(),
    ]
}

pub fn find(name: &str) -> Option<Preset> {
    all().into_iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step3_bf16_covers_the_issue_shapes() {
        let p = step3_bf16();
        assert_eq!(p.problems.len(), 20);
        let has = |m: u32, n: u32, k: u32| {
            p.problems
                .iter()
                .any(|(_, v)| *v == serde_json::json!({"m": m, "n": n, "k": k}))
        };
        assert!(has(1, 48, 7168) && has(256, 128815, 7168));
        assert!(has(32, 2560, 7168) && has(128, 16384, 2048) && has(256, 7168, 16384));
    }

    fn has(p: &Preset, m: u32, n: u32, k: u32) -> bool {
        p.problems
            .iter()
            .any(|(_, v)| *v == serde_json::json!({"m": m, "n": n, "k": k}))
    }

    #[test]
    fn step3_fp8_presets_cover_decode_and_ffn_shapes() {
        let d = step3_fp8_decode();
        assert_eq!((d.family, d.problems.len()), ("gemm_fp8", 18));
        for m in [1, 16, 32, 64, 128, 256] {
            assert!(has(&d, m, 2560, 7168) && has(&d, m, 16384, 2048) && has(&d, m, 7168, 16384));
        }
        let f = step3_fp8_ffn();
        assert_eq!((f.family, f.problems.len()), ("gemm_fp8", 12));
        for m in [512, 2048, 4096] {
            assert!(has(&f, m, 36864, 7168) && has(&f, m, 7168, 18432));
            assert!(has(&f, m, 10240, 7168) && has(&f, m, 7168, 5120));
        }
        let both = step3_fp8();
        assert_eq!(both.problems.len(), 30);
        assert!(both.problems.iter().all(|(_, v)| d
            .problems
            .iter()
            .chain(&f.problems)
            .any(|(_, w)| v == w)));
        // Every K is whole 128-channel scale blocks, and names are unique.
        for (name, v) in &both.problems {
            assert_eq!(v["k"].as_u64().unwrap() % 128, 0, "{name}");
            assert_eq!(
                both.problems.iter().filter(|(n, _)| n == name).count(),
                1,
                "{name}"
            );
        }
        for name in [
            "step3-bf16",
            "step3-fp8-decode",
            "step3-fp8-ffn",
            "step3-fp8",
            "step3-mfa",
        ] {
            assert_eq!(find(name).unwrap().name, name);
        }
        assert!(find("step3-fp9").is_none());
    }

    #[test]
    fn step3_mfa_covers_the_grid_and_every_problem_has_a_legal_default() {
        use kiln_codegen::families::mfa_decode::MfaDecode;
        use kiln_codegen::{DeviceLimits, Family};
        let p = step3_mfa();
        assert_eq!((p.family, p.problems.len()), ("mfa_decode", 24));
        let problems: Vec<MfaDecodeProblem> = p
            .problems
            .iter()
            .map(|(_, v)| serde_json::from_value(v.clone()).unwrap())
            .collect();
        for b in MFA_BATCHES {
            for l in MFA_CONTEXTS {
                assert!(problems.contains(&MfaDecodeProblem::step3(b, l, KvDtype::Bf16, 0)));
            }
        }
        for (b, dtype, page) in [
            (128, KvDtype::Fp8e4m3, 0),
            (128, KvDtype::Fp8e4m3, 16),
            (128, KvDtype::Bf16, 16),
            (1, KvDtype::Fp8e4m3, 0),
        ] {
            assert!(problems.contains(&MfaDecodeProblem::step3(b, 4096, dtype, page)));
        }
        let limits = DeviceLimits::HOPPER;
        for (name, q) in p.problems.iter().map(|(n, _)| n).zip(&problems) {
            assert_eq!(p.problems.iter().filter(|(n, _)| n == name).count(), 1);
            MfaDecode::supports(q).unwrap();
            let c = MfaDecode::default_config(q);
            MfaDecode::check_config(&c, &limits).unwrap();
            MfaDecode::check_problem(q, &c).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(!MfaDecode::candidates(q, &limits).is_empty(), "{name}");
        }
        assert_eq!(
            p.problems[0].1,
            serde_json::json!({"batch": 1, "context": 1024, "heads": 64, "head_dim": 256,
                               "kv_dtype": "bf16", "page_size": 0})
        );
    }
}
