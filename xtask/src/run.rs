//! `cargo xtask run`: boot a board in QEMU on this terminal, by default the hypervisor with
//! Debian's stock kernel as its root cell; `--no-linux` boots the hypervisor alone, `--bare`
//! the same Linux without the hypervisor. `cargo xtask boot-time` measures how much later
//! `/init` starts under the hypervisor than bare.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::board::{self, Board};
use crate::boot::{self, Boot, LinuxFiles};
use crate::image::{self, Kind};
use crate::initramfs::{self, Action};
use crate::linux::{self, Arch};
use crate::qemu::{self, Next, Options, Qemu, Stream};
use crate::traps::{Rates, TrapTable};
use crate::workspace::Workspace;

/// A Linux boot that prints nothing for this long has hung: TCG boots of the stock kernel
/// print a line at least every second or so.
pub const LINUX_SILENCE: Duration = Duration::from_secs(30);

/// `cargo xtask run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Board name, e.g. `qemu-arm64`.
    #[arg(long)]
    pub board: String,
    /// GIC version (one the board supports; its highest by default).
    #[arg(long, value_name = "VERSION")]
    pub gic: Option<u32>,
    /// Number of CPUs (the board's default otherwise).
    #[arg(long, value_name = "N")]
    pub smp: Option<u32>,
    /// QEMU CPU model, for boards whose CPU model is not fixed.
    #[arg(long, value_name = "MODEL")]
    pub cpu: Option<String>,
    /// RAM size, e.g. `2G`.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Stop QEMU after this many seconds and fail.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Boot the fault-injection image of the hypervisor instead.
    #[arg(long, conflicts_with = "bare")]
    pub fault_injection: bool,
    /// The root cell's kernel Image (default: Debian's, from `cargo xtask linux`).
    #[arg(long, value_name = "FILE", conflicts_with = "no_linux")]
    pub kernel: Option<PathBuf>,
    /// The root cell's initramfs (default: the one of `cargo xtask linux`).
    #[arg(long, value_name = "FILE", conflicts_with = "no_linux")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line, replacing the board's `linux-append` (add e.g.
    /// `cellvisor.actions=info,poweroff` to it; see xtask/src/initramfs.rs).
    #[arg(long, value_name = "ARGS", conflicts_with = "no_linux")]
    pub append: Option<String>,
    /// The device tree QEMU passes (default: the board's `linux-dtb`, or QEMU's own).
    #[arg(long, value_name = "FILE")]
    pub dtb: Option<PathBuf>,
    /// The system configuration: a .toml (compiled here) or a compiled .bin (default: the
    /// board's `system-config` for the GIC version).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["no_linux", "bare"])]
    pub config: Option<PathBuf>,
    /// Boot the hypervisor alone, without a root cell (bring-up).
    #[arg(long, conflicts_with = "bare")]
    pub no_linux: bool,
    /// Boot the same Linux without the hypervisor (the baseline to compare with).
    #[arg(long)]
    pub bare: bool,
    /// Deterministic execution: one instruction per nanosecond of guest time, idle time
    /// without waiting for the host clock, fixed guest random numbers
    /// (`-icount shift=0,sleep=off -seed 0`).
    #[arg(long)]
    pub icount: bool,
    /// Give the machine a second serial port (the demo cells' console: UART1) that writes
    /// to FILE.
    #[arg(long, value_name = "FILE")]
    pub serial2: Option<PathBuf>,
    /// The root cell creates and starts the demo cell (the timer demo on CPU 3) before its
    /// shell starts; the cell's UART goes to FILE of --serial2, or to
    /// target/run/<board>/demo-uart.log.
    #[arg(long, conflicts_with_all = ["no_linux", "bare"])]
    pub demo: bool,
    /// The root cell boots Linux in the cell of `config/linux.toml` (`cellvisor cell
    /// linux`: its own kernel, the base initramfs) before its shell starts; the cell's
    /// console goes to FILE of --serial2, or to target/run/<board>/demo-uart.log.
    #[arg(long, conflicts_with_all = ["no_linux", "bare", "demo"])]
    pub demo_linux: bool,
    /// Extra QEMU arguments, after `--`.
    #[arg(last = true, value_name = "QEMU ARGS")]
    pub qemu_args: Vec<String>,
}

/// What to boot, before the files are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The hypervisor alone.
    Hypervisor,
    /// Linux without the hypervisor.
    Bare,
    /// The hypervisor with Linux as its root cell.
    RootCell,
}

