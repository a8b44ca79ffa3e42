//! Robustness of tuned artifacts on the CPU side: truncated, hand-edited and
//! foreign artifacts, template changes, and resuming a killed tuning run.

use kiln_codegen::families::gemm_bf16::{GemmBf16, GemmBf16Problem};
use kiln_codegen::Family;
use kiln_runtime::artifact::{Artifact, ArtifactDevice, ArtifactToolchain, Entry};
use kiln_runtime::dispatch::{Dispatch, Source};
use kiln_runtime::DeviceInfo;
use kiln_tuner::tune::{open_artifact, pending};
use serde_json::json;

fn h200() -> DeviceInfo {
    DeviceInfo {
        name: "NVIDIA H200".into(),
        cc: [9, 0],
        sms: 132,
        l2_bytes: 60 << 20,
        driver: 13000,
        clock_mhz: 1980,
        total_mem_bytes: 141 << 30,
        max_smem_optin_bytes: 227 * 1024,
    }
}

fn toolchain() -> ArtifactToolchain {
    ArtifactToolchain {
        nvrtc: "13.0".into(),
        kiln: kiln_codegen::KILN_VERSION.into(),
        template_sha256: kiln_codegen::registry::template_sha256(GemmBf16::TEMPLATE),
    }
}

fn entry(p: &GemmBf16Problem) -> Entry {
    Entry {
        problem: serde_json::to_value(p).unwrap(),
        config: serde_json::to_value(GemmBf16::default_config(p)).unwrap(),
        median_us: 10.0,
        p20_us: 9.5,
        p80_us: 10.5,
        pct_of_roofline: 40.0,
        baseline: None,
        speedup: None,
        extra_baselines: Vec::new(),
        max_rel_err: 2e-3,
        outputs: Vec::new(),
        candidates_tried: 3,
        tuned_at: "2026-11-29T00:00:00Z".into(),
        candidates: Vec::new(),
    }
}

fn artifact_with(problems: &[GemmBf16Problem]) -> Artifact {
    let mut a = Artifact::new(
        "gemm_bf16",
        ArtifactDevice::from_info(&h200(), None, None),
        toolchain(),
    );
    for p in problems {
        a.upsert(entry(p));
    }
    a
}

fn qkv(m: u32) -> GemmBf16Problem {
    GemmBf16Problem {
        m,
        n: 2560,
        k: 7168,
    }
}

fn write(dir: &std::path::Path, art: &Artifact) -> std::path::PathBuf {
    let path = Artifact::path(dir, "nvidia-h200", "gemm_bf16");
    art.save(&path).unwrap();
    path
}

#[test]
fn exact_then_bucket_then_default() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &artifact_with(&[qkv(32), qkv(128)]));
    let d = Dispatch::<GemmBf16>::load(dir.path(), &h200(), Some("13.0"));
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    assert_eq!(d.select(&qkv(32)).source, Source::Exact);
    // M=20 rounds up to the M=32 entry; M=200 has only a smaller bucket.
    match d.select(&qkv(20)).source {
        Source::Bucket { tuned_for, .. } => {
            assert_eq!(tuned_for, json!({"m": 32, "n": 2560, "k": 7168}))
        }
        s => panic!("{s:?}"),
    }
    match d.select(&qkv(200)).source {
        Source::Bucket { tuned_for, .. } => {
            assert_eq!(tuned_for, json!({"m": 128, "n": 2560, "k": 7168}))
        }
        s => panic!("{s:?}"),
    }
    // Another N: nothing tuned says anything about it.
    let other = GemmBf16Problem {
        m: 32,
        n: 48,
        k: 7168,
    };
    let s = d.select(&other);
    assert!(matches!(s.source, Source::Default { .. }));
    assert_eq!(s.config, GemmBf16::default_config(&other));
}

