//! The `kiln` binary's CPU-side behaviour: listing, errors without NVRTC or a GPU.

use std::process::Command;

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn list_shows_gemm_bf16_with_at_least_20_legal_configs() {
    let out = kiln().args(["list", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["family"] == "gemm_bf16")
        .expect("gemm_bf16 listed");
    assert!(g["legal"].as_u64().unwrap() >= 20, "{g}");
}

#[test]
fn info_works_without_a_gpu() {
    let out = kiln().args(["info", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if v["device"]["ok"] == false {
        let msg = v["device"]["error"].as_str().unwrap();
        assert!(msg.contains("GPU") || msg.contains("device"), "{msg}");
    }
}

/// A copy of the binary outside the checkout, with no CUDA variables: NVRTC
/// cannot be found, and the error says how to fix it.
#[test]
fn compile_without_nvrtc_says_to_run_setup() {
    if std::path::Path::new("/usr/local/cuda/lib64/libnvrtc.so.13").exists() {
        eprintln!("skipped: this machine has a system toolkit");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("kiln");
    std::fs::copy(env!("CARGO_BIN_EXE_kiln"), &exe).unwrap();
    let out = Command::new(&exe)
        .args(["compile", "--all", "--limit", "1"])
        .current_dir(dir.path())
        .env_remove("KILN_CUDA_ROOT")
        .env_remove("CUDA_HOME")
        .env_remove("CUDA_PATH")
        .env("LD_LIBRARY_PATH", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NVRTC was not found") && err.contains("./setup.sh"),
        "{err}"
    );
}

#[test]
fn unknown_family_is_a_clear_error() {
    let out = kiln()
        .args(["compile", "--family", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown kernel family `nope`"), "{err}");
}