impl RunArgs {
    /// What the flags ask for on `board`: by default the root cell, or the hypervisor alone
    /// on boards that do not boot Linux.
    pub fn mode(&self, board: &Board) -> Result<Mode> {
        if self.no_linux {
            return Ok(Mode::Hypervisor);
        }
        if self.bare {
            return Ok(Mode::Bare);
        }
        if board.linux.is_some() || board.multiboot.is_some() {
            return Ok(Mode::RootCell);
        }
        let linux_flags = [
            ("--kernel", self.kernel.is_some()),
            ("--initrd", self.initrd.is_some()),
            ("--append", self.append.is_some()),
            ("--config", self.config.is_some()),
        ];
        if let Some((flag, _)) = linux_flags.iter().find(|(_, given)| *given) {
            // Says what is missing and that --no-linux exists.
            board.linux().context(*flag)?;
        }
        println!(
            "==> board {} does not boot Linux (no Linux keys in its [package.metadata.cellvisor]): booting the hypervisor alone",
            board.name
        );
        Ok(Mode::Hypervisor)
    }

    fn options(&self) -> Options {
        Options {
            gic: self.gic,
            smp: self.smp,
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            icount: self.icount,
        }
    }

    fn kind(&self) -> Kind {
        if self.fault_injection {
            Kind::FaultInjection
        } else {
            Kind::Normal
        }
    }
}

/// `path` as given on the command line, which was typed relative to `cwd` (the directory
/// `cargo xtask` was started in, not the workspace root the tasks run in).
fn user_path(cwd: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    }
}

/// `cargo xtask run`; `cwd` is the directory the command was started in.
pub fn run(workspace: &Workspace, cwd: &Path, args: RunArgs) -> Result<()> {
    let board = board::find(&workspace.boards, &args.board)?;
    let options = args.options();
    // Reject bad options and a missing QEMU before building or downloading.
    Qemu::new(board, &options, Path::new(""))?;
    qemu::require(&board.qemu)?;
    let mode = args.mode(board)?;
    let shown = |path: &Path| workspace.relative(path).to_owned();
    let dtb = match &args.dtb {
        Some(dtb) => {
            let dtb = user_path(cwd, dtb);
            boot::check_dtb("--dtb", &dtb)?;
            Some(shown(&dtb))
        }
        None => None,
    };

    let linux = match mode {
        Mode::Hypervisor => None,
        Mode::Bare | Mode::RootCell => {
            Some(linux_files(workspace, cwd, board, &args, dtb.clone())?)
        }
    };
    let boot = match mode {
        Mode::Hypervisor => {
            let image = image::build(workspace, board, args.kind())?;
            Boot::Hypervisor {
                image: shown(&image.bin),
                dtb,
            }
        }
        Mode::Bare => Boot::Bare(linux.expect("resolved above")),
        Mode::RootCell if board.multiboot.is_some() => {
            let image = image::build(workspace, board, args.kind())?;
            let config = match &args.config {
                Some(config) => compiled_config(workspace, board, &user_path(cwd, config))?,
                None => compiled_config(workspace, board, &board.dir.join(MULTIBOOT_CONFIG))?,
            };
            Boot::MultibootRootCell {
                image: shown(&image.bin),
                config: shown(&config),
                linux: linux.expect("resolved above"),
            }
        }
        Mode::RootCell => {
            let image = image::build(workspace, board, args.kind())?;
            let gic = board.require_gic(options.gic)?;
            let config = config_file(workspace, cwd, board, gic, &args)?;
            Boot::RootCell {
                image: shown(&image.bin),
                config: shown(&config),
                linux: linux.expect("resolved above"),
            }
        }
    };
    let mut qemu = boot.qemu(board, &options)?;
    let demo = args.demo || args.demo_linux;
    let serial2 = match (&args.serial2, demo) {
        (Some(file), _) => Some(user_path(cwd, file)),
        (None, true) => {
            let dir = workspace.target_dir.join("run").join(&board.name);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            Some(dir.join("demo-uart.log"))
        }
        (None, false) => None,
    };
    if let Some(file) = &serial2 {
        if demo {
            println!(
                "==> the demo cell's UART goes to {} (e.g. `tail -f` it in another terminal)",
                workspace.relative(file).display()
            );
        }
        qemu = qemu.second_serial(file);
    }
    qemu.args(args.qemu_args)
        .run_interactive(args.timeout.map(Duration::from_secs))
}