#[test]
fn a_truncated_artifact_is_reported_and_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &artifact_with(&[qkv(1)]));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    let err = Artifact::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("not valid JSON") && err.contains("truncated"),
        "{err}"
    );
    let d = Dispatch::<GemmBf16>::load(dir.path(), &h200(), None);
    assert!(
        d.notes.iter().any(|n| n.contains("using default configs")),
        "{:?}",
        d.notes
    );
    assert!(matches!(d.select(&qkv(1)).source, Source::Default { .. }));

    // The tuner refuses to overwrite it without --force, and leaves it untouched.
    let mut notes = Vec::new();
    let hdr = ArtifactDevice::from_info(&h200(), None, None);
    let e = open_artifact(
        &path,
        "gemm_bf16",
        hdr.clone(),
        toolchain(),
        &h200(),
        false,
        &mut notes,
    )
    .unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes[..bytes.len() / 2]);
    let fresh = open_artifact(
        &path,
        "gemm_bf16",
        hdr,
        toolchain(),
        &h200(),
        true,
        &mut notes,
    )
    .unwrap();
    assert!(fresh.entries.is_empty());
}

#[test]
fn hand_edited_configs_are_rechecked_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut art = artifact_with(&[qkv(1), qkv(32)]);
    // An illegal config (a tile of 7 rows) and one that no longer parses.
    art.entries[0].config = json!({"kernel": "tiled", "bm": 7, "bn": 64, "bk": 32, "warps_m": 1, "warps_n": 1, "stages": 3, "split_k": 1});
    art.entries[1].config = json!({"tile": "big"});
    let path = write(dir.path(), &art);
    let d = Dispatch::<GemmBf16>::load(dir.path(), &h200(), None);
    for m in [1, 32] {
        let s = d.select(&qkv(m));
        assert!(
            matches!(s.source, Source::Default { .. }),
            "{m}: {:?}",
            s.source
        );
        assert_eq!(s.config, GemmBf16::default_config(&qkv(m)));
    }
    // A negative time is a corrupt file, refused as a whole.
    let mut bad = artifact_with(&[qkv(1)]);
    bad.entries[0].median_us = -1.0;
    bad.save(&path).unwrap();
    assert!(Artifact::load(&path)
        .unwrap_err()
        .to_string()
        .contains("non-positive"));
}

#[test]
fn an_artifact_from_another_gpu_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut art = artifact_with(&[qkv(1)]);
    art.device.name = "NVIDIA H100 80GB HBM3".into();
    let path = write(dir.path(), &art);
    let d = Dispatch::<GemmBf16>::load(dir.path(), &h200(), None);
    assert!(d.artifact().is_none());
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("H100") && n.contains("kiln tune")),
        "{:?}",
        d.notes
    );
    assert!(matches!(d.select(&qkv(1)).source, Source::Default { .. }));
    let mut notes = Vec::new();
    let hdr = ArtifactDevice::from_info(&h200(), None, None);
    let e = open_artifact(
        &path,
        "gemm_bf16",
        hdr,
        toolchain(),
        &h200(),
        false,
        &mut notes,
    )
    .unwrap_err();
    assert!(e.to_string().contains("H100"), "{e}");
}

#[test]
fn a_changed_template_keeps_dispatching_but_is_retuned() {
    let dir = tempfile::tempdir().unwrap();
    let mut art = artifact_with(&[qkv(1)]);
    art.toolchain.template_sha256 = "0".repeat(64);
    let path = write(dir.path(), &art);
    let d = Dispatch::<GemmBf16>::load(dir.path(), &h200(), None);
    assert!(
        d.notes.iter().any(|n| n.contains("template changed")),
        "{:?}",
        d.notes
    );
    assert_eq!(
        d.select(&qkv(1)).source,
        Source::Exact,
        "legal configs stay usable"
    );
    let mut notes = Vec::new();
    let hdr = ArtifactDevice::from_info(&h200(), None, None);
    let fresh = open_artifact(
        &path,
        "gemm_bf16",
        hdr,
        toolchain(),
        &h200(),
        false,
        &mut notes,
    )
    .unwrap();
    assert!(fresh.entries.is_empty());
    assert!(notes.iter().any(|n| n.contains("re-tuned")), "{notes:?}");
}

