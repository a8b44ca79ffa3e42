//! Step-3 (StepFun, arXiv:2507.19427): the model configuration and the
//! problem lists its decode plan needs. Shapes as in DESIGN.md section 6.

pub mod presets;

/// The Step-3 text decoder's dimensions.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step3Config {
    pub hidden: u32,
    pub layers: u32,
    /// Layers with a dense FFN (the rest are MoE).
    pub dense_layers: Vec<u32>,
    pub dense_ffn: u32,
    pub q_low_rank: u32,
    pub head_dim: u32,
    pub query_heads: u32,
    /// One shared K head and one shared V head (MFA).
    pub kv_heads: u32,
    pub experts: u32,
    pub top_k: u32,
    pub expert_ffn: u32,
    pub shared_experts: u32,
    pub vocab: u32,
    pub rms_eps: f64,
    pub rope_theta: f64,
}

impl Step3Config {
    pub fn step3() -> Self {
        Step3Config {
            hidden: 7168,
            layers: 61,
            dense_layers: vec![0, 1, 2, 3, 60],
            dense_ffn: 18432,
            q_low_rank: 2048,
            head_dim: 256,
            query_heads: 64,
            kv_heads: 1,
            experts: 48,
            top_k: 3,
            expert_ffn: 5120,
            shared_experts: 1,
            vocab: 128815,
            rms_eps: 1e-5,
            rope_theta: 500000.0,
        }
    }

    /// (name, N, K) of the attention-side linear layers: y[B, N] = x[B, K] . W[N, K]^T.
    pub fn attention_linears(&self) -> Vec<(&'static str, u32, u32)> {
        vec![
            ("qkv", self.q_low_rank + 2 * self.head_dim, self.hidden),
            ("wq", self.query_heads * self.head_dim, self.q_low_rank),
            ("o_proj", self.hidden, self.query_heads * self.head_dim),
        ]
    }

    /// (name, N, K) of the FFN linear layers of one micro-batch: the dense layers' fused
    /// gate+up and down projections, and the shared expert's (routed experts are grouped GEMMs).
    pub fn ffn_linears(&self) -> Vec<(&'static str, u32, u32)> {
        vec![
            ("dense_gate_up", 2 * self.dense_ffn, self.hidden),
            ("dense_down", self.hidden, self.dense_ffn),
            ("shared_gate_up", 2 * self.expert_ffn, self.hidden),
            ("shared_down", self.hidden, self.expert_ffn),
        ]
    }

    pub fn router(&self) -> (&'static str, u32, u32) {
        ("router", self.experts, self.hidden)
    }

    pub fn lm_head(&self) -> (&'static str, u32, u32) {
        ("lm_head", self.vocab, self.hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_shapes_match_the_design() {
        let c = Step3Config::step3();
        assert_eq!(
            c.attention_linears(),
            vec![
                ("qkv", 2560, 7168),
                ("wq", 16384, 2048),
                ("o_proj", 7168, 16384)
            ]
        );
        assert_eq!(
            c.ffn_linears(),
            vec![
                ("dense_gate_up", 36864, 7168),
                ("dense_down", 7168, 18432),
                ("shared_gate_up", 10240, 7168),
                ("shared_down", 7168, 5120)
            ]
        );
        assert_eq!(c.router(), ("router", 48, 7168));
        assert_eq!(c.lm_head(), ("lm_head", 128815, 7168));
    }
}
