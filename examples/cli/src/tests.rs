//! Every command and its error paths against the fake hypervisor of `fake.rs`.

use std::cell::RefCell;
use std::fs;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use cellvisor_abi::{mgmt, CellState, Command};
use clap::Parser as _;

use crate::cli::Cli;
use crate::commands::{self, Host};
use crate::cpus::Cpus;
use crate::device::Device;
use crate::fake::{FakeCpus, FakeDevice, Machine, Vote, CELL_COST};

/// The QEMU board's demo cell: CPU 3, 16 MiB loadable at guest-physical 0.
const DEMO: &str = include_str!("../../../platforms/qemu-arm64/config/demo.toml");
const SYSTEM_GICV3: &str = include_str!("../../../platforms/qemu-arm64/config/system-gicv3.toml");

struct FakeHost {
    machine: Rc<RefCell<Machine>>,
    cpus: FakeCpus,
    /// `None`: no management interface (the error of a machine without the hypervisor).
    device: bool,
    /// Console output that appears at each pause of `console --follow`; it stops when empty.
    later: Vec<&'static str>,
    /// What happens to the newest cell at each coming pause, after `later`.
    states_later: Vec<Later>,
    /// Shutdown polls waited for.
    sleeps: usize,
    /// The tool built for x86 (its trap reason names).
    x86: bool,
    /// The machine's device tree (`None`: cannot be read).
    tree: Option<Vec<u8>>,
}

impl FakeHost {
    fn new(window: usize) -> Self {
        let machine = Machine::new(window);
        Self {
            cpus: FakeCpus(machine.clone()),
            machine,
            device: true,
            later: Vec::new(),
            states_later: Vec::new(),
            sleeps: 0,
            x86: false,
            tree: None,
        }
    }
}

/// What happens to a fake host's newest cell at a pause (`states_later`).
#[derive(Debug)]
enum Later {
    /// Its state changes (a reset, a shutdown, a failure).
    State(CellState),
    /// It is destroyed.
    Destroyed,
    /// It is destroyed and another cell, named so, gets its id and resets itself.
    Replaced(&'static str),
}

impl Host for FakeHost {
    fn open_device(&mut self) -> anyhow::Result<Box<dyn Device>> {
        if !self.device {
            anyhow::bail!("no cellvisor management interface in the device tree");
        }
        let mut machine = self.machine.borrow_mut();
        assert!(
            !machine.device_open,
            "the management interface opened while open: the real one would wait forever for its own lock"
        );
        machine.device_open = true;
        drop(machine);
        Ok(Box::new(FakeDevice(self.machine.clone())))
    }

    fn cpus(&mut self) -> &mut dyn Cpus {
        &mut self.cpus
    }

    fn sleep(&mut self, _: Duration) {
        self.sleeps += 1;
    }

    fn machine_tree(&mut self) -> anyhow::Result<Vec<u8>> {
        self.tree
            .clone()
            .ok_or_else(|| anyhow::anyhow!("cannot read /sys/firmware/fdt: No such file"))
    }

    fn trap_reasons(&self) -> &'static [&'static str] {
        if self.x86 {
            &cellvisor_abi::TRAP_REASONS_X86
        } else {
            &cellvisor_abi::TRAP_REASONS
        }
    }

    fn pause(&mut self, _: Duration) -> bool {
        if self.later.is_empty() {
            if self.states_later.is_empty() {
                return false;
            }
            let mut machine = self.machine.borrow_mut();
            let cells = &mut machine.hv.cells;
            let newest = cells.iter().map(|c| c.id).max().unwrap_or(0);
            let cell = cells.iter_mut().find(|c| c.id == newest && c.id != 0);
            match (self.states_later.remove(0), cell) {
                (Later::State(state), Some(cell)) => cell.state = state,
                (Later::Replaced(name), Some(cell)) => {
                    cell.name = name.into();
                    cell.state = CellState::Reset;
                }
                (Later::Destroyed, _) => cells.retain(|c| c.id != newest || c.id == 0),
                (_, None) => {}
            }
            return true;
        }
        let text = self.later.remove(0);
        self.machine.borrow_mut().hv.print(text);
        true
    }
}

/// What a command line did: its error (as `main` prints it), stdout and stderr.
#[derive(Debug)]
struct Outcome {
    error: Option<String>,
    out: String,
    err: String,
}

impl Outcome {
    #[track_caller]
    fn ok(self) -> String {
        assert!(self.error.is_none(), "{:?}", self.error);
        self.out
    }

    #[track_caller]
    fn fails(self) -> String {
        self.error.expect("the command should fail")
    }
}

