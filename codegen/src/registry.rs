//! Every family kiln knows, behind one object-safe view for the CLI and tools.

use std::marker::PhantomData;

use serde_json::Value;

use crate::error::{CodegenError, Result};
use crate::families::gemm_bf16::GemmBf16;
use crate::family::{DeviceLimits, Family};

/// One renderable variant: a legal config for one template branch.
#[derive(Clone, Debug)]
pub struct Variant {
    pub config: Value,
    pub problem: Value,
    pub entry: String,
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
    /// Every legal config x every template branch, deduplicated by entry.
    fn variants(&self, limits: &DeviceLimits) -> Vec<Variant>;
    /// Render one variant.
    #[cfg(feature = "jit")]
    fn render(&self, variant: &Variant) -> Result<crate::compile::KernelSource>;
}

struct Erased<F>(PhantomData<F>);

impl<F: Family> AnyFamily for Erased<F> {
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
        let bad = |what: &str, e: serde_json::Error| CodegenError::Invalid {
            what: format!("{} {what}", F::NAME),
            reason: e.to_string(),
        };
        let config: F::Config = serde_json::from_value(v.config.clone()).map_err(|e| bad("config", e))?;
        let problem: F::Problem = serde_json::from_value(v.problem.clone()).map_err(|e| bad("problem", e))?;
        crate::render::render::<F>(&problem, &config)
    }
}

/// sha256 of a template's text, hex.
pub fn template_sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

static GEMM_BF16: Erased<GemmBf16> = Erased(PhantomData);

/// All families, in a stable order.
pub fn families() -> Vec<&'static dyn AnyFamily> {
    vec![&GEMM_BF16]
}

pub fn family(name: &str) -> Result<&'static dyn AnyFamily> {
    families().into_iter().find(|f| f.name() == name).ok_or_else(|| CodegenError::UnknownFamily(name.to_string()))
}
