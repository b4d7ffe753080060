//! What each command does, over a [`Host`]: the management interface, CPU hotplug in the
//! root cell and the passing of time, so that host tests run every command against a fake
//! hypervisor.
//!
//! Errors name the cell, the action and the reason: `cell "demo": start: wrong cell state:
//! <the hypervisor's message>`.

use std::fmt::{self, Display};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use cellvisor_abi::{
    CellRecord, CellState, CpuStats, HypervisorInfo, TRAP_REASONS, TRAP_REASONS_X86,
};
use serde::Serialize;

use crate::cli::{CellCommand, Cli, Command, ConfigCommand};
use crate::client::Client;
use crate::config::{self, CellFile};
use crate::cpus::{cpus_of, CpuList, CpuState, Cpus};
use crate::device::Device;
use crate::reason;

/// How often a pending shutdown is asked about again.
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(10);
/// How much longer than its timeout a shutdown may stay pending before the tool gives up
/// (the hypervisor stops a cell that does not answer when the timeout expires).
const SHUTDOWN_GRACE_MS: u64 = 5000;
/// How often `console --follow` looks for new output.
pub const CONSOLE_POLL: Duration = Duration::from_millis(100);

/// What the commands work with besides files.
pub trait Host {
    /// Opens the hypervisor's management interface.
    fn open_device(&mut self) -> Result<Box<dyn Device>>;
    /// CPU hotplug in the root cell.
    fn cpus(&mut self) -> &mut dyn Cpus;
    /// Waits before polling again; `false` stops a `console --follow` (tests).
    fn pause(&mut self, duration: Duration) -> bool;
    /// Waits before asking about a pending shutdown again.
    fn sleep(&mut self, duration: Duration);
    /// The machine's device tree as the root cell's Linux got it (`/sys/firmware/fdt`).
    fn machine_tree(&mut self) -> Result<Vec<u8>> {
        fs::read("/sys/firmware/fdt")
            .map_err(|e| anyhow!("cannot read /sys/firmware/fdt: {}", reason(&e)))
    }
    /// The names of the trap reasons on this machine: [`TRAP_REASONS`] on Arm,
    /// [`TRAP_REASONS_X86`] on x86 (the architecture the tool was built for, which is the
    /// root cell's).
    fn trap_reasons(&self) -> &'static [&'static str] {
        if cfg!(target_arch = "x86_64") {
            &TRAP_REASONS_X86
        } else {
            &TRAP_REASONS
        }
    }
}

/// How a cell is named in messages: `cell "demo"`, or `cell 5` for an unknown id.
#[derive(Debug, Clone)]
struct Label(String);

impl Label {
    fn of(spec: &str) -> Self {
        match spec.parse::<u32>() {
            Ok(id) => Self(format!("cell {id}")),
            Err(_) => Self(format!("cell {spec:?}")),
        }
    }

    fn named(name: &str) -> Self {
        Self(format!("cell {name:?}"))
    }

    /// The error `<label>: <action>: <reason>`.
    fn error(&self, action: &str, reason: impl Display) -> anyhow::Error {
        anyhow!("{}: {action}: {reason}", self.0)
    }
}

impl Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs one command line; normal output goes to `out`, notes to `err`.
pub fn run(cli: Cli, host: &mut dyn Host, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    match cli.command {
        Command::Config(ConfigCommand::Check { system, cells }) => {
            let cells: Vec<&Path> = cells.iter().map(|c| c.as_path()).collect();
            config::check_files(&system, &cells, out)
        }
        Command::Info { json } => info(&mut open(host)?, json, out),
        Command::Console { follow } => console(host, follow, out, err),
        Command::Raw {
            command,
            args,
            data,
        } => raw(&mut open(host)?, command, &args, data.as_deref(), out),
        Command::Cell(command) => match command {
            CellCommand::Create { config } => create(host, &config, out),
            CellCommand::Load {
                cell,
                image,
                address,
                config,
            } => load(
                &mut open(host)?,
                &cell,
                &image,
                address,
                config.as_deref(),
                out,
            ),
            CellCommand::Start { cell } => start(&mut open(host)?, &cell, out),
            CellCommand::Linux {
                config,
                image,
                initrd,
                cmdline,
                dtb,
                raw,
                watch,
            } => linux(
                host,
                &LinuxArgs {
                    config: &config,
                    image: &image,
                    initrd: initrd.as_deref(),
                    cmdline: cmdline.as_deref(),
                    dtb: dtb.as_deref(),
                    raw,
                    watch,
                },
                out,
            ),
            CellCommand::Shutdown { cell, timeout_ms } => shutdown(host, &cell, timeout_ms, out),
            CellCommand::Destroy { cell } => destroy(host, &cell, out),
            CellCommand::List { json } => list(&mut open(host)?, json, out),
            CellCommand::Stats { cell, json } => {
                let names = host.trap_reasons();
                stats(&mut open(host)?, &cell, json, names, out)
            }
        },
    }
}

