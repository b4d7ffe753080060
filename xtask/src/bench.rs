//! `cargo xtask bench`: the hypervisor's performance figures, reproducible because every run
//! uses `-icount shift=0,sleep=off -seed 0` (one instruction per nanosecond of guest time).
//! For each board (and GIC version) it
//!
//! 1. builds the image and reads its section sizes;
//! 2. boots Linux bare to `/init` (the baseline);
//! 3. boots Linux as the root cell with the `bench` script (`xtask/src/scripts/bench.sh`):
//!    the trap counters of the idle and of a busy root cell, PSCI and management calls, then
//!    the demo cell with `timer-demo`, whose UART (the second serial port) reports its first
//!    instruction and its interrupt latency over 1000 samples;
//! 4. runs the same `timer-demo` image bare on QEMU at EL1 (boards on QEMU's `virt` machine).
//!
//! The hypervisor counts its own instructions per trap with the PMU (`arch/aarch64`'s
//! `hw/pmu.rs`); `cellvisor cell stats --json` reports them. The results go to
//! `target/bench/bench.md` and `target/bench/bench.json`; the consoles to
//! `target/bench/<board>-gicv<N>-*.log`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::board::{self, Board};
use crate::boot::{self, Boot, LinuxFiles};
use crate::image::{self, Kind};
use crate::initramfs::Action;
use crate::linux;
use crate::qemu::{self, Options};
use crate::run::{append_with_actions, guest_time, measure, measure_with_silence};

/// The bench script's busy phase prints nothing until its four jobs are done: under
/// `-icount` (one host thread for every vCPU) on a loaded 2-core host that takes longer than
/// a normal boot is ever silent. Output lines would change the figures (UART interrupts).
const BUSY_SILENCE: Duration = Duration::from_secs(240);
use crate::scripts::Script;
use crate::workspace::Workspace;

/// `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Board name (default: every board that boots Linux).
    #[arg(long)]
    pub board: Option<String>,
    /// GIC version (default: the board's highest).
    #[arg(long, value_name = "VERSION", requires = "board")]
    pub gic: Option<u32>,
    /// QEMU CPU model, for boards whose CPU model is not fixed (default: `max`, whose
    /// generic timer runs at 1 GHz in QEMU 10, so latencies resolve to the nanosecond, where
    /// the boards' default models count in steps of 16 ns).
    #[arg(long, value_name = "MODEL", requires = "board")]
    pub cpu: Option<String>,
    /// Seconds each boot may take.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub timeout: u64,
    /// Seconds of guest time the idle root cell sleeps between two counter reads.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub idle: u32,
    /// Rounds of the busybox workload each of the four jobs of the busy phase runs.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub busy_rounds: u32,
    /// Seconds of guest time the root cell gives the Linux cell to reach its /init (boards
    /// with a `linux.toml`).
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    pub linux_boot: u32,
    /// Seconds of guest time the Linux cell idles between two counter reads.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub linux_idle: u32,
    /// Run the `cargo bench` targets of the library crates instead.
    #[arg(long, conflicts_with_all = ["board", "gic", "cpu"])]
    pub crates: bool,
}

/// What a marker line of the bench script starts with (after the script's prefix).
const BEGIN: &str = "cellvisor-demo: bench begin ";
const END: &str = "cellvisor-demo: bench end ";
/// The prefix `/init` puts in front of every line of the script.
const SCRIPT_LINE: &str = "cellvisor-initramfs: script bench: ";
/// What `timer-demo` prints.
const FIRST_INSTRUCTION: &str = "timer-demo: first instruction at counter ";
const SAMPLES: &str = "timer-demo: samples=";
/// The hypervisor's root-cell banner (`… {ram} MiB RAM, … in {n} table pages, …`).
const ROOT_BANNER: &str = "cellvisor: root cell ";

/// `cargo xtask bench`.
pub fn run(workspace: &Workspace, args: &BenchArgs) -> Result<()> {
    let boards = match args.board.as_deref() {
        // A Multiboot board (x86) boots Linux without the Arm keys.
        Some(name) if board::find(&workspace.boards, name)?.multiboot.is_some() => {
            vec![board::find(&workspace.boards, name)?]
        }
        name => board::linux_boards(&workspace.boards, name)?,
    };
    run_in(
        workspace,
        args,
        boards,
        &workspace.target_dir.join("bench"),
        true,
    )
}

/// The bench of qemu-arm64 and qemu-x86 with short phases, as the last system test of
/// `cargo xtask test`:
/// every measurement must come out (the bare and in-cell latency summaries of the same
/// `timer-demo` image, instruction counts per trap, counter snapshots), whatever the figures.
/// Writes to `target/system-tests/bench/`.
pub fn smoke(workspace: &Workspace) -> Result<()> {
    let args = BenchArgs {
        board: None,
        gic: None,
        cpu: None,
        timeout: 600,
        idle: 5,
        busy_rounds: 1,
        linux_boot: 5,
        linux_idle: 2,
        crates: false,
    };
    let boards = vec![
        board::find(&workspace.boards, "qemu-arm64")?,
        board::find(&workspace.boards, "qemu-x86")?,
    ];
    let dir = workspace.target_dir.join("system-tests").join("bench");
    run_in(workspace, &args, boards, &dir, false)
}

