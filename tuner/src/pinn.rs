//! GPU inputs and timing of the PINN families, `mlp_jet` (u, grad u, Laplacian) and
//! `mlp_jet_backward` (one training step's gradient): one implementation shared by their GPU
//! tests (`tests/gpu_parts/pinn*.rs`) and `kiln bench`.
//!
//! Neither family has a tuner or a tuned artifact: a caller times the configs it names (the
//! family default, or every legal candidate) on random inputs of one problem, each through
//! [`kiln_runtime::measure::Bench`] with L2 flushed before every timed run.

use kiln_codegen::{CompileOptions, Compiler, Family};
use kiln_runtime::measure::Measurement;
use kiln_runtime::RuntimeError;
use rayon::prelude::*;

pub mod backward;
pub mod jet;

/// One config and its measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Timed<C> {
    pub config: C,
    pub measurement: Measurement,
}

/// The fastest of `times` by median (None when empty).
pub fn fastest<C>(times: &[Timed<C>]) -> Option<&Timed<C>> {
    times
        .iter()
        .min_by(|a, b| a.measurement.median_us.total_cmp(&b.measurement.median_us))
}

/// Why [`jet::time_configs`] or [`backward::time_configs`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum TimingError {
    /// The problem's inputs could not be placed on the device.
    #[error("{family} inputs of {problem}: {source}")]
    Inputs {
        family: &'static str,
        problem: String,
        source: Box<RuntimeError>,
    },
    /// A config could not be compiled, loaded, given its scratch or launched.
    #[error("{family} config {config} on {problem}: {source}")]
    Config {
        family: &'static str,
        /// The config's JSON.
        config: String,
        problem: String,
        source: Box<RuntimeError>,
    },
}

impl TimingError {
    pub fn inputs<F: Family>(p: &F::Problem, source: RuntimeError) -> TimingError {
        TimingError::Inputs {
            family: F::NAME,
            problem: json(p),
            source: Box::new(source),
        }
    }

    pub fn config<F: Family>(p: &F::Problem, c: &F::Config, source: RuntimeError) -> TimingError {
        TimingError::Config {
            family: F::NAME,
            config: json(c),
            problem: json(p),
            source: Box::new(source),
        }
    }
}

fn json<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// Compiles that failed in [`precompile`], one `entry: error` line each.
#[derive(Debug, thiserror::Error)]
#[error("{} kernel(s) failed to compile:\n{}", .0.len(), .0.join("\n"))]
pub struct PrecompileError(pub Vec<String>);

/// Compile every (problem, config) pair in parallel, so the sequential loads that follow are
/// served from the compile cache.
pub fn precompile<F: Family>(
    compiler: &Compiler,
    work: &[(F::Problem, F::Config)],
) -> Result<(), PrecompileError> {
    let errors: Vec<String> = work
        .par_iter()
        .filter_map(|(p, c)| {
            kiln_codegen::render::render::<F>(p, c)
                .and_then(|src| compiler.compile(&src, &CompileOptions::default()))
                .err()
                .map(|e| format!("{}: {e}", F::entry(p, c)))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PrecompileError(errors))
    }
}

/// `default` first, then every other config of `candidates` in their order: what a bench
/// times when it reports the default beside the best candidate.
pub fn default_first<C: PartialEq + Clone>(default: &C, candidates: &[C]) -> Vec<C> {
    let mut out = vec![default.clone()];
    out.extend(candidates.iter().filter(|c| *c != default).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(c: u32, us: f64) -> Timed<u32> {
        Timed {
            config: c,
            measurement: Measurement::from_samples(vec![us], true),
        }
    }

    #[test]
    fn the_fastest_is_the_lowest_median_and_none_of_nothing() {
        let t = [timed(1, 5.0), timed(2, 3.0), timed(3, 4.0)];
        assert_eq!(fastest(&t).unwrap().config, 2);
        assert!(fastest::<u32>(&[]).is_none());
    }

    #[test]
    fn the_default_comes_first_once() {
        assert_eq!(default_first(&3, &[1, 3, 2]), vec![3, 1, 2]);
        assert_eq!(default_first(&9, &[1, 2]), vec![9, 1, 2]);
    }
}
