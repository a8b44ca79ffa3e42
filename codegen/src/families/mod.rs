//! One module per kernel family, each next to its template in `templates/`.

pub mod gemm_bf16;
pub mod mfa_decode;