fn run_in(
    workspace: &Workspace,
    args: &BenchArgs,
    boards: Vec<&Board>,
    dir: &Path,
    show: bool,
) -> Result<()> {
    let dir = dir.to_owned();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut results = Vec::new();
    for board in boards {
        qemu::require(&board.qemu)?;
        if board.multiboot.is_some() {
            results.push(bench_multiboot(workspace, args, board, &dir)?);
            continue;
        }
        let gic = board.require_gic(args.gic)?;
        results.push(bench_board(workspace, args, board, gic, &dir)?);
    }
    let command = command_line(args);
    let markdown = report(&results, &command);
    let json = json!({ "command": command, "boards": results });
    let md_path = dir.join("bench.md");
    let json_path = dir.join("bench.json");
    fs::write(&md_path, &markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    if show {
        println!("{markdown}");
    }
    println!(
        "written: {} and {}",
        workspace.relative(&md_path).display(),
        workspace.relative(&json_path).display()
    );
    Ok(())
}

/// The command that reproduces the figures.
fn command_line(args: &BenchArgs) -> String {
    let mut command = "cargo xtask bench".to_owned();
    if let Some(board) = &args.board {
        write!(command, " --board {board}").expect("writing to a String");
    }
    if let Some(gic) = args.gic {
        write!(command, " --gic {gic}").expect("writing to a String");
    }
    if let Some(cpu) = &args.cpu {
        write!(command, " --cpu {cpu}").expect("writing to a String");
    }
    if args.idle != 120 {
        write!(command, " --idle {}", args.idle).expect("writing to a String");
    }
    if args.busy_rounds != 2 {
        write!(command, " --busy-rounds {}", args.busy_rounds).expect("writing to a String");
    }
    if args.linux_boot != 20 {
        write!(command, " --linux-boot {}", args.linux_boot).expect("writing to a String");
    }
    if args.linux_idle != 10 {
        write!(command, " --linux-idle {}", args.linux_idle).expect("writing to a String");
    }
    command
}

/// Every figure of one board.
fn bench_board(
    workspace: &Workspace,
    args: &BenchArgs,
    board: &Board,
    gic: u32,
    dir: &Path,
) -> Result<Value> {
    let name = format!("{}-gicv{gic}", board.name);
    println!("==> {name}");
    let (image, bin_size) = built_image(workspace, board)?;
    let (files, versions) = linux::prepare_board(workspace, board, false)?;
    let images = workspace.target_dir.join("images").join(&board.name);
    let config = boot::board_config(board, gic, &images)?;
    let shown = |path: &Path| workspace.relative(path).to_owned();
    let base = &board.linux()?.append;
    let timeout = Duration::from_secs(args.timeout);
    let cpu = args
        .cpu
        .clone()
        .or_else(|| board.cpu.as_ref().map(|_| "max".to_owned()));
    let options = Options {
        gic: Some(gic),
        cpu,
        icount: true,
        ..Options::default()
    };
    let plain = [Action::Clock, Action::Poweroff];
    let linux = LinuxFiles {
        kernel: shown(&files.image),
        initrd: shown(&files.initramfs),
        dtb: boot::board_dtb(board, &files.dtbs)?.map(|d| shown(&d)),
        append: append_with_actions(base, &plain),
    };

    // Bare Linux to /init.
    let bare = bare_boot(board, &options, &linux, timeout, dir, &name)?;

    // The root cell with the bench script.
    let (actions, variables) = (BENCH_ACTIONS, script_variables(args));
    let uart = fresh_uart(dir, &name);
    let root = Boot::RootCell {
        image: shown(&image.bin),
        config: shown(&config),
        linux: LinuxFiles {
            append: append_with_actions(&format!("{base} {variables}"), &actions),
            ..linux.clone()
        },
    }
    .qemu(board, &options)?
    .second_serial(&shown(&uart));
    println!("--> root cell: {root}");
    let log = dir.join(format!("{name}-root.log"));
    let root = measure_with_silence(&root, timeout, BUSY_SILENCE, &log)
        .context("root cell boot with the bench script")?;
    let snapshots = Snapshots::parse(&root.lines)
        .with_context(|| format!("{}", workspace.relative(&log).display()))?;
    let uart_text =
        fs::read_to_string(&uart).with_context(|| format!("cannot read {}", uart.display()))?;

    // The same inmate bare.
    let inmate = images.join("inmates").join("timer-demo.bin");
    let bare_latency = if board.machine.starts_with("virt") {
        println!("--> timer-demo bare on QEMU");
        let output = crate::bare::run_bare(
            workspace,
            gic as u8,
            options.cpu.as_deref().or(board.cpu.as_deref()),
            &inmate,
            timeout,
            SAMPLES,
        )
        .context("timer-demo bare")?;
        fs::write(dir.join(format!("{name}-timer-demo-bare.log")), &output)?;
        Some(Latency::find(&output).context("timer-demo bare: no latency summary")?)
    } else {
        None
    };
    let cell_latency =
        Latency::find(&uart_text).context("timer-demo in the cell: no latency summary")?;

    // Figures.
    let frequency = snapshots.frequency()?;
    let idle = snapshots.rates("idle")?;
    let busy = snapshots.rates("busy")?;
    let root_costs = snapshots.costs("root-stats")?;
    let cell_costs = snapshots.costs("cell-stats")?;
    if cell_costs["irq"]["measured"].as_u64().unwrap_or(0) == 0 {
        bail!(
            "the hypervisor counted no instructions of the demo cell's interrupts (does the \
             CPU model count INST_RETIRED at EL2 with -icount?)"
        );
    }
    let info_root: Info = snapshots.json("info-root")?;
    let info_cells: Info = snapshots.json("info-cells")?;
    let (ram_mib, banner_pages) = root_banner(&root.lines)?;
    let create = snapshots.clock("create-clock")?;
    let first = uart_text
        .lines()
        .find_map(|l| l.split_once(FIRST_INSTRUCTION))
        .and_then(|(_, n)| n.trim().parse::<u64>().ok())
        .context("timer-demo: no first-instruction line on the cell's UART")?;
    let first_s = first as f64 / frequency as f64;
    let mut steps = cell_steps(&snapshots)?;
    steps["create_to_first_instruction_s"] = json!(first_s - create);
    let linux_cell = if snapshots.0.contains_key("linux-clock") {
        // The same kernel bare with the cell's CPUs and RAM, where QEMU can give them.
        let matched = if board.machine.starts_with("virt") {
            let small = Options {
                smp: Some(LINUX_CELL_CPUS),
                memory: Some(LINUX_CELL_RAM.to_owned()),
                ..options.clone()
            };
            let log = dir.join(format!("{name}-bare-small.log"));
            let bare = Boot::Bare(linux.clone()).qemu(board, &small)?;
            println!("--> bare Linux, {LINUX_CELL_CPUS} CPUs, {LINUX_CELL_RAM}: {bare}");
            Some(
                measure(&bare, timeout, &log)
                    .context("bare Linux boot, small")?
                    .time,
            )
        } else {
            None
        };
        Some(linux_cell_figures(
            &snapshots, &uart_text, bare.time, matched,
        )?)
    } else {
        None
    };
    Ok(json!({
        "board": board.name,
        "gic": gic,
        "cpu": options.cpu.as_deref().or(board.cpu.as_deref()),
        "kernel": versions.kernel_release,
        "timer_frequency_hz": frequency,
        "image": image_json(&image, bin_size),
        "boot": {
            "bare_s": bare.time,
            "root_cell_s": root.time,
            "ratio": root.time / bare.time,
        },
        "timer_latency_ns": {
            "bare": bare_latency,
            "cell": cell_latency,
            "ratio": bare_latency.map(|b| cell_latency.avg / b.avg.max(1.0)),
        },
        "instructions_per_trap": { "root_cell": root_costs, "demo_cell": cell_costs },
        "traps_per_second": { "idle": idle, "busy": busy },
        "memory": {
            "total": info_cells.memory_total,
            "used_root_only": info_root.memory_used,
            "used_root_and_demo_cell": info_cells.memory_used,
            "cells": info_cells.cells,
            "cpus": info_cells.cpus,
        },
        "root_stage2": {
            "ram_mib": ram_mib,
            "table_pages_at_boot": banner_pages,
            "table_pages": info_root.root_table_pages,
        },
        "cell_start": steps,
        "linux_cell": linux_cell,
    }))
}

/// The CPUs and RAM of the reference Linux cells (`platforms/*/config/linux.toml`), for the
/// bare boot they are compared with.
const LINUX_CELL_CPUS: u32 = 2;
const LINUX_CELL_RAM: &str = "128M";

/// The Linux cell's figures: guest seconds from `cellvisor cell linux` to its /init (its
/// `guest-clock` line on the cell's UART, the machine's counter) against bare Linux to
/// /init (the board's CPUs and RAM, and, if given, the cell's); its traps per second while
/// idle, in total and per CPU.
fn linux_cell_figures(
    snapshots: &Snapshots,
    uart: &str,
    bare_s: f64,
    bare_matched_s: Option<f64>,
) -> Result<Value> {
    let command = snapshots.clock("linux-clock")?;
    let init = uart
        .lines()
        .find_map(guest_time)
        .context("Linux cell: no guest-clock line on the cell's UART (did /init run?)")?;
    let init_s = init - command;
    if init_s <= 0.0 {
        bail!("Linux cell: its /init at {init} s is not after the command at {command} s");
    }
    let idle = snapshots.rates("linux-idle")?;
    let per_cpu = |key: &str| {
        idle[key]
            .as_f64()
            .map(|v| round(v / f64::from(LINUX_CELL_CPUS)))
    };
    Ok(json!({
        "command_to_init_s": init_s,
        "bare_init_s": bare_s,
        "bare_init_same_cpus_and_ram_s": bare_matched_s,
        "ratio": init_s / bare_matched_s.unwrap_or(bare_s),
        "idle_traps_per_second": idle,
        "idle_traps_per_second_per_cpu": { "total": per_cpu("total"), "irq": per_cpu("irq") },
    }))
}

/// The hypervisor image of `board`, built, and its file size.
fn built_image(workspace: &Workspace, board: &Board) -> Result<(image::Image, u64)> {
    let image = image::build(workspace, board, Kind::Normal)?;
    let bin_size = fs::metadata(&image.bin)
        .with_context(|| format!("cannot read {}", image.bin.display()))?
        .len();
    Ok((image, bin_size))
}

/// The image's sizes, for the results.
fn image_json(image: &image::Image, bin_size: u64) -> Value {
    json!({
        "bin_bytes": bin_size,
        "text": image.sizes.text,
        "rodata": image.sizes.rodata,
        "data": image.sizes.data,
        "bss": image.sizes.bss,
        "stacks": image.sizes.stacks,
    })
}

/// What `/init` of the root cell runs for the bench.
const BENCH_ACTIONS: [Action; 3] = [
    Action::Clock,
    Action::Script(Script::Bench),
    Action::Poweroff,
];

/// Bare Linux to `/init` (the baseline of the boot ratio), its console in
/// `<dir>/<name>-bare.log`.
fn bare_boot(
    board: &Board,
    options: &Options,
    linux: &LinuxFiles,
    timeout: Duration,
    dir: &Path,
    name: &str,
) -> Result<crate::run::Measured> {
    let bare = Boot::Bare(linux.clone()).qemu(board, options)?;
    println!("--> bare Linux: {bare}");
    measure(&bare, timeout, &dir.join(format!("{name}-bare.log"))).context("bare Linux boot")
}

/// `<dir>/<name>-uart1.log`, removed (QEMU appends to the file).
fn fresh_uart(dir: &Path, name: &str) -> std::path::PathBuf {
    let uart = dir.join(format!("{name}-uart1.log"));
    let _ = fs::remove_file(&uart);
    uart
}

/// The bench script's variables on the kernel command line.
fn script_variables(args: &BenchArgs) -> String {
    format!(
        "IDLE_SECONDS={} BUSY_ROUNDS={} LINUX_BOOT_SECONDS={} LINUX_IDLE_SECONDS={}",
        args.idle, args.busy_rounds, args.linux_boot, args.linux_idle
    )
}

/// The demo cell's create, load and start, in guest seconds.
fn cell_steps(snapshots: &Snapshots) -> Result<Value> {
    let create = snapshots.clock("create-clock")?;
    Ok(json!({
        "create_s": snapshots.clock("load-clock")? - create,
        "load_s": snapshots.clock("start-clock")? - snapshots.clock("load-clock")?,
        "start_s": snapshots.clock("started-clock")? - snapshots.clock("start-clock")?,
    }))
}

/// The TSC frequency in the x86 `timer-demo`'s first line (`..., TSC 1000000000 Hz`): what the
/// hypervisor wrote in the cell's communication region.
fn tsc_frequency(output: &str) -> Option<u64> {
    output
        .lines()
        .find(|line| line.starts_with("timer-demo: started"))?
        .rsplit_once(", TSC ")?
        .1
        .strip_suffix(" Hz")?
        .trim()
        .parse()
        .ok()
}

/// The figures of a Multiboot (x86) board: image, boot ratio, the idle and busy root cell's
/// exits per second, the hypervisor's instructions per exit (the TSC from the exit to the
/// next entry, which under `-icount shift=0` counts instructions), and the demo cell with
/// the x86 `timer-demo` (its latency on COM2), and the same `timer-demo` bare
/// (`bare::run_bare_x86`).
fn bench_multiboot(
    workspace: &Workspace,
    args: &BenchArgs,
    board: &Board,
    dir: &Path,
) -> Result<Value> {
    let name = board.name.clone();
    println!("==> {name}");
    let (image, bin_size) = built_image(workspace, board)?;
    let (files, versions) = linux::prepare_board(workspace, board, false)?;
    let images = workspace.target_dir.join("images").join(&board.name);
    let config = images.join("system.bin");
    let shown = |path: &Path| workspace.relative(path).to_owned();
    let base = board
        .multiboot
        .as_ref()
        .map(|m| m.append.clone())
        .unwrap_or_default();
    let timeout = Duration::from_secs(args.timeout);
    let options = Options {
        cpu: args.cpu.clone(),
        icount: true,
        ..Options::default()
    };
    let plain = [Action::Clock, Action::Poweroff];
    let linux = LinuxFiles {
        kernel: shown(&files.image),
        initrd: shown(&files.initramfs),
        dtb: None,
        append: append_with_actions(&base, &plain),
    };
    let bare = bare_boot(board, &options, &linux, timeout, dir, &name)?;

    let (actions, variables) = (BENCH_ACTIONS, script_variables(args));
    let uart = fresh_uart(dir, &name);
    let root = Boot::MultibootRootCell {
        image: shown(&image.bin),
        config: shown(&config),
        linux: LinuxFiles {
            append: append_with_actions(&format!("{base} {variables}"), &actions),
            ..linux
        },
    }
    .qemu(board, &options)?
    .second_serial(&shown(&uart));
    println!("--> root cell: {root}");
    let log = dir.join(format!("{name}-root.log"));
    let root = measure_with_silence(&root, timeout, BUSY_SILENCE, &log)
        .context("root cell boot with the bench script")?;
    let snapshots = Snapshots::parse(&root.lines)
        .with_context(|| format!("{}", workspace.relative(&log).display()))?;
    let frequency = snapshots.frequency_of("idle-before-clock")?;
    let info_root: Info = snapshots.json("info-root")?;
    let info_cells: Info = snapshots.json("info-cells")?;
    let uart_text =
        fs::read_to_string(&uart).with_context(|| format!("cannot read {}", uart.display()))?;
    let cell_latency =
        Latency::find(&uart_text).context("timer-demo in the cell: no latency summary")?;
    let steps = cell_steps(&snapshots)?;

    // The same inmate bare, with the TSC frequency the hypervisor gave the cell.
    let tsc_hz = tsc_frequency(&uart_text).context("timer-demo in the cell: no TSC frequency")?;
    println!("--> timer-demo bare on QEMU q35");
    let output = crate::bare::run_bare_x86(
        workspace,
        options.cpu.as_deref(),
        &images.join("inmates").join("timer-demo.bin"),
        tsc_hz,
        timeout,
        "timer-demo: samples=",
    )
    .context("timer-demo bare")?;
    fs::write(dir.join(format!("{name}-timer-demo-bare.log")), &output)?;
    let bare_latency = Latency::find(&output).context("timer-demo bare: no latency summary")?;
    Ok(json!({
        "board": board.name,
        "gic": Value::Null,
        "cpu": options.cpu.as_deref().or(board.cpu.as_deref()),
        "kernel": versions.kernel_release,
        "timer_frequency_hz": frequency,
        "image": image_json(&image, bin_size),
        "boot": {
            "bare_s": bare.time,
            "root_cell_s": root.time,
            "ratio": root.time / bare.time,
        },
        "timer_latency_ns": {
            "bare": bare_latency,
            "cell": cell_latency,
            "ratio": cell_latency.avg / bare_latency.avg.max(1.0),
        },
        "instructions_per_trap": {
            "root_cell": snapshots.costs("root-stats")?,
            "demo_cell": snapshots.costs("cell-stats")?,
        },
        "traps_per_second": { "idle": snapshots.rates("idle")?, "busy": snapshots.rates("busy")? },
        "memory": {
            "total": info_cells.memory_total,
            "used_root_only": info_root.memory_used,
            "used_root_and_demo_cell": info_cells.memory_used,
            "cells": info_cells.cells,
            "cpus": info_cells.cpus,
        },
        "root_stage2": { "table_pages": info_root.root_table_pages },
        "cell_start": steps,
    }))
}

/// `cellvisor info --json`.
#[derive(Debug, Deserialize)]
struct Info {
    cpus: u32,
    cells: u32,
    memory_total: u64,
    memory_used: u64,
    root_table_pages: u32,
}

/// One CPU of `cellvisor cell stats --json`.
#[derive(Debug, Deserialize)]
struct CpuStats {
    traps: BTreeMap<String, u64>,
    #[serde(default)]
    instructions: BTreeMap<String, Cost>,
}

/// The instructions of one trap reason.
#[derive(Debug, Deserialize, Clone, Copy, Default, serde::Serialize)]
struct Cost {
    measured: u64,
    instructions: u64,
    min: u64,
    max: u64,
}

/// A `timer-demo: samples=1000 latency ns min=.. avg=.. max=..` summary.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
struct Latency {
    samples: u64,
    min: f64,
    avg: f64,
    max: f64,
}

impl Latency {
    /// The first summary in `text`.
    fn find(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.contains(SAMPLES))?;
        let rest = &line[line.find(SAMPLES)? + SAMPLES.len()..];
        let samples = rest.split_whitespace().next()?.parse().ok()?;
        let ns = &rest[rest.find("latency ns ")? + "latency ns ".len()..];
        let value = |key: &str| -> Option<f64> {
            let word = ns.split_whitespace().find(|w| w.starts_with(key))?;
            word[key.len()..].parse().ok()
        };
        Some(Self {
            samples,
            min: value("min=")?,
            avg: value("avg=")?,
            max: value("max=")?,
        })
    }
}