/// The kernel, initramfs, device tree and command line of a Linux boot: the flags', or the
/// board's and `cargo xtask linux`'s (fetched if missing).
fn linux_files(
    workspace: &Workspace,
    cwd: &Path,
    board: &Board,
    args: &RunArgs,
    dtb: Option<PathBuf>,
) -> Result<LinuxFiles> {
    let Some(arch) = Arch::of_target(&board.target) else {
        bail!(
            "board {}: no Linux guest for its target {} (--no-linux boots the hypervisor alone)",
            board.name,
            board.target
        );
    };
    let shown = |path: &Path| workspace.relative(path).to_owned();
    let append = match (&args.append, board.linux_append()) {
        (Some(append), _) => {
            check_actions("--append", append)?;
            append.clone()
        }
        (None, Some(append)) if args.demo => {
            append_with_actions(append, &[Action::Script(crate::scripts::Script::DemoStart)])
        }
        (None, Some(append)) if args.demo_linux => {
            append_with_actions(append, &[Action::Script(crate::scripts::Script::DemoLinux)])
        }
        (None, Some(append)) => append.to_owned(),
        (None, None) => bail!(
            "--bare: board {} has no `linux-append` in its [package.metadata.cellvisor] table: \
             pass --append",
            board.name
        ),
    };
    let kernel = args.kernel.as_deref().map(|p| user_path(cwd, p));
    let initrd = args.initrd.as_deref().map(|p| user_path(cwd, p));
    if let Some(kernel) = &kernel {
        boot::check_kernel("--kernel", kernel, arch)?;
    }
    if let Some(initrd) = &initrd {
        boot::require_file("--initrd", initrd)?;
    }
    let board_dtb = dtb.is_none() && board.linux.as_ref().is_some_and(|l| l.dtb.is_some());
    let files = if kernel.is_none() || initrd.is_none() || board_dtb {
        Some(linux::prepare_board(workspace, board, false)?.0)
    } else {
        None
    };
    let dtb = match (dtb, &files) {
        (Some(dtb), _) => Some(dtb),
        (None, Some(files)) if board.linux.is_some() => {
            boot::board_dtb(board, &files.dtbs)?.map(|d| shown(&d))
        }
        (None, _) => None,
    };
    let pick = |given: Option<PathBuf>, default: fn(&linux::Files) -> &Path| {
        given.unwrap_or_else(|| default(files.as_ref().expect("prepared above")).to_owned())
    };
    Ok(LinuxFiles {
        kernel: shown(&pick(kernel, |f| &f.image)),
        initrd: shown(&pick(initrd, |f| &f.initramfs)),
        dtb,
        append,
    })
}

/// The compiled system configuration to load: `--config` (a .toml is compiled into
/// `target/run/<board>/`), or the board's for the GIC version.
/// The system configuration of a board that boots by Multiboot, relative to its crate.
pub const MULTIBOOT_CONFIG: &str = "config/system.toml";

/// `path` (TOML or binary) compiled into `target/run/<board>/`, or the binary itself.
fn compiled_config(workspace: &Workspace, board: &Board, path: &Path) -> Result<PathBuf> {
    let (bytes, _) = boot::read_config("--config", path)?;
    if path.extension().is_some_and(|e| e == "bin") {
        return Ok(path.to_owned());
    }
    let dir = workspace.target_dir.join("run").join(&board.name);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut name = path.file_stem().unwrap_or_default().to_owned();
    name.push(".bin");
    let binary = dir.join(name);
    fs::write(&binary, &bytes).with_context(|| format!("cannot write {}", binary.display()))?;
    Ok(binary)
}

fn config_file(
    workspace: &Workspace,
    cwd: &Path,
    board: &Board,
    gic: u32,
    args: &RunArgs,
) -> Result<PathBuf> {
    let images = workspace.target_dir.join("images").join(&board.name);
    let (flag, path) = match &args.config {
        Some(config) => ("--config", user_path(cwd, config)),
        None if args.kind() == Kind::Normal => {
            ("system-config", boot::board_config(board, gic, &images)?)
        }
        // Only normal builds compile the board's configurations: compile the source here.
        None => ("system-config", board.system_config(gic, &images)?.0),
    };
    let (bytes, _) = boot::read_config(flag, &path)?;
    boot::check_config_size(flag, &path, bytes.len(), board)?;
    if path.extension().is_some_and(|e| e == "bin") {
        return Ok(path);
    }
    let dir = workspace.target_dir.join("run").join(&board.name);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut name = path.file_stem().unwrap_or_default().to_owned();
    name.push(".bin");
    let binary = dir.join(name);
    fs::write(&binary, &bytes).with_context(|| format!("cannot write {}", binary.display()))?;
    println!(
        "{}: {} compiled into {}",
        board.name,
        workspace.relative(&path).display(),
        workspace.relative(&binary).display()
    );
    Ok(binary)
}