#[test]
fn a_killed_run_resumes_without_losing_what_it_measured() {
    let dir = tempfile::tempdir().unwrap();
    let problems: Vec<serde_json::Value> = [1, 32, 128, 256]
        .iter()
        .map(|&m| serde_json::to_value(qkv(m)).unwrap())
        .collect();
    let path = Artifact::path(dir.path(), "nvidia-h200", "gemm_bf16");
    // The run saves after each problem; it is killed after the second.
    {
        let mut art = artifact_with(&[]);
        for m in [1, 32] {
            art.upsert(entry(&qkv(m)));
            art.save(&path).unwrap();
        }
    }
    let mut notes = Vec::new();
    let hdr = ArtifactDevice::from_info(&h200(), None, None);
    let resumed = open_artifact(
        &path,
        "gemm_bf16",
        hdr,
        toolchain(),
        &h200(),
        false,
        &mut notes,
    )
    .unwrap();
    assert_eq!(resumed.entries.len(), 2);
    assert_eq!(
        pending(&resumed, &problems, false),
        vec![false, false, true, true]
    );
    assert_eq!(pending(&resumed, &problems, true), vec![true; 4]);
    // No temp files are left beside the artifact.
    let names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["gemm_bf16.json".to_string()]);
}

/// Same keys and strings everywhere, numbers equal to 1e-12 (serde_json's default float parser
/// can be one ulp off, so the text is not compared byte for byte).
fn same_json(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value::*;
    match (a, b) {
        (Object(x), Object(y)) => {
            let kx: Vec<_> = x.keys().collect();
            let ky: Vec<_> = y.keys().collect();
            assert_eq!(kx, ky, "keys differ at {at}");
            for (k, v) in x {
                same_json(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Array(x), Array(y)) => {
            assert_eq!(x.len(), y.len(), "lengths differ at {at}");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                same_json(v, w, &format!("{at}[{i}]"));
            }
        }
        (Number(x), Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                "{x} != {y} at {at}"
            );
        }
        _ => assert_eq!(a, b, "values differ at {at}"),
    }
}

/// The artifact committed under tuned/ (written before `extra_baselines` and the baselines'
/// error and note existed) still loads, and saving it again adds and drops no field: fields
/// added since are optional and omitted when empty.
#[test]
fn the_committed_gemm_bf16_artifact_loads_and_rewrites_unchanged() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuned/nvidia-h200/gemm_bf16.json");
    let art = Artifact::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(art.family, "gemm_bf16");
    assert!(art.entries.len() >= 20, "{}", art.entries.len());
    for e in &art.entries {
        assert!(e.extra_baselines.is_empty());
        let b = e
            .baseline
            .as_ref()
            .expect("every committed entry has its cuBLAS time");
        assert!(b.max_rel_err.is_none() && b.note.is_none());
    }
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("gemm_bf16.json");
    art.save(&again).unwrap();
    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    same_json(&read(&path), &read(&again), "$");
}

/// A gemm_fp8-style entry (a baseline with its error and a note, and a second baseline)
/// round-trips through save and load.
#[test]
fn extra_baselines_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut art = artifact_with(&[qkv(1)]);
    art.entries[0].baseline = Some(kiln_runtime::artifact::Baseline {
        name: "cublaslt-fp8-rowwise (block NOT_SUPPORTED)".into(),
        median_us: 23.1,
        max_rel_err: Some(2e-3),
        note: Some("cublaslt-fp8-block128: NOT_SUPPORTED".into()),
    });
    art.entries[0].extra_baselines = vec![kiln_runtime::artifact::Baseline::timed(
        "cublaslt-fp8-rowwise",
        23.4,
    )];
    let path = write(dir.path(), &art);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("extra_baselines") && text.contains("NOT_SUPPORTED"));
    assert_eq!(Artifact::load(&path).unwrap(), art);
}