/// The RAM (MiB) and stage-2 table pages of the hypervisor's root-cell banner.
fn root_banner(lines: &[String]) -> Result<(u64, u64)> {
    let line = lines
        .iter()
        .find(|l| l.contains(ROOT_BANNER) && l.contains("table pages"))
        .context("no root-cell banner of the hypervisor")?;
    let number_before = |what: &str| -> Option<u64> {
        let before = &line[..line.find(what)?];
        before.split_whitespace().last()?.parse().ok()
    };
    Ok((
        number_before(" MiB RAM").context("banner without RAM size")?,
        number_before(" table pages").context("banner without table pages")?,
    ))
}

/// The bench script's snapshots: name → the lines between its markers.
struct Snapshots(BTreeMap<String, Vec<String>>);

impl Snapshots {
    fn parse(lines: &[String]) -> Result<Self> {
        let mut snapshots = BTreeMap::new();
        let mut current: Option<(String, Vec<String>)> = None;
        for line in lines {
            let Some(text) = line.split_once(SCRIPT_LINE).map(|(_, t)| t) else {
                continue;
            };
            if let Some(name) = text.strip_prefix(BEGIN) {
                current = Some((name.trim().to_owned(), Vec::new()));
            } else if let Some(end) = text.strip_prefix(END) {
                let Some((name, body)) = current.take() else {
                    bail!("{text:?} without a begin line");
                };
                if !end.starts_with(&format!("{name} status=0")) {
                    bail!("bench snapshot {name} failed: {text:?}");
                }
                snapshots.insert(name, body);
            } else if let Some((_, body)) = current.as_mut() {
                body.push(text.to_owned());
            }
        }
        if snapshots.is_empty() {
            bail!("the bench script printed no snapshot");
        }
        Ok(Self(snapshots))
    }

