//! One module per kernel family, each next to its template in `templates/`.

pub mod gemm_bf16;
