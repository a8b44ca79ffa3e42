//! Every family kiln knows, behind one object-safe view for the CLI and tools.

use std::marker::PhantomData;

use serde_json::Value;

use crate::error::{CodegenError, Result};
use crate::families::adam::Adam;
use crate::families::fused_norm_rope::FusedNormRope;
use crate::families::gemm_bf16::GemmBf16;
use crate::families::gemm_fp8::GemmFp8;
use crate::families::mfa_decode::MfaDecode;
use crate::families::mlp_jet::MlpJet;
use crate::families::mlp_jet_backward::MlpJetBackward;
use crate::families::small_mlp::SmallMlp;
use crate::families::synth_residual::SynthResidual;
use crate::family::{DeviceLimits, Family};

/// One renderable variant: a legal config for one template branch.
#[derive(Clone, Debug)]
pub struct Variant {
    pub config: Value,
    pub problem: Value,
    pub entry: String,
}

/// Everything a caller needs to launch one (problem, config) without kiln's types.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelDescription {
    pub family: String,
    pub entry: String,
    pub problem: Value,
    pub config: Value,
    pub args: Vec<crate::family::KernelArg>,
    pub geometry: crate::family::LaunchGeometry,
    pub scratch: Vec<crate::family::Scratch>,
    pub flops: f64,
    pub min_bytes: f64,
}

/// A family seen without its Rust types.
pub trait AnyFamily: Send + Sync {
    fn name(&self) -> &'static str;
    /// Points of the space before pruning.
    fn raw_space_size(&self) -> usize;
    /// Legal configs on `limits`.
    fn space_size(&self, limits: &DeviceLimits) -> usize;
    /// sha256 of the template text (artifacts record it to detect staleness).
    fn template_sha256(&self) -> String;
    /// Describe the launch of `config` on `problem` (both as JSON); checks both.
    fn describe(
        &self,
        problem: &Value,
        config: &Value,
        limits: &DeviceLimits,
    ) -> Result<KernelDescription>;
    /// The family's heuristic default config for `problem`.
    fn default_config(&self, problem: &Value) -> Result<Value>;
    /// Render the kernel for (problem, config) given as JSON.
    #[cfg(feature = "jit")]
    fn render_json(&self, problem: &Value, config: &Value) -> Result<crate::compile::KernelSource>;
    /// Every legal config x every template branch, deduplicated by entry.
    fn variants(&self, limits: &DeviceLimits) -> Vec<Variant>;
    /// Render one variant.
    #[cfg(feature = "jit")]
    fn render(&self, variant: &Variant) -> Result<crate::compile::KernelSource>;
}

struct Erased<F>(PhantomData<F>);

impl<F: Family> Erased<F> {
    fn parse(problem: &Value, config: Option<&Value>) -> Result<(F::Problem, Option<F::Config>)> {
        let bad = |what: &str, e: serde_json::Error| CodegenError::Invalid {
            what: format!("{} {what}", F::NAME),
            reason: e.to_string(),
        };
        let p: F::Problem =
            serde_json::from_value(problem.clone()).map_err(|e| bad("problem", e))?;
        let c = match config {
            Some(c) => {
                Some(serde_json::from_value::<F::Config>(c.clone()).map_err(|e| bad("config", e))?)
            }
            None => None,
        };
        Ok((p, c))
    }
}

impl<F: Family> AnyFamily for Erased<F> {
    fn describe(
        &self,
        problem: &Value,
        config: &Value,
        limits: &DeviceLimits,
    ) -> Result<KernelDescription> {
        let (p, c) = Self::parse(problem, Some(config))?;
        let c = c.expect("parsed with a config");
        F::supports(&p).map_err(|e| CodegenError::Invalid {
            what: "problem".into(),
            reason: e.to_string(),
        })?;
        F::check_config(&c, limits)
            .and_then(|_| F::check_problem(&p, &c))
            .map_err(|e| CodegenError::Invalid {
                what: format!("{} config {config}", F::NAME),
                reason: e.0,
            })?;
        Ok(KernelDescription {
            family: F::NAME.to_string(),
            entry: F::entry(&p, &c),
            problem: problem.clone(),
            config: config.clone(),
            args: F::args(),
            geometry: F::geometry(&p, &c),
            scratch: F::scratch(&p, &c),
            flops: F::flops(&p),
            min_bytes: F::min_bytes(&p),
        })
    }
    fn default_config(&self, problem: &Value) -> Result<Value> {
        let (p, _) = Self::parse(problem, None)?;
        F::supports(&p).map_err(|e| CodegenError::Invalid {
            what: "problem".into(),
            reason: e.to_string(),
        })?;
        Ok(serde_json::to_value(F::default_config(&p)).expect("configs serialise"))
    }
    #[cfg(feature = "jit")]
    fn render_json(&self, problem: &Value, config: &Value) -> Result<crate::compile::KernelSource> {
        let (p, c) = Self::parse(problem, Some(config))?;
        crate::render::render::<F>(&p, &c.expect("parsed with a config"))
    }
    fn name(&self) -> &'static str {
        F::NAME
    }
    fn raw_space_size(&self) -> usize {
        F::space().len()
    }
    fn space_size(&self, limits: &DeviceLimits) -> usize {
        F::legal_space(limits).len()
    }
    fn template_sha256(&self) -> String {
        template_sha256(F::TEMPLATE)
    }
    fn variants(&self, limits: &DeviceLimits) -> Vec<Variant> {
        let mut out: Vec<Variant> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for config in F::legal_space(limits) {
            for problem in F::branch_problems() {
                if F::check_problem(&problem, &config).is_err() {
                    continue;
                }
                let entry = F::entry(&problem, &config);
                if seen.insert(entry.clone()) {
                    out.push(Variant {
                        config: serde_json::to_value(&config).expect("configs serialise"),
                        problem: serde_json::to_value(&problem).expect("problems serialise"),
                        entry,
                    });
                }
            }
        }
        out
    }
    #[cfg(feature = "jit")]
    fn render(&self, v: &Variant) -> Result<crate::compile::KernelSource> {
        self.render_json(&v.problem, &v.config)
    }
}

/// sha256 of a template's text, hex.
pub fn template_sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

static GEMM_BF16: Erased<GemmBf16> = Erased(PhantomData);
static GEMM_FP8: Erased<GemmFp8> = Erased(PhantomData);
static MFA_DECODE: Erased<MfaDecode> = Erased(PhantomData);
static FUSED_NORM_ROPE: Erased<FusedNormRope> = Erased(PhantomData);
static MLP_JET: Erased<MlpJet> = Erased(PhantomData);
static ADAM: Erased<Adam> = Erased(PhantomData);
static MLP_JET_BACKWARD: Erased<MlpJetBackward> = Erased(PhantomData);
static SMALL_MLP: Erased<SmallMlp> = Erased(PhantomData);
static SYNTH_RESIDUAL: Erased<SynthResidual> = Erased(PhantomData);

/// All families, in a stable order.
pub fn families() -> Vec<&'static dyn AnyFamily> {
    vec![
        &GEMM_BF16,
        &GEMM_FP8,
        &MFA_DECODE,
        &FUSED_NORM_ROPE,
        &MLP_JET,
        &ADAM,
        &MLP_JET_BACKWARD,
        &SMALL_MLP,
        &SYNTH_RESIDUAL,
    ]
}

pub fn family(name: &str) -> Result<&'static dyn AnyFamily> {
    families()
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| CodegenError::UnknownFamily(name.to_string()))
}