    fn body(&self, name: &str) -> Result<&[String]> {
        self.0
            .get(name)
            .map(Vec::as_slice)
            .with_context(|| format!("no bench snapshot {name}"))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        serde_json::from_str(&self.body(name)?.join("\n"))
            .with_context(|| format!("bench snapshot {name}: not the JSON expected"))
    }

    /// Guest seconds of a `guest-clock` snapshot.
    fn clock(&self, name: &str) -> Result<f64> {
        self.body(name)?
            .iter()
            .find_map(|l| guest_time(l))
            .with_context(|| format!("bench snapshot {name}: no guest time"))
    }

    /// The counter frequency `guest-clock` printed (`… ticks at <Hz> Hz)`).
    fn frequency(&self) -> Result<u64> {
        self.frequency_of("create-clock")
    }

    /// The counter frequency `guest-clock` printed in snapshot `name`.
    fn frequency_of(&self, name: &str) -> Result<u64> {
        let line = self.body(name)?.join(" ");
        let hz = line
            .rsplit_once(" ticks at ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("guest-clock printed no frequency")?;
        Ok(hz)
    }

    /// Traps per second by reason (summed over CPUs) between `<phase>-before` and
    /// `<phase>-after`, with `total` and the guest seconds.
    fn rates(&self, phase: &str) -> Result<Value> {
        let before: Vec<CpuStats> = self.json(&format!("{phase}-before"))?;
        let after: Vec<CpuStats> = self.json(&format!("{phase}-after"))?;
        let seconds = self.clock(&format!("{phase}-after-clock"))?
            - self.clock(&format!("{phase}-before-clock"))?;
        if seconds <= 0.0 {
            bail!("{phase}: no guest time passed");
        }
        let sum = |stats: &[CpuStats]| {
            let mut sums: BTreeMap<String, u64> = BTreeMap::new();
            for cpu in stats {
                for (reason, n) in &cpu.traps {
                    *sums.entry(reason.clone()).or_default() += n;
                }
            }
            sums
        };
        let (before, after) = (sum(&before), sum(&after));
        let mut rates = serde_json::Map::new();
        let mut total = 0;
        for (reason, n) in &after {
            let delta = n.saturating_sub(before.get(reason).copied().unwrap_or(0));
            total += delta;
            if delta > 0 {
                rates.insert(reason.clone(), json!(round(delta as f64 / seconds)));
            }
        }
        rates.insert("total".into(), json!(round(total as f64 / seconds)));
        rates.insert("seconds".into(), json!(round(seconds)));
        Ok(Value::Object(rates))
    }

    /// Instructions per trap by reason, summed over the CPUs of a stats snapshot.
    fn costs(&self, name: &str) -> Result<Value> {
        let stats: Vec<CpuStats> = self.json(name)?;
        let mut sums: BTreeMap<String, Cost> = BTreeMap::new();
        for cpu in &stats {
            for (reason, cost) in &cpu.instructions {
                let sum = sums.entry(reason.clone()).or_insert(Cost {
                    min: u64::MAX,
                    ..Cost::default()
                });
                sum.measured += cost.measured;
                sum.instructions += cost.instructions;
                sum.min = sum.min.min(cost.min);
                sum.max = sum.max.max(cost.max);
            }
        }
        Ok(Value::Object(
            sums.into_iter()
                .filter(|(_, c)| c.measured > 0)
                .map(|(reason, c)| {
                    let average = round(c.instructions as f64 / c.measured as f64);
                    (
                        reason,
                        json!({"measured": c.measured, "average": average, "min": c.min, "max": c.max}),
                    )
                })
                .collect(),
        ))
    }
}

fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The Markdown report.
fn report(results: &[Value], command: &str) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(
        w,
        "# cellvisor bench\n\n`{command}` ({}; guest time: one instruction per nanosecond)\n",
        qemu::DETERMINISTIC.join(" ")
    );
    for r in results {
        let f = |path: &str| -> String {
            let mut value = r;
            for key in path.split('.') {
                value = &value[key];
            }
            match value {
                Value::Null => "-".to_owned(),
                Value::Number(n) => n
                    .as_f64()
                    .map_or_else(|| n.to_string(), |x| format!("{}", round(x))),
                other => other.to_string().trim_matches('"').to_owned(),
            }
        };
        let gic = if r["gic"].is_null() {
            "APIC".to_owned()
        } else {
            format!("GICv{}", f("gic"))
        };
        let _ = writeln!(
            w,
            "## {} {gic} (CPU {}, kernel {}, counter {} Hz)\n",
            f("board"),
            f("cpu"),
            f("kernel"),
            f("timer_frequency_hz")
        );
        let _ = writeln!(w, "| figure | value | target |\n|---|---:|---|");
        let mut rows = vec![
            (
                "timer latency bare, ns (min/avg/max, 1000 samples)".to_owned(),
                format!(
                    "{}/{}/{}",
                    f("timer_latency_ns.bare.min"),
                    f("timer_latency_ns.bare.avg"),
                    f("timer_latency_ns.bare.max")
                ),
                "",
            ),
            (
                "timer latency in a cell, ns (min/avg/max, 1000 samples)".to_owned(),
                format!(
                    "{}/{}/{}",
                    f("timer_latency_ns.cell.min"),
                    f("timer_latency_ns.cell.avg"),
                    f("timer_latency_ns.cell.max")
                ),
                "",
            ),
            (
                "timer latency ratio cell/bare (avg)".to_owned(),
                f("timer_latency_ns.ratio"),
                "<= 2",
            ),
            (
                "boot to /init: bare s / root cell s / ratio".to_owned(),
                format!(
                    "{} / {} / {}",
                    f("boot.bare_s"),
                    f("boot.root_cell_s"),
                    f("boot.ratio")
                ),
                "<= 1.05",
            ),
            (
                "idle root cell: traps/s total (irq)".to_owned(),
                format!(
                    "{} ({})",
                    f("traps_per_second.idle.total"),
                    f("traps_per_second.idle.irq")
                ),
                "<= timer ticks",
            ),
            (
                "busy root cell: traps/s total (irq)".to_owned(),
                format!(
                    "{} ({})",
                    f("traps_per_second.busy.total"),
                    f("traps_per_second.busy.irq")
                ),
                "",
            ),
            (
                "cellvisor.bin bytes (text/rodata/data/bss+stacks)".to_owned(),
                format!(
                    "{} ({}/{}/{}/{}+{})",
                    f("image.bin_bytes"),
                    f("image.text"),
                    f("image.rodata"),
                    f("image.data"),
                    f("image.bss"),
                    f("image.stacks")
                ),
                "< 88 KiB (zcu102)",
            ),
            (
                "hypervisor memory used, root cell / root + demo cell, bytes".to_owned(),
                format!(
                    "{} / {}",
                    f("memory.used_root_only"),
                    f("memory.used_root_and_demo_cell")
                ),
                "< 1 MiB (4 CPUs, 2 cells)",
            ),
            (
                "root cell stage 2: table pages (RAM MiB)".to_owned(),
                format!(
                    "{} ({})",
                    f("root_stage2.table_pages"),
                    f("root_stage2.ram_mib")
                ),
                "<= 4 for 1 GiB",
            ),
            (
                "cell create -> first inmate instruction, s".to_owned(),
                f("cell_start.create_to_first_instruction_s"),
                "",
            ),
            (
                "  of which create / load / start, s".to_owned(),
                format!(
                    "{} / {} / {}",
                    f("cell_start.create_s"),
                    f("cell_start.load_s"),
                    f("cell_start.start_s")
                ),
                "",
            ),
        ];
        let linux_rows = [
            (
                "Linux cell: `cell linux` -> its /init, s / bare /init (board's CPUs, cell's CPUs and RAM), s / ratio"
                    .to_owned(),
                format!(
                    "{} / {}, {} / {}",
                    f("linux_cell.command_to_init_s"),
                    f("linux_cell.bare_init_s"),
                    f("linux_cell.bare_init_same_cpus_and_ram_s"),
                    f("linux_cell.ratio")
                ),
                "",
            ),
            (
                "Linux cell idle: traps/s per CPU total (irq), over s".to_owned(),
                format!(
                    "{} ({}), {}",
                    f("linux_cell.idle_traps_per_second_per_cpu.total"),
                    f("linux_cell.idle_traps_per_second_per_cpu.irq"),
                    f("linux_cell.idle_traps_per_second.seconds")
                ),
                "",
            ),
        ];
        if !r["linux_cell"].is_null() {
            rows.extend(linux_rows);
        }
        for (figure, value, target) in rows {
            let _ = writeln!(w, "| {figure} | {value} | {target} |");
        }
        let _ = writeln!(
            w,
            "\nHypervisor instructions per trap (avg/min/max, measured traps):\n\n\
             | reason | root cell | demo cell |\n|---|---:|---:|"
        );
        let mut reasons: Vec<&String> = Vec::new();
        for cell in ["root_cell", "demo_cell"] {
            if let Value::Object(map) = &r["instructions_per_trap"][cell] {
                reasons.extend(
                    map.keys()
                        .filter(|k| !reasons.contains(k))
                        .collect::<Vec<_>>(),
                );
            }
        }
        for reason in reasons {
            let cost = |cell: &str| {
                let c = &r["instructions_per_trap"][cell][reason.as_str()];
                if c.is_null() {
                    "-".to_owned()
                } else {
                    format!(
                        "{}/{}/{} ({})",
                        c["average"], c["min"], c["max"], c["measured"]
                    )
                }
            };
            let _ = writeln!(
                w,
                "| {reason} | {} | {} |",
                cost("root_cell"),
                cost("demo_cell")
            );
        }
        let _ = writeln!(w);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tsc_frequency_the_x86_timer_demo_was_given() {
        let output = "noise\ntimer-demo: started on 8250 at 0x2f8, local APIC timer (one-shot, \
                      1000000000 Hz), TSC 999888777 Hz\ntimer-demo: ticks=100 latency ns min=1\n";
        assert_eq!(tsc_frequency(output), Some(999_888_777));
        assert_eq!(
            tsc_frequency("timer-demo: ticks=100 latency ns min=1"),
            None
        );
        assert_eq!(
            tsc_frequency("timer-demo: started on 8250 at 0x2f8, TSC fast Hz"),
            None
        );
    }

    fn script(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| format!("{SCRIPT_LINE}{l}")).collect()
    }

