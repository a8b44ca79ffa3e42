//! `kiln bench --peers FILE`: baselines timed by a Python peer, in its own process, earlier in
//! the same GPU call: PyTorch autograd for `mlp_jet` and `mlp_jet_backward`
//! (`benches/peers/pinn_torch.py`: the jets rows, and the `"train": true` rows for the training
//! step), PyTorch SDPA for `mfa_decode` (`benches/peers/mfa_sdpa.py`).
//!
//! Each peer times several variants of a problem (TF32 off and on; SDPA's flash, cuDNN and
//! memory-efficient backends). The fastest becomes the row's baseline, so a speedup is never
//! taken against a weaker variant; the others are kept in `other_baselines`. SDPA has no FP8 or
//! paged KV path: FP8 and paged `mfa_decode` rows are compared with SDPA on the BF16 contiguous
//! cache of the same batch and context, and the baseline's name says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_codegen::families::mfa_decode::{MfaDecode, MfaDecodeProblem};
use kiln_codegen::families::mlp_jet::{MlpJet, MlpJetProblem, Streams};
use kiln_codegen::families::mlp_jet_backward::{Loss, MlpJetBackward, MlpJetBackwardProblem};
use kiln_codegen::Family;
use kiln_runtime::artifact::Baseline;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{BenchFile, BenchRow};
use crate::table::compact;

pub const PINN_TORCH: &str = "benches/peers/pinn_torch.py";
pub const MFA_SDPA: &str = "benches/peers/mfa_sdpa.py";
/// Appended to the names of SDPA baselines that stand in for an FP8 or paged problem.
pub const BF16_STAND_IN: &str = " (bf16 contiguous KV)";

/// The script that writes a family's peers file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerScript {
    PinnTorch,
    MfaSdpa,
}

impl PeerScript {
    pub fn of_family(family: &str) -> Option<PeerScript> {
        match family {
            MlpJet::NAME | MlpJetBackward::NAME => Some(PeerScript::PinnTorch),
            MfaDecode::NAME => Some(PeerScript::MfaSdpa),
            _ => None,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            PeerScript::PinnTorch => PINN_TORCH,
            PeerScript::MfaSdpa => MFA_SDPA,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("--peers {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--peers {}: not JSON ({source})", path.display())]
    NotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("--peers {}: not the output of {script}, which {family} needs ({why})", path.display())]
    Shape {
        path: PathBuf,
        script: &'static str,
        family: String,
        why: String,
    },
    #[error(
        "--peers {} was measured on {peer}, this bench runs on {here}: run the peer in the same \
         GPU call",
        path.display()
    )]
    OtherDevice {
        path: PathBuf,
        peer: String,
        here: String,
    },
    #[error(
        "--peers {} ({script}) has no timed row for any of the {count} {family} problem(s) \
         benched here ({problems}){hint}",
        path.display()
    )]
    NoMatch {
        path: PathBuf,
        script: &'static str,
        family: String,
        count: usize,
        problems: String,
        hint: &'static str,
    },
    #[error(
        "{family} has no Python peer (its baseline is timed in-process); --peers is for \
         mlp_jet and mlp_jet_backward ({PINN_TORCH}) and mfa_decode ({MFA_SDPA})"
    )]
    NotApplicable { family: String },
}

/// Where a bench file's peer baselines came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerSource {
    /// The file as given to `--peers`.
    pub file: String,
    pub script: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The peer's own account of its timing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
}

/// What a peer row was measured on.
#[derive(Clone, Debug, PartialEq)]
enum PeerKey {
    /// `pinn_torch.py`: a tanh net at `points` points; `train`: the training step, else the
    /// jets (u, grad u, Laplacian).
    Pinn {
        d: u32,
        width: u32,
        depth: u32,
        p: u32,
        points: u32,
        train: bool,
    },
    /// `mfa_sdpa.py`: one K/V head under `heads` query rows, contiguous cache.
    Sdpa {
        batch: u32,
        context: u32,
        heads: u32,
        head_dim: u32,
        kv_dtype: String,
    },
}

