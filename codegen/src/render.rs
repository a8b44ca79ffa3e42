//! Rendering a family's template for one (problem, config).

use crate::compile::KernelSource;
use crate::error::{CodegenError, Result};
use crate::family::Family;

/// Render `F`'s template with the named variables of `render_vars`.
pub fn render<F: Family>(problem: &F::Problem, config: &F::Config) -> Result<KernelSource> {
    let vars = F::render_vars(problem, config);
    let ctx = tera::Context::from_value(serde_json::Value::Object(vars)).map_err(|e| {
        CodegenError::Render {
            family: F::NAME.to_string(),
            reason: e.to_string(),
        }
    })?;
    let source =
        tera::Tera::one_off(F::TEMPLATE, &ctx, false).map_err(|e| CodegenError::Render {
            family: F::NAME.to_string(),
            reason: error_chain(&e),
        })?;
    Ok(KernelSource {
        family: F::NAME.to_string(),
        entry: F::entry(problem, config),
        source,
    })
}

/// tera nests the useful message (e.g. the missing variable) in `source()`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
