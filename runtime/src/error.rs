//! kiln-runtime's typed errors.

use cudarc::driver::sys::cudaError_enum as CuErr;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "no CUDA driver (libcuda.so) on this machine: GPU commands need an NVIDIA GPU and its driver. \
         CPU-only commands (`kiln list`, `kiln compile`, `kiln export`) still work"
    )]
    NoDriver,

    #[error("no CUDA device {ordinal}: {reason}")]
    NoDevice { ordinal: usize, reason: String },

    #[error("the GPU is out of memory while {what} (asked for {bytes} bytes); free memory or use a smaller problem")]
    OutOfMemory { what: String, bytes: usize },

    #[error("CUDA driver call failed while {what}: {code:?}")]
    Driver { what: String, code: CuErr },

    #[error("kernel {entry} could not be loaded from its cubin: {code:?} (was it built for this GPU's arch?)")]
    KernelLoad { entry: String, code: CuErr },

    #[error("{0}")]
    Unsupported(#[from] kiln_codegen::Unsupported),

    #[error("config {config} cannot serve {problem}: {reason}")]
    IllegalConfig {
        config: String,
        problem: String,
        reason: String,
    },

    #[error("buffer {name} has {got} elements, the launch needs {need}")]
    BufferTooSmall {
        name: &'static str,
        got: usize,
        need: usize,
    },

    #[error("{0}")]
    Codegen(#[from] kiln_codegen::CodegenError),

    #[error("no candidate config of {family} passed compilation and validation for {problem}: {reasons}")]
    NoValidCandidate {
        family: String,
        problem: String,
        reasons: String,
    },

    #[error("timing cannot start: {0}")]
    Timing(String),

    #[error("baseline {name}: {reason}")]
    Baseline { name: String, reason: String },

    #[error("another kiln process holds the GPU lock {path}: {reason}")]
    Busy { path: String, reason: String },

    #[error("artifact {path}: {reason}")]
    Artifact { path: String, reason: String },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Attach what was being done to a driver error, mapping out-of-memory to its own variant.
pub trait DriverContext<T> {
    fn during(self, what: impl Into<String>) -> Result<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn during(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| {
            let what = what.into();
            if e.0 == CuErr::CUDA_ERROR_OUT_OF_MEMORY {
                RuntimeError::OutOfMemory { what, bytes: 0 }
            } else {
                RuntimeError::Driver { what, code: e.0 }
            }
        })
    }
}
