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
    // A test thread that forks while the copy's write handle is open gives its child that
    // handle, and exec then fails with ETXTBSY until the child execs in turn: retry briefly.
    let run = || {
        Command::new(&exe)
            .args(["compile", "--all", "--limit", "1"])
            .current_dir(dir.path())
            .env_remove("KILN_CUDA_ROOT")
            .env_remove("CUDA_HOME")
            .env_remove("CUDA_PATH")
            .env("LD_LIBRARY_PATH", "")
            .output()
    };
    let mut out = run();
    for _ in 0..50 {
        match &out {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                out = run();
            }
            _ => break,
        }
    }
    let out = out.unwrap();
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

#[test]
fn tuning_gemm_fp8_without_a_gpu_is_a_typed_error() {
    if kiln_runtime::driver_present() {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    for args in [
        &[
            "tune",
            "--family",
            "gemm_fp8",
            "--preset",
            "step3-fp8-decode",
        ][..],
        &["tune", "--preset", "step3-fp8"][..],
        &["tune", "--family", "mfa_decode", "--preset", "step3-mfa"][..],
        &["bench", "--family", "gemm_fp8"][..],
        &["bench", "--family", "mfa_decode"][..],
        &["bench", "--family", "mlp_jet", "--candidates"][..],
        &["bench", "--family", "mlp_jet_backward"][..],
    ] {
        let out = kiln().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no CUDA driver") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn presets_and_families_must_agree() {
    let out = kiln()
        .args(["tune", "--family", "gemm_bf16", "--preset", "step3-fp8-ffn"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("preset is for family gemm_fp8"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("p.json");
    std::fs::write(&problems, r#"[{"m": 1, "n": 48, "k": 7168}]"#).unwrap();
    let out = kiln()
        .args(["tune", "--family", "small_mlp", "--problems"])
        .arg(&problems)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no tuner yet"), "{err}");
    // mfa_decode has one: a GEMM problem is refused with its schema.
    let out = kiln()
        .args(["tune", "--family", "mfa_decode", "--problems"])
        .arg(&problems)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mfa_decode problems are"), "{err}");
    std::fs::write(&problems, r#"[{"m": 1, "n": 48}]"#).unwrap();
    let out = kiln()
        .args(["tune", "--family", "gemm_fp8", "--problems"])
        .arg(&problems)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gemm_fp8 problems are"), "{err}");
    // The PINN families have tuners: a GEMM problem is refused with their schema, and their
    // presets name their own family.
    for (family, schema) in [
        ("mlp_jet", "mlp_jet problems are"),
        ("mlp_jet_backward", "mlp_jet_backward problems are"),
    ] {
        let out = kiln()
            .args(["tune", "--family", family, "--problems"])
            .arg(&problems)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(schema), "{err}");
    }
    let out = kiln()
        .args(["tune", "--family", "mlp_jet", "--preset", "pinn-train"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("preset is for family mlp_jet_backward"),
        "{err}"
    );
}

#[test]
fn a_zero_shortlist_is_refused_before_anything_runs() {
    let out = kiln()
        .args(["tune", "--preset", "step3-mfa", "--shortlist", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--shortlist") && !err.contains("panicked"),
        "{err}"
    );
}

/// `kiln bench --from` on gemm_fp8 rows (a fallback baseline, a row-wise time beside a block
/// one): the table names each row's baseline, and the regression gate works as for gemm_bf16.
#[test]
fn bench_gates_gemm_fp8_rows_without_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let row = |m: u32, us: f64, baseline: &str, other: serde_json::Value| {
        serde_json::json!({
            "family": "gemm_fp8", "problem": {"m": m, "n": 2560, "k": 7168}, "config": null,
            "kiln_us": us, "kiln_p20_us": us, "kiln_p80_us": us,
            "baseline": baseline, "baseline_us": 20.0, "speedup": 20.0 / us,
            "pct_of_roofline": 40.0, "weight_tb_s": 1.5, "tflops": 1.0, "max_rel_err": 2e-3,
            "other_baselines": other,
        })
    };
    let file = |slow: f64| {
        serde_json::json!({
            "schema": 1, "device": null, "method": "test",
            "rows": [
                row(1, 12.0 * slow, "cublaslt-fp8-rowwise (block NOT_SUPPORTED)", serde_json::json!([])),
                row(32, 18.0, "cublaslt-fp8-block128",
                    serde_json::json!([{"name": "cublaslt-fp8-rowwise", "median_us": 23.4}])),
            ]
        })
    };
    let old = dir.path().join("old.json");
    let slow = dir.path().join("slow.json");
    std::fs::write(&old, serde_json::to_vec(&file(1.0)).unwrap()).unwrap();
    std::fs::write(&slow, serde_json::to_vec(&file(1.1)).unwrap()).unwrap();
    let out = kiln()
        .args(["bench", "--family", "gemm_fp8", "--from"])
        .arg(&old)
        .arg("--compare")
        .arg(&old)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("block NOT_SUPPORTED") && stdout.contains("cublaslt-fp8-rowwise"),
        "{stdout}"
    );
    let out = kiln()
        .args(["bench", "--family", "gemm_fp8", "--from"])
        .arg(&slow)
        .arg("--compare")
        .arg(&old)
        .args(["--threshold", "5%"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("REGRESSION gemm_fp8"));
}

/// A `kiln bench` of mlp_jet rows as `--json` writes them, without baselines.
fn mlp_jet_rows(slow: f64) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = [(1, 64, 1u32 << 20, 2368.7), (2, 128, 1 << 18, 2624.6)]
        .iter()
        .map(|&(d, width, points, us)| {
            let us = us * slow;
            serde_json::json!({
                "family": "mlp_jet",
                "problem": {"d": d, "width": width, "depth": 4, "p": 1, "points": points,
                            "streams": "value_grad_laplacian"},
                "config": null, "kiln_us": us, "kiln_p20_us": us, "kiln_p80_us": us,
                "baseline": "none", "baseline_us": null, "speedup": null,
                "pct_of_roofline": null, "tflops": 33.0, "max_rel_err": null,
            })
        })
        .collect();
    serde_json::json!({"schema": 2, "device": {"name": "NVIDIA H200"}, "method": "test",
                       "rows": rows})
}

/// `--peers` on recorded rows: the committed PyTorch autograd run fills each row's baseline
/// with its faster variant (TF32 on for these two nets) and keeps the other; the regression
/// gate works on mlp_jet rows as on the GEMM rows.
#[test]
fn bench_fills_mlp_jet_baselines_from_the_pinn_peer_and_gates_without_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, slow, out) = (
        dir.path().join("rows.json"),
        dir.path().join("slow.json"),
        dir.path().join("out.json"),
    );
    std::fs::write(&rows, serde_json::to_vec(&mlp_jet_rows(1.0)).unwrap()).unwrap();
    std::fs::write(&slow, serde_json::to_vec(&mlp_jet_rows(1.1)).unwrap()).unwrap();
    let peers = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/results/2026-11-29-pinn_torch.json"
    );
    let o = kiln()
        .args(["bench", "--from"])
        .arg(&rows)
        .args(["--peers", peers, "--json"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("torch-autograd-tf32"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let r = &v["rows"][0];
    assert_eq!(r["baseline"], "torch-autograd-tf32");
    // pinn_torch.json's d=1 net: TF32 on 8180.77 us, off 9602.69 us.
    let base = r["baseline_us"].as_f64().unwrap();
    assert!((base - 8180.768).abs() < 0.01, "{r}");
    assert!(
        (r["speedup"].as_f64().unwrap() - base / 2368.7).abs() < 1e-9,
        "{r}"
    );
    assert_eq!(r["other_baselines"][0]["name"], "torch-autograd-fp32");
    assert_eq!(v["peers"]["script"], "benches/peers/pinn_torch.py");
    // Gate: the filled file against itself passes, a 10% slower one fails.
    let gate = |new: &std::path::Path| {
        kiln()
            .args(["bench", "--from"])
            .arg(new)
            .arg("--compare")
            .arg(&out)
            .args(["--threshold", "5%"])
            .output()
            .unwrap()
    };
    assert!(gate(&out).status.success());
    let o = gate(&slow);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("REGRESSION mlp_jet"));
}

/// Bad `--peers` files and families without a driver fail with a message, before any GPU
/// work (so also on this machine), and never with a panic.
#[test]
fn bench_refuses_bad_peers_and_families_without_a_driver() {
    let dir = tempfile::tempdir().unwrap();
    let sdpa = dir.path().join("sdpa.json");
    std::fs::write(
        &sdpa,
        r#"{"rows": [{"batch": 1, "context": 1024, "heads": 64, "head_dim": 256,
                      "kv_dtype": "bf16", "backend": "flash", "us": NaN}]}"#,
    )
    .unwrap();
    let pinn = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/results/2026-11-29-pinn_torch.json"
    );
    let missing = dir.path().join("missing.json");
    let cases: [(Vec<&std::ffi::OsStr>, &str); 5] = [
        (
            vec![
                "--family".as_ref(),
                "mlp_jet".as_ref(),
                "--peers".as_ref(),
                sdpa.as_os_str(),
            ],
            "not the output of benches/peers/pinn_torch.py",
        ),
        (
            vec![
                "--family".as_ref(),
                "mlp_jet".as_ref(),
                "--peers".as_ref(),
                missing.as_os_str(),
            ],
            "missing.json",
        ),
        // That file predates the training-step rows.
        (
            vec![
                "--family".as_ref(),
                "mlp_jet_backward".as_ref(),
                "--peers".as_ref(),
                pinn.as_ref(),
            ],
            "no timed row for any of the 3 mlp_jet_backward problem",
        ),
        (
            vec![
                "--family".as_ref(),
                "gemm_fp8".as_ref(),
                "--peers".as_ref(),
                pinn.as_ref(),
            ],
            "gemm_fp8 has no Python peer",
        ),
        (
            vec!["--family".as_ref(), "small_mlp".as_ref()],
            "small_mlp has no `kiln bench` driver",
        ),
    ];
    for (args, want) in cases {
        let o = kiln().arg("bench").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}
