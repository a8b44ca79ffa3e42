//! Named problem lists for `kiln tune --preset NAME`.

use kiln_codegen::families::gemm_bf16::GemmBf16Problem;

use super::Step3Config;

/// Decode batch sizes (tokens per attention GPU per step) the BF16 preset covers.
pub const DECODE_BATCHES: [u32; 4] = [1, 32, 128, 256];

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

pub fn all() -> Vec<Preset> {
    vec![step3_bf16()]
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
}
