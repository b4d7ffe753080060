//! `cargo xtask`: the build, test and benchmark driver of the cellvisor workspace.
//!
//! - `cargo xtask test [--fuzz-seconds N]` runs everything CI checks, failing at the first step
//!   that fails: formatting, clippy, the host tests, a bare-metal build of every library crate
//!   under `crates/` and `arch/`, `cargo package` of the publishable ones, and a fuzz smoke run
//!   of every target in `crates/*/fuzz` and `arch/*/fuzz`.
//! - `cargo xtask fuzz <crate-dir> <target> [--seconds N]` runs one fuzz target.
//! - `cargo xtask bench` runs the bench targets of every library crate that has some.
//!
//! Crates are discovered with `cargo metadata`, so new ones are picked up without changes here.
//! Fuzzing uses `cargo fuzz` on the pinned stable toolchain with `RUSTC_BOOTSTRAP=1`, which
//! unlocks the `-Z` flags cargo-fuzz passes to rustc; no nightly toolchain is needed.

mod cargo;
mod workspace;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use crate::cargo::Cargo;
use crate::workspace::Workspace;

/// Bare-metal targets every library crate must build for.
const BARE_METAL_TARGETS: [&str; 2] = ["aarch64-unknown-none", "x86_64-unknown-none"];

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, test and benchmark the cellvisor workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run every check CI runs: fmt, clippy, tests, bare-metal builds, cargo package, fuzz smoke.
    Test {
        /// Seconds to fuzz each fuzz target (0 skips fuzzing).
        #[arg(long, value_name = "N", default_value_t = 60)]
        fuzz_seconds: u64,
    },
    /// Run one fuzz target, e.g. `cargo xtask fuzz paging <target>`.
    Fuzz {
        /// Directory name of the crate under crates/ or arch/ (e.g. `paging`).
        crate_dir: String,
        /// Fuzz target, as listed by `cargo fuzz list` in that crate's fuzz/ directory.
        target: String,
        /// Seconds to fuzz.
        #[arg(long, value_name = "N", default_value_t = 600)]
        seconds: u64,
    },
    /// Run the bench targets of every library crate that has some.
    Bench,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let workspace = Workspace::load()?;
    // Every path below is relative to the workspace root.
    env::set_current_dir(&workspace.root)
        .with_context(|| format!("cannot enter {}", workspace.root.display()))?;
    match task {
        Task::Test { fuzz_seconds } => test(&workspace, fuzz_seconds),
        Task::Fuzz {
            crate_dir,
            target,
            seconds,
        } => fuzz(&workspace, &crate_dir, &target, seconds),
        Task::Bench => bench(&workspace),
    }
}

fn test(workspace: &Workspace, fuzz_seconds: u64) -> Result<()> {
    let fuzz_dirs = if fuzz_seconds > 0 {
        workspace.fuzz_dirs()?
    } else {
        Vec::new()
    };

    // Check for every tool first, so that a missing one is reported before minutes of work.
    require(
        &Cargo::new(["fmt", "--version"]),
        "rustfmt is not installed: run `rustup component add rustfmt`",
    )?;
    require(
        &Cargo::new(["clippy", "--version"]),
        "clippy is not installed: run `rustup component add clippy`",
    )?;
    for target in BARE_METAL_TARGETS {
        require_target(target)?;
    }
    if !fuzz_dirs.is_empty() {
        require_cargo_fuzz()?;
    }

    Cargo::new(["fmt", "--all", "--check"]).run()?;
    Cargo::new(["clippy", "--workspace", "--all-targets", "--all-features"])
        .args(["--", "-D", "warnings"])
        .run()?;
    Cargo::new(["test", "--workspace", "--all-features"]).run()?;

    if workspace.libraries.is_empty() {
        println!("==> no library crate in crates/ or arch/: bare-metal builds skipped");
    }
    for target in BARE_METAL_TARGETS {
        for library in &workspace.libraries {
            Cargo::new(["build", "-p", &library.name, "--target", target]).run()?;
        }
    }

    let publishable: Vec<&str> = workspace
        .libraries
        .iter()
        .filter(|l| l.publishable)
        .map(|l| l.name.as_str())
        .collect();
    if publishable.is_empty() {
        println!("==> no publishable library crate: cargo package skipped");
    } else {
        // One invocation for all of them, so that crates depending on each other package together.
        let mut package = Cargo::new(["package"]).args(publishable.iter().flat_map(|n| ["-p", n]));
        if env::var_os("CI").is_none() {
            package = package.args(["--allow-dirty"]);
        }
        package.run()?;
    }

    if fuzz_seconds == 0 {
        println!("==> fuzz smoke skipped (--fuzz-seconds 0)");
    } else if fuzz_dirs.is_empty() {
        println!("==> no fuzz crate in {{crates,arch}}/*/fuzz: fuzz smoke skipped");
    }
    for dir in &fuzz_dirs {
        let targets = fuzz_targets(dir)?;
        if targets.is_empty() {
            bail!(
                "{} has no fuzz target (`cargo fuzz list` is empty)",
                dir.display()
            );
        }
        for target in &targets {
            fuzz_run(dir, target, fuzz_seconds).run()?;
        }
    }

    println!("==> all steps passed");
    Ok(())
}