/// Per-output errors (mlp_jet's u, grad and second) round-trip on the entry and on its
/// candidates, and an entry written without them (every artifact before them) still loads.
#[test]
fn per_output_errors_round_trip_and_default_to_none() {
    use kiln_runtime::artifact::{CandidateRecord, OutputError};
    let dir = tempfile::tempdir().unwrap();
    let mut art = artifact_with(&[qkv(1)]);
    let outputs = vec![
        OutputError {
            name: "u".into(),
            max_rel_err: 3.1e-6,
            bound: 1e-5,
            fp32_floor: Some(2.0e-7),
        },
        OutputError {
            name: "second".into(),
            max_rel_err: 4.0e-6,
            bound: 1e-4,
            fp32_floor: None,
        },
    ];
    art.entries[0].outputs = outputs.clone();
    art.entries[0].candidates = vec![CandidateRecord {
        config: serde_json::json!({"rows": 4}),
        outcome: "ok".into(),
        reason: None,
        median_us: Some(10.0),
        max_rel_err: Some(4.0e-6),
        registers: Some(96),
        outputs,
    }];
    let path = write(dir.path(), &art);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"fp32_floor\"") && text.contains("\"outputs\""));
    assert_eq!(Artifact::load(&path).unwrap(), art);

    let plain = artifact_with(&[qkv(1)]);
    let path = write(dir.path(), &plain);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("\"outputs\""),
        "empty per-output errors are left out"
    );
    assert!(Artifact::load(&path).unwrap().entries[0].outputs.is_empty());
}

mod driver {
    //! The shared tuning loop (`tune_problems`) with a tuner that needs no GPU.

    use super::*;
    use kiln_runtime::RuntimeError;
    use kiln_tuner::tune::{tune_problems, ProblemTuner, TuneOptions, Tuned};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// Tunes every problem instantly except M = 128, which fails; after each problem it looks
    /// at the artifact on disk.
    struct Fake {
        path: PathBuf,
        seeds: Vec<u64>,
        on_disk_before: Vec<usize>,
    }

    impl ProblemTuner for Fake {
        type Problem = GemmBf16Problem;
        fn describe(&self, p: &GemmBf16Problem) -> String {
            format!("m={}", p.m)
        }
        fn tune(
            &mut self,
            _bench: &mut kiln_runtime::measure::Bench,
            _p: &GemmBf16Problem,
            _seed: u64,
            _opts: &TuneOptions,
        ) -> kiln_runtime::Result<Tuned> {
            unreachable!("the tests call tune_problems with their own closure")
        }
        fn line(&self, p: &GemmBf16Problem, _e: &Entry) -> String {
            format!("tuned m={}", p.m)
        }
    }

    fn opts(force: bool, budget: Option<Duration>) -> TuneOptions {
        TuneOptions {
            force,
            budget,
            tuned_root: PathBuf::new(),
            search: Default::default(),
            baseline_reps: 1,
            seed: 100,
            progress: false,
        }
    }

    fn run(
        art: &mut Artifact,
        path: &std::path::Path,
        problems: &[GemmBf16Problem],
        o: &TuneOptions,
        t0: Instant,
    ) -> (Vec<kiln_tuner::tune::ProblemReport>, Fake) {
        let mut fake = Fake {
            path: path.to_path_buf(),
            seeds: Vec::new(),
            on_disk_before: Vec::new(),
        };
        let bar = indicatif::ProgressBar::hidden();
        let reports = tune_problems(art, path, problems, o, t0, &bar, &mut fake, |f, p, seed| {
            f.seeds.push(seed);
            f.on_disk_before.push(
                Artifact::load(&f.path)
                    .map(|a| a.entries.len())
                    .unwrap_or(0),
            );
            if p.m == 128 {
                return Err(RuntimeError::Baseline {
                    name: "fake".into(),
                    reason: "planted failure".into(),
                });
            }
            Ok(Tuned {
                entry: entry(p),
                notes: if p.m == 256 {
                    vec!["a note".into()]
                } else {
                    Vec::new()
                },
            })
        })
        .unwrap();
        (reports, fake)
    }

