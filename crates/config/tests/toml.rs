//! The TOML source format: defaults, and problems reported as file:line:column.

use cellvisor_config::host::{check, compile_cell, compile_system, Source};
use cellvisor_config::text::{cell_from_toml, is_system_toml, system_from_toml};
use cellvisor_config::{
    Architecture, CellFlags, ConsoleAccess, ConsoleKind, CpuSet, Frame, InterruptController,
    IrqRange, MemoryFlags, PortRange, StreamId,
};

const SYSTEM: &str = r#"architecture = "aarch64"

[hypervisor]
start = 0x4020_0000
size = 0x80_0000

[interrupt-controller]
type = "gicv3"
distributor = 0x800_0000
redistributors = 0x80a_0000

[root-cell]
cpus = "0-3"
irqs = ["32-287"]

[[root-cell.memory]]
phys = 0x4000_0000
size = 0x20_0000
flags = ["read", "write", "execute", "dma"]

[[root-cell.memory]]
phys = 0x40a0_0000
size = 0x3f60_0000
flags = ["read", "write", "execute", "dma"]
"#;

const CELL: &str = r#"architecture = "aarch64"
name = "demo"
cpus = [3]

[[memory]]
phys = 0x7f00_0000
virt = 0
size = 0x100_0000
"#;