fn run(host: &mut FakeHost, args: &[&str]) -> Outcome {
    let cli = Cli::try_parse_from(std::iter::once("cellvisor").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = commands::run(cli, host, &mut out, &mut err);
    Outcome {
        error: result.err().map(|e| format!("cellvisor: {e:#}")),
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

/// A scratch directory of this test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cellvisor-cli-{}-{test}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn file(dir: &std::path::Path, name: &str, content: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    path.display().to_string()
}

fn linux_online(host: &FakeHost) -> Vec<Option<bool>> {
    host.machine.borrow().linux.clone()
}

fn state(host: &FakeHost, id: u32) -> Option<CellState> {
    host.machine.borrow().hv.cell(id).map(|c| c.state)
}

#[test]
fn create_load_start_shutdown_destroy() {
    let dir = scratch("lifecycle");
    let demo = file(&dir, "demo.toml", DEMO);
    let image = file(&dir, "demo.bin", [0xaa; 100]);
    let mut host = FakeHost::new(0x1000);

    let out = run(&mut host, &["cell", "create", &demo]).ok();
    assert_eq!(out, "cell \"demo\" created (id 1, CPUs 3)\n");
    assert_eq!(
        linux_online(&host),
        [None, Some(true), Some(true), Some(false)]
    );
    assert_eq!(state(&host, 1), Some(CellState::Created));

    let out = run(&mut host, &["cell", "load", "demo", &image]).ok();
    assert_eq!(
        out,
        format!("cell \"demo\": loaded {image} (100 bytes) at 0x0\n")
    );
    assert_eq!(state(&host, 1), Some(CellState::Loaded));
    assert_eq!(
        run(&mut host, &["cell", "start", "demo"]).ok(),
        "cell \"demo\" started\n"
    );
    assert_eq!(state(&host, 1), Some(CellState::Running));

    let list = run(&mut host, &["cell", "list"]).ok();
    assert_eq!(
        list,
        "ID  NAME   STATE    CPUS  MEMORY\n\
         0   linux  running  0-2   1016 MiB\n\
         1   demo   running  3     16 MiB\n"
    );
    assert_eq!(
        run(&mut host, &["cell", "shutdown", "1"]).ok(),
        "cell \"demo\" shut down\n"
    );
    assert_eq!(state(&host, 1), Some(CellState::ShutDown));
    let out = run(&mut host, &["cell", "destroy", "demo"]).ok();
    assert_eq!(out, "cell \"demo\" destroyed (CPUs 3 back to Linux)\n");
    assert_eq!(
        linux_online(&host),
        [None, Some(true), Some(true), Some(true)]
    );
    assert_eq!(host.machine.borrow().hv.cells.len(), 1);
    assert_eq!(host.machine.borrow().hv.cells[0].cpus, 0b1111);
}

#[test]
fn creates_from_a_compiled_configuration() {
    let dir = scratch("binary");
    let (_, bytes) = cellvisor_config::host::compile_cell(&cellvisor_config::host::Source {
        name: "demo.toml",
        text: DEMO,
    })
    .unwrap();
    let demo = file(&dir, "demo.bin", &bytes);
    let mut host = FakeHost::new(0x1000);
    assert_eq!(
        run(&mut host, &["cell", "create", &demo]).ok(),
        "cell \"demo\" created (id 1, CPUs 3)\n"
    );
    // The hypervisor got exactly the binary.
    assert_eq!(host.machine.borrow().hv.cells[1].memory, 16 << 20);
}

#[test]
fn a_malformed_configuration_is_refused_before_anything_happens() {
    let dir = scratch("malformed");
    let bad = file(
        &dir,
        "bad.toml",
        DEMO.replace("size = 0xff_f000", "size = 0xff_e800"),
    );
    let mut host = FakeHost::new(0x1000);
    host.device = false;
    let error = run(&mut host, &["cell", "create", &bad]).fails();
    assert!(
        error.starts_with(&format!(
            "cellvisor: cell create: {bad} is no valid cell configuration (1 problem):\n  {bad}:"
        )),
        "{error}"
    );
    assert!(
        error.ends_with("memory region 0: size 0xffe800 is not page aligned"),
        "{error}"
    );
    assert_eq!(
        linux_online(&host),
        [None, Some(true), Some(true), Some(true)]
    );

    let syntax = file(&dir, "syntax.toml", "name = \"demo\"\ncpus = [3\n");
    let error = run(&mut host, &["cell", "create", &syntax]).fails();
    assert!(error.contains(&format!("{syntax}:")), "{error}");

    let system = file(&dir, "system.toml", SYSTEM_GICV3);
    let error = run(&mut host, &["cell", "create", &system]).fails();
    assert_eq!(
        error,
        format!(
            "cellvisor: cell create: {system} is a system configuration, not a cell configuration"
        )
    );
    let garbage = file(&dir, "garbage.bin", b"CVCF\x01\x00garbage");
    let error = run(&mut host, &["cell", "create", &garbage]).fails();
    assert!(
        error.starts_with(&format!(
            "cellvisor: cell create: {garbage} is no valid cell configuration: header: "
        )),
        "{error}"
    );
    let binary = file(&dir, "binary.toml", [0xff, 0xfe, 0]);
    let error = run(&mut host, &["cell", "create", &binary]).fails();
    assert!(error.contains("neither a TOML configuration"), "{error}");
    let error = run(&mut host, &["cell", "create", "/nonexistent/demo.toml"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell create: /nonexistent/demo.toml: cannot be read: No such file or directory"
    );
    assert!(host.machine.borrow().hv.commands.is_empty());
}

#[test]
fn no_management_interface() {
    let mut host = FakeHost::new(0x1000);
    host.device = false;
    let error = run(&mut host, &["cell", "list"]).fails();
    assert_eq!(
        error,
        "cellvisor: no cellvisor management interface in the device tree"
    );
    let mut host = FakeHost::new(0x1000);
    host.machine.borrow_mut().hv.magic = 0xffff_ffff;
    let error = run(&mut host, &["info"]).fails();
    assert!(error.contains("magic 0xffffffff, not \"CVMG\""), "{error}");
    let mut host = FakeHost::new(0x1000);
    host.machine.borrow_mut().hv.version = 1;
    let error = run(&mut host, &["info"]).fails();
    assert!(error.contains("version 1, this tool version 2"), "{error}");
}

#[test]
fn creating_twice_or_with_foreign_cpus_touches_no_cpu() {
    let dir = scratch("cpus");
    let demo = file(&dir, "demo.toml", DEMO);
    let mut host = FakeHost::new(0x1000);
    run(&mut host, &["cell", "create", &demo]).ok();
    let error = run(&mut host, &["cell", "create", &demo]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": create: a cell with this name exists (id 1)"
    );
    let other = file(&dir, "other.toml", DEMO.replace("\"demo\"", "\"other\""));
    let error = run(&mut host, &["cell", "create", &other]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"other\": create: CPU 3 belongs to cell \"demo\" (id 1), not to the root cell"
    );
    let far = file(
        &dir,
        "far.toml",
        DEMO.replace("\"demo\"", "\"far\"")
            .replace("cpus = [3]", "cpus = [5]"),
    );
    let error = run(&mut host, &["cell", "create", &far]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"far\": create: CPU 5 is not a CPU of the root cell \"linux\" (CPUs 0-2)"
    );
    assert_eq!(
        linux_online(&host),
        [None, Some(true), Some(true), Some(false)]
    );
}

#[test]
fn a_refused_create_gives_the_cpus_back() {
    let dir = scratch("refused");
    let two = file(
        &dir,
        "two.toml",
        DEMO.replace("cpus = [3]", "cpus = [2, 3]"),
    );
    let mut host = FakeHost::new(0x1000);
    host.machine.borrow_mut().hv.memory_free = CELL_COST - 1;
    let error = run(&mut host, &["cell", "create", &two]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": create: hypervisor out of memory: cell \"demo\": no table \
         frames left for its stage 2"
    );
    assert_eq!(
        linux_online(&host),
        [None, Some(true), Some(true), Some(true)]
    );

    // The hypervisor's own CPU check: a CPU the root cell gave away behind the tool's back.
    host.machine.borrow_mut().hv.memory_free = 1 << 20;
    host.machine.borrow_mut().hv.cells[0].cpus = 0b1011;
    let error = run(&mut host, &["cell", "create", &two]).fails();
    assert!(
        error.contains("CPU 2 is not a CPU of the root cell"),
        "{error}"
    );
}

#[test]
fn hotplug_failures_are_undone_and_explained() {
    let dir = scratch("hotplug");
    let two = file(
        &dir,
        "two.toml",
        DEMO.replace("cpus = [3]", "cpus = [2, 3]"),
    );
    let mut host = FakeHost::new(0x1000);
    host.machine.borrow_mut().busy_cpu = Some(3);
    let error = run(&mut host, &["cell", "create", &two]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": create: cannot take CPU 3 offline in Linux \
         (/sys/devices/system/cpu/cpu3/online): Device or resource busy"
    );
    assert_eq!(
        linux_online(&host),
        [None, Some(true), Some(true), Some(true)]
    );
    assert!(host
        .machine
        .borrow()
        .hv
        .commands
        .iter()
        .all(|c| *c == Command::CellList));

    let zero = file(&dir, "zero.toml", DEMO.replace("cpus = [3]", "cpus = [0]"));
    let mut host = FakeHost::new(0x1000);
    let error = run(&mut host, &["cell", "create", &zero]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": create: CPU 0 cannot be taken offline in Linux (there is no \
         /sys/devices/system/cpu/cpu0/online)"
    );

    // A CPU that stays offline after destroy is reported, the cell is gone all the same.
    let demo = file(&dir, "demo.toml", DEMO);
    let mut host = FakeHost::new(0x1000);
    run(&mut host, &["cell", "create", &demo]).ok();
    host.machine.borrow_mut().busy_cpu = Some(3);
    let error = run(&mut host, &["cell", "destroy", "demo"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": destroy: destroyed, but CPU 3 could not be brought online in \
         Linux (/sys/devices/system/cpu/cpu3/online): Device or resource busy"
    );
    assert_eq!(host.machine.borrow().hv.cells.len(), 1);
}

#[test]
fn the_hypervisor_checks_that_cpus_are_offline() {
    // A cell whose CPU Linux cannot see is refused by the hypervisor when it is online there.
    let dir = scratch("busy");
    let demo = file(&dir, "demo.toml", DEMO);
    let mut host = FakeHost::new(0x1000);
    // Linux does not list CPU 3 (absent), but the hypervisor thinks it is online.
    host.machine.borrow_mut().linux.truncate(3);
    let error = run(&mut host, &["cell", "create", &demo]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": create: CPU not offline in the root cell: cell \"demo\": CPU 3 \
         is still online in the root cell"
    );
}

#[test]
fn loads_in_chunks_where_the_configuration_says() {
    let dir = scratch("chunks");
    let demo = file(
        &dir,
        "demo.toml",
        DEMO.replace("virt = 0\n", "virt = 0x1000_0000\n"),
    );
    let image: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let image_path = file(&dir, "image.bin", &image);
    let mut host = FakeHost::new(0x1000);
    run(&mut host, &["cell", "create", &demo]).ok();
    let out = run(
        &mut host,
        &["cell", "load", "demo", &image_path, "--config", &demo],
    )
    .ok();
    assert_eq!(
        out,
        format!("cell \"demo\": loaded {image_path} (10000 bytes) at 0x10000000\n")
    );
    let machine = host.machine.borrow();
    let loads = machine
        .hv
        .commands
        .iter()
        .filter(|c| **c == Command::CellLoad)
        .count();
    assert_eq!(loads, 3);
    let (start, memory) = &machine.hv.cell(1).unwrap().loadable[0];
    assert_eq!(*start, 0x1000_0000);
    assert_eq!(&memory[..10_000], &image[..]);
    drop(machine);

    // An explicit address wins.
    let out = run(
        &mut host,
        &[
            "cell",
            "load",
            "1",
            &image_path,
            "--config",
            &demo,
            "--address",
            "0x1000_2000",
        ],
    )
    .ok();
    assert!(out.ends_with("at 0x10002000\n"), "{out}");
}

#[test]
fn load_errors() {
    let dir = scratch("load-errors");
    let demo = file(&dir, "demo.toml", DEMO);
    let small = file(&dir, "small.bin", [1; 64]);
    let empty = file(&dir, "empty.bin", []);
    let mut host = FakeHost::new(0x1000);

    let error = run(&mut host, &["cell", "load", "demo", &small]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": load: no such cell (cells: linux (0))"
    );
    run(&mut host, &["cell", "create", &demo]).ok();

    // Larger than the region: found from the configuration, or by the hypervisor.
    let error = run(
        &mut host,
        &[
            "cell",
            "load",
            "demo",
            &small,
            "--config",
            &demo,
            "--address",
            "0xffefe0",
        ],
    )
    .fails();
    assert_eq!(
        error,
        format!(
            "cellvisor: cell \"demo\": load: image larger than its loadable region: {small} is \
             64 bytes, but only 32 fit at 0xffefe0 in [0x0, 0xfff000) of {demo}"
        )
    );
    let error = run(
        &mut host,
        &["cell", "load", "demo", &small, "--address", "0xffefe0"],
    )
    .fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": load: image larger than its loadable region: cell \"demo\": \
         64 bytes at 0xffefe0 end beyond the region at 0x0 of 0xfff000 bytes"
    );
    let error = run(
        &mut host,
        &[
            "cell",
            "load",
            "demo",
            &small,
            "--config",
            &demo,
            "--address",
            "0x8000_0000",
        ],
    )
    .fails();
    assert!(
        error.contains("address 0x80000000 is in no loadable memory region of")
            && error.ends_with("(loadable: [0x0, 0xfff000))"),
        "{error}"
    );
    let error = run(&mut host, &["cell", "load", "demo", &empty]).fails();
    assert_eq!(
        error,
        format!("cellvisor: cell \"demo\": load: {empty} is empty")
    );
    let error = run(&mut host, &["cell", "load", "demo", "/nonexistent.bin"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": load: cannot read /nonexistent.bin: No such file or directory"
    );
    let other = file(&dir, "other.toml", DEMO.replace("\"demo\"", "\"other\""));
    let error = run(
        &mut host,
        &["cell", "load", "demo", &small, "--config", &other],
    )
    .fails();
    assert_eq!(
        error,
        format!("cellvisor: cell \"demo\": load: {other} describes cell \"other\"")
    );
    let image = file(&dir, "big.bin", vec![0; 0x1800]);
    let error = run(
        &mut host,
        &["cell", "load", "demo", &image, "--address", "0xffe000"],
    )
    .fails();
    assert!(
        error.ends_with("(after 4096 of 6144 bytes, at 0xfff000)"),
        "{error}"
    );

    // The partial load above loaded something: the cell starts; then no more loads.
    assert_eq!(state(&host, 1), Some(CellState::Loaded));
    run(&mut host, &["cell", "start", "demo"]).ok();
    let error = run(&mut host, &["cell", "load", "demo", &small]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": load: wrong cell state: cell \"demo\" is running: images are \
         loaded before start"
    );
}

#[test]
fn start_before_load_is_a_state_error() {
    let dir = scratch("start");
    let demo = file(&dir, "demo.toml", DEMO);
    let mut host = FakeHost::new(0x1000);
    run(&mut host, &["cell", "create", &demo]).ok();
    let error = run(&mut host, &["cell", "start", "demo"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": start: wrong cell state: cell \"demo\" has no image loaded"
    );
    let error = run(&mut host, &["cell", "start", "7"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell 7: start: no such cell (cells: linux (0), demo (1))"
    );
}

#[test]
fn shutdown_refused_then_approved() {
    let dir = scratch("shutdown");
    let demo = file(&dir, "demo.toml", DEMO);
    let image = file(&dir, "demo.bin", [1; 8]);
    let mut host = FakeHost::new(0x1000);
    run(&mut host, &["cell", "create", &demo]).ok();
    run(&mut host, &["cell", "load", "demo", &image]).ok();
    run(&mut host, &["cell", "start", "demo"]).ok();
    host.machine.borrow_mut().hv.cells[1].votes = [Vote::Refuse, Vote::Pending(3)].into();
    let error = run(&mut host, &["cell", "shutdown", "demo"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": shutdown: the cell refused to shut down: cell \"demo\" voted \
         against its shutdown"
    );
    assert_eq!(state(&host, 1), Some(CellState::Running));
    assert_eq!(
        run(
            &mut host,
            &["cell", "shutdown", "demo", "--timeout-ms", "100"]
        )
        .ok(),
        "cell \"demo\" shut down\n"
    );
    let shutdowns = host
        .machine
        .borrow()
        .hv
        .commands
        .iter()
        .filter(|c| **c == Command::CellShutdown)
        .count();
    assert_eq!(shutdowns, 1 + 4);
    assert_eq!(host.sleeps, 3);
    assert_eq!(state(&host, 1), Some(CellState::ShutDown));

    // A hypervisor that never stops the cell: the tool gives up.
    run(&mut host, &["cell", "start", "demo"]).ok();
    host.machine.borrow_mut().hv.cells[1].votes = [Vote::Pending(u32::MAX)].into();
    let error = run(
        &mut host,
        &["cell", "shutdown", "demo", "--timeout-ms", "0"],
    )
    .fails();
    assert!(
        error.starts_with(
            "cellvisor: cell \"demo\": shutdown: still pending 5000 ms after the request"
        ),
        "{error}"
    );
    assert_eq!(host.sleeps, 3 + 501);

    let error = run(&mut host, &["cell", "shutdown", "linux"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"linux\": shutdown: operation denied: the root cell cannot be shut down"
    );
}

#[test]
fn destroy_twice_and_the_root_cell() {
    let dir = scratch("destroy");
    let demo = file(&dir, "demo.toml", DEMO);
    let mut host = FakeHost::new(0x1000);
    run(&mut host, &["cell", "create", &demo]).ok();
    run(&mut host, &["cell", "destroy", "demo"]).ok();
    let error = run(&mut host, &["cell", "destroy", "demo"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"demo\": destroy: no such cell (cells: linux (0))"
    );
    let error = run(&mut host, &["cell", "destroy", "0"]).fails();
    assert_eq!(
        error,
        "cellvisor: cell \"linux\": destroy: the root cell cannot be destroyed"
    );
    assert!(
        !host
            .machine
            .borrow()
            .hv
            .commands
            .contains(&Command::CellDestroy)
            || host.machine.borrow().hv.cells.len() == 1
    );
}

#[test]
fn cycles_return_every_byte() {
    let dir = scratch("cycles");
    let demo = file(&dir, "demo.toml", DEMO);
    let image = file(&dir, "demo.bin", [3; 256]);
    let mut host = FakeHost::new(0x1000);
    let free = |host: &mut FakeHost| {
        let out = run(host, &["info", "--json"]).ok();
        let info: serde_json::Value = serde_json::from_str(&out).unwrap();
        info["memory_free"].as_u64().unwrap()
    };
    let before = free(&mut host);
    for _ in 0..20 {
        run(&mut host, &["cell", "create", &demo]).ok();
        assert_eq!(free(&mut host), before - CELL_COST);
        run(&mut host, &["cell", "load", "demo", &image]).ok();
        run(&mut host, &["cell", "start", "demo"]).ok();
        run(&mut host, &["cell", "destroy", "demo"]).ok();
    }
    assert_eq!(free(&mut host), before);
    assert_eq!(
        linux_online(&host),
        [None, Some(true), Some(true), Some(true)]
    );
}

#[test]
fn lists_and_stats_as_json() {
    let dir = scratch("json");
    let demo = file(&dir, "demo.toml", DEMO);
    let mut host = FakeHost::new(0x1000);
    run(&mut host, &["cell", "create", &demo]).ok();
    let out = run(&mut host, &["cell", "list", "--json"]).ok();
    let cells: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        cells,
        serde_json::json!([
            {"id": 0, "name": "linux", "state": "running", "cpus": [0, 1, 2], "memory": 1016u64 << 20},
            {"id": 1, "name": "demo", "state": "created", "cpus": [3], "memory": 16u64 << 20},
        ])
    );
    let out = run(&mut host, &["cell", "stats", "demo"]).ok();
    assert_eq!(
        out,
        "cell \"demo\": traps by CPU and reason\n\
         CPU  IRQ  MAINTENANCE  GICD  GICR  SGI  SYSREG  PSCI  SMCCC  MGMT  OUTSIDE  OTHER  TOTAL\n\
         3    300  301          302   303   304  305     306   307    308   309      310    3355\n\
         cell \"demo\": hypervisor instructions per trap\n\
         REASON       MEASURED  AVERAGE  MIN  MAX\n\
         irq          10        200      100  300\n\
         maintenance  1         150      150  150\n"
    );
    let out = run(&mut host, &["cell", "stats", "1", "--json"]).ok();
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["cpu"], 3);
    assert_eq!(stats[0]["total"], 3355);
    assert_eq!(stats[0]["traps"]["outside"], 309);
    assert_eq!(
        stats[0]["instructions"]["irq"],
        serde_json::json!({"measured": 10, "instructions": 2000, "min": 100, "max": 300, "average": 200})
    );
    assert!(stats[0]["instructions"].get("gicd").is_none());
    let error = run(&mut host, &["cell", "stats", "nope"]).fails();
    assert!(
        error.starts_with("cellvisor: cell \"nope\": stats: no such cell"),
        "{error}"
    );
}

#[test]
fn stats_name_the_reasons_as_x86_counts_them() {
    let dir = scratch("x86-stats");
    let demo = file(&dir, "demo.toml", DEMO);
    let mut host = FakeHost::new(0x1000);
    host.x86 = true;
    run(&mut host, &["cell", "create", &demo]).ok();
    // No GIC maintenance interrupt and no PSCI on x86: those columns go.
    let out = run(&mut host, &["cell", "stats", "demo"]).ok();
    assert_eq!(
        out,
        "cell \"demo\": traps by CPU and reason\n\
         CPU  NMI  IOAPIC  LAPIC  ICR  CPUID-MSR  VIRT  MGMT  OUTSIDE  OTHER  TOTAL\n\
         3    300  302     303    304  305        307   308   309      310    2748\n\
         cell \"demo\": hypervisor instructions per trap\n\
         REASON  MEASURED  AVERAGE  MIN  MAX\n\
         nmi     10        200      100  300\n"
    );
    let out = run(&mut host, &["cell", "stats", "demo", "--json"]).ok();
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["traps"]["lapic"], 303);
    assert!(stats[0]["traps"].get("maintenance").is_none());
    assert_eq!(stats[0]["instructions"]["nmi"]["measured"], 10);
}

#[test]
fn info_for_people() {
    let mut host = FakeHost::new(0x1000);
    assert_eq!(
        run(&mut host, &["info"]).ok(),
        "cellvisor management interface version 2\n\
         CPUs:   4\n\
         cells:  1 (the root cell included)\n\
         memory: 8 MiB total, 3 MiB used, 5 MiB free (table-frame pool)\n\
         root cell stage 2: 7 table pages\n"
    );
}

#[test]
fn console_reads_the_ring_and_follows() {
    let mut host = FakeHost::new(64);
    host.machine
        .borrow_mut()
        .hv
        .print("cellvisor: hello\ncellvisor: a line longer than the window, read in parts\n");
    let out = run(&mut host, &["console"]).ok();
    assert_eq!(
        out,
        "cellvisor: hello\ncellvisor: a line longer than the window, read in parts\n"
    );

    host.later = vec!["one\n", "two\n"];
    let outcome = run(&mut host, &["console", "-f"]);
    assert!(outcome.err.is_empty(), "{}", outcome.err);
    assert!(outcome.ok().ends_with("parts\none\ntwo\n"));

    // Output that the ring dropped before it was read is reported.
    let mut host = FakeHost::new(64);
    host.machine.borrow_mut().hv.console_capacity = 8;
    host.machine.borrow_mut().hv.print("0123456789abcdef");
    let outcome = run(&mut host, &["console"]);
    assert_eq!(
        outcome.err,
        "cellvisor: console: 8 bytes were overwritten before they could be read\n"
    );
    assert_eq!(outcome.ok(), "89abcdef");
}

#[test]
fn checks_configurations_offline() {
    let dir = scratch("check");
    let system = file(&dir, "system.toml", SYSTEM_GICV3);
    let demo = file(&dir, "demo.toml", DEMO);
    let mut host = FakeHost::new(0x1000);
    host.device = false;
    let out = run(&mut host, &["config", "check", &system, &demo]).ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with(&format!("{system}: ok (")), "{out}");
    assert!(lines[1].starts_with(&format!("{demo}: ok (")), "{out}");

    // Binaries too.
    let checked = cellvisor_config::host::check(
        &cellvisor_config::host::Source {
            name: "s",
            text: SYSTEM_GICV3,
        },
        &[cellvisor_config::host::Source {
            name: "d",
            text: DEMO,
        }],
    )
    .unwrap();
    let system_bin = file(&dir, "system.bin", &checked.system);
    let demo_bin = file(&dir, "demo.bin", &checked.cells[0]);
    run(&mut host, &["config", "check", &system_bin, &demo_bin]).ok();

    // Every problem of every file: a broken file, a cell that takes memory the root cell
    // does not have, and two cells on one CPU. Copies of the demo cell without the page it
    // shares with the root cell (each would conflict with the demo's).
    let shared = "[[memory]]  # shared with the root cell, which sees it at physical 0x7fff_f000\n\
                  phys = 0x7fff_f000\nvirt = 0x9000_0000\nsize = 0x1000\n\
                  flags = [\"read\", \"write\", \"root-shared\"]\n\n";
    let plain = DEMO.replace(shared, "");
    assert_ne!(plain, DEMO);
    let bad = file(
        &dir,
        "bad.toml",
        plain.replace("size = 0xff_f000", "size = 0xff_f800"),
    );
    let foreign = file(
        &dir,
        "foreign.toml",
        plain
            .replace("\"demo\"", "\"foreign\"")
            .replace("phys = 0x7f00_0000", "phys = 0x1_0000_0000"),
    );
    let twin = file(
        &dir,
        "twin.toml",
        plain
            .replace("\"demo\"", "\"twin\"")
            .replace("0x7f00_0000", "0x7e00_0000"),
    );
    let error = run(
        &mut host,
        &["config", "check", &system, &demo, &bad, &foreign, &twin],
    )
    .fails();
    let lines: Vec<&str> = error.lines().collect();
    assert_eq!(lines[0], "cellvisor: config check (8 problems):", "{error}");
    let at = |file: &str, text: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(&format!("  {file}:")) && l.contains(text))
    };
    assert!(at(&bad, "size 0xfff800 is not page aligned"), "{error}");
    assert!(at(&foreign, "is not owned by the root cell"), "{error}");
    assert!(at(&twin, "CPU 3 is also owned by cell \"demo\""), "{error}");
    assert!(
        at(&twin, "line 40 is also owned by cell \"demo\""),
        "{error}"
    );

    let error = run(&mut host, &["config", "check", &demo]).fails();
    assert!(
        error.contains("a cell configuration (no [root-cell] table)"),
        "{error}"
    );
    let error = run(
        &mut host,
        &["config", "check", &system, "/nonexistent.toml"],
    )
    .fails();
    assert!(
        error.ends_with("/nonexistent.toml: cannot be read: No such file or directory"),
        "{error}"
    );
}

#[test]
fn talks_to_the_device_with_aligned_single_accesses_only() {
    // The fake panics on any other access; the window holds an odd-length message.
    let mut host = FakeHost::new(0x1000);
    let error = run(&mut host, &["cell", "start", "9"]).fails();
    assert!(error.contains("no such cell"), "{error}");
    let mut device = FakeDevice(host.machine.clone());
    let mut client = crate::client::Client::new(device.clone()).unwrap();
    let refusal = client.call(Command::CellStart, [9, 0, 0, 0]).unwrap_err();
    assert_eq!(refusal.to_string(), "no such cell: no cell with id 9");
    assert_eq!(client.device().read32(mgmt::MAGIC), mgmt::MAGIC_VALUE);
    // An unknown command number.
    device.write32(mgmt::COMMAND, 99);
    assert_eq!(device.read64(mgmt::STATUS) as i64, -1);
}

#[test]
fn raw_commands_pass_the_registers_unchecked() {
    let mut host = FakeHost::new(4096);
    let out = run(&mut host, &["raw", "1", "0xffffffffffffffff"]).ok();
    assert_eq!(out, "raw command 1: status 40\n");
    let error = run(&mut host, &["raw", "0xffffffff"]).fails();
    assert_eq!(
        error,
        "cellvisor: raw command 4294967295: unknown command: command 4294967295"
    );
    let error = run(&mut host, &["raw", "2", "0x100000"]).fails();
    assert!(
        error.starts_with("cellvisor: raw command 2: invalid argument: "),
        "{error}"
    );
    // The data file goes into the window before the command: a configuration of its length.
    let dir = scratch("raw");
    let config = crate::config::load_cell(std::path::Path::new(&file(&dir, "demo.toml", DEMO)))
        .unwrap()
        .bytes;
    let bin = file(&dir, "demo.bin", &config);
    let length = config.len().to_string();
    let error = run(&mut host, &["raw", "2", &length, "--data", &bin]).fails();
    // The raw path takes no CPU offline: the fake hypervisor refuses CPU 3, still online.
    assert!(error.contains("CPU not offline"), "{error}");
    let missing = dir.join("missing.bin").display().to_string();
    let error = run(&mut host, &["raw", "2", "8", "--data", &missing]).fails();
    assert!(
        error.starts_with("cellvisor: raw command 2: cannot read "),
        "{error}"
    );
}

/// QEMU virt's tree as the root cell gets it: 4 CPUs, a GICv3, PSCI through SMC, the
/// second PL011 with its 24 MHz clock.
fn qemu_virt_tree() -> Vec<u8> {
    let mut fdt = vm_fdt::FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    let clock = fdt.begin_node("apb-pclk").unwrap();
    fdt.property_string("compatible", "fixed-clock").unwrap();
    fdt.property_u32("clock-frequency", 24_000_000).unwrap();
    fdt.property_u32("phandle", 0x8000).unwrap();
    fdt.end_node(clock).unwrap();
    let cpus = fdt.begin_node("cpus").unwrap();
    fdt.property_u32("#address-cells", 1).unwrap();
    fdt.property_u32("#size-cells", 0).unwrap();
    for cpu in 0..4u32 {
        let node = fdt.begin_node(&format!("cpu@{cpu}")).unwrap();
        fdt.property_string("device_type", "cpu").unwrap();
        fdt.property_u32("reg", cpu).unwrap();
        fdt.end_node(node).unwrap();
    }
    fdt.end_node(cpus).unwrap();
    let psci = fdt.begin_node("psci").unwrap();
    fdt.property_string("method", "smc").unwrap();
    fdt.end_node(psci).unwrap();
    let gic = fdt.begin_node("intc@8000000").unwrap();
    fdt.property_string("compatible", "arm,gic-v3").unwrap();
    fdt.property_null("interrupt-controller").unwrap();
    fdt.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80a_0000, 0xf6_0000])
        .unwrap();
    fdt.end_node(gic).unwrap();
    let uart = fdt.begin_node("pl011@9040000").unwrap();
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )
    .unwrap();
    fdt.property_array_u64("reg", &[0x904_0000, 0x1000])
        .unwrap();
    fdt.property_array_u32("interrupts", &[0, 8, 4]).unwrap();
    fdt.property_array_u32("clocks", &[0x8000, 0x8000]).unwrap();
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])
        .unwrap();
    fdt.end_node(uart).unwrap();
    fdt.end_node(root).unwrap();
    fdt.finish().unwrap()
}