    #[test]
    fn skips_tuned_problems_saves_after_each_and_records_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = Artifact::path(dir.path(), "nvidia-h200", "gemm_bf16");
        let mut art = artifact_with(&[qkv(1)]);
        art.save(&path).unwrap();
        let problems = [qkv(1), qkv(32), qkv(128), qkv(256)];
        let (reports, fake) = run(
            &mut art,
            &path,
            &problems,
            &opts(false, None),
            Instant::now(),
        );
        let status: Vec<&str> = reports.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(status, ["skipped", "tuned", "failed", "tuned"]);
        assert!(reports[2]
            .reason
            .as_deref()
            .unwrap()
            .contains("planted failure"));
        assert_eq!(reports[3].notes, vec!["a note".to_string()]);
        // Seeds follow the problem's index; each problem saw the ones before it saved.
        assert_eq!(fake.seeds, vec![101, 102, 103]);
        assert_eq!(fake.on_disk_before, vec![1, 2, 2]);
        let saved = Artifact::load(&path).unwrap();
        assert_eq!(saved.entries.len(), 3);
        assert!(saved
            .find(&serde_json::to_value(qkv(128)).unwrap())
            .is_none());

        // A re-run resumes: only the failed problem is tried again.
        let (reports, fake) = run(
            &mut art,
            &path,
            &problems,
            &opts(false, None),
            Instant::now(),
        );
        let status: Vec<&str> = reports.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(status, ["skipped", "skipped", "failed", "skipped"]);
        assert_eq!(fake.seeds, vec![102]);

        // --force re-tunes everything.
        let (reports, _) = run(
            &mut art,
            &path,
            &problems,
            &opts(true, None),
            Instant::now(),
        );
        assert_eq!(reports.iter().filter(|r| r.status == "tuned").count(), 3);
        assert_eq!(reports.iter().filter(|r| r.status == "skipped").count(), 0);
    }

    #[test]
    fn an_exhausted_budget_starts_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = Artifact::path(dir.path(), "nvidia-h200", "gemm_bf16");
        let mut art = artifact_with(&[qkv(1)]);
        let t0 = Instant::now()
            .checked_sub(Duration::from_secs(2))
            .unwrap_or_else(Instant::now);
        let (reports, fake) = run(
            &mut art,
            &path,
            &[qkv(1), qkv(32)],
            &opts(false, Some(Duration::from_millis(1))),
            t0,
        );
        let status: Vec<&str> = reports.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(status, ["skipped", "out_of_budget"]);
        assert!(fake.seeds.is_empty());
        assert!(!path.exists(), "nothing tuned, nothing written");
    }
}

/// The gemm_fp8 artifact committed from the H200 loads; every entry's baseline is cuBLASLt with
/// block scales, or the row-wise one named as standing in for it, with the other kept beside.
#[test]
fn the_committed_gemm_fp8_artifact_loads_with_its_baselines() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuned/nvidia-h200/gemm_fp8.json");
    if !path.exists() {
        eprintln!("skipped: no committed gemm_fp8 artifact");
        return;
    }
    let art = Artifact::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(art.family, "gemm_fp8");
    for e in &art.entries {
        let b = e.baseline.as_ref().expect("a baseline");
        match b.name.as_str() {
            "cublaslt-fp8-block128" => {
                assert!(e
                    .extra_baselines
                    .iter()
                    .any(|x| x.name == "cublaslt-fp8-rowwise"))
            }
            "cublaslt-fp8-rowwise (block NOT_SUPPORTED)" => {
                assert!(b.note.as_deref().unwrap_or("").contains("NOT_SUPPORTED"))
            }
            other => panic!("{}: unexpected baseline {other}", e.problem),
        }
        assert!(b.max_rel_err.is_some_and(|x| x <= 1e-2), "{}", e.problem);
    }
}

