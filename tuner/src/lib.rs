//! kiln-tuner: search, validation, timing and tuned artifacts.

pub mod baseline;
pub mod gemm_bf16;
pub mod gemm_fp8;
pub mod lock;
pub mod mfa_decode;
pub mod pinn;
pub mod roofline;
pub mod search;
pub mod tune;