    #[test]
    fn reads_snapshots_rates_and_costs() {
        let stats = |irq: u64, gicd: u64| {
            format!(
                r#"[{{"cpu": 0, "total": 0, "traps": {{"irq": {irq}, "gicd": {gicd}}},
                  "instructions": {{"irq": {{"measured": 4, "instructions": 2000, "min": 400, "max": 700, "average": 500}}}}}},
                 {{"cpu": 1, "total": 0, "traps": {{"irq": 10, "gicd": 0}},
                  "instructions": {{"irq": {{"measured": 1, "instructions": 300, "min": 300, "max": 300, "average": 300}}}}}}]"#
            )
        };
        let before = stats(100, 5);
        let after = stats(300, 25);
        let mut lines = vec!["Linux boot noise".to_owned()];
        lines.extend(script(&[
            "cellvisor-demo: bench begin idle-before-clock",
            "cellvisor-initramfs: guest time 1.000000 s (62500000 ticks at 62500000 Hz)",
            "cellvisor-demo: bench end idle-before-clock status=0",
            "cellvisor-demo: bench begin idle-before",
        ]));
        lines.extend(script(&before.lines().collect::<Vec<_>>()));
        lines.extend(script(&[
            "cellvisor-demo: bench end idle-before status=0",
            "cellvisor-demo: bench begin idle-after-clock",
            "cellvisor-initramfs: guest time 11.000000 s (687500000 ticks at 62500000 Hz)",
            "cellvisor-demo: bench end idle-after-clock status=0",
            "cellvisor-demo: bench begin idle-after",
        ]));
        lines.extend(script(&after.lines().collect::<Vec<_>>()));
        lines.extend(script(&["cellvisor-demo: bench end idle-after status=0"]));
        let snapshots = Snapshots::parse(&lines).unwrap();
        let rates = snapshots.rates("idle").unwrap();
        assert_eq!(rates["irq"], json!(20.0));
        assert_eq!(rates["gicd"], json!(2.0));
        assert_eq!(rates["total"], json!(22.0));
        assert_eq!(rates["seconds"], json!(10.0));
        let costs = snapshots.costs("idle-after").unwrap();
        assert_eq!(
            costs["irq"],
            json!({"measured": 5, "average": 460.0, "min": 300, "max": 700})
        );
        assert!(snapshots.rates("busy").is_err());
    }

    #[test]
    fn figures_the_linux_cell_from_its_clock_and_its_stats() {
        let stats = |irq: u64| {
            format!(
                r#"[{{"cpu": 2, "total": 0, "traps": {{"irq": {irq}}}, "instructions": {{}}}},
                 {{"cpu": 3, "total": 0, "traps": {{"irq": {irq}}}, "instructions": {{}}}}]"#
            )
        };
        let clock = |name: &str, seconds: u32| {
            [
                format!("cellvisor-demo: bench begin {name}"),
                format!("cellvisor-initramfs: guest time {seconds}.000000 s (0 ticks at 1 Hz)"),
                format!("cellvisor-demo: bench end {name} status=0"),
            ]
        };
        let mut lines: Vec<String> = Vec::new();
        let mut add = |texts: &[String]| {
            lines.extend(script(
                &texts.iter().map(String::as_str).collect::<Vec<_>>(),
            ));
        };
        add(&clock("linux-clock", 40));
        add(&clock("linux-idle-before-clock", 60));
        for (name, irq) in [("linux-idle-before", 100), ("linux-idle-after", 150)] {
            add(&[format!("cellvisor-demo: bench begin {name}")]);
            add(&stats(irq).lines().map(str::to_owned).collect::<Vec<_>>());
            add(&[format!("cellvisor-demo: bench end {name} status=0")]);
        }
        add(&clock("linux-idle-after-clock", 70));
        let snapshots = Snapshots::parse(&lines).unwrap();
        // The cell's /init printed the clock 1.5 s after the command.
        let uart = "timer-demo: noise