/// Fails if a kernel command line has a `cellvisor.actions=` word that `/init` would not
/// understand.
fn check_actions(flag: &str, append: &str) -> Result<()> {
    for word in append.split_whitespace() {
        if let Some(actions) = initramfs::parse_actions_word(word) {
            actions.with_context(|| format!("{flag}: {word}"))?;
        }
    }
    Ok(())
}

/// The kernel command line of a measurement or test run: the board's, then the actions.
pub fn append_with_actions(base: &str, actions: &[Action]) -> String {
    let word = initramfs::actions_word(actions);
    if base.trim().is_empty() {
        word
    } else {
        format!("{} {word}", base.trim_end())
    }
}

/// `cargo xtask boot-time`.
#[derive(Debug, clap::Args)]
pub struct BootTimeArgs {
    /// Board name (default: every board that boots Linux).
    #[arg(long)]
    pub board: Option<String>,
    /// GIC version (default: every one the board supports).
    #[arg(long, value_name = "VERSION", requires = "board")]
    pub gic: Option<u32>,
    /// Seconds each boot may take.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Seconds of guest time the idle root cell sleeps (`sleep:SECS`); idle guest time costs
    /// little host time, and a longer sleep makes the rate less sensitive to the traps of the
    /// boot, which differ a little between the two boots.
    #[arg(long, value_name = "SECS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub idle: u32,
    /// Instead: boot each machine RUNS times bare and RUNS times as the root cell under QEMU's
    /// default multi-threaded TCG (no icount) with `cellvisor.actions=poweroff`, and print the
    /// host time from QEMU's start to `/init`: minimum, median and maximum.
    #[arg(long, value_name = "RUNS", value_parser = clap::value_parser!(u32).range(1..))]
    pub host_time: Option<u32>,
}

/// What `guest-clock` prints, up to the seconds.
const GUEST_TIME: &str = "cellvisor-initramfs: guest time ";