type Mgmt = Client<Box<dyn Device>>;

fn open(host: &mut dyn Host) -> Result<Mgmt> {
    Ok(Client::new(host.open_device()?)?)
}

/// The cells, for resolving names; `label` and `action` are for the error.
fn cells(client: &mut Mgmt, label: &Label, action: &str) -> Result<Vec<CellRecord>> {
    client
        .cell_list()
        .map_err(|r| label.error(action, format_args!("cannot list the cells: {r}")))
}

/// The cell a name or id stands for.
fn resolve(client: &mut Mgmt, spec: &str, action: &str) -> Result<(Label, CellRecord)> {
    let label = Label::of(spec);
    let cells = cells(client, &label, action)?;
    let by_id = spec
        .parse::<u32>()
        .ok()
        .and_then(|id| cells.iter().find(|c| c.id.get() == id));
    let found = by_id.or_else(|| cells.iter().find(|c| c.name() == spec));
    match found {
        Some(record) => Ok((Label::named(record.name()), *record)),
        None => {
            let names: Vec<String> = cells
                .iter()
                .map(|c| format!("{} ({})", c.name(), c.id.get()))
                .collect();
            Err(label.error(
                action,
                format_args!("no such cell (cells: {})", names.join(", ")),
            ))
        }
    }
}

/// `cell create`.
fn create(host: &mut dyn Host, path: &Path, out: &mut dyn Write) -> Result<()> {
    let file = config::load_cell(path).map_err(|e| anyhow!("cell create: {e:#}"))?;
    let label = Label::named(&file.config.cell.name);
    let action = "create";
    let mask = file.cpu_mask().map_err(|e| label.error(action, e))?;
    let mut client = open(host)?;
    if file.bytes.len() > client.window() {
        return Err(label.error(
            action,
            format_args!(
                "the configuration ({} bytes) does not fit the management data window ({} bytes)",
                file.bytes.len(),
                client.window()
            ),
        ));
    }
    let cells = cells(&mut client, &label, action)?;
    if let Some(existing) = cells.iter().find(|c| c.name() == file.config.cell.name) {
        return Err(label.error(
            action,
            format_args!("a cell with this name exists (id {})", existing.id.get()),
        ));
    }
    check_cpus_free(&cells, mask).map_err(|e| label.error(action, e))?;

    let offlined = take_offline(host.cpus(), mask).map_err(|e| label.error(action, e))?;
    match client.cell_create(&file.bytes) {
        Ok(id) => {
            writeln!(out, "{label} created (id {id}, CPUs {})", CpuList(mask))?;
            Ok(())
        }
        Err(refusal) => {
            let restored = bring_online(host.cpus(), &offlined);
            Err(label.error(action, format_args!("{refusal}{restored}")))
        }
    }
}

/// Fails unless every CPU of `mask` is the root cell's (the first record).
fn check_cpus_free(cells: &[CellRecord], mask: u64) -> Result<()> {
    let root = cells.iter().find(|c| c.id.get() == 0);
    for cpu in cpus_of(mask) {
        if root.is_some_and(|r| r.cpus.get() & (1 << cpu) != 0) {
            continue;
        }
        match cells.iter().find(|c| c.cpus.get() & (1 << cpu) != 0) {
            Some(owner) => bail!(
                "CPU {cpu} belongs to cell {:?} (id {}), not to the root cell",
                owner.name(),
                owner.id.get()
            ),
            None => bail!(
                "CPU {cpu} is not a CPU of the root cell{}",
                root.map(|r| format!(" {:?} (CPUs {})", r.name(), CpuList(r.cpus.get())))
                    .unwrap_or_default()
            ),
        }
    }
    Ok(())
}

/// Takes the CPUs of `mask` that are online in Linux offline; returns them. On failure the
/// ones already taken are brought back.
fn take_offline(cpus: &mut dyn Cpus, mask: u64) -> Result<Vec<u32>> {
    let mut offlined = Vec::new();
    for cpu in cpus_of(mask) {
        let outcome = match cpus.state(cpu) {
            Ok(CpuState::Online) => cpus.set_online(cpu, false).map(|()| {
                offlined.push(cpu);
            }),
            Ok(CpuState::Offline | CpuState::Absent) => Ok(()),
            Ok(CpuState::Fixed) => {
                let restored = bring_online(cpus, &offlined);
                bail!(
                    "CPU {cpu} cannot be taken offline in Linux (there is no {}){restored}",
                    cpus.control(cpu)
                );
            }
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            let restored = bring_online(cpus, &offlined);
            bail!(
                "cannot take CPU {cpu} offline in Linux ({}): {}{restored}",
                cpus.control(cpu),
                reason(&error)
            );
        }
    }
    Ok(offlined)
}

