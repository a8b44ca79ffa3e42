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

/// A wgmma's accumulator operands for `n` fp32 registers per thread, as inline PTX wants them:
/// the operand list `%0, %1, ..., %(n-1)` and the matching read-write bindings
/// `"+f"(d[0]), ..., "+f"(d[n-1])` (the descriptors and flags follow as `%n`, `%(n+1)`, ...).
pub(crate) fn wgmma_accumulator_operands(n: u32) -> (String, String) {
    let list = (0..n)
        .map(|i| format!("%{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let bindings = (0..n)
        .map(|i| format!("\"+f\"(d[{i}])"))
        .collect::<Vec<_>>()
        .join(", ");
    (list, bindings)
}