/// `cargo xtask boot-time`: boots Linux bare and as the root cell with
/// `-icount shift=0,sleep=off -seed 0` and `cellvisor.actions=clock,poweroff`, and prints the guest
/// time at which `/init` ran in both and their ratio; then boots the root cell once more with
/// `clock,sleep:10,poweroff` (`--idle` seconds) and prints the traps per second of the idle root cell: the
/// difference between the trap counters the hypervisor prints at power-off in the two root-cell
/// runs, over the difference of their times. Figures for notes, not a test.
pub fn boot_time(workspace: &Workspace, args: &BootTimeArgs) -> Result<()> {
    let boards = board::linux_boards(&workspace.boards, args.board.as_deref())?;
    if let Some(runs) = args.host_time {
        return host_boot_times(workspace, &boards, args, runs);
    }
    let runs = machines(&boards, args.gic)?;

    let arch = Arch::Arm64;
    let (files, versions) = linux::prepare(workspace, arch, false)?;
    let logs = workspace.target_dir.join("boot-time");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let timeout = Duration::from_secs(args.timeout);
    let plain = [Action::Clock, Action::Poweroff];
    let idle = [Action::Clock, Action::Sleep(args.idle), Action::Poweroff];
    let slept = format!("{}slept {} s", initramfs::PREFIX, args.idle);
    let mut report = String::new();
    let mut idle_report = String::new();
    let mut failures = 0;
    for (board, gic) in runs {
        let machine = Machine::new(workspace, board, gic, &files)?;
        let options = Options {
            gic: Some(gic),
            icount: true,
            ..Options::default()
        };
        // The bare boot, the root cell (A) and the idle root cell (B), with what B must print.
        let boots = [
            ("bare", machine.bare(&plain), None),
            ("root cell", machine.root_cell(&plain), None),
            ("root cell idle", machine.root_cell(&idle), Some(&slept)),
        ];
        let mut times = Vec::new();
        let mut tables = Vec::new();
        for (label, boot, expected) in boots {
            let qemu = boot.qemu(board, &options)?;
            let name = format!("{}-gicv{gic}-{}", board.name, label.replace(' ', "-"));
            let log = logs.join(format!("{name}.log"));
            println!("==> {name}: {qemu}");
            let shown_log = workspace.relative(&log).display();
            let root = matches!(boot, Boot::RootCell { .. });
            let measured = measure(&qemu, timeout, &log).and_then(|measured| {
                if let Some(expected) = expected {
                    if !measured.lines.iter().any(|l| l.contains(expected.as_str())) {
                        bail!("no line containing {expected:?}");
                    }
                }
                let table = if root {
                    let table = TrapTable::parse_last(&measured.lines)
                        .with_context(|| shown_log.to_string())?;
                    Some(table)
                } else {
                    None
                };
                Ok((measured.time, table))
            });
            match &measured {
                Ok((seconds, table)) => {
                    println!("    /init at {seconds:.6} s of guest time");
                    if let Some(table) = table {
                        println!(
                            "    trap counters at {:.3} s: {} traps on {} CPUs",
                            table.time,
                            table.total(),
                            table.rows.len()
                        );
                    }
                }
                Err(error) => {
                    failures += 1;
                    println!("    failed: {error:#} (console in {shown_log})");
                }
            }
            let (time, table) = measured.map_or((None, None), |(t, table)| (Some(t), table));
            times.push(time);
            tables.push(table);
        }
        let show =
            |time: Option<f64>| time.map_or_else(|| "failed".to_owned(), |t| format!("{t:.6} s"));
        let ratio = match (times[0], times[1]) {
            (Some(bare), Some(root)) if bare > 0.0 => format!("{:.3}", root / bare),
            _ => "-".to_owned(),
        };
        writeln!(
            report,
            "  {:<12} GICv{gic}  bare {:>12}  root cell {:>12}  ratio {ratio}",
            board.name,
            show(times[0]),
            show(times[1])
        )
        .expect("writing to a String");
        let rates = match (&tables[1], &tables[2]) {
            (Some(a), Some(b)) => match Rates::between(a, b) {
                Ok(rates) => format!("{} CPUs  idle root cell: {rates}", rates.cpus),
                Err(error) => {
                    failures += 1;
                    let error = format!("{error:#}");
                    println!("    failed: idle trap rates of {}: {error}", board.name);
                    format!("failed: {error}")
                }
            },
            _ => "failed: no trap counters (see above)".to_owned(),
        };
        writeln!(idle_report, "  {:<12} GICv{gic}  {rates}", board.name)
            .expect("writing to a String");
    }
    let idle = initramfs::actions_word(&idle);
    let plain = initramfs::actions_word(&plain);
    println!(
        "guest time at /init ({}, kernel {}):\n{report}\n\
         traps per second of guest time of the idle root cell (the trap counters at power-off \
         with {idle} minus those with {plain}, summed over the CPUs):\n{idle_report}",
        qemu::DETERMINISTIC.join(" "),
        versions.kernel_release
    );
    if failures > 0 {
        bail!("{failures} measurement(s) failed (see above)");
    }
    Ok(())
}

/// The machines `boot-time` boots: each board with the GIC versions asked for.
fn machines<'a>(boards: &[&'a Board], gic: Option<u32>) -> Result<Vec<(&'a Board, u32)>> {
    let mut runs = Vec::new();
    for &board in boards {
        qemu::require(&board.qemu)?;
        let gics = match gic {
            Some(gic) => {
                board.machine(Some(gic))?;
                vec![gic]
            }
            None => board.gic_versions.clone(),
        };
        runs.extend(gics.into_iter().map(|gic| (board, gic)));
    }
    Ok(runs)
}

/// What `boot-time` boots on one machine: the same kernel, initramfs, device tree and command
/// line bare and as the root cell of the board's image with its default configuration.
struct Machine {
    image: PathBuf,
    config: PathBuf,
    linux: LinuxFiles,
}

impl Machine {
    /// Builds the board's image (and its configurations) for GIC version `gic`.
    fn new(workspace: &Workspace, board: &Board, gic: u32, files: &linux::Files) -> Result<Self> {
        let shown = |path: &Path| workspace.relative(path).to_owned();
        let image = image::build(workspace, board, Kind::Normal)?;
        let images = workspace.target_dir.join("images").join(&board.name);
        let config = boot::board_config(board, gic, &images)?;
        Ok(Self {
            image: shown(&image.bin),
            config: shown(&config),
            linux: LinuxFiles {
                kernel: shown(&files.image),
                initrd: shown(&files.initramfs),
                dtb: boot::board_dtb(board, &files.dtbs)?.map(|d| shown(&d)),
                append: board.linux()?.append.clone(),
            },
        })
    }

    /// Its Linux with `/init` running `actions`.
    fn linux(&self, actions: &[Action]) -> LinuxFiles {
        LinuxFiles {
            append: append_with_actions(&self.linux.append, actions),
            ..self.linux.clone()
        }
    }