fn fuzz(workspace: &Workspace, crate_dir: &str, target: &str, seconds: u64) -> Result<()> {
    let fuzz_dirs = workspace.fuzz_dirs()?;
    let Some(dir) = fuzz_dirs
        .iter()
        .find(|dir| dir.parent().and_then(Path::file_name) == Some(crate_dir.as_ref()))
    else {
        let known: Vec<String> = fuzz_dirs.iter().map(|d| d.display().to_string()).collect();
        let known = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        bail!("no fuzz crate {{crates,arch}}/{crate_dir}/fuzz; fuzz crates: {known}");
    };
    require_cargo_fuzz()?;
    fuzz_run(dir, target, seconds).run()
}

fn bench(workspace: &Workspace) -> Result<()> {
    let benched: Vec<_> = workspace
        .libraries
        .iter()
        .filter(|l| !l.benches.is_empty())
        .collect();
    if benched.is_empty() {
        bail!("no library crate in crates/ or arch/ has a bench target");
    }
    for library in benched {
        // Only the bench targets: `--benches` would also run the unit tests in bench mode.
        let mut bench = Cargo::new(["bench", "-p", &library.name])
            .args(library.benches.iter().flat_map(|b| ["--bench", b]));
        if !library.bench_features.is_empty() {
            bench = bench.args(["--features", &library.bench_features.join(",")]);
        }
        bench.run()?;
    }
    Ok(())
}

/// `cargo fuzz` in `dir`, on the pinned stable toolchain with its nightly flags unlocked.
fn cargo_fuzz<'a>(dir: &Path, args: impl IntoIterator<Item = &'a str>) -> Cargo {
    Cargo::new(["fuzz"])
        .args(args)
        .current_dir(dir)
        .env("RUSTC_BOOTSTRAP", "1")
}

fn fuzz_run(dir: &Path, target: &str, seconds: u64) -> Cargo {
    let max_time = format!("-max_total_time={seconds}");
    cargo_fuzz(dir, ["run", target, "--", &max_time])
}

fn fuzz_targets(dir: &Path) -> Result<Vec<String>> {
    let listing = cargo_fuzz(dir, ["list"]).read()?;
    Ok(listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn require(probe: &Cargo, missing: &str) -> Result<()> {
    if probe.succeeds() {
        Ok(())
    } else {
        bail!("{missing}")
    }
}

fn require_cargo_fuzz() -> Result<()> {
    require(
        &Cargo::new(["fuzz", "--version"]),
        "cargo-fuzz is not installed: run `cargo install --locked cargo-fuzz`",
    )
}

/// Fails unless the standard library for `target` is installed for the active toolchain.
fn require_target(target: &str) -> Result<()> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .context("cannot run rustc")?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if output.status.success() && libdir.is_dir() {
        Ok(())
    } else {
        bail!("target {target} is not installed: run `rustup target add {target}`")
    }
}