/// Brings `cpus` online again after a failure; returns a note for the error message if that
/// failed too.
fn bring_online(control: &mut dyn Cpus, cpus: &[u32]) -> String {
    let mut note = String::new();
    for &cpu in cpus.iter().rev() {
        if let Err(error) = control.set_online(cpu, true) {
            note.push_str(&format!(
                "; and CPU {cpu} could not be brought back online ({}): {}",
                control.control(cpu),
                reason(&error)
            ));
        }
    }
    note
}

/// `cell load`.
fn load(
    client: &mut Mgmt,
    spec: &str,
    image_path: &Path,
    address: Option<u64>,
    config_path: Option<&Path>,
    out: &mut dyn Write,
) -> Result<()> {
    let action = "load";
    let (label, record) = resolve(client, spec, action)?;
    let config = config_path
        .map(|path| -> Result<CellFile> {
            let file = config::load_cell(path).map_err(|e| label.error(action, e))?;
            if file.config.cell.name != record.name() {
                return Err(label.error(
                    action,
                    format_args!(
                        "{} describes cell {:?}",
                        path.display(),
                        file.config.cell.name
                    ),
                ));
            }
            Ok(file)
        })
        .transpose()?;
    let image = fs::read(image_path).map_err(|e| {
        label.error(
            action,
            format_args!("cannot read {}: {}", image_path.display(), reason(&e)),
        )
    })?;
    if image.is_empty() {
        return Err(label.error(action, format_args!("{} is empty", image_path.display())));
    }
    let address = match (address, &config) {
        (Some(address), _) => address,
        (None, Some(file)) => match file.loadable().next() {
            Some(region) => region.virt_start,
            None => {
                return Err(label.error(
                    action,
                    format_args!(
                        "{} has no loadable memory region",
                        config_path.unwrap_or(Path::new("")).display()
                    ),
                ))
            }
        },
        (None, None) => 0,
    };
    if let (Some(file), Some(path)) = (&config, config_path) {
        check_fits(file, path, address, image.len() as u64, image_path)
            .map_err(|e| label.error(action, e))?;
    }
    load_bytes(client, (&label, action), record.id.get(), address, &image)?;
    writeln!(
        out,
        "{label}: loaded {} ({} bytes) at {address:#x}",
        image_path.display(),
        image.len()
    )?;
    Ok(())
}

/// Copies `bytes` (`what`, for messages) into cell `id`'s memory at `address`, one data
/// window at a time.
fn load_bytes(
    client: &mut Mgmt,
    (label, action): (&Label, &str),
    id: u32,
    address: u64,
    bytes: &[u8],
) -> Result<()> {
    let chunk = client.window() & !7;
    if chunk == 0 {
        return Err(label.error(action, "the management data window is empty"));
    }
    for (index, part) in bytes.chunks(chunk).enumerate() {
        let offset = (index * chunk) as u64;
        client
            .cell_load(id, address + offset, part)
            .map_err(|refusal| {
                if offset == 0 {
                    label.error(action, refusal)
                } else {
                    label.error(
                        action,
                        format_args!(
                            "{refusal} (after {offset} of {} bytes, at {:#x})",
                            bytes.len(),
                            address + offset
                        ),
                    )
                }
            })?;
    }
    Ok(())
}

/// Fails unless `len` bytes at `address` lie in one loadable region of `file`.
fn check_fits(file: &CellFile, path: &Path, address: u64, len: u64, image: &Path) -> Result<()> {
    let Some(region) = file.loadable().find(|r| r.virt().contains(address)) else {
        let regions: Vec<String> = file.loadable().map(|r| r.virt().to_string()).collect();
        bail!(
            "address {address:#x} is in no loadable memory region of {} (loadable: {})",
            path.display(),
            if regions.is_empty() {
                "none".to_owned()
            } else {
                regions.join(", ")
            }
        );
    };
    let room = region.virt().end() - u128::from(address);
    if u128::from(len) > room {
        bail!(
            "image larger than its loadable region: {} is {len} bytes, but only {room} fit at \
             {address:#x} in {} of {}",
            image.display(),
            region.virt(),
            path.display()
        );
    }
    Ok(())
}