    fn bare(&self, actions: &[Action]) -> Boot {
        Boot::Bare(self.linux(actions))
    }

    fn root_cell(&self, actions: &[Action]) -> Boot {
        Boot::RootCell {
            image: self.image.clone(),
            config: self.config.clone(),
            linux: self.linux(actions),
        }
    }
}

/// `cargo xtask boot-time --host-time RUNS`: the host time from QEMU's start to `/init`,
/// bare and as the root cell, under QEMU's default multi-threaded TCG, `runs` boots of each.
fn host_boot_times(
    workspace: &Workspace,
    boards: &[&Board],
    args: &BootTimeArgs,
    runs: u32,
) -> Result<()> {
    let machines = machines(boards, args.gic)?;
    let (files, versions) = linux::prepare(workspace, Arch::Arm64, false)?;
    let logs = workspace.target_dir.join("boot-time");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let timeout = Duration::from_secs(args.timeout);
    let actions = [Action::Poweroff];
    let mut report = String::new();
    let mut failures = 0;
    for (board, gic) in machines {
        let machine = Machine::new(workspace, board, gic, &files)?;
        let options = Options {
            gic: Some(gic),
            ..Options::default()
        };
        let kinds = [
            ("bare", machine.bare(&actions)),
            ("root cell", machine.root_cell(&actions)),
        ];
        for (label, boot) in kinds {
            let qemu = boot.qemu(board, &options)?;
            println!("==> {} GICv{gic} {label}, {runs} boots: {qemu}", board.name);
            let mut times = Vec::new();
            for run in 1..=runs {
                let name = format!(
                    "{}-gicv{gic}-{}-host-{run}",
                    board.name,
                    label.replace(' ', "-")
                );
                let log = logs.join(format!("{name}.log"));
                match measure_host(&qemu, timeout, &log) {
                    Ok(time) => {
                        println!("    boot {run}: /init after {:.2} s", time.as_secs_f64());
                        times.push(time);
                    }
                    Err(error) => {
                        failures += 1;
                        println!(
                            "    boot {run} failed: {error:#} (console in {})",
                            workspace.relative(&log).display()
                        );
                    }
                }
            }
            times.sort();
            let seconds = |t: &Duration| format!("{:.2} s", t.as_secs_f64());
            let summary = match (times.first(), times.get(times.len() / 2), times.last()) {
                (Some(min), Some(median), Some(max)) if times.len() == runs as usize => format!(
                    "min {}  median {}  max {}",
                    seconds(min),
                    seconds(median),
                    seconds(max)
                ),
                _ => format!("{} of {runs} boots failed", runs as usize - times.len()),
            };
            writeln!(
                report,
                "  {:<12} GICv{gic}  {label:<9}  {summary}",
                board.name
            )
            .expect("writing to a String");
        }
    }
    println!(
        "host time from QEMU's start to /init, {runs} boots each, multi-threaded TCG, kernel \
         {}, {} host CPUs:\n{report}",
        versions.kernel_release,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    if failures > 0 {
        bail!("{failures} boot(s) failed (see above)");
    }
    Ok(())
}

/// Boots `qemu` until it exits by itself with status 0 and returns the host time from its
/// start to the first line with [`initramfs::MARKER`]; the console goes to `log`.
fn measure_host(qemu: &Qemu, timeout: Duration, log: &Path) -> Result<Duration> {
    let run = run_to_exit(qemu, timeout, LINUX_SILENCE, log)?;
    run.init
        .with_context(|| format!("no line containing {:?}", initramfs::MARKER))
}

/// What a boot of `boot-time` printed.
pub struct Measured {
    /// The guest time `guest-clock` printed.
    pub time: f64,
    /// The console's lines, QEMU's messages among them (as in the log).
    pub lines: Vec<String>,
}

/// Boots `qemu` until it exits and returns the guest time `guest-clock` printed, with the
/// console's lines; they also go to `log`.
pub fn measure(qemu: &Qemu, timeout: Duration, log: &Path) -> Result<Measured> {
    measure_with_silence(qemu, timeout, LINUX_SILENCE, log)
}

/// [`measure`] for a boot that may print nothing for up to `silence` (a silent workload).
pub fn measure_with_silence(
    qemu: &Qemu,
    timeout: Duration,
    silence: Duration,
    log: &Path,
) -> Result<Measured> {
    let run = run_to_exit(qemu, timeout, silence, log)?;
    match run.lines.iter().find_map(|line| guest_time(line)) {
        Some(time) => Ok(Measured {
            time,
            lines: run.lines,
        }),
        None => bail!("no line containing {GUEST_TIME:?}"),
    }
}

/// What a boot printed until QEMU exited by itself.
struct Run {
    /// The console's lines, QEMU's messages among them (as in the log).
    lines: Vec<String>,
    /// The host time from QEMU's start to the first line with [`initramfs::MARKER`].
    init: Option<Duration>,
}

/// Boots `qemu` until it exits by itself, which it must do with status 0 (a console silent
/// for `silence` or a boot longer than `timeout` fails); the console goes to `log`.
fn run_to_exit(qemu: &Qemu, timeout: Duration, silence: Duration, log: &Path) -> Result<Run> {
    let start = Instant::now();
    let mut console = qemu.spawn_console()?;
    let deadline = start + timeout;
    let mut last_output = start;
    let mut lines = Vec::new();
    let mut init = None;
    let outcome = loop {
        match console.next_line(deadline.min(last_output + silence)) {
            Next::Line(Stream::Stderr, line) => lines.push(format!("[qemu] {line}")),
            Next::Line(Stream::Console, line) => {
                last_output = Instant::now();
                if init.is_none() && line.contains(initramfs::MARKER) {
                    init = Some(last_output - start);
                }
                lines.push(line);
            }
            Next::Timeout if Instant::now() >= deadline => {
                break Err(anyhow::anyhow!("timed out after {} s", timeout.as_secs()))
            }
            Next::Timeout => {
                break Err(anyhow::anyhow!(
                    "no console output for {} s (hung?)",
                    silence.as_secs()
                ))
            }
            Next::Closed => break Ok(()),
        }
    };
    let status = console.kill();
    fs::write(log, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", log.display()))?;
    outcome?;
    match status {
        Some(status) if status.success() => Ok(Run { lines, init }),
        status => bail!(
            "QEMU exited with {}",
            status.map_or_else(|| "an unknown status".to_owned(), |s| s.to_string())
        ),
    }
}

/// The seconds of a `guest-clock` line.
pub fn guest_time(line: &str) -> Option<f64> {
    let rest = &line[line.find(GUEST_TIME)? + GUEST_TIME.len()..];
    rest.split_once(" s ")?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(["run"].iter().chain(args)).map(|cli| cli.run)
    }

    fn board(linux: bool) -> Board {
        let table = serde_json::json!({
            "board": "qemu-arm64",
            "target": "aarch64-unknown-none",
            "qemu": "qemu-system-aarch64",
            "machine": "virt,gic-version={gic}",
            "gic-versions": [2, 3],
            "smp": 4,
            "memory": "1G",
        });
        let mut table = table.as_object().unwrap().clone();
        if linux {
            table.insert("config-address".into(), 0x409c_0000u64.into());
            table.insert("kernel-address".into(), 0x40a0_0000u64.into());
            table.insert(
                "system-config".into(),
                "config/system-gicv{gic}.toml".into(),
            );
            table.insert("linux-append".into(), "console=ttyAMA0".into());
        }
        let package = serde_json::json!({
            "name": "cellvisor-board-qemu-arm64",
            "version": "0.1.0",
            "targets": [{"kind": ["bin"], "name": "cellvisor-qemu-arm64"}],
            "metadata": {"cellvisor": table},
        });
        Board::from_package(&package).unwrap().unwrap()
    }

    #[test]
    fn parses_the_flags() {
        let args = parse(&[
            "--board",
            "qemu-arm64",
            "--gic",
            "2",
            "--kernel",
            "k/Image",
            "--initrd",
            "i.gz",
            "--append",
            "console=ttyAMA0 quiet",
            "--dtb",
            "a.dtb",
            "--config",
            "s.toml",
            "--icount",
            "--",
            "-d",
            "int",
        ])
        .unwrap();
        assert_eq!(args.gic, Some(2));
        assert_eq!(args.kernel.as_deref(), Some(Path::new("k/Image")));
        assert_eq!(args.append.as_deref(), Some("console=ttyAMA0 quiet"));
        assert!(args.icount && !args.bare && !args.no_linux);
        assert_eq!(args.qemu_args, ["-d", "int"]);
        assert!(args.options().icount);
        assert_eq!(args.mode(&board(true)).unwrap(), Mode::RootCell);
    }

    #[test]
    fn picks_the_mode() {
        let bare = parse(&["--board", "b", "--bare", "--dtb", "a.dtb"]).unwrap();
        assert_eq!(bare.mode(&board(true)).unwrap(), Mode::Bare);
        let alone = parse(&["--board", "b", "--no-linux", "--dtb", "a.dtb"]).unwrap();
        assert_eq!(alone.mode(&board(true)).unwrap(), Mode::Hypervisor);
        // Boards without the Linux keys boot the hypervisor alone, unless Linux is asked for.
        let default = parse(&["--board", "b"]).unwrap();
        assert_eq!(default.mode(&board(false)).unwrap(), Mode::Hypervisor);
        let kernel = parse(&["--board", "b", "--kernel", "Image"]).unwrap();
        let error = format!("{:#}", kernel.mode(&board(false)).unwrap_err());
        assert!(
            error.starts_with("--kernel: board qemu-arm64 does not boot Linux"),
            "{error}"
        );
        assert!(error.contains("--no-linux"), "{error}");
    }

    #[test]
    fn rejects_conflicting_flags() {
        for args in [
            &["--board", "b", "--no-linux", "--bare"][..],
            &["--board", "b", "--no-linux", "--kernel", "Image"],
            &["--board", "b", "--no-linux", "--initrd", "i"],
            &["--board", "b", "--no-linux", "--append", "quiet"],
            &["--board", "b", "--no-linux", "--config", "c.toml"],
            &["--board", "b", "--bare", "--config", "c.toml"],
            &["--board", "b", "--bare", "--fault-injection"],
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains("cannot be used with"), "{args:?}: {error}");
        }
        assert!(parse(&["--board", "b", "--smp"]).is_err());
        assert!(parse(&["--board", "b", "--gic", "three"]).is_err());
    }

    #[test]
    fn resolves_paths_against_the_starting_directory() {
        let cwd = Path::new("/home/me/somewhere");
        assert_eq!(
            user_path(cwd, Path::new("Image")),
            Path::new("/home/me/somewhere/Image")
        );
        assert_eq!(
            user_path(cwd, Path::new("/abs/Image")),
            Path::new("/abs/Image")
        );
    }

    #[test]
    fn appends_the_actions() {
        let actions = [Action::Info, Action::Hotplug(3), Action::Poweroff];
        assert_eq!(
            append_with_actions("console=ttyAMA0 ", &actions),
            "console=ttyAMA0 cellvisor.actions=info,hotplug:3,poweroff"
        );
        assert_eq!(
            append_with_actions("", &[Action::Clock]),
            "cellvisor.actions=clock"
        );
    }

    #[test]
    fn checks_the_actions_of_the_command_line() {
        check_actions(
            "--append",
            "console=ttyAMA0 cellvisor.actions=info,hotplug:1",
        )
        .unwrap();
        check_actions("--append", "console=ttyAMA0 cellvisor.poweroff").unwrap();
        let error = check_actions("--append", "cellvisor.actions=info,hotplug:x").unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "--append: cellvisor.actions=info,hotplug:x: `hotplug:x`: \"x\" is no CPU number: \
             invalid digit found in string"
        );
    }

    #[derive(Debug, clap::Parser)]
    struct BootTimeCli {
        #[command(flatten)]
        args: BootTimeArgs,
    }

    #[test]
    fn parses_the_boot_time_flags() {
        let parse = |args: &[&str]| {
            BootTimeCli::try_parse_from(["boot-time"].iter().chain(args)).map(|cli| cli.args)
        };
        let default = parse(&[]).unwrap();
        assert_eq!((default.timeout, default.idle), (300, 100));
        assert!(default.board.is_none() && default.gic.is_none());
        let args = parse(&["--board", "zcu102", "--gic", "2", "--idle", "100"]).unwrap();
        assert_eq!(
            (args.board.as_deref(), args.gic, args.idle),
            (Some("zcu102"), Some(2), 100)
        );
        assert!(parse(&["--idle", "0"]).is_err());
        assert!(parse(&["--gic", "2"]).is_err(), "--gic needs --board");
    }

    #[test]
    fn reads_the_guest_time() {
        let line = "[    2.811673] cellvisor-initramfs: guest time 4.015434 s (250964680 ticks at 62500000 Hz)";
        assert_eq!(guest_time(line), Some(4.015434));
        assert_eq!(
            guest_time(
                "cellvisor-initramfs: guest time 0.964982 s (60311426 ticks at 62500000 Hz)"
            ),
            Some(0.964982)
        );
        assert_eq!(
            guest_time("cellvisor-initramfs: guest time unknown: CNTFRQ_EL0 is 0"),
            None
        );
        assert_eq!(guest_time("nothing"), None);
    }
}
