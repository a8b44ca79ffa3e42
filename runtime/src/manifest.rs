//! The export manifest (`kiln export DIR` writes `DIR/manifest.json` beside
//! one `.cubin` per kernel): what any CUDA program needs to load a tuned
//! kernel with cuModuleLoadData and launch it: entry name, argument order
//! and C types, launch geometry, scratch buffers, and the problem it was tuned for.

use std::path::Path;

use kiln_codegen::LaunchGeometry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, RuntimeError};

pub const MANIFEST_SCHEMA: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestArg {
    pub name: String,
    pub c_type: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestScratch {
    pub arg: String,
    pub bytes: usize,
    pub zero_init: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestKernel {
    pub family: String,
    pub problem: Value,
    pub config: Value,
    pub entry: String,
    /// File name of the cubin, relative to the manifest.
    pub cubin: String,
    pub cubin_sha256: String,
    pub args: Vec<ManifestArg>,
    pub geometry: LaunchGeometry,
    pub scratch: Vec<ManifestScratch>,
    /// `tuned` (from an artifact entry) or `default` (the family heuristic).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_us: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub kiln: String,
    pub nvrtc: String,
    pub arch: String,
    /// GPU slug the artifacts were tuned on.
    pub gpu: String,
    pub kernels: Vec<ManifestKernel>,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.json");
        let err = |reason: String| RuntimeError::Artifact {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(&path)
            .map_err(|e| err(format!("cannot be read ({e}); run `kiln export DIR` first")))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("is not a kiln manifest ({e})")))?;
        if m.schema != MANIFEST_SCHEMA {
            return Err(err(format!(
                "has schema {}, this kiln reads {MANIFEST_SCHEMA}; re-export",
                m.schema
            )));
        }
        Ok(m)
    }

    /// The kernel exported for exactly this family and problem.
    pub fn find(&self, family: &str, problem: &Value) -> Option<&ManifestKernel> {
        self.kernels
            .iter()
            .find(|k| k.family == family && &k.problem == problem)
    }

    /// Read a kernel's cubin and check it against the recorded hash.
    pub fn cubin(&self, dir: &Path, k: &ManifestKernel) -> Result<Vec<u8>> {
        use sha2::Digest;
        let path = dir.join(&k.cubin);
        let bytes = std::fs::read(&path).map_err(|e| RuntimeError::Artifact {
            path: path.display().to_string(),
            reason: format!("cannot be read ({e})"),
        })?;
        if hex::encode(sha2::Sha256::digest(&bytes)) != k.cubin_sha256 {
            return Err(RuntimeError::Artifact {
                path: path.display().to_string(),
                reason:
                    "does not match the sha256 in manifest.json (corrupt or replaced): re-export"
                        .into(),
            });
        }
        Ok(bytes)
    }
}