/// A Linux cell on CPUs 2 and 3 with 64 MiB of RAM and the second PL011.
const LINUX_CELL: &str = r#"
architecture = "aarch64"
name = "guest"
cpus = [2, 3]
console = { type = "pl011", address = 0x904_0000 }
irqs = [40]

[[memory]]
phys = 0x5000_0000
virt = 0x5000_0000
size = 0x400_0000
flags = ["read", "write", "execute", "dma", "loadable"]

[[memory]]
phys = 0x904_0000
virt = 0x904_0000
size = 0x1000
flags = ["read", "write", "io"]

[[memory]]
virt = 0x8000_0000
size = 0x1000
flags = ["read", "write", "comm-region"]
"#;

/// An arm64 Image header: text offset 0, 1 MiB of image, 4 KiB of file.
fn arm64_image() -> Vec<u8> {
    let mut image = vec![0x5a; 4096];
    image[8..16].copy_from_slice(&0u64.to_le_bytes());
    image[16..24].copy_from_slice(&(1u64 << 20).to_le_bytes());
    image[24..32].copy_from_slice(&0xau64.to_le_bytes());
    image[56..60].copy_from_slice(&0x644d_5241u32.to_le_bytes());
    image
}

#[test]
fn cell_linux_creates_loads_and_starts_the_cell_on_its_first_cpu() {
    use dtoolkit::fdt::Fdt;
    use dtoolkit::{Node, Property};
    let dir = scratch("linux");
    let config = file(&dir, "linux.toml", LINUX_CELL);
    let image = file(&dir, "Image", arm64_image());
    let initrd = file(&dir, "initrd", [0xab; 8192]);
    let mut host = FakeHost::new(1 << 20);
    host.tree = Some(qemu_virt_tree());
    let out = run(
        &mut host,
        &["cell", "linux", &config, &image, "--initrd", &initrd],
    )
    .ok();
    assert!(
        out.contains("cell \"guest\" created (id 1, CPUs 2-3)"),
        "{out}"
    );
    assert!(
        out.contains("cell \"guest\": Linux (4096 bytes) at 0x50000000, initramfs (8192 bytes) at 0x53ffd000, device tree ("),
        "{out}"
    );
    assert!(out.contains("cell \"guest\" started on CPU 2"), "{out}");
    let machine = host.machine.borrow();
    let cell = &machine.hv.cells[1];
    let started = cell.started_with.unwrap();
    assert_eq!(
        started[0], 0b1111,
        "boot CPU only, at an address, a stock OS, no restart in place"
    );
    assert_eq!(started[1], 0x5000_0000);
    let memory = &cell.loadable[0].1;
    assert_eq!(memory[..4096], arm64_image()[..]);
    assert_eq!(memory[0x3ffd000..0x3fff000], [0xab; 8192]);
    let tree_at = (started[2] - 0x5000_0000) as usize;
    assert_eq!(tree_at, 0x3fff000);
    let size = u32::from_be_bytes(memory[tree_at + 4..tree_at + 8].try_into().unwrap());
    let tree = &memory[tree_at..tree_at + size as usize];
    let fdt = Fdt::new(tree).unwrap();
    let value = |path: &str, name: &str| -> Vec<u8> {
        fdt.find_node(path)
            .unwrap_or_else(|| panic!("{path}"))
            .property(name)
            .unwrap_or_else(|| panic!("{path}:{name}"))
            .value()
            .to_vec()
    };
    // CPUs 2 and 3; the redistributors of CPUs 2 and 3; the PL011 with its clock; the
    // initramfs; the console.
    assert_eq!(value("/cpus/cpu@3", "reg"), [0, 0, 0, 0, 0, 0, 0, 3]);
    assert!(fdt.find_node("/cpus/cpu@1").is_none());
    let gic = value("/interrupt-controller@8000000", "reg");
    assert_eq!(
        gic[16..32],
        [0, 0, 0, 0, 0x08, 0x0e, 0, 0, 0, 0, 0, 0, 0, 0x04, 0, 0]
    );
    assert_eq!(
        value("/uart@9040000", "interrupts"),
        [0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 4]
    );
    assert_eq!(
        value("/uart-clock", "clock-frequency"),
        24_000_000u32.to_be_bytes()
    );
    assert_eq!(
        value("/chosen", "linux,initrd-start"),
        0x53ff_d000u64.to_be_bytes()
    );
    assert_eq!(value("/chosen", "bootargs"), b"console=ttyAMA0\0");
}

