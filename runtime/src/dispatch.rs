//! Choosing a config for a problem at run time: the tuned entry for exactly
//! this problem, else the nearest tuned bucket by the family's rule, else the
//! family's heuristic default. Whatever an artifact says is re-checked
//! against the family's legality rules first: an artifact can make kiln
//! slower, never wrong.

use std::marker::PhantomData;
use std::path::Path;

use kiln_codegen::{DeviceLimits, Family};
use serde::Serialize;

use crate::artifact::{Artifact, Staleness};
use crate::device::DeviceInfo;

/// Where a chosen config came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Source {
    Exact,
    Bucket {
        tuned_for: serde_json::Value,
        distance: f64,
    },
    Default {
        why: String,
    },
}

#[derive(Clone, Debug)]
pub struct Selection<C> {
    pub config: C,
    pub source: Source,
}

/// The tuned configs of one family on one device.
pub struct Dispatch<F: Family> {
    artifact: Option<Artifact>,
    limits: DeviceLimits,
    /// Why the artifact is ignored or partly trusted, for people to read.
    pub notes: Vec<String>,
    _f: PhantomData<F>,
}

impl<F: Family> Dispatch<F> {
    /// No artifact: every problem gets the family default.
    pub fn defaults(limits: DeviceLimits) -> Self {
        Dispatch {
            artifact: None,
            limits,
            notes: Vec::new(),
            _f: PhantomData,
        }
    }

    /// Load `<root>/<device slug>/<family>.json` if present and usable.
    pub fn load(root: &Path, device: &DeviceInfo, nvrtc: Option<&str>) -> Self {
        let path = Artifact::path(root, &device.slug(), F::NAME);
        let mut d = Self::defaults(device.limits());
        if !path.exists() {
            d.notes.push(format!(
                "no tuned artifact at {}: using {}'s default configs",
                path.display(),
                F::NAME
            ));
            return d;
        }
        match Artifact::load(&path) {
            Err(e) => d.notes.push(format!("{e}; using default configs")),
            Ok(art) => {
                let template = kiln_codegen::registry::template_sha256(F::TEMPLATE);
                let stale = art.staleness(device, &template, nvrtc);
                for s in &stale {
                    d.notes.push(format!("{}: {s}", path.display()));
                }
                if stale
                    .iter()
                    .any(|s| matches!(s, Staleness::OtherGpu { .. }))
                {
                    d.notes.push("its entries are not used on this GPU".into());
                } else {
                    d.artifact = Some(art);
                }
            }
        }
        d
    }

    /// Use an artifact already in memory (after the same checks as `load`).
    pub fn from_artifact(art: Artifact, device: &DeviceInfo) -> Self {
        let mut d = Self::defaults(device.limits());
        let template = kiln_codegen::registry::template_sha256(F::TEMPLATE);
        let stale = art.staleness(device, &template, None);
        d.notes.extend(stale.iter().map(|s| s.to_string()));
        if !stale
            .iter()
            .any(|s| matches!(s, Staleness::OtherGpu { .. }))
        {
            d.artifact = Some(art);
        }
        d
    }

    pub fn artifact(&self) -> Option<&Artifact> {
        self.artifact.as_ref()
    }

    /// The config to run `problem` with, and why.
    pub fn select(&self, problem: &F::Problem) -> Selection<F::Config> {
        let mut why = "no tuned entry".to_string();
        if let Some(art) = &self.artifact {
            let mut best: Option<(f64, F::Config, serde_json::Value)> = None;
            for e in &art.entries {
                let Ok(tuned) = serde_json::from_value::<F::Problem>(e.problem.clone()) else {
                    continue;
                };
                let Some(dist) = F::bucket_distance(&tuned, problem) else {
                    continue;
                };
                let Ok(config) = serde_json::from_value::<F::Config>(e.config.clone()) else {
                    why = format!("a tuned config for {} no longer parses", e.problem);
                    continue;
                };
                if let Err(ill) = F::check_config(&config, &self.limits)
                    .and_then(|_| F::check_problem(problem, &config))
                {
                    why = format!(
                        "the tuned config for {} is not legal here ({ill})",
                        e.problem
                    );
                    continue;
                }
                if best.as_ref().is_none_or(|(d, _, _)| dist < *d) {
                    best = Some((dist, config, e.problem.clone()));
                }
            }
            if let Some((dist, config, tuned_for)) = best {
                let source = if dist == 0.0 {
                    Source::Exact
                } else {
                    Source::Bucket {
                        tuned_for,
                        distance: dist,
                    }
                };
                return Selection { config, source };
            }
        } else {
            why = "no usable artifact".into();
        }
        Selection {
            config: F::default_config(problem),
            source: Source::Default { why },
        }
    }
}