/// One variant of the peer on one problem: its time, or why it has none.
#[derive(Clone, Debug)]
struct PeerRow {
    key: PeerKey,
    name: String,
    us: Option<f64>,
    max_rel_err: Option<f64>,
    note: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct PinnRow {
    d: u32,
    width: u32,
    depth: u32,
    p: u32,
    points: u32,
    tf32: bool,
    #[serde(default)]
    train: bool,
    #[serde(default)]
    us: Option<f64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    rel_err_vs_f64: BTreeMap<String, Option<f64>>,
}

#[derive(Deserialize)]
struct SdpaRow {
    batch: u32,
    context: u32,
    heads: u32,
    head_dim: u32,
    kv_dtype: String,
    backend: String,
    #[serde(default)]
    us: Option<f64>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct PeerFile<R> {
    #[serde(default)]
    torch: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    how: Option<String>,
    rows: Vec<R>,
}

impl From<PinnRow> for PeerRow {
    fn from(r: PinnRow) -> PeerRow {
        let errs: Vec<Option<f64>> = r.rel_err_vs_f64.values().copied().collect();
        let non_finite = errs.iter().any(|e| e.is_none());
        PeerRow {
            key: PeerKey::Pinn {
                d: r.d,
                width: r.width,
                depth: r.depth,
                p: r.p,
                points: r.points,
                train: r.train,
            },
            name: if r.tf32 {
                "torch-autograd-tf32".into()
            } else {
                "torch-autograd-fp32".into()
            },
            us: r.us,
            max_rel_err: errs.iter().flatten().copied().reduce(f64::max),
            note: Some(if non_finite {
                "its error against float64 autograd was not finite".into()
            } else {
                "max_rel_err: against the same autograd in float64 on the first 1024 points".into()
            }),
            error: r.error,
        }
    }
}

impl From<SdpaRow> for PeerRow {
    fn from(r: SdpaRow) -> PeerRow {
        PeerRow {
            key: PeerKey::Sdpa {
                batch: r.batch,
                context: r.context,
                heads: r.heads,
                head_dim: r.head_dim,
                kv_dtype: r.kv_dtype,
            },
            name: format!("torch-sdpa-{}", r.backend),
            us: r.us,
            max_rel_err: None,
            note: None,
            error: r.error,
        }
    }
}

/// The key a peer row must have to serve `problem` of `family`, and the suffix its baseline
/// name takes when it only stands in for the problem; None when the peer never times it.
fn key_of(family: &str, problem: &Value) -> Option<(PeerKey, &'static str)> {
    fn parse<P: DeserializeOwned>(v: &Value) -> Option<P> {
        serde_json::from_value(v.clone()).ok()
    }
    match family {
        MlpJet::NAME => {
            let p: MlpJetProblem = parse(problem)?;
            // The peer computes u, grad u and the Laplacian (d2u/dx2 in 1-D).
            let laplacian = p.streams == Streams::ValueGradLaplacian
                || (p.streams == Streams::ValueD2 && p.d == 1);
            laplacian.then_some((
                PeerKey::Pinn {
                    d: p.d,
                    width: p.width,
                    depth: p.depth,
                    p: p.p,
                    points: p.points,
                    train: false,
                },
                "",
            ))
        }
        MlpJetBackward::NAME => {
            let p: MlpJetBackwardProblem = parse(problem)?;
            (p.loss == Loss::LaplacianResidual).then_some((
                PeerKey::Pinn {
                    d: p.d,
                    width: p.width,
                    depth: p.depth,
                    p: p.p,
                    points: p.points,
                    train: true,
                },
                "",
            ))
        }
        MfaDecode::NAME => {
            let p: MfaDecodeProblem = parse(problem)?;
            let suffix = if p.kv_dtype.is_fp8() || p.paged() {
                BF16_STAND_IN
            } else {
                ""
            };
            Some((
                PeerKey::Sdpa {
                    batch: p.batch,
                    context: p.context,
                    heads: p.heads,
                    head_dim: p.head_dim,
                    kv_dtype: "bf16".into(),
                },
                suffix,
            ))
        }
        _ => None,
    }
}

/// Python's `json.dump` writes `NaN`, `Infinity` and `-Infinity` for non-finite floats, which
/// JSON does not have: outside strings they become `null`.
fn strict_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
        } else if let Some(word) = ["NaN", "Infinity", "-Infinity"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push_str("null");
            rest = &rest[word.len()..];
            continue;
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// A peers file read for one family.
pub struct Peers {
    path: PathBuf,
    family: String,
    script: PeerScript,
    pub source: PeerSource,
    rows: Vec<PeerRow>,
}

impl Peers {
    /// Read `path` as the peers file of `family`.
    pub fn read(path: &Path, family: &str) -> Result<Peers, PeersError> {
        let script = PeerScript::of_family(family).ok_or_else(|| PeersError::NotApplicable {
            family: family.to_string(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| PeersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Peers::parse(path, family, script, &text)
    }

    fn parse(
        path: &Path,
        family: &str,
        script: PeerScript,
        text: &str,
    ) -> Result<Peers, PeersError> {
        let value: Value =
            serde_json::from_str(&strict_json(text)).map_err(|source| PeersError::NotJson {
                path: path.to_path_buf(),
                source,
            })?;
        let shape = |e: serde_json::Error| PeersError::Shape {
            path: path.to_path_buf(),
            script: script.path(),
            family: family.to_string(),
            why: e.to_string(),
        };
        fn rows<R: DeserializeOwned + Into<PeerRow>>(
            v: Value,
        ) -> serde_json::Result<(PeerFile<()>, Vec<PeerRow>)> {
            let f: PeerFile<R> = serde_json::from_value(v)?;
            let head = PeerFile {
                torch: f.torch,
                device: f.device,
                how: f.how,
                rows: Vec::new(),
            };
            Ok((head, f.rows.into_iter().map(Into::into).collect()))
        }
        let (head, rows) = match script {
            PeerScript::PinnTorch => rows::<PinnRow>(value),
            PeerScript::MfaSdpa => rows::<SdpaRow>(value),
        }
        .map_err(shape)?;
        Ok(Peers {
            path: path.to_path_buf(),
            family: family.to_string(),
            script,
            source: PeerSource {
                file: path.display().to_string(),
                script: script.path().into(),
                torch: head.torch,
                device: head.device,
                how: head.how,
            },
            rows,
        })
    }

    /// An error when the peer ran on another GPU than `here` (a file without a device name
    /// passes).
    pub fn check_device(&self, here: &str) -> Result<(), PeersError> {
        match &self.source.device {
            Some(peer) if peer.trim() != here.trim() => Err(PeersError::OtherDevice {
                path: self.path.clone(),
                peer: peer.clone(),
                here: here.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The peer's timed variants on `problem` of `family` as baselines, fastest first, and a
    /// note for each variant that failed there.
    pub fn baselines(&self, family: &str, problem: &Value) -> (Vec<Baseline>, Vec<String>) {
        let Some((key, suffix)) = key_of(family, problem) else {
            return (Vec::new(), Vec::new());
        };
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        for r in self.rows.iter().filter(|r| r.key == key) {
            let name = format!("{}{suffix}", r.name);
            // The first row of a variant wins (a file that repeats one is read as written).
            if out.iter().any(|b: &Baseline| b.name == name) {
                continue;
            }
            match r.us {
                Some(us) if us.is_finite() && us > 0.0 => out.push(Baseline {
                    name,
                    median_us: us,
                    max_rel_err: r.max_rel_err,
                    note: r.note.clone(),
                }),
                _ => notes.push(format!(
                    "{name} on {}: no time ({})",
                    compact(problem),
                    r.error.as_deref().unwrap_or("none recorded")
                )),
            }
        }
        out.sort_by(|a, b| a.median_us.total_cmp(&b.median_us));
        (out, notes)
    }

    /// An error unless at least one of `problems` (of the family the file was read for) has a
    /// timed variant: a file from another peer or another net list.
    pub fn require_match(&self, problems: &[Value]) -> Result<(), PeersError> {
        if problems
            .iter()
            .any(|p| !self.baselines(&self.family, p).0.is_empty())
        {
            return Ok(());
        }
        let mut listed: Vec<String> = problems.iter().take(3).map(compact).collect();
        if problems.len() > 3 {
            listed.push("...".into());
        }
        Err(PeersError::NoMatch {
            path: self.path.clone(),
            script: self.script.path(),
            family: self.family.clone(),
            count: problems.len(),
            problems: listed.join("; "),
            hint: if self.family == MlpJetBackward::NAME {
                "; its training-step rows (\"train\": true) are what mlp_jet_backward reads: \
                 pinn_torch.py writes them with the default --p 1, files from before they \
                 existed have none"
            } else {
                ""
            },
        })
    }

    /// Give each row of `rows` the peer's fastest variant on its problem as the baseline and
    /// the other variants as `other_baselines`; a row the peer did not time keeps what it had.
    /// Returns notes for people (variants that failed, rows left without a peer).
    pub fn apply(&self, rows: &mut [BenchRow]) -> Vec<String> {
        let mut notes = Vec::new();
        for r in rows.iter_mut() {
            let (mut found, failed) = self.baselines(&r.family, &r.problem);
            notes.extend(failed);
            if found.is_empty() {
                if PeerScript::of_family(&r.family) == Some(self.script) {
                    notes.push(format!(
                        "{} {}: no timed row in {}; baseline {}",
                        r.family,
                        compact(&r.problem),
                        self.path.display(),
                        r.baseline
                    ));
                }
                continue;
            }
            let best = found.remove(0);
            r.set_baseline(&best.name, best.median_us);
            r.other_baselines = found;
        }
        notes
    }

    /// [`Peers::apply`] to every row of `file`, which then names its peer; the notes are
    /// printed.
    pub fn attach(&self, file: &mut BenchFile) {
        for n in self.apply(&mut file.rows) {
            eprintln!("note: {n}");
        }
        let torch = self
            .source
            .torch
            .as_deref()
            .map(|t| format!(" (torch {t})"))
            .unwrap_or_default();
        let stand_in = if self.script == PeerScript::MfaSdpa {
            format!(
                "; FP8 and paged rows against SDPA on the BF16 contiguous cache of the same \
                 batch and context (SDPA has no FP8 or paged path: names ending{BF16_STAND_IN})"
            )
        } else {
            String::new()
        };
        file.method = format!(
            "{}; baselines: {}{torch}, its fastest variant per problem, timed in its own process \
             ({}){stand_in}",
            file.method,
            self.script.path(),
            self.source
                .how
                .as_deref()
                .unwrap_or("its JSON does not say how")
        );
        file.peers = Some(self.source.clone());
    }
}

#[cfg(test)]
mod tests;