#[test]
fn cell_linux_refuses_a_bad_kernel_before_creating_the_cell() {
    let dir = scratch("linux-bad");
    let config = file(&dir, "linux.toml", LINUX_CELL);
    let image = file(&dir, "Image", [0u8; 100]);
    let mut host = FakeHost::new(1 << 20);
    host.tree = Some(qemu_virt_tree());
    let error = run(&mut host, &["cell", "linux", &config, &image]).fails();
    assert!(
        error.contains("cell \"guest\": linux: ") && error.contains("not an arm64 Image"),
        "{error}"
    );
    assert_eq!(host.machine.borrow().hv.cells.len(), 1, "no cell created");
    // No tree of the machine: said so, nothing created.
    host.tree = None;
    let image = file(&dir, "Image", arm64_image());
    let error = run(&mut host, &["cell", "linux", &config, &image]).fails();
    assert!(error.contains("/sys/firmware/fdt"), "{error}");
    assert_eq!(host.machine.borrow().hv.cells.len(), 1);
    // A raw binary at the start of the RAM.
    host.tree = Some(qemu_virt_tree());
    let out = run(&mut host, &["cell", "linux", &config, &image, "--raw"]).ok();
    assert!(
        out.contains("cell \"guest\": binary (4096 bytes) at 0x50000000,"),
        "{out}"
    );
    // Its reset restarts it in place.
    let started = host.machine.borrow().hv.cells[1].started_with.unwrap();
    assert_eq!(
        started[0], 0b111,
        "boot CPU only, at an address, a stock OS"
    );
}

