//! kiln-codegen's typed errors. Each carries the evidence a person needs to act.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error(
        "NVRTC was not found (searched: {searched}).\n\
         Run `./setup.sh` in the kiln checkout (it installs NVRTC 13.0 and the CUDA headers into \
         .kiln/toolchain), or point KILN_CUDA_ROOT at a CUDA 13 toolkit (a folder with include/ and lib64/ or lib/)."
    )]
    NvrtcNotFound { searched: String },

    #[error(
        "NVRTC library {lib} exists but could not be loaded: {reason}. \
         Re-run `./setup.sh`, or set KILN_CUDA_ROOT to a working CUDA 13 toolkit."
    )]
    NvrtcLoad { lib: PathBuf, reason: String },

    #[error("CUDA headers (cuda_bf16.h) not found under {searched}; run `./setup.sh` or set KILN_CUDA_ROOT")]
    HeadersNotFound { searched: String },

    #[error(
        "NVRTC failed to compile {entry} ({family}).\n  options: {options}\n  source dumped to: {}\n--- NVRTC log ---\n{log}",
        dumped.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(could not dump)".into())
    )]
    CompileFailed {
        family: String,
        entry: String,
        options: String,
        log: String,
        dumped: Option<PathBuf>,
    },

    #[error("NVRTC call {call} failed for {entry}: {reason}")]
    Nvrtc {
        call: &'static str,
        entry: String,
        reason: String,
    },

    #[error("template {family} failed to render: {reason}")]
    Render { family: String, reason: String },

    #[error(
        "compile cache miss for {entry} (key {key}) while compiling is disabled (--no-compile / KILN_NO_COMPILE); \
         warm the cache with `kiln compile` on a machine with NVRTC, or ship exported cubins"
    )]
    CacheMissForbidden { entry: String, key: String },

    #[error("compile cache at {path}: {reason}")]
    Cache { path: PathBuf, reason: String },

    #[error("unknown kernel family `{0}`; `kiln list` shows the families")]
    UnknownFamily(String),

    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

pub type Result<T, E = CodegenError> = std::result::Result<T, E>;