/// An `mfa_decode` artifact (as `kiln tune --family mfa_decode` writes it, no baseline) is
/// served by the generic dispatch, and its entries describe as `kiln export` reads them.
#[test]
fn an_mfa_decode_artifact_dispatches_and_describes() {
    use kiln_codegen::families::mfa_decode::{KvDtype, MfaDecode, MfaDecodeProblem};
    let dir = tempfile::tempdir().unwrap();
    let mut art = Artifact::new(
        MfaDecode::NAME,
        ArtifactDevice::from_info(&h200(), None, None),
        ArtifactToolchain {
            template_sha256: kiln_codegen::registry::template_sha256(MfaDecode::TEMPLATE),
            ..toolchain()
        },
    );
    let tuned = MfaDecodeProblem::step3(128, 4096, KvDtype::Bf16, 0);
    let mut config = MfaDecode::default_config(&tuned);
    config.split_tokens *= 2;
    art.upsert(Entry {
        problem: serde_json::to_value(tuned).unwrap(),
        config: serde_json::to_value(&config).unwrap(),
        ..entry(&qkv(1))
    });
    art.save(&Artifact::path(dir.path(), "nvidia-h200", MfaDecode::NAME))
        .unwrap();

    let d = Dispatch::<MfaDecode>::load(dir.path(), &h200(), Some("13.0"));
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    let s = d.select(&tuned);
    assert_eq!((s.source, s.config), (Source::Exact, config.clone()));
    // A nearby batch takes the bucket; another dtype is not served by it.
    let near = MfaDecodeProblem::step3(96, 4096, KvDtype::Bf16, 0);
    assert!(matches!(d.select(&near).source, Source::Bucket { .. }));
    let fp8 = MfaDecodeProblem::step3(128, 4096, KvDtype::Fp8e4m3, 0);
    assert!(matches!(d.select(&fp8).source, Source::Default { .. }));

    let fam = kiln_codegen::find_family(MfaDecode::NAME).unwrap();
    let e = &art.entries[0];
    let desc = fam
        .describe(&e.problem, &e.config, &kiln_codegen::DeviceLimits::HOPPER)
        .unwrap();
    assert_eq!(desc.entry, MfaDecode::entry(&tuned, &config));
}

/// The PINN artifacts committed from the H200 are current (their template hash is the
/// template's now, so dispatch serves them rather than calling them stale) and serve every
/// target net exactly, with a legal config validated within the families' tolerances.
#[test]
fn the_committed_pinn_artifacts_are_current_and_serve_the_target_nets() {
    use kiln_codegen::families::mlp_jet::{self, MlpJet};
    use kiln_codegen::families::mlp_jet_backward::{self, MlpJetBackward};
    use kiln_runtime::artifact::Staleness;

    fn check<F: Family>(targets: &[F::Problem], tol: f64) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuned");
        let path = Artifact::path(&root, "nvidia-h200", F::NAME);
        let art = Artifact::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let template = kiln_codegen::registry::template_sha256(F::TEMPLATE);
        let stale = art.staleness(&h200(), &template, None);
        assert!(
            !stale
                .iter()
                .any(|s| matches!(s, Staleness::TemplateChanged)),
            "{}: {stale:?}: re-run `kiln tune --family {} --preset pinn-...` on the H200",
            path.display(),
            F::NAME
        );
        let d = Dispatch::<F>::from_artifact(art.clone(), &h200());
        for p in targets {
            let s = d.select(p);
            assert_eq!(s.source, Source::Exact, "{}: {p:?}", F::NAME);
            let e = art.find(&serde_json::to_value(p).unwrap()).unwrap();
            assert!(
                e.max_rel_err <= tol,
                "{}: {p:?}: {}",
                F::NAME,
                e.max_rel_err
            );
            assert!(e.baseline.is_none() && e.median_us > 0.0);
        }
    }
    check::<MlpJet>(&mlp_jet::pinn_targets(), 1e-4);
    check::<MlpJetBackward>(&mlp_jet_backward::pinn_targets(), 1e-4);
}
