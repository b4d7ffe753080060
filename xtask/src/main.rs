//! `cargo xtask`: the build, run, test and benchmark driver of the cellvisor workspace.
//!
//! - `cargo xtask build --board <board>` builds the hypervisor image of a board:
//!   `target/images/<board>/cellvisor.{elf,bin}`, and for a board that boots Linux the root
//!   cell's `cellvisor` tool (`target/images/<board>/cellvisor`, static aarch64 or x86-64) and
//!   inmates (`target/images/<board>/inmates/`, AArch64 boards only; see `tool.rs`).
//! - `cargo xtask run --board <board>` builds it and boots it in QEMU, the console on stdio,
//!   with Debian's stock kernel as the root cell (`--no-linux`: the hypervisor alone,
//!   `--bare`: the same Linux without the hypervisor; see `run.rs`).
//! - `cargo xtask test [--fuzz-seconds N]` runs everything CI checks: formatting, clippy, the
//!   host tests, a bare-metal build of every library crate under `crates/` and `arch/`,
//!   `cargo package` of the publishable ones and a fuzz smoke run of every target in
//!   `crates/*/fuzz` and `arch/*/fuzz`, stopping at the first of these that fails; then the
//!   system tests, which boot the hypervisor images in QEMU, all of them whatever fails, and
//!   end with `N passed, N failed` (`--no-system` skips them, `--system-only` runs only them,
//!   `--only PATTERN` only those whose name contains PATTERN).
//! - `cargo xtask fuzz <crate-dir> <target> [--seconds N]` runs one fuzz target.
//! - `cargo xtask bench [--board <board>]` measures the hypervisor in QEMU and writes
//!   `target/bench/bench.{md,json}` (see `bench.rs`); `--crates` runs the bench targets of
//!   every library crate that has some.
//! - `cargo xtask boot-time [--board <board>] [--gic N]` measures the guest time at which the
//!   root cell's `/init` starts, bare and under the hypervisor, and the traps per second of an
//!   idle root cell, with `-icount shift=0,sleep=off -seed 0`.
//! - `cargo xtask soak [--cycles N] [--board <board>] [--gic N]` boots the root cell once and
//!   runs N create/load/start/stop/destroy cycles of four inmates in turn; the hypervisor's
//!   free memory, the cells, the root cell's CPUs and interrupt lines must be as before (see
//!   `soak.rs`).
//! - `cargo xtask linux [--arch arm64|amd64] [--refresh]` fetches Debian's stock kernel and
//!   busybox-static through a private apt state and builds the root cell's initramfs, cached
//!   in `target/linux/<arch>/` (arm64: `Image` and `dtbs/`, amd64: `bzImage`; see `linux.rs`).
//!
//! Crates and boards are discovered with `cargo metadata`, so new ones are picked up without
//! changes here: a board is a package with a `[package.metadata.cellvisor]` table (see
//! `board.rs`).
//! Fuzzing uses `cargo fuzz` on the pinned stable toolchain with `RUSTC_BOOTSTRAP=1`, which
//! unlocks the `-Z` flags cargo-fuzz passes to rustc; no nightly toolchain is needed.

mod apt;
mod bare;
mod bench;
mod board;
mod bochs;
mod boot;
mod cargo;
mod cycles;
mod image;
mod initramfs;
mod inmates;
mod linux;
mod qemu;
mod qemu_dtb;
mod run;
mod scripts;
mod soak;
mod system_tests;
mod tool;
mod traps;
mod workspace;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use crate::cargo::Cargo;
use crate::image::Kind;
use crate::workspace::Workspace;