#[test]
fn cell_linux_watch_boots_the_cell_again_after_each_reset() {
    let dir = scratch("linux-watch");
    let config = file(&dir, "linux.toml", LINUX_CELL);
    let image = file(&dir, "Image", arm64_image());
    let mut host = FakeHost::new(1 << 20);
    host.tree = Some(qemu_virt_tree());
    // Running, then its kernel reboots twice, then it powers itself off.
    host.states_later = vec![
        Later::State(CellState::Running),
        Later::State(CellState::Reset),
        Later::State(CellState::Reset),
        Later::State(CellState::ShutDown),
    ];
    let out = run(&mut host, &["cell", "linux", &config, &image, "--watch"]).ok();
    assert!(out.contains("cell \"guest\": watching it"), "{out}");
    assert!(
        out.contains("cell \"guest\" reset itself: booted again (boot 2)"),
        "{out}"
    );
    assert!(out.contains("(boot 3)"), "{out}");
    assert!(
        out.contains("cell \"guest\" shut down after 3 boot(s): watch ends"),
        "{out}"
    );
    // Booted again: the kernel loaded anew and started as before (the fake's start
    // records its flags).
    {
        let machine = host.machine.borrow();
        let cell = &machine.hv.cells[1];
        assert_eq!(cell.started_with.unwrap()[0], 0b1111);
        assert_eq!(cell.loadable[0].1[..4096], arm64_image()[..]);
    }

    // Destroyed from elsewhere while watched: the watch ends quietly.
    run(&mut host, &["cell", "destroy", "guest"]).ok();
    host.states_later = vec![Later::State(CellState::Running), Later::Destroyed];
    let out = run(&mut host, &["cell", "linux", &config, &image, "--watch"]).ok();
    assert!(
        out.contains("cell \"guest\" is gone after 1 boot(s): watch ends"),
        "{out}"
    );

    // A failed cell ends the watch with an error.
    let mut host = FakeHost::new(1 << 20);
    host.tree = Some(qemu_virt_tree());
    host.states_later = vec![
        Later::State(CellState::Reset),
        Later::State(CellState::Failed),
    ];
    let error = run(&mut host, &["cell", "linux", &config, &image, "--watch"]).fails();
    assert!(
        error.contains("the cell failed (boot 2): watch ends"),
        "{error}"
    );

    // Destroyed, and its id taken by another cell that resets: not the watched cell, so
    // nothing of it is loaded there.
    let mut host = FakeHost::new(1 << 20);
    host.tree = Some(qemu_virt_tree());
    host.states_later = vec![Later::Replaced("other")];
    let out = run(&mut host, &["cell", "linux", &config, &image, "--watch"]).ok();
    assert!(
        out.contains("cell \"guest\" is gone after 1 boot(s): watch ends"),
        "{out}"
    );
    assert_eq!(host.machine.borrow().hv.cells[1].state, CellState::Reset);
}

#[test]
fn cell_linux_destroys_the_cell_when_its_start_fails() {
    let dir = scratch("linux-refused");
    let config = file(&dir, "linux.toml", LINUX_CELL);
    let image = file(&dir, "Image", arm64_image());
    let mut host = FakeHost::new(1 << 20);
    host.tree = Some(qemu_virt_tree());
    host.machine.borrow_mut().hv.refuse_start = true;
    let error = run(&mut host, &["cell", "linux", &config, &image]).fails();
    assert!(error.contains("refused for the test"), "{error}");
    assert!(error.contains("the cell was destroyed again"), "{error}");
    assert_eq!(host.machine.borrow().hv.cells.len(), 1);
}
