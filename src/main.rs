//! `kiln`: the command line. Thin: every command is a few calls into the crates.

mod cmd_bench;
mod cmd_compile;
mod cmd_export;
mod cmd_info;
mod cmd_tune;
mod table;

use std::path::PathBuf;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kernel compiler and autotuner for NVIDIA Hopper GPUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Never compile: any compile-cache miss is an error (same as KILN_NO_COMPILE=1);
    /// proves a deployment runs from prebuilt kernels only.
    #[arg(long, global = true)]
    no_compile: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Device and toolchain: GPU, NVRTC version and where it was found, headers, cache folder.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Kernel families and the size of their search spaces.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Render and compile kernel variants (no GPU needed); exits non-zero on any failure.
    Compile {
        /// One family (see `kiln list`).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        family: Option<String>,
        /// Every family.
        #[arg(long)]
        all: bool,
        /// Target architecture for NVRTC.
        #[arg(long, default_value = "sm_90a")]
        arch: String,
        /// Compile at most N variants per family.
        #[arg(long)]
        limit: Option<usize>,
        /// Only variants whose entry name contains this text.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Autotune a family on this GPU and write tuned/<gpu>/<family>.json (resumable).
    Tune {
        /// gemm_bf16 (the default with --problems), gemm_fp8, mfa_decode, mlp_jet or
        /// mlp_jet_backward; a preset names its own.
        #[arg(long)]
        family: Option<String>,
        /// JSON file: an array of problems (e.g. [{"m":1,"n":48,"k":7168}]).
        #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
        problems: Option<PathBuf>,
        /// A named problem list: step3-bf16 (gemm_bf16), step3-fp8-decode, step3-fp8-ffn,
        /// step3-fp8 (gemm_fp8), step3-mfa (mfa_decode), pinn-jets (mlp_jet), pinn-train
        /// (mlp_jet_backward).
        #[arg(long)]
        preset: Option<String>,
        /// Stop starting new problems after this long (e.g. 5m).
        #[arg(long)]
        budget: Option<String>,
        /// Re-tune problems already in the artifact (and replace an unreadable or foreign one).
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "tuned")]
        tuned_dir: PathBuf,
        /// Write the full report (every candidate's outcome) here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Seed for the random validation inputs (default: time-based).
        #[arg(long)]
        seed: Option<u64>,
        /// Candidates kept from the analytical ranking for timing (default 32; gemm_fp8,
        /// mlp_jet and mlp_jet_backward: every legal config); a number at least the size of the legal space times every legal
        /// config (slower, and immune to a wrong estimate).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        shortlist: Option<u64>,
    },
    /// Time a family's kernels against their baselines, side by side; optionally compare with
    /// an earlier run and fail on a regression.
    ///
    /// gemm_bf16 / gemm_fp8: every problem of the tuned artifact against cuBLAS / cuBLASLt in
    /// the same process. mfa_decode: every problem of its tuned artifact, KV TB/s and % of the
    /// copy ceiling. mlp_jet / mlp_jet_backward: the PINN target nets with the configs
    /// dispatch serves (tuned artifact, else the family default), validated. The last three take their baselines from a Python
    /// peer's JSON (--peers); without it their rows have baseline "none".
    Bench {
        /// gemm_bf16 (the default), gemm_fp8, mfa_decode, mlp_jet or mlp_jet_backward.
        #[arg(long)]
        family: Option<String>,
        #[arg(long, default_value = "tuned")]
        tuned_dir: PathBuf,
        /// Write the results here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// An earlier `--json` file; exit non-zero when a kernel got slower past --threshold.
        #[arg(long)]
        compare: Option<PathBuf>,
        #[arg(long, default_value = "5%")]
        threshold: String,
        /// Use results from this file instead of measuring (no GPU needed).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Timed runs per kernel.
        #[arg(long, default_value_t = 50)]
        reps: usize,
        /// Also time back-to-back launches over inputs rotated past 3x L2
        /// (steady state of a decode step), kiln and baseline (gemm_bf16, gemm_fp8).
        #[arg(long)]
        steady: bool,
        /// Baselines from a Python peer's JSON, written earlier in the same GPU call:
        /// benches/peers/pinn_torch.py (mlp_jet, mlp_jet_backward) or benches/peers/mfa_sdpa.py
        /// (mfa_decode). Its fastest variant per problem is the baseline, the others are kept.
        /// With --from, fills the recorded rows' baselines.
        #[arg(long)]
        peers: Option<PathBuf>,
        /// mlp_jet, mlp_jet_backward: also time every legal config and report the fastest
        /// beside the served one.
        #[arg(long, conflicts_with = "from")]
        candidates: bool,
        /// With --compare: report a row past --threshold at once. By default such a row is
        /// measured once more (the whole bench) and reported only if it is past the threshold
        /// again.
        #[arg(long)]
        no_confirm: bool,
    },
    /// Write cubins + manifest.json for every tuned kernel (NVRTC needed, no GPU).
    Export {
        dir: PathBuf,
        #[arg(long, default_value = "tuned")]
        tuned_dir: PathBuf,
        /// GPU slug under tuned/ (default: this GPU, else the only one there).
        #[arg(long)]
        gpu: Option<String>,
        #[arg(long, default_value = "sm_90a")]
        arch: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.no_compile {
        // Before any thread starts: the compiler reads it when it is created.
        std::env::set_var("KILN_NO_COMPILE", "1");
    }
    let result = match cli.command {
        Command::Info { json } => cmd_info::info(json),
        Command::List { json } => cmd_info::list(json),
        Command::Compile {
            family,
            all: _,
            arch,
            limit,
            filter,
            json,
        } => cmd_compile::compile(family, &arch, limit, filter.as_deref(), json),
        Command::Tune {
            family,
            problems,
            preset,
            budget,
            force,
            tuned_dir,
            json,
            seed,
            shortlist,
        } => cmd_tune::tune(
            family,
            problems,
            preset,
            budget,
            force,
            tuned_dir,
            json,
            seed,
            shortlist.map(|n| n as usize),
        ),
        Command::Bench {
            family,
            tuned_dir,
            json,
            compare,
            threshold,
            from,
            reps,
            steady,
            peers,
            candidates,
            no_confirm,
        } => cmd_bench::bench(cmd_bench::BenchArgs {
            family,
            tuned_dir,
            json,
            compare,
            threshold,
            from,
            reps,
            steady,
            peers,
            candidates,
            no_confirm,
        }),
        Command::Export {
            dir,
            tuned_dir,
            gpu,
            arch,
        } => cmd_export::export(dir, tuned_dir, gpu, &arch),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Any error a command can end with; printed with `Display`.
pub type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;
