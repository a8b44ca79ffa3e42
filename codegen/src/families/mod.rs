//! One module per kernel family, each next to its template in `templates/`.

pub mod adam;
pub mod fused_norm_rope;
pub mod gemm_bf16;
pub mod gemm_fp8;
pub mod mfa_decode;
pub mod mlp_jet;
pub mod mlp_jet_backward;
pub mod small_mlp;
pub mod synth_residual;

#[cfg(test)]
mod mma_emulation;
#[cfg(test)]
mod template_tags;
