//! What a kernel family is: the problem it solves, the configs it can be
//! built with, which configs are legal, and how a (problem, config) pair is
//! rendered and launched. Everything here is plain Rust with no GPU or NVRTC
//! dependency, so a runtime built without `jit` still knows how to launch.

use std::fmt::Debug;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Grid, block, dynamic shared memory and cluster shape of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchGeometry {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem_bytes: u32,
    /// Thread-block cluster shape; `[1, 1, 1]` means no cluster.
    pub cluster: [u32; 3],
}

impl LaunchGeometry {
    pub fn threads_per_block(&self) -> u32 {
        self.block[0] * self.block[1] * self.block[2]
    }
}

/// A target GPU architecture, as NVRTC names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Arch(pub String);

impl Arch {
    /// Hopper with the arch-specific features (wgmma, setmaxnreg).
    pub fn sm90a() -> Self {
        Arch("sm_90a".to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Arch {
    fn default() -> Self {
        Arch::sm90a()
    }
}

/// The device limits that legality rules check against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLimits {
    /// Dynamic shared memory a block may opt in to, in bytes.
    pub max_dynamic_smem_per_block: u32,
    pub max_threads_per_block: u32,
    pub max_registers_per_thread: u32,
    pub sms: u32,
}

impl DeviceLimits {
    /// H100 / H200 (sm_90): 227 KiB of opt-in shared memory per block, 132 SMs.
    pub const HOPPER: DeviceLimits = DeviceLimits {
        max_dynamic_smem_per_block: 227 * 1024,
        max_threads_per_block: 1024,
        max_registers_per_thread: 255,
        sms: 132,
    };
}

impl Default for DeviceLimits {
    fn default() -> Self {
        DeviceLimits::HOPPER
    }
}

/// Why a config (or a config for a given problem) is not legal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{0}")]
pub struct Illegal(pub String);

/// Why a problem cannot be solved by a family at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{family} does not support {problem}: {reason}")]
pub struct Unsupported {
    pub family: &'static str,
    pub problem: String,
    pub reason: String,
}

/// The C type of one kernel argument, for the export manifest and the C ABI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelArg {
    pub name: &'static str,
    /// C spelling, e.g. `const __nv_bfloat16*`, `int`.
    pub c_type: &'static str,
}

/// One device scratch buffer a launch needs, bound to a kernel argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scratch {
    /// The kernel argument it is passed as.
    pub arg: &'static str,
    pub bytes: usize,
    /// Must be zero before the first launch (the kernel leaves it zero again).
    pub zero_init: bool,
}

/// Template variables: a JSON object, turned into a tera context when rendering.
pub type RenderVars = serde_json::Map<String, serde_json::Value>;

/// A kernel family. One implementation per `codegen/src/families/<name>.rs`,
/// next to its template `templates/<name>.cu.tera`.
pub trait Family: Send + Sync + 'static {
    type Problem: Clone + Debug + Serialize + DeserializeOwned + PartialEq + Send + Sync;
    type Config: Clone + Debug + Serialize + DeserializeOwned + PartialEq + Eq + Hash + Send + Sync;

    /// The family name, also the template's file stem.
    const NAME: &'static str;
    /// The template text (embedded, so a binary never needs the source tree).
    const TEMPLATE: &'static str;

    /// Every point of the search space, before legality pruning.
    fn space() -> Vec<Self::Config>;

    /// Problem-independent legality: rules that prune a config before NVRTC sees it.
    fn check_config(config: &Self::Config, limits: &DeviceLimits) -> Result<(), Illegal>;

    /// Whether `config` can serve `problem` (e.g. split-K deeper than K allows).
    fn check_problem(problem: &Self::Problem, config: &Self::Config) -> Result<(), Illegal> {
        let _ = (problem, config);
        Ok(())
    }

    /// Whether the family can solve `problem` at all.
    fn supports(problem: &Self::Problem) -> Result<(), Unsupported>;

    /// Template variables: exactly what the generated source depends on.
    fn render_vars(problem: &Self::Problem, config: &Self::Config) -> RenderVars;

    /// Name of the `extern "C" __global__` entry point.
    fn entry(problem: &Self::Problem, config: &Self::Config) -> String;

    /// The kernel's argument list, in order.
    fn args() -> Vec<KernelArg>;

    fn geometry(problem: &Self::Problem, config: &Self::Config) -> LaunchGeometry;

    /// Device scratch the launch needs, in bytes (zero-initialised once by the caller).
    fn workspace_bytes(problem: &Self::Problem, config: &Self::Config) -> usize {
        let _ = (problem, config);
        0
    }

    /// Every scratch buffer of a launch, for callers that allocate their own
    /// (the export manifest, the C ABI). Default: one `workspace` argument.
    fn scratch(problem: &Self::Problem, config: &Self::Config) -> Vec<Scratch> {
        vec![Scratch {
            arg: "workspace",
            bytes: Self::workspace_bytes(problem, config),
            zero_init: false,
        }]
    }

    /// Floating-point operations of one call.
    fn flops(problem: &Self::Problem) -> f64;
    /// Fewest bytes one call must move: each input read once, each output written once.
    fn min_bytes(problem: &Self::Problem) -> f64;

    /// A config that is always legal for `problem`: the fallback when nothing is tuned.
    fn default_config(problem: &Self::Problem) -> Self::Config;

    /// Cheap analytical estimate of a config's time in microseconds (lower is
    /// better); used to order a large space before measuring.
    fn estimate_us(problem: &Self::Problem, config: &Self::Config, limits: &DeviceLimits) -> f64;

    /// How far a problem tuned for `tuned` is from `wanted`, for the runtime's
    /// nearest-bucket lookup; `None` when a config tuned for one says nothing
    /// about the other. Default: exact matches only.
    fn bucket_distance(tuned: &Self::Problem, wanted: &Self::Problem) -> Option<f64> {
        (tuned == wanted).then_some(0.0)
    }

    /// Problems that, together with `space()`, reach every branch of the template.
    fn branch_problems() -> Vec<Self::Problem>;

    /// The legal configs of the space.
    fn legal_space(limits: &DeviceLimits) -> Vec<Self::Config> {
        Self::space()
            .into_iter()
            .filter(|c| Self::check_config(c, limits).is_ok())
            .collect()
    }

    /// The legal configs that can serve `problem`.
    fn candidates(problem: &Self::Problem, limits: &DeviceLimits) -> Vec<Self::Config> {
        Self::legal_space(limits)
            .into_iter()
            .filter(|c| Self::check_problem(problem, c).is_ok())
            .collect()
    }

    /// Among the candidates `keep` accepts, the first with the lowest [`Family::estimate_us`]
    /// on `limits` (the analytical pick a family's default may start from); `None` when none
    /// is left.
    fn best_estimated(
        problem: &Self::Problem,
        limits: &DeviceLimits,
        keep: impl Fn(&Self::Config) -> bool,
    ) -> Option<Self::Config>
    where
        Self: Sized,
    {
        let mut best: Option<(f64, Self::Config)> = None;
        for c in Self::candidates(problem, limits)
            .into_iter()
            .filter(|c| keep(c))
        {
            let t = Self::estimate_us(problem, &c, limits);
            if best.as_ref().is_none_or(|(b, _)| t < *b) {
                best = Some((t, c));
            }
        }
        best.map(|(_, c)| c)
    }
}