fn messages(result: Result<impl Sized, Vec<cellvisor_config::host::Diagnostic>>) -> Vec<String> {
    match result {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn cell(text: &str) -> Vec<String> {
    messages(compile_cell(&Source {
        name: "cell.toml",
        text,
    }))
}

#[test]
fn defaults_keep_simple_cells_short() {
    let system = system_from_toml(SYSTEM).unwrap();
    assert_eq!(system.root_cell.name, "root");
    assert_eq!(system.root_cell.cpus, CpuSet::from_cpus(0..4));
    assert_eq!(
        system.root_cell.irqs,
        [IrqRange {
            first: 32,
            count: 256
        }]
    );
    let InterruptController::Gic(gic) = system.interrupt_controller else {
        panic!()
    };
    assert_eq!(gic.maintenance_irq, 25);
    assert_eq!(
        gic.distributor,
        Frame {
            base: 0x800_0000,
            size: 0x1_0000
        }
    );
    // 128 KiB of redistributor per CPU up to the root cell's last CPU.
    assert_eq!(
        gic.redistributors,
        Some(Frame {
            base: 0x80a_0000,
            size: 0x8_0000
        })
    );

    let cell = cell_from_toml(CELL).unwrap();
    assert_eq!(cell.architecture, Architecture::Aarch64);
    let region = cell.cell.memory_regions[0];
    assert_eq!(region.flags, MemoryFlags::READ | MemoryFlags::WRITE);
    assert_eq!(cell.cell.console, None);
    assert_eq!(cell.cell.cpu_reset_address, 0);

    let full = cell_from_toml(
        r#"architecture = "x86_64"
name = "rtos"
flags = ["passive-comm-region", "virtual-console-permitted"]
cpus = [1, "4-5"]
console = { type = "8250", address = 0x2f8 }
irqs = [3, "8-10"]
ports = [0x2f8, "0x3f8-0x3ff"]
pci-devices = ["00:1f.2", { address = "0001:02:00.0", type = "bridge", iommu = 1 }]

[[memory]]
virt = 0xff000
size = 0x1000
flags = ["read", "write", "comm-region"]
"#,
    )
    .unwrap()
    .cell;
    assert_eq!(
        full.flags,
        CellFlags::PASSIVE_COMM_REGION | CellFlags::VIRTUAL_CONSOLE_PERMITTED
    );
    assert_eq!(full.cpus, CpuSet::from_cpus([1, 4, 5]));
    let console = full.console.unwrap();
    assert_eq!(
        (console.kind, console.access, console.size),
        (ConsoleKind::Uart8250, ConsoleAccess::Port, 8)
    );
    assert_eq!(
        full.irqs,
        [IrqRange::single(3), IrqRange { first: 8, count: 3 }]
    );
    assert_eq!(
        full.ports,
        [
            PortRange {
                base: 0x2f8,
                size: 1
            },
            PortRange {
                base: 0x3f8,
                size: 8
            }
        ]
    );
    assert_eq!(full.pci_devices[1].to_owned().iommu, Some(1));
    assert_eq!(full.memory_regions[0].phys_start, 0);
    let streams = cell_from_toml(
        "architecture = \"aarch64\"\nname = \"s\"\ncpus = 1\nstream-ids = [0x10, { id = 0x20, mask = 0x3 }]\n",
    )
    .unwrap();
    assert_eq!(
        streams.cell.stream_ids,
        [
            StreamId { id: 0x10, mask: 0 },
            StreamId { id: 0x20, mask: 3 }
        ]
    );
    assert!(is_system_toml(SYSTEM));
    assert!(!is_system_toml(CELL));
}

#[test]
fn syntax_and_schema_errors_have_positions() {
    assert_eq!(
        cell("architecture = \"aarch64\"\nname = \"demo\"\ncpus = [3]\nsise = 1\n"),
        ["cell.toml:4:1: unknown field `sise`, expected one of `architecture`, `name`, `flags`, `cpus`, `cpu-reset-address`, `console`, `irqs`, `ports`, `pci-devices`, `stream-ids`, `memory`"]
    );
    assert_eq!(
        cell(&CELL.replace("size = 0x100_0000", "size = 0x100_0000\nflags = [\"read\", \"wirte\"]")),
        ["cell.toml:9:9: unknown variant `wirte`, expected one of `read`, `write`, `execute`, `dma`, `io`, `comm-region`, `loadable`, `root-shared`"]
    );
    assert_eq!(
        cell(&CELL.replace("cpus = [3]", "cpus = [3, 600]")),
        ["cell.toml:3:8: CPU 600 is beyond the last CPU (511)"]
    );
    assert_eq!(
        cell(&CELL.replace("cpus = [3]", "cpus = \"3-1\"")),
        ["cell.toml:3:8: invalid range `3-1`: the last is below the first"]
    );
    assert_eq!(
        cell(&CELL.replace("architecture = \"aarch64\"", "architecture = \"arm\"")),
        ["cell.toml:1:16: unknown variant `arm`, expected `aarch64` or `x86_64`"]
    );
    assert_eq!(
        cell(&CELL.replace("name = \"demo\"\n", "")),
        ["cell.toml:1:1: missing field `name`"]
    );
    assert_eq!(
        cell(&CELL.replace("phys = 0x7f00_0000\n", "")),
        ["cell.toml:5:1: missing field `phys` (only a communication region may leave it out)"]
    );
    assert_eq!(
        cell(&CELL.replace("cpus = [3]", "cpus = [3]\npci-devices = [\"0:1f\"]")),
        ["cell.toml:4:16: invalid PCI address `0:1f`, expected `segment:bus:device.function` (hexadecimal, e.g. `0000:00:1f.2`) or `bus:device.function`"]
    );
    let syntax = cell("architecture = \n");
    assert_eq!(syntax.len(), 1);
    assert!(syntax[0].starts_with("cell.toml:1:16: "), "{syntax:?}");
}

#[test]
fn validation_errors_point_at_the_value() {
    assert_eq!(
        cell(&CELL.replace("size = 0x100_0000", "size = 0x100_1001")),
        ["cell.toml:8:8: memory region 0: size 0x1001001 is not page aligned"]
    );
    assert_eq!(
        cell(&CELL.replace("cpus = [3]", "cpus = [3]\nirqs = [40, \"16-20\"]")),
        ["cell.toml:4:13: interrupt range 1: line 16 is not a shared peripheral interrupt (32-1019, or 4096-5119 on GICv3)"]
    );
    assert_eq!(
        messages(compile_system(&Source {
            name: "system.toml",
            text: &SYSTEM.replace("phys = 0x40a0_0000", "phys = 0x409f_0000"),
        })),
        ["system.toml:22:8: root cell: memory region 1: physical range [0x409f0000, 0x7fff0000) overlaps hypervisor memory [0x40200000, 0x40a00000)"]
    );
    assert_eq!(
        messages(compile_system(&Source {
            name: "system.toml",
            text: &SYSTEM.replace("distributor = 0x800_0000", "distributor = 0x800_0800"),
        })),
        ["system.toml:9:15: GIC distributor: base 0x8000800 is not page aligned"]
    );
}

#[test]
fn cross_check_errors_name_the_cell_file() {
    let system = Source {
        name: "system.toml",
        text: SYSTEM,
    };
    let demo = Source {
        name: "demo.toml",
        text: CELL,
    };
    assert!(check(&system, &[demo]).is_ok());
    let greedy_text = CELL
        .replace("name = \"demo\"", "name = \"greedy\"")
        .replace("cpus = [3]", "cpus = \"0-2,7\"");
    let greedy = Source {
        name: "greedy.toml",
        text: &greedy_text,
    };
    assert_eq!(
        messages(check(&system, &[demo, greedy])),
        [
            "greedy.toml:3:8: cell \"greedy\": CPU set: CPU 7 is not owned by the root cell",
            "greedy.toml:6:8: cell \"greedy\": memory region 0: physical range [0x7f000000, 0x80000000) is also owned by cell \"demo\" (memory region 0)",
            "system.toml:13:8: root cell: CPU set: no CPU left: the other cells take CPUs 0-3",
        ]
    );
    // Every problem of every file is listed; cells that do not compile are not cross-checked.
    let broken = Source {
        name: "broken.toml",
        text: "architecture = \"aarch64\"\nname = \"x\"\ncpus = []\n",
    };
    assert_eq!(
        messages(check(&system, &[broken, greedy])),
        [
            "broken.toml:3:8: CPU set: empty (a cell needs at least one CPU)",
            "greedy.toml:3:8: cell \"greedy\": CPU set: CPU 7 is not owned by the root cell",
        ]
    );
    assert_eq!(
        messages(check(&system, &[broken, demo, broken])),
        [
            "broken.toml:3:8: CPU set: empty (a cell needs at least one CPU)",
            "broken.toml:3:8: CPU set: empty (a cell needs at least one CPU)",
        ]
    );
}

#[test]
fn alternatives_share_a_cpu_and_are_not_checked_against_each_other() {
    use cellvisor_config::host::check_alternatives;
    let system = Source {
        name: "system.toml",
        text: SYSTEM,
    };
    let demo = Source {
        name: "demo.toml",
        text: CELL,
    };
    // Linux on CPUs 2 and 3 in the demo's memory: never beside the demo.
    let linux_text = CELL
        .replace("name = \"demo\"", "name = \"linux\"")
        .replace("cpus = [3]", "cpus = [2, 3]");
    let linux = Source {
        name: "linux.toml",
        text: &linux_text,
    };
    let together = messages(check(&system, &[demo, linux]));
    assert_eq!(together.len(), 2, "{together:?}");
    assert!(
        together[0].contains("CPU 3 is also owned by cell \"demo\""),
        "{together:?}"
    );
    assert!(check_alternatives(&system, &[demo, linux]).is_ok());
    // A cell on a CPU of its own is still checked against the others.
    let thief_text = CELL
        .replace("name = \"demo\"", "name = \"thief\"")
        .replace("cpus = [3]", "cpus = [1]");
    let thief = Source {
        name: "thief.toml",
        text: &thief_text,
    };
    assert_eq!(
        messages(check_alternatives(&system, &[demo, linux, thief])),
        [
            "thief.toml:6:8: cell \"thief\": memory region 0: physical range [0x7f000000, 0x80000000) is also owned by cell \"demo\" (memory region 0)"
        ]
    );
}
