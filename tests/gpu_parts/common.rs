//! Helpers every GPU test shares: the input seed, the JSON report, opening
//! the device and the compiler, and the norm-wise error.

use kiln_codegen::Compiler;
use kiln_runtime::Device;

pub use kiln_tuner::gemm_bf16::rel_err;

/// KILN_SEED, else a fresh time-based seed (each test prints the one it used).
pub fn seed() -> u64 {
    std::env::var("KILN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Write `value` as `<KILN_GPU_REPORT>/<name>.json` when that folder is set.
pub fn report(name: &str, value: &serde_json::Value) {
    if let Some(dir) = std::env::var_os("KILN_GPU_REPORT") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec_pretty(value).unwrap(),
        )
        .unwrap();
    }
}

/// Device 0 and the NVRTC compiler, or a panic that says why.
pub fn open() -> (Device, Compiler) {
    let dev = Device::open(0).unwrap_or_else(|e| panic!("{e}"));
    let compiler = Compiler::new().unwrap_or_else(|e| panic!("{e}"));
    (dev, compiler)
}

/// Fails the test on the first recorded failure (after the report is written), saying how
/// many there were.
pub fn assert_no_failures(failures: &[serde_json::Value]) {
    assert!(
        failures.is_empty(),
        "{} failures, first: {}",
        failures.len(),
        failures[0]
    );
}

/// Tuning options for the end-to-end tune tests: a small shortlist and short rounds into
/// `root`, resumable (no `--force`), no budget.
pub fn quick_tune_options(root: &std::path::Path) -> kiln_tuner::tune::TuneOptions {
    kiln_tuner::tune::TuneOptions {
        force: false,
        budget: None,
        tuned_root: root.to_path_buf(),
        search: kiln_tuner::search::SearchOptions {
            shortlist: 8,
            exhaustive_max: 8,
            per_class_min: 2,
            round_reps: vec![3, 5],
            ..Default::default()
        },
        baseline_reps: 10,
        seed: seed(),
        progress: false,
    }
}
