//! One typed, safe launch per family. Each module holds the family's only
//! `unsafe` launch, with a `SAFETY:` note tying the argument list to the kernel.

pub mod fused_norm_rope;
pub mod gemm_bf16;
pub mod mfa_decode;
