//! kiln-codegen: kernel families and the path from a (problem, config) to a cubin.
//!
//! Always available: the [`Family`] trait and every family's problems,
//! configs, search spaces, legality rules and launch geometry.
//! With the default `jit` feature: tera rendering ([`render`]), NVRTC
//! discovery ([`toolchain`]), compilation to cubin ([`compile`]) and the
//! content-addressed compile cache ([`cache`]).

pub mod error;
pub mod families;
pub mod family;
pub mod ptxas;
pub mod registry;

#[cfg(feature = "jit")]
pub mod cache;
#[cfg(feature = "jit")]
pub mod compile;
#[cfg(feature = "jit")]
pub mod render;
#[cfg(feature = "jit")]
pub mod toolchain;

pub use error::{CodegenError, Result};
pub use family::{
    Arch, DeviceLimits, Family, Illegal, KernelArg, LaunchGeometry, RenderVars, Scratch,
    Unsupported,
};
pub use registry::{
    families as all_families, family as find_family, AnyFamily, KernelDescription, Variant,
};

#[cfg(feature = "jit")]
pub use compile::{CachePolicy, CompileOptions, CompiledKernel, Compiler, KernelSource};

/// This crate's version, recorded in artifacts.
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");