/// Bare-metal targets every library crate must build for.
const BARE_METAL_TARGETS: [&str; 2] = ["aarch64-unknown-none", "x86_64-unknown-none"];

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, run, test and benchmark the cellvisor workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the hypervisor image of a board (target/images/<board>/cellvisor.{elf,bin}), its
    /// compiled configurations, and the root cell's `cellvisor` tool and inmates.
    Build {
        /// Board name, e.g. `qemu-arm64`.
        #[arg(long)]
        board: String,
        /// Build the test image that faults on purpose after booting (written to
        /// target/images/<board>/fault-injection/).
        #[arg(long)]
        fault_injection: bool,
    },
    /// Boot a board in QEMU, the serial console on this terminal (Ctrl-A X quits QEMU): by
    /// default the hypervisor with Debian's stock kernel as its root cell.
    Run(Box<run::RunArgs>),
    /// Run every check CI runs: fmt, clippy, tests, bare-metal builds, cargo package, fuzz smoke,
    /// then the system tests in QEMU.
    Test {
        /// Seconds to fuzz each fuzz target (0 skips fuzzing).
        #[arg(long, value_name = "N", default_value_t = 60)]
        fuzz_seconds: u64,
        /// Skip the system tests.
        #[arg(long, conflicts_with = "system_only")]
        no_system: bool,
        /// Run only the system tests.
        #[arg(long)]
        system_only: bool,
        /// Seconds each system test may take (default: 60 for the hypervisor alone, 120 for
        /// Linux boots, 240 for the cell cases).
        #[arg(long, value_name = "SECS")]
        system_timeout: Option<u64>,
        /// Skip the system tests that manage cells from the root cell with the `cellvisor`
        /// tool.
        #[arg(long)]
        no_cells: bool,
        /// Run only the system tests whose name contains PATTERN (and the bare boots their
        /// kernel-log check compares with); implies --system-only.
        #[arg(long, value_name = "PATTERN", conflicts_with = "no_system")]
        only: Option<String>,
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
    /// Measure the hypervisor in QEMU (timer latency bare and in a cell, instructions per trap,
    /// traps per second, boot time, image size and memory, cell start) and write
    /// target/bench/bench.md and bench.json; with --crates, run the library crates' bench
    /// targets instead.
    Bench(bench::BenchArgs),
    /// Measure the guest time at which the root cell's /init starts, bare and under the
    /// hypervisor (`-icount shift=0,sleep=off -seed 0`), their ratio, and the traps per second of an
    /// idle root cell.
    BootTime(run::BootTimeArgs),
    /// Boot the root cell once and run N create/load/start/stop/destroy cycles of cells
    /// (timer-demo, stubborn-demo, wild-demo, gic-wild-demo in turn); fails unless every
    /// cycle went as it must and the hypervisor's free memory, the cells, the root cell's CPUs
    /// and its interrupt lines are as before. Console in target/soak/.
    Soak(soak::SoakArgs),
    /// Check that no module of a workspace crate uses another in a circle (part of `test`).
    Cycles,
    /// Fetch Debian's stock kernel and busybox-static and build an initramfs, cached in
    /// target/linux/<arch>/ (arm64: Image and dtbs/; amd64: bzImage, no device trees; both:
    /// busybox, initramfs.cpio.gz, VERSION).
    Linux {
        /// Debian architecture.
        #[arg(long, value_enum, default_value = "arm64")]
        arch: linux::Arch,
        /// Update the package lists and fetch newer packages if there are.
        #[arg(long)]
        refresh: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Tests(summary)) => {
            // The last line, whatever happened: people and CI logs look for it.
            println!("{summary}");
            if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// How a task ended, if it did not fail outright.
enum Outcome {
    /// It did all it had to.
    Done,
    /// The system tests ran: they passed or failed as the summary says.
    Tests(system_tests::Summary),
}

fn run(task: Task) -> Result<Outcome> {
    let workspace = Workspace::load()?;
    // File names on the command line are relative to where `cargo xtask` was started.
    let cwd = env::current_dir().context("cannot read the current directory")?;
    // Every path below is relative to the workspace root.
    env::set_current_dir(&workspace.root)
        .with_context(|| format!("cannot enter {}", workspace.root.display()))?;
    match task {
        Task::Build {
            board,
            fault_injection,
        } => {
            let board = board::find(&workspace.boards, &board)?;
            image::build(&workspace, board, kind(fault_injection))?;
            if !fault_injection && board.linux.is_some() {
                if let Some(arch) = linux::Arch::of_target(&board.target) {
                    tool::prepare(&workspace, board, arch.tool_target())?;
                }
            }
            Ok(Outcome::Done)
        }
        Task::Run(args) => run::run(&workspace, &cwd, *args).map(|()| Outcome::Done),
        Task::Test {
            fuzz_seconds,
            no_system,
            system_only,
            system_timeout,
            no_cells,
            only,
        } => {
            let system_timeout = system_timeout.map(Duration::from_secs);
            if !system_only && only.is_none() {
                test(&workspace, fuzz_seconds, !no_system)?;
                println!("==> host steps passed");
                if no_system {
                    return Ok(Outcome::Done);
                }
            }
            system_tests::run(&workspace, system_timeout, !no_cells, only.as_deref())
                .map(Outcome::Tests)
        }
        Task::Fuzz {
            crate_dir,
            target,
            seconds,
        } => fuzz(&workspace, &crate_dir, &target, seconds).map(|()| Outcome::Done),
        Task::Bench(args) if args.crates => crate_benches(&workspace).map(|()| Outcome::Done),
        Task::Bench(args) => bench::run(&workspace, &args).map(|()| Outcome::Done),
        Task::BootTime(args) => run::boot_time(&workspace, &args).map(|()| Outcome::Done),
        Task::Soak(args) => soak::run(&workspace, &args).map(|()| Outcome::Done),
        Task::Cycles => cycles::check(&workspace.root).map(|()| Outcome::Done),
        Task::Linux { arch, refresh } => {
            linux::run(&workspace, arch, refresh).map(|()| Outcome::Done)
        }
    }
}

fn kind(fault_injection: bool) -> Kind {
    if fault_injection {
        Kind::FaultInjection
    } else {
        Kind::Normal
    }
}

/// The crate outside the workspace (`examples/outsider`), as a user of the library crates
/// writes one: path dependencies with only the documented features. Its examples are built,
/// linted and run (each asserts what it shows).
fn outsider(workspace: &Workspace) -> Result<()> {
    const EXAMPLES: [&str; 3] = ["stage2", "gic", "config"];
    let manifest = workspace.root.join("examples/outsider/Cargo.toml");
    let manifest = manifest.to_str().context("a UTF-8 workspace path")?;
    let target = workspace.target_dir.join("outsider");
    let target = target.to_str().context("a UTF-8 target path")?;
    // The workspace's lock file, so that the outsider builds with the versions the workspace
    // was tested with (and without the network); cargo drops what it does not need.
    std::fs::copy(
        workspace.root.join("Cargo.lock"),
        workspace.root.join("examples/outsider/Cargo.lock"),
    )
    .context("cannot copy Cargo.lock to examples/outsider")?;
    let common = [
        "--offline",
        "--manifest-path",
        manifest,
        "--target-dir",
        target,
    ];
    Cargo::new(["fmt", "--check", "--manifest-path", manifest]).run()?;
    Cargo::new(["clippy", "--examples"])
        .args(common)
        .args(["--", "-D", "warnings"])
        .run()?;
    for example in EXAMPLES {
        Cargo::new(["run", "--example", example])
            .args(common)
            .run()?;
    }
    Ok(())
}

/// The host steps of `cargo xtask test`; with `system`, also checks up front for what the
/// system tests need.
fn test(workspace: &Workspace, fuzz_seconds: u64, system: bool) -> Result<()> {
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
    if system {
        system_tests::check_tools(workspace)?;
    }

    Cargo::new(["fmt", "--all", "--check"]).run()?;
    cycles::check(&workspace.root)?;
    Cargo::new(["clippy", "--workspace", "--all-targets", "--all-features"])
        .args(["--", "-D", "warnings"])
        .run()?;
    // The code that only exists on the board's target (entry, vectors, MMU) is invisible to
    // the host clippy run above: lint each board image, with the crates it pulls in, for its
    // own target.
    for board in &workspace.boards {
        Cargo::new(["clippy", "-p", &board.package, "--all-features", "--target"])
            .args([board.target.as_str(), "--", "-D", "warnings"])
            .run()?;
    }
    // The same for the Linux side of the guest programs (their host build is an empty `main`),
    // for every architecture.
    for arch in linux::Arch::ALL {
        Cargo::new(["clippy", "-p", linux::GUEST_CLOCK_PACKAGE, "--target"])
            .args([arch.guest_target(), "--", "-D", "warnings"])
            .run()?;
        if let Some(target) = arch.compat_target() {
            Cargo::new(["clippy", "-p", linux::DEVMEM32_PACKAGE, "--target"])
                .args([target, "--", "-D", "warnings"])
                .run()?;
        }
    }
    // The documentation of every library crate, as a user with the default features builds
    // it and as docs.rs does (all features): no broken or private intra-doc links, no bit
    // range such as [2:0] taken for a link, no bad HTML.
    if !workspace.libraries.is_empty() {
        for features in [&[][..], &["--all-features"][..]] {
            Cargo::new(["doc", "--no-deps", "--lib"])
                .args(
                    workspace
                        .libraries
                        .iter()
                        .flat_map(|l| ["-p", l.name.as_str()]),
                )
                .args(features.iter().copied())
                .env("RUSTDOCFLAGS", "-D warnings")
                .run()?;
        }
    }
    Cargo::new(["test", "--workspace", "--all-features"]).run()?;
    outsider(workspace)?;

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
        forget_extracted_packages(&publishable, &workspace.target_dir)?;
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

/// `cargo xtask bench --crates`: the bench targets of every library crate that has some.
fn crate_benches(workspace: &Workspace) -> Result<()> {
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
    seed_corpus(dir, target);
    let max_time = format!("-max_total_time={seconds}");
    cargo_fuzz(dir, ["run", target, "--", &max_time])
}

/// Runs the fuzz crate's `seeds.sh` (if it has one) when `target`'s corpus is empty: seeds
/// that are generated rather than checked in (e.g. stock device trees for `derive`). Best
/// effort: without seeds the fuzzer starts from nothing, as it would anyway.
fn seed_corpus(dir: &Path, target: &str) {
    let script = dir.join("seeds.sh");
    let corpus = dir.join("corpus").join(target);
    let empty = std::fs::read_dir(&corpus).map_or(true, |mut entries| entries.next().is_none());
    if !script.is_file() || !empty {
        return;
    }
    println!("==> sh {} (seeds for {target})", script.display());
    match std::process::Command::new("sh").arg(&script).status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("xtask: {} failed ({status}): no seeds", script.display()),
        Err(error) => eprintln!("xtask: cannot run {}: {error}: no seeds", script.display()),
    }
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
pub(crate) fn require_target(target: &str) -> Result<()> {
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

/// Removes the sources cargo extracted from earlier `cargo package` runs of our own crates.
///
/// `cargo package` verifies crates that depend on each other through a temporary local
/// registry, and extracts each dependency under `$CARGO_HOME/registry/src/<registry>/
/// <name>-<version>`. That directory is reused as long as it exists, so without this a crate
/// whose content changed but whose version did not is verified against its old sources.
/// Removing the directories only forces a fresh extraction.
///
/// The same holds for what cargo built from them: a crate from a registry is rebuilt only
/// when its version changes, so the fingerprints of our crates in `target/debug` (where the
/// verification builds) go too, and they are built again from the fresh sources.
fn forget_extracted_packages(names: &[&str], target_dir: &std::path::Path) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(target_dir.join("debug").join(".fingerprint")) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let ours = names.iter().any(|name| {
                file_name
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()))
            });
            if ours {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
    }
    let Some(home) = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    else {
        return Ok(());
    };
    let Ok(registries) = std::fs::read_dir(home.join("registry").join("src")) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        let Ok(entries) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let ours = names.iter().any(|name| {
                file_name
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit()))
            });
            if ours {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
}