cellvisor-initramfs: guest time 41.500000 s (0 ticks at 1 Hz)
";
        let figures = linux_cell_figures(&snapshots, uart, 1.0, Some(1.25)).unwrap();
        assert_eq!(figures["command_to_init_s"], json!(1.5));
        assert_eq!(figures["ratio"], json!(1.2));
        assert_eq!(figures["idle_traps_per_second"]["irq"], json!(10.0));
        assert_eq!(
            figures["idle_traps_per_second_per_cpu"],
            json!({"total": 5.0, "irq": 5.0})
        );
        // No /init line: an error that says so.
        let error = linux_cell_figures(&snapshots, "nothing", 1.0, None).unwrap_err();
        assert!(error.to_string().contains("no guest-clock line"), "{error}");
    }

    #[test]
    fn a_failed_snapshot_is_an_error() {
        let lines = script(&[
            "cellvisor-demo: bench begin info-root",
            "cellvisor: no management interface",
            "cellvisor-demo: bench end info-root status=1",
        ]);
        let error = Snapshots::parse(&lines).err().unwrap().to_string();
        assert!(error.contains("info-root failed"), "{error}");
    }

    #[test]
    fn reads_latency_summaries_and_the_banner() {
        let text = "timer-demo: ticks=100 latency ns min=1 avg=2 max=3\n\
                    timer-demo: samples=1000 latency ns min=384 avg=400.5 max=416 ticks min=24 avg=25 max=26\n";
        assert_eq!(
            Latency::find(text),
            Some(Latency {
                samples: 1000,
                min: 384.0,
                avg: 400.5,
                max: 416.0
            })
        );
        assert_eq!(Latency::find("timer-demo: ticks=10"), None);
        let banner = vec![
            "cellvisor: root cell \"linux\": 4 CPUs, 1008 MiB RAM, 9 device regions, stage 2 40-bit IPA in 8 table pages, GICv3".to_owned(),
        ];
        assert_eq!(root_banner(&banner).unwrap(), (1008, 8));
    }
}