/// `cell start`.
fn start(client: &mut Mgmt, spec: &str, out: &mut dyn Write) -> Result<()> {
    let action = "start";
    let (label, record) = resolve(client, spec, action)?;
    client
        .cell_start(record.id.get())
        .map_err(|r| label.error(action, r))?;
    writeln!(out, "{label} started")?;
    Ok(())
}

/// The arguments of `cell linux`.
struct LinuxArgs<'a> {
    config: &'a Path,
    image: &'a Path,
    initrd: Option<&'a Path>,
    cmdline: Option<&'a str>,
    dtb: Option<&'a Path>,
    raw: bool,
    watch: bool,
}

/// Reads a file for `cell linux`; the error names it.
fn read_file(label: &Label, what: &str, path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| {
        label.error(
            "linux",
            format_args!("cannot read the {what} {}: {}", path.display(), reason(&e)),
        )
    })?;
    if bytes.is_empty() {
        return Err(label.error(
            "linux",
            format_args!("the {what} {} is empty", path.display()),
        ));
    }
    Ok(bytes)
}

/// `cell linux`: creates the cell, loads the kernel, the initramfs and the device tree,
/// starts the cell on its first CPU at the kernel with x0 = the tree. Whatever fails after
/// the create destroys the cell again.
fn linux(host: &mut dyn Host, args: &LinuxArgs<'_>, out: &mut dyn Write) -> Result<()> {
    use cellvisor_linux::arm64::{Image, Placement};
    let action = "linux";
    let file = config::load_cell(args.config).map_err(|e| anyhow!("cell linux: {e:#}"))?;
    let label = Label::named(&file.config.cell.name);
    if file.config.architecture != cellvisor_config::Architecture::Aarch64 {
        return Err(label.error(action, "Linux boots in Arm cells only (for now)"));
    }
    let image = read_file(&label, "kernel", args.image)?;
    let initrd = args
        .initrd
        .map(|path| read_file(&label, "initramfs", path))
        .transpose()?;
    let user_tree = args
        .dtb
        .map(|path| read_file(&label, "device tree", path))
        .transpose()?;
    // The RAM the kernel goes into: the largest loadable region.
    let ram = file
        .loadable()
        .filter(|r| !r.flags.intersects(cellvisor_config::MemoryFlags::IO))
        .max_by_key(|r| r.size)
        .map(|r| (r.virt_start, r.size))
        .ok_or_else(|| {
            label.error(
                action,
                format_args!("{} has no loadable RAM", args.config.display()),
            )
        })?;
    let description = match user_tree {
        Some(_) => None,
        None => {
            let machine = crate::linux::read_machine(&host.machine_tree()?)
                .map_err(|e| label.error(action, e))?;
            Some(crate::linux::describe(&machine, &file).map_err(|e| label.error(action, e))?)
        }
    };
    let default_cmdline = description
        .as_ref()
        .and_then(|d| d.console)
        .unwrap_or_default();
    let bootargs = args.cmdline.unwrap_or(default_cmdline);
    let initrd_size = initrd.as_ref().map_or(0, |i| i.len() as u64);
    // The generated tree's size does not depend on the addresses in it.
    let tree_size = match (&user_tree, &description) {
        (Some(tree), _) => tree.len() as u64,
        (None, Some(d)) => d
            .tree(bootargs, initrd.as_ref().map(|_| (0, initrd_size)))
            .map_err(|e| label.error(action, e))?
            .len() as u64,
        (None, None) => 0,
    };
    let placed = if args.raw {
        // The binary at the start of the RAM, the rest as for a kernel of its size.
        let raw = Image {
            text_offset: 0,
            image_size: image.len() as u64,
            flags: 0,
        };
        let mut placed = raw.place(ram, tree_size, initrd_size);
        if let Ok(p) = &mut placed {
            p.kernel = ram.0;
        }
        placed
    } else {
        Image::parse(&image).and_then(|kernel| kernel.place(ram, tree_size, initrd_size))
    }
    .map_err(|e| label.error(action, format_args!("{}: {e}", args.image.display())))?;
    let Placement {
        kernel,
        tree,
        initrd: initrd_at,
    } = placed;
    let tree_bytes = match (user_tree, &description) {
        (Some(tree), _) => tree,
        (None, Some(d)) => d
            .tree(bootargs, initrd_at)
            .map_err(|e| label.error(action, e))?,
        (None, None) => Vec::new(),
    };

    // A kernel rewrites its data and frees its initramfs: its reset cannot restart it in
    // place, so it stops the cell (state reset) for `--watch` to boot it again. A raw binary
    // is restarted in place: it must be able to start again from the memory it left
    // (raw-demo is).
    let restart = if args.raw {
        0
    } else {
        cellvisor_abi::start::NO_RESTART_IN_PLACE
    };
    let boot = Boot {
        parts: [
            Some((kernel, image.as_slice())),
            initrd
                .as_deref()
                .zip(initrd_at)
                .map(|(bytes, (at, _))| (at, bytes)),
            Some((tree, tree_bytes.as_slice())),
        ],
        flags: cellvisor_abi::start::BOOT_CPU_ONLY
            | cellvisor_abi::start::AT
            | cellvisor_abi::start::STOCK_OS
            | restart,
        entry: kernel,
        argument: tree,
    };

    create(host, args.config, out)?;
    let mut client = open(host)?;
    let (label, record) = resolve(&mut client, &file.config.cell.name, action)?;
    let id = record.id.get();
    let loaded = boot.run(&mut client, &label, id);
    // What follows opens the interface again (destroy, the watch): the lock goes first.
    drop(client);
    if let Err(error) = loaded {
        let undone = match destroy(host, &record.id.get().to_string(), &mut std::io::sink()) {
            Ok(()) => "; the cell was destroyed again".to_owned(),
            Err(e) => format!("; and destroying it failed: {e:#}"),
        };
        return Err(anyhow!("{error:#}{undone}"));
    }
    writeln!(
        out,
        "{label}: {} ({} bytes) at {kernel:#x}{}, device tree ({} bytes) at {tree:#x}",
        if args.raw { "binary" } else { "Linux" },
        image.len(),
        match initrd_at {
            Some((at, size)) => format!(", initramfs ({size} bytes) at {at:#x}"),
            None => String::new(),
        },
        tree_bytes.len()
    )?;
    writeln!(
        out,
        "{label} started on CPU {}",
        cpus_of(record.cpus.get()).next().unwrap_or(0)
    )?;
    if args.watch {
        watch(host, &boot, (&label, &file.config.cell.name), id, out)?;
    }
    Ok(())
}

