//! `kiln`: the command line. Thin: every command is a few calls into the crates.

mod cmd_compile;
mod cmd_info;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Kernel compiler and autotuner for NVIDIA Hopper GPUs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { json } => cmd_info::info(json),
        Command::List { json } => cmd_info::list(json),
        Command::Compile { family, all: _, arch, limit, json } => cmd_compile::compile(family, &arch, limit, json),
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
