//! Tuned artifacts: `tuned/<gpu-slug>/<family>.json`, one per family per GPU
//! model. Self-describing and versioned; the runtime never trusts one for
//! correctness (a stale or foreign artifact is reported and ignored, and the
//! family's default config is used instead).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::device::DeviceInfo;
use crate::error::{Result, RuntimeError};

pub const SCHEMA: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactDevice {
    pub name: String,
    pub cc: [u32; 2],
    pub sms: u32,
    pub l2_bytes: u64,
    pub driver: u32,
    /// SM clock during tuning (MHz), read, never set.
    pub clock_mhz: u32,
    #[serde(default)]
    pub temperature_c: Option<u32>,
}

impl ArtifactDevice {
    pub fn from_info(
        info: &DeviceInfo,
        clock_mhz: Option<u32>,
        temperature_c: Option<u32>,
    ) -> Self {
        ArtifactDevice {
            name: info.name.clone(),
            cc: info.cc,
            sms: info.sms,
            l2_bytes: info.l2_bytes,
            driver: info.driver,
            clock_mhz: clock_mhz.unwrap_or(info.clock_mhz),
            temperature_c,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactToolchain {
    pub nvrtc: String,
    pub kiln: String,
    pub template_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// e.g. `cublas-gemmex-bf16`.
    pub name: String,
    pub median_us: f64,
    /// Its output's norm-wise error against the same reference kiln's kernel is held to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rel_err: Option<f64>,
    /// What a reader needs to know about it (e.g. why it stands in for another baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Baseline {
    /// A baseline with a name and a time only.
    pub fn timed(name: impl Into<String>, median_us: f64) -> Self {
        Baseline {
            name: name.into(),
            median_us,
            max_rel_err: None,
            note: None,
        }
    }
}

/// One output's error where a family checks several outputs against its reference (mlp_jet:
/// `u`, `grad` and `second`), with the bound that output was held to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputError {
    pub name: String,
    pub max_rel_err: f64,
    pub bound: f64,
    /// The same output's error when the reference is evaluated in plain fp32 (the conditioning
    /// of the case: a bound above the family's tolerance comes from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp32_floor: Option<f64>,
}

/// What happened to one candidate config during tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    pub config: Value,
    /// `ok`, `illegal`, `compile_failed`, `launch_failed`, `invalid` (wrong
    /// result), `pruned` (not measured: the analytical prior ranked it out),
    /// `stopped` (measured slower than k x the leader and dropped).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rel_err: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registers: Option<u32>,
    /// Per-output errors (families that check several outputs; `max_rel_err` is their worst).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputError>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub problem: Value,
    pub config: Value,
    pub median_us: f64,
    pub p20_us: f64,
    pub p80_us: f64,
    /// Percent of the compute or memory roofline, whichever bounds the problem.
    pub pct_of_roofline: f64,
    /// The baseline `speedup` is measured against.
    pub baseline: Option<Baseline>,
    pub speedup: Option<f64>,
    /// Other peers timed in the same run (e.g. cuBLASLt with row-wise scales next to the
    /// block-scaled baseline of `gemm_fp8`); absent in older artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_baselines: Vec<Baseline>,
    pub max_rel_err: f64,
    /// Per-output errors of the served config (families that check several outputs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputError>,
    pub candidates_tried: usize,
    /// RFC 3339, UTC.
    pub tuned_at: String,
    #[serde(default)]
    pub candidates: Vec<CandidateRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub schema: u32,
    pub family: String,
    pub device: ArtifactDevice,
    pub toolchain: ArtifactToolchain,
    pub entries: Vec<Entry>,
}

/// Why an artifact cannot be used as it is (it still loads for inspection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Staleness {
    OtherGpu { artifact: String, device: String },
    TemplateChanged,
    Toolchain { artifact: String, current: String },
}

impl std::fmt::Display for Staleness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Staleness::OtherGpu { artifact, device } => {
                write!(
                    f,
                    "tuned on {artifact}, this device is {device}: run `kiln tune` on this GPU"
                )
            }
            Staleness::TemplateChanged => {
                write!(f, "the family's template changed since tuning: its configs are re-checked and recompiled; re-run `kiln tune` for fresh timings")
            }
            Staleness::Toolchain { artifact, current } => {
                write!(f, "tuned with NVRTC {artifact}, this is {current}: kernels recompile; timings may differ")
            }
        }
    }
}

impl Artifact {
    pub fn new(family: &str, device: ArtifactDevice, toolchain: ArtifactToolchain) -> Self {
        Artifact {
            schema: SCHEMA,
            family: family.to_string(),
            device,
            toolchain,
            entries: Vec::new(),
        }
    }

    /// `<root>/<gpu-slug>/<family>.json`.
    pub fn path(root: &Path, gpu_slug: &str, family: &str) -> PathBuf {
        root.join(gpu_slug).join(format!("{family}.json"))
    }

    /// Read and check an artifact; every failure names the file and the fix.
    pub fn load(path: &Path) -> Result<Artifact> {
        let err = |reason: String| RuntimeError::Artifact {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot be read ({e})")))?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("is not valid JSON ({e}); it may be truncated: restore it from git or re-run `kiln tune --force`")))?;
        let schema = value.get("schema").and_then(Value::as_u64);
        if schema != Some(SCHEMA as u64) {
            return Err(err(format!(
                "has schema {schema:?}, this kiln reads schema {SCHEMA}: re-run `kiln tune` to rewrite it"
            )));
        }
        let art: Artifact = serde_json::from_value(value)
            .map_err(|e| err(format!("does not match the artifact schema ({e}); restore it from git or re-run `kiln tune --force`")))?;
        for (i, e) in art.entries.iter().enumerate() {
            if !(e.median_us.is_finite() && e.median_us > 0.0 && e.max_rel_err.is_finite()) {
                return Err(err(format!(
                    "entry {i} has a non-finite or non-positive time or error"
                )));
            }
        }
        Ok(art)
    }

    /// Write atomically (temp file + rename) as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("artifacts serialise");
        write_atomic(path, &bytes).map_err(|e| RuntimeError::Artifact {
            path: path.display().to_string(),
            reason: format!("cannot be written ({e})"),
        })
    }

    /// Why this artifact does not fit `device` / `template_sha256` / `nvrtc`, if it does not.
    pub fn staleness(
        &self,
        device: &DeviceInfo,
        template_sha256: &str,
        nvrtc: Option<&str>,
    ) -> Vec<Staleness> {
        let mut out = Vec::new();
        if self.device.name != device.name
            || self.device.sms != device.sms
            || self.device.cc != device.cc
        {
            out.push(Staleness::OtherGpu {
                artifact: format!("{} ({} SMs)", self.device.name, self.device.sms),
                device: format!("{} ({} SMs)", device.name, device.sms),
            });
        }
        if self.toolchain.template_sha256 != template_sha256 {
            out.push(Staleness::TemplateChanged);
        }
        if let Some(v) = nvrtc {
            if self.toolchain.nvrtc != v {
                out.push(Staleness::Toolchain {
                    artifact: self.toolchain.nvrtc.clone(),
                    current: v.to_string(),
                });
            }
        }
        out
    }

    pub fn find(&self, problem: &Value) -> Option<&Entry> {
        self.entries.iter().find(|e| &e.problem == problem)
    }

    /// Insert or replace the entry for its problem.
    pub fn upsert(&mut self, entry: Entry) {
        match self.entries.iter_mut().find(|e| e.problem == entry.problem) {
            Some(slot) => *slot = entry,
            None => self.entries.push(entry),
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        path.file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("artifact"),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