/// What `cell linux` loads into the cell and how it starts it, kept to boot it again.
struct Boot<'a> {
    /// Kernel, initramfs and tree: guest address and bytes.
    parts: [Option<(u64, &'a [u8])>; 3],
    /// The start flags (`cellvisor_abi::start`).
    flags: u64,
    /// Where the boot CPU enters, and its x0.
    entry: u64,
    argument: u64,
}

impl Boot<'_> {
    /// Loads every part into cell `id` and starts it.
    fn run(&self, client: &mut Mgmt, label: &Label, id: u32) -> Result<()> {
        for (address, bytes) in self.parts.iter().flatten() {
            load_bytes(client, (label, "linux"), id, *address, bytes)?;
        }
        client
            .cell_start_with(id, self.flags, self.entry, self.argument)
            .map_err(|r| label.error("linux", r))
    }
}

/// How often `cell linux --watch` looks at the cell.
pub const WATCH_POLL: Duration = Duration::from_millis(200);

/// `cell linux --watch`: boots cell `id` named `name` again (the same parts, the same start)
/// each time it reset itself (state reset), until it shuts down, fails or is destroyed. The
/// cell is known by id and name: a destroyed cell's id goes to the next cell created.
fn watch(
    host: &mut dyn Host,
    boot: &Boot<'_>,
    (label, name): (&Label, &str),
    id: u32,
    out: &mut dyn Write,
) -> Result<()> {
    let action = "linux";
    let mut boots = 1u32;
    writeln!(out, "{label}: watching it (a reset boots it again)")?;
    out.flush()?;
    while host.pause(WATCH_POLL) {
        let mut client = open(host)?;
        let ours = |c: &CellRecord| c.id.get() == id && c.name() == name;
        let record = cells(&mut client, label, action)?.into_iter().find(ours);
        let Some(record) = record else {
            writeln!(out, "{label} is gone after {boots} boot(s): watch ends")?;
            return Ok(());
        };
        match CellState::from_raw(record.state.get()) {
            Some(CellState::Reset) => {
                boots += 1;
                if let Err(error) = boot.run(&mut client, label, id) {
                    // Destroyed meanwhile: what the watch waits for anyway.
                    let gone = !cells(&mut client, label, action)?.iter().any(ours);
                    if gone {
                        writeln!(out, "{label} is gone during boot {boots}: watch ends")?;
                        return Ok(());
                    }
                    return Err(anyhow!(
                        "{error:#} (boot {boots}, after the cell reset itself)"
                    ));
                }
                writeln!(out, "{label} reset itself: booted again (boot {boots})")?;
                out.flush()?;
            }
            Some(CellState::ShutDown) => {
                writeln!(out, "{label} shut down after {boots} boot(s): watch ends")?;
                return Ok(());
            }
            Some(CellState::Failed) => {
                return Err(label.error(
                    action,
                    format_args!("the cell failed (boot {boots}): watch ends"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `cell shutdown`.
fn shutdown(host: &mut dyn Host, spec: &str, timeout_ms: u64, out: &mut dyn Write) -> Result<()> {
    let action = "shutdown";
    let mut client = open(host)?;
    let (label, record) = resolve(&mut client, spec, action)?;
    let patience = timeout_ms.saturating_add(SHUTDOWN_GRACE_MS);
    let polls = patience / SHUTDOWN_POLL.as_millis() as u64;
    for _ in 0..=polls {
        if client
            .cell_shutdown(record.id.get(), timeout_ms)
            .map_err(|r| label.error(action, r))?
        {
            writeln!(out, "{label} shut down")?;
            return Ok(());
        }
        host.sleep(SHUTDOWN_POLL);
    }
    Err(label.error(
        action,
        format_args!(
            "still pending {patience} ms after the request (timeout {timeout_ms} ms): the \
             hypervisor did not stop the cell"
        ),
    ))
}

/// `cell destroy`.
fn destroy(host: &mut dyn Host, spec: &str, out: &mut dyn Write) -> Result<()> {
    let action = "destroy";
    let mut client = open(host)?;
    let (label, record) = resolve(&mut client, spec, action)?;
    if record.id.get() == 0 {
        return Err(label.error(action, "the root cell cannot be destroyed"));
    }
    client
        .cell_destroy(record.id.get())
        .map_err(|r| label.error(action, r))?;
    let mask = record.cpus.get();
    let cpus = host.cpus();
    let mut back = 0u64;
    let mut failures = Vec::new();
    for cpu in cpus_of(mask) {
        let outcome = match cpus.state(cpu) {
            Ok(CpuState::Offline) => cpus.set_online(cpu, true).map(|()| back |= 1 << cpu),
            Ok(CpuState::Online) => {
                back |= 1 << cpu;
                Ok(())
            }
            Ok(CpuState::Fixed | CpuState::Absent) => Ok(()),
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            failures.push(format!(
                "CPU {cpu} could not be brought online in Linux ({}): {}",
                cpus.control(cpu),
                reason(&error)
            ));
        }
    }
    if !failures.is_empty() {
        return Err(label.error(
            action,
            format_args!("destroyed, but {}", failures.join("; ")),
        ));
    }
    writeln!(
        out,
        "{label} destroyed (CPUs {} back to Linux)",
        CpuList(back)
    )?;
    Ok(())
}

/// Bytes for people: `16 MiB`, `1016 MiB`, `4 KiB`, `1000 bytes`.
fn size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    if bytes >= 1 << 20 {
        return format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
    }
    if bytes >= 1 << 10 {
        return format!("{:.1} KiB", bytes as f64 / f64::from(1 << 10));
    }
    format!("{bytes} bytes")
}

/// The state's name, or the raw value.
fn state_name(raw: u32) -> String {
    CellState::from_raw(raw).map_or_else(|| format!("state {raw}"), |s| s.name().to_owned())
}

/// A cell in `cell list --json`.
#[derive(Debug, Serialize)]
struct CellJson {
    id: u32,
    name: String,
    state: String,
    cpus: Vec<u32>,
    memory: u64,
}

/// Left-aligned columns separated by two spaces.
fn table(out: &mut dyn Write, rows: &[Vec<String>]) -> Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `cell list`.
fn list(client: &mut Mgmt, json: bool, out: &mut dyn Write) -> Result<()> {
    let cells = client.cell_list().map_err(|r| anyhow!("cell list: {r}"))?;
    if json {
        let cells: Vec<CellJson> = cells
            .iter()
            .map(|c| CellJson {
                id: c.id.get(),
                name: c.name().to_owned(),
                state: state_name(c.state.get()),
                cpus: cpus_of(c.cpus.get()).collect(),
                memory: c.memory.get(),
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&cells)?)?;
        return Ok(());
    }
    let mut rows = vec![["ID", "NAME", "STATE", "CPUS", "MEMORY"]
        .map(str::to_owned)
        .to_vec()];
    rows.extend(cells.iter().map(|c| {
        vec![
            c.id.get().to_string(),
            c.name().to_owned(),
            state_name(c.state.get()),
            CpuList(c.cpus.get()).to_string(),
            size(c.memory.get()),
        ]
    }));
    table(out, &rows)
}

/// The reasons of a stats record with their index, name (from `names`, `reasonN` beyond it)
/// and count; those `names` leaves empty (never counted on this architecture) are left out.
fn reasons(stats: &CpuStats, names: &[&str]) -> Vec<(usize, String, u64)> {
    let valid = (stats.reasons.get() as usize).min(stats.counts.len());
    stats.counts[..valid]
        .iter()
        .enumerate()
        .filter(|(i, _)| names.get(*i).is_none_or(|n| !n.is_empty()))
        .map(|(i, count)| {
            let name = names
                .get(i)
                .map_or_else(|| format!("reason{i}"), |n| (*n).to_owned());
            (i, name, count.get())
        })
        .collect()
}

/// The hypervisor instructions one trap reason cost on one CPU (or summed over CPUs).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
struct Cost {
    /// Traps measured.
    measured: u64,
    /// Instructions of the measured traps.
    instructions: u64,
    /// Fewest instructions of one trap.
    min: u64,
    /// Most instructions of one trap.
    max: u64,
}

impl Cost {
    /// Reason `i` of a stats record (`None` when no trap of it was measured).
    fn of(stats: &CpuStats, i: usize) -> Option<Self> {
        let measured = stats.measured.get(i)?.get();
        (measured > 0).then(|| Self {
            measured,
            instructions: stats.instructions[i].get(),
            min: u64::from(stats.min_instructions[i].get()),
            max: u64::from(stats.max_instructions[i].get()),
        })
    }

    /// The two together (both measured something: [`Cost::of`] makes no empty cost).
    fn add(self, other: Self) -> Self {
        Self {
            measured: self.measured + other.measured,
            instructions: self.instructions + other.instructions,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    /// Average instructions per measured trap, rounded.
    fn average(&self) -> u64 {
        (self.instructions + self.measured / 2) / self.measured.max(1)
    }
}

/// One CPU in `cell stats --json`.
#[derive(Debug, Serialize)]
struct CpuJson {
    cpu: u32,
    total: u64,
    traps: serde_json::Map<String, serde_json::Value>,
    /// Per reason: measured traps, their instructions, min, max and average.
    instructions: serde_json::Map<String, serde_json::Value>,
}

/// Reason name and cost of every measured reason of a stats record.
fn costs(stats: &CpuStats, names: &[&str]) -> Vec<(String, Cost)> {
    reasons(stats, names)
        .into_iter()
        .filter_map(|(i, name, _)| Cost::of(stats, i).map(|cost| (name, cost)))
        .collect()
}

/// `cell stats`, with the trap reasons named `names`.
fn stats(
    client: &mut Mgmt,
    spec: &str,
    json: bool,
    names: &[&str],
    out: &mut dyn Write,
) -> Result<()> {
    let action = "stats";
    let (label, record) = resolve(client, spec, action)?;
    let stats = client
        .cell_stats(record.id.get())
        .map_err(|r| label.error(action, r))?;
    let per_cpu: Vec<(u32, Vec<(String, u64)>)> = stats
        .iter()
        .map(|s| {
            let counts = reasons(s, names)
                .into_iter()
                .map(|(_, name, count)| (name, count))
                .collect();
            (s.cpu.get(), counts)
        })
        .collect();
    let reason_names = names;
    if json {
        let cpus: Vec<CpuJson> = per_cpu
            .iter()
            .zip(&stats)
            .map(|((cpu, counts), record)| CpuJson {
                cpu: *cpu,
                total: counts.iter().map(|(_, n)| n).sum(),
                traps: counts
                    .iter()
                    .map(|(name, n)| (name.clone(), (*n).into()))
                    .collect(),
                instructions: costs(record, reason_names)
                    .into_iter()
                    .map(|(name, cost)| {
                        let mut value = serde_json::to_value(cost).unwrap_or_default();
                        value["average"] = cost.average().into();
                        (name, value)
                    })
                    .collect(),
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&cpus)?)?;
        return Ok(());
    }
    let names: Vec<String> = per_cpu
        .iter()
        .max_by_key(|(_, counts)| counts.len())
        .map(|(_, counts)| counts.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let mut header = vec!["CPU".to_owned()];
    header.extend(names.iter().map(|n| n.to_uppercase()));
    header.push("TOTAL".to_owned());
    let mut rows = vec![header];
    for (cpu, counts) in &per_cpu {
        let mut row = vec![cpu.to_string()];
        row.extend((0..names.len()).map(|i| counts.get(i).map_or(0, |(_, n)| *n).to_string()));
        row.push(counts.iter().map(|(_, n)| n).sum::<u64>().to_string());
        rows.push(row);
    }
    writeln!(out, "{label}: traps by CPU and reason")?;
    table(out, &rows)?;

    // Instruction costs over all CPUs, in reason order.
    let mut total: Vec<(String, Cost)> = Vec::new();
    for (name, cost) in stats.iter().flat_map(|s| costs(s, reason_names)) {
        match total.iter_mut().find(|(n, _)| *n == name) {
            Some((_, sum)) => *sum = sum.add(cost),
            None => total.push((name, cost)),
        }
    }
    total.sort_by_key(|(name, _)| names.iter().position(|n| n == name));
    if total.is_empty() {
        return Ok(());
    }
    let mut rows = vec![["REASON", "MEASURED", "AVERAGE", "MIN", "MAX"]
        .map(str::to_owned)
        .to_vec()];
    for (name, cost) in &total {
        rows.push(vec![
            name.clone(),
            cost.measured.to_string(),
            cost.average().to_string(),
            cost.min.to_string(),
            cost.max.to_string(),
        ]);
    }
    writeln!(out, "{label}: hypervisor instructions per trap")?;
    table(out, &rows)
}

/// `info --json`.
#[derive(Debug, Serialize)]
struct InfoJson {
    version: u32,
    cpus: u32,
    cells: u32,
    memory_total: u64,
    memory_used: u64,
    memory_free: u64,
    root_table_pages: u32,
}

/// `info`.
fn info(client: &mut Mgmt, json: bool, out: &mut dyn Write) -> Result<()> {
    let info: HypervisorInfo = client.info().map_err(|r| anyhow!("info: {r}"))?;
    if json {
        let info = InfoJson {
            version: info.version.get(),
            cpus: info.cpus.get(),
            cells: info.cells.get(),
            memory_total: info.memory_total.get(),
            memory_used: info.memory_used.get(),
            memory_free: info.memory_free.get(),
            root_table_pages: info.root_table_pages.get(),
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "cellvisor management interface version {}",
        info.version.get()
    )?;
    writeln!(out, "CPUs:   {}", info.cpus.get())?;
    writeln!(out, "cells:  {} (the root cell included)", info.cells.get())?;
    writeln!(
        out,
        "memory: {} total, {} used, {} free (table-frame pool)",
        size(info.memory_total.get()),
        size(info.memory_used.get()),
        size(info.memory_free.get())
    )?;
    writeln!(
        out,
        "root cell stage 2: {} table pages",
        info.root_table_pages.get()
    )?;
    Ok(())
}

/// `raw`: one command with the register values as given; the data file, if any, goes into
/// the window first.
fn raw(
    client: &mut Mgmt,
    command: u32,
    args: &[u64],
    data: Option<&Path>,
    out: &mut dyn Write,
) -> Result<()> {
    let what = format!("raw command {command}");
    if let Some(path) = data {
        let bytes = fs::read(path)
            .map_err(|e| anyhow!("{what}: cannot read {}: {}", path.display(), reason(&e)))?;
        client.put(&bytes);
    }
    let mut registers = [0; 4];
    registers[..args.len()].copy_from_slice(args);
    let status = client
        .call_raw(command, registers)
        .map_err(|r| anyhow!("{what}: {r}"))?;
    writeln!(out, "{what}: status {status}")?;
    Ok(())
}

/// `console`: what the ring holds from its start; with `follow`, then what comes, until
/// [`Host::pause`] says stop.
fn console(
    host: &mut dyn Host,
    follow: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let mut client = open(host)?;
    let mut position = 0u64;
    loop {
        let (start, bytes) = client
            .console_read(position)
            .map_err(|r| anyhow!("console: {r}"))?;
        if start > position {
            writeln!(
                err,
                "cellvisor: console: {} bytes were overwritten before they could be read",
                start - position
            )?;
        }
        position = start + bytes.len() as u64;
        if !bytes.is_empty() {
            out.write_all(&bytes)?;
            out.flush()?;
            continue;
        }
        if !follow || !host.pause(CONSOLE_POLL) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(16 << 20), "16 MiB");
        assert_eq!(size(1016 << 20), "1016 MiB");
        assert_eq!(size(2 << 30), "2 GiB");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(1000), "1000 bytes");
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size((3 << 20) + 1), "3.0 MiB");
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &[
                vec!["ID".into(), "NAME".into(), "X".into()],
                vec!["10".into(), "a".into(), "yes".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID  NAME  X\n10  a     yes\n"
        );
    }
}
