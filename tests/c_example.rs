//! The C example (examples/c) builds against include/kiln.h and libkiln_runtime.so with
//! `cc -Wall -Wextra -Werror`, and the binary it makes loads both libraries and reaches kiln
//! through the C ABI (no GPU needed: the runs stop before any kernel is launched).

use kiln_codegen::families::gemm_bf16::GemmBf16;
use kiln_codegen::Family;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Build libkiln_runtime.so (the workspace build of kiln-runtime's rlib does not necessarily
/// produce its cdylib) into this test's own profile folder and return that folder. Quick when
/// it is already built.
fn runtime_lib_dir() -> PathBuf {
    // target/<profile>/deps/c_example-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf();
    let profile = match profile_dir.file_name().and_then(|s| s.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("unexpected test location {}", exe.display()),
    };
    let target_dir = profile_dir.parent().unwrap();
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "kiln-runtime",
            "--lib",
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo build -p kiln-runtime failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        profile_dir.join("libkiln_runtime.so").is_file(),
        "no libkiln_runtime.so in {}",
        profile_dir.display()
    );
    profile_dir
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn c_example_builds_and_reaches_kiln() {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("skipped: no C compiler (cc) on this machine");
        return;
    }
    let lib_dir = runtime_lib_dir();
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("bin").join("gemm_bf16");
    let out = Command::new("bash")
        .arg(root().join("examples/c/build.sh"))
        .arg(&exe)
        .env("KILN_LIB_DIR", &lib_dir)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "examples/c/build.sh failed\n{}",
        text(&out)
    );
    assert!(exe.is_file() && exe.with_file_name("libkiln_runtime.so").is_file());

    // Both libraries load (rpath $ORIGIN + the CUDA runtime's folder) and the usage is printed.
    let out = Command::new(&exe).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("usage:"),
        "{}",
        text(&out)
    );

    // kiln_open's failure and kiln_last_error come back through the C ABI.
    let missing = tmp.path().join("no-export");
    let out = Command::new(&exe).arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kiln_open failed (status 5)") && err.contains("manifest.json"),
        "{}",
        text(&out)
    );

    // A readable manifest opens; the run then stops at the GPU (none here) or at the fake cubin.
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    write_fake_export(&export);
    let out = Command::new(&exe).arg(&export).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("kiln_open failed") && err.contains("failed"),
        "{}",
        text(&out)
    );
}

/// A manifest with one gemm_bf16 kernel for the example's default problem, whose cubin is not one.
fn write_fake_export(dir: &Path) {
    let cubin = b"not a cubin";
    std::fs::write(dir.join("k.cubin"), cubin).unwrap();
    let sha = kiln_codegen::cache::sha256_hex(cubin);
    // The family's arguments, as `kiln export` writes them.
    let args: Vec<serde_json::Value> = <GemmBf16 as Family>::args()
        .iter()
        .map(|a| serde_json::json!({"name": a.name, "c_type": a.c_type}))
        .collect();
    let manifest = serde_json::json!({
        "schema": kiln_runtime::manifest::MANIFEST_SCHEMA,
        "kiln": "test", "nvrtc": "test", "arch": "sm_90a", "gpu": "test",
        "kernels": [{
            "family": "gemm_bf16",
            "problem": {"m": 1, "n": 2560, "k": 7168},
            "config": {},
            "entry": "kiln_gemm_bf16_fake",
            "cubin": "k.cubin",
            "cubin_sha256": sha,
            "args": args,
            "geometry": {"grid": [20, 1, 1], "block": [64, 1, 1], "dynamic_smem_bytes": 0, "cluster": [1, 1, 1]},
            "scratch": [{"arg": "workspace", "bytes": 0, "zero_init": false}, {"arg": "counters", "bytes": 0, "zero_init": true}],
            "source": "default"
        }]
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}
