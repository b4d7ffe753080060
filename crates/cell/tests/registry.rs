//! The registry against the QEMU `virt` configurations and a fake partition.

mod common;

use cellvisor_abi::{CellState, Error as Code};
use cellvisor_cell::{
    CellId, CreateError, DestroyError, Failure, IrqSet, LoadError, Region, Registry, RootError,
    StateError, Step, MAX_REGIONS,
};
use cellvisor_config::{CellConfigView, IrqRange, MemoryFlags, PortRange};
use common::*;

type Reg = Registry<4>;

const RAM: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::EXECUTE)
    .union(MemoryFlags::DMA);
const IO: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::IO);

/// The QEMU `virt` machine, cut down (and fixed here, while the board's configuration may
/// change): RAM below and above the hypervisor, four UARTs' worth of devices, two adjacent
/// PCIe windows.
const SYSTEM: &str = r#"
architecture = "aarch64"

[hypervisor]
start = 0x4020_0000
size = 0x80_0000

[interrupt-controller]
type = "gicv3"
distributor = 0x800_0000
redistributors = 0x80a_0000

[root-cell]
name = "linux"
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

[[root-cell.memory]]
phys = 0x900_0000
size = 0x1000
flags = ["read", "write", "io"]

[[root-cell.memory]]
phys = 0x901_0000
size = 0x1000
flags = ["read", "write", "io"]

[[root-cell.memory]]
phys = 0x903_0000
size = 0x1000
flags = ["read", "write", "io"]

[[root-cell.memory]]
phys = 0x904_0000
size = 0x1000
flags = ["read", "write", "io"]

[[root-cell.memory]]
phys = 0x3eff_0000
size = 0x1_0000
flags = ["read", "write", "io"]

[[root-cell.memory]]
phys = 0x3f00_0000
size = 0x100_0000
flags = ["read", "write", "io"]
"#;

fn qemu<const CELLS: usize>() -> Registry<CELLS> {
    registry(&system_bytes(SYSTEM))
}

fn view(bytes: &[u8]) -> CellConfigView<'_> {
    CellConfigView::parse(bytes).unwrap()
}

/// A cell of the QEMU system with more of everything than the demo: two CPUs, three lines,
/// private RAM, RAM shared with the root cell, a device and a communication region.
const BIG: &str = r#"
architecture = "aarch64"
name = "big"
cpus = [1, 2]
irqs = ["41-43"]
cpu-reset-address = 0x1000

[[memory]]
phys = 0x7e00_0000
virt = 0
size = 0x80_0000
flags = ["read", "write", "execute", "loadable"]

[[memory]]
phys = 0x7e80_0000
virt = 0x80_0000
size = 0x10_0000
flags = ["read", "write", "root-shared"]

[[memory]]
phys = 0x903_0000
size = 0x1000
flags = ["read", "write", "io"]

[[memory]]
virt = 0x8000_0000
size = 0x1000
flags = ["read", "write", "comm-region"]
"#;

/// A cell with one CPU, its lines and memory regions given as TOML fragments.
fn cell(name: &str, cpus: &str, irqs: &str, memory: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut toml =
        format!("architecture = \"aarch64\"\nname = \"{name}\"\ncpus = {cpus}\nirqs = {irqs}\n");
    let mut virt = 0;
    for (phys, size, flags) in memory {
        toml += &format!(
            "[[memory]]\nphys = {phys:#x}\nvirt = {virt:#x}\nsize = {size:#x}\nflags = {flags}\n"
        );
        virt += size;
    }
    cell_bytes(&toml)
}

#[test]
fn the_root_cell_owns_everything_at_boot() {
    let registry: Reg = qemu();
    let root = registry.root();
    assert_eq!(root.id, CellId::ROOT);
    assert_eq!(root.name.as_str(), "linux");
    assert_eq!(root.state, CellState::Running);
    assert_eq!(root.cpus, 0b1111);
    assert_eq!(registry.all_cpus(), 0b1111);
    assert_eq!(root.irqs.to_string(), "32-287");
    assert_eq!(root.regions.len(), 8);
    assert_eq!(root.regions.as_slice(), registry.root_memory());
    assert_eq!(
        root.regions[1],
        Region::new(0x40a0_0000, 0x40a0_0000, 0x3f60_0000, RAM)
    );
    assert_eq!(registry.iter().count(), 1);
    assert_eq!(registry.by_name("linux"), Some(CellId::ROOT));
    assert_eq!(registry.capacity(), 4);
    let record = registry.record(CellId::ROOT).unwrap();
    assert_eq!(record.name(), "linux");
    assert_eq!(record.id.get(), 0);
    assert_eq!(record.state.get(), CellState::Running as u32);
    assert_eq!(record.memory.get(), 0x20_0000 + 0x3f60_0000);
    assert_eq!(registry.owner_of_cpu(3), Some(CellId::ROOT));
    assert_eq!(registry.owner_of_cpu(4), None);
    assert_eq!(registry.owner_of_cpu(64), None);
    assert_eq!(registry.owner_of_irq(32), Some(CellId::ROOT));
    assert_eq!(registry.owner_of_irq(27), None);
    assert_eq!(
        registry
            .owner_of_address(0x904_0fff)
            .map(|(id, r)| (id, r.phys)),
        Some((CellId::ROOT, 0x904_0000))
    );
    assert_eq!(registry.owner_of_address(0x4020_0000), None);
}

#[test]
fn demo_round_trip_moves_everything_and_gives_it_back() {
    let mut registry: Reg = qemu();
    let before = registry.clone();
    let mut fake = Fake::new(&registry);
    let initial = fake.machine.clone();
    let demo = cell_bytes(QEMU_DEMO);

    let id = registry
        .create(view(&demo).cell(), 1 << 3, &mut fake)
        .unwrap();
    assert_eq!(id, CellId(1));
    let cell = registry.cell(id).unwrap();
    assert_eq!(cell.name.as_str(), "demo");
    assert_eq!(cell.state, CellState::Created);
    assert_eq!(cell.cpus, 1 << 3);
    assert_eq!(cell.irqs.to_string(), "40");
    let ram = Region::new(0x7f00_0000, 0, 0xff_f000, RAM | MemoryFlags::LOADABLE);
    // The last page of the root cell's loadable region, shared (it stays the root cell's).
    let shared = Region::new(
        0x7fff_f000,
        0x9000_0000,
        0x1000,
        MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::ROOTSHARED,
    );
    let uart = Region::new(0x904_0000, 0x904_0000, 0x1000, IO);
    let comm = Region::new(
        0,
        0x8000_0000,
        0x1000,
        MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::COMM_REGION,
    );
    assert_eq!(cell.regions.as_slice(), &[ram, shared, uart, comm]);
    assert_eq!(registry.comm_region(id), Some(comm));
    assert_eq!(registry.by_name("demo"), Some(id));

    // The root cell: RAM cut at 0x7f00_0000, UART1 gone, line 40 and CPU 3 gone.
    let root = registry.root();
    let mut expected: Vec<Region> = before.root().regions.to_vec();
    expected[1].size = 0x7f00_0000 - 0x40a0_0000;
    expected.retain(|r| r.phys != 0x904_0000);
    // It keeps the page it shares with the demo cell.
    expected.insert(2, Region::new(0x7fff_f000, 0x7fff_f000, 0x1000, RAM));
    assert_eq!(root.regions.as_slice(), expected.as_slice());
    assert_eq!(root.cpus, 0b0111);
    assert_eq!(root.irqs.to_string(), "32-39, 41-287");
    assert_eq!(
        registry.record(CellId::ROOT).unwrap().memory.get(),
        0x20_0000 + 0x3f60_0000 - 0x100_0000 + 0x1000
    );
    assert_eq!(registry.record(id).unwrap().memory.get(), 0x100_0000);

    // What the partition was asked to do, in order.
    let create_calls = vec![
        Call::CreateTables(1),
        Call::UnmapFromRoot(0x7f00_0000, 0x7f00_0000, 0xff_f000),
        Call::MapIntoCell(1, ram),
        Call::MapIntoCell(1, shared),
        Call::UnmapFromRoot(0x904_0000, 0x904_0000, 0x1000),
        Call::MapIntoCell(1, uart),
        Call::MapIntoCell(1, comm),
        Call::MoveIrq(40, 0, 1),
        Call::MoveCpu(3, 0, 1),
    ];
    assert_eq!(fake.calls, create_calls);
    assert_eq!(fake.machine, Machine::of(&registry));

    assert_eq!(registry.owner_of_cpu(3), Some(id));
    assert_eq!(registry.owner_of_irq(40), Some(id));
    assert_eq!(registry.owner_of_address(0x7f12_3456), Some((id, &ram)));
    assert_eq!(registry.owner_of_address(0x904_0000), Some((id, &uart)));
    assert_eq!(registry.owner_of_address(0), None);

    fake.calls.clear();
    registry.destroy(id, &mut fake).unwrap();
    assert_eq!(registry, before);
    assert_eq!(fake.machine, initial);
    // Destroy is create backwards, every step inverted.
    let expected: Vec<Call> = create_calls.iter().rev().map(|c| c.inverse()).collect();
    assert_eq!(fake.calls.len(), expected.len());
    for (got, want) in fake.calls.iter().zip(&expected) {
        assert!(got.same(*want), "{got:?} != {want:?}");
    }
    // Memory goes back with the root region's flags.
    assert!(fake
        .calls
        .contains(&Call::MapIntoRoot(0x7f00_0000, 0x7f00_0000, 0xff_f000, RAM)));
}

#[test]
fn the_board_configurations_round_trip() {
    let system = system_bytes(QEMU_SYSTEM);
    let mut registry: Reg = registry(&system);
    let before = registry.clone();
    let mut fake = Fake::new(&registry);
    let initial = fake.machine.clone();
    let demo = cell_bytes(QEMU_DEMO);
    let demo = view(&demo);
    let id = registry.create(demo.cell(), 1 << 3, &mut fake).unwrap();
    assert_eq!(fake.machine, Machine::of(&registry));
    // The root cell keeps every byte the demo does not take.
    let root = registry.root();
    for region in before.root().regions.iter() {
        let taken = demo
            .cell()
            .memory_regions()
            .any(|r| r.phys().overlaps(&region.phys_range()));
        assert_eq!(root.regions.contains(region), !taken, "{region}");
    }
    registry.destroy(id, &mut fake).unwrap();
    assert_eq!(registry, before);
    assert_eq!(fake.machine, initial);
}

#[test]
fn a_cell_keeps_the_root_regions_guest_offset() {
    // A root region mapped at a guest-physical address other than its physical one.
    let root = [Region::new(0x8000_0000, 0x1000_0000, 0x100_0000, RAM)];
    let mut registry: Reg = Registry::new("root", 0b11, &root, &[], 32).unwrap();
    let before = registry.clone();
    let mut fake = Fake::new(&registry);
    let bytes = cell("c", "[1]", "[]", &[(0x8010_0000, 0x1000, "[\"read\"]")]);
    registry
        .create(view(&bytes).cell(), 0b10, &mut fake)
        .unwrap();
    assert_eq!(
        fake.calls[1],
        Call::UnmapFromRoot(0x1010_0000, 0x8010_0000, 0x1000)
    );
    assert_eq!(
        registry.root().regions.as_slice(),
        &[
            Region::new(0x8000_0000, 0x1000_0000, 0x10_0000, RAM),
            Region::new(0x8010_1000, 0x1010_1000, 0xef_f000, RAM),
        ]
    );
    registry.destroy(CellId(1), &mut fake).unwrap();
    assert_eq!(registry, before);
    assert_eq!(fake.machine, Machine::of(&before));
}

#[test]
fn memory_shared_with_the_root_cell_stays_mapped_there() {
    let mut registry: Reg = qemu();
    let mut fake = Fake::new(&registry);
    let big = cell_bytes(BIG);
    let id = registry
        .create(view(&big).cell(), 0b110, &mut fake)
        .unwrap();
    let shared = registry.cell(id).unwrap().regions[1];
    assert!(shared.is_root_shared());
    // Still the root cell's, and reported as the cell's.
    assert!(registry
        .root()
        .regions
        .iter()
        .any(|r| r.phys_range().contains_range(&shared.phys_range())));
    assert_eq!(registry.owner_of_address(0x7e80_0000), Some((id, &shared)));
    assert!(!fake
        .calls
        .iter()
        .any(|c| matches!(c, Call::UnmapFromRoot(_, 0x7e80_0000, _))));

    // A second cell may share it too, but not take it.
    let sharer = cell(
        "sharer",
        "[3]",
        "[]",
        &[(0x7e80_0000, 0x1000, "[\"read\", \"root-shared\"]")],
    );
    registry
        .create(view(&sharer).cell(), 0b1000, &mut fake)
        .unwrap();
    assert_eq!(fake.machine, Machine::of(&registry));
    registry.destroy(CellId(2), &mut fake).unwrap();
    let taker = cell("taker", "[3]", "[]", &[(0x7e80_0000, 0x1000, "[\"read\"]")]);
    let error = registry
        .create(view(&taker).cell(), 0b1000, &mut fake)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cell \"taker\": memory region 0 [0x7e800000, 0x7e801000): belongs to cell \"big\" (its \
         memory region 1)"
    );
}

/// A rejected create: the message, the code, and nothing changed or called.
fn rejected<const CELLS: usize>(
    registry: &mut Registry<CELLS>,
    config: &[u8],
    offline: u64,
    message: &str,
    code: Code,
) {
    let before = registry.clone();
    let mut fake = Fake::new(registry);
    let error = registry
        .create(view(config).cell(), offline, &mut fake)
        .unwrap_err();
    assert_eq!(error.to_string(), message);
    assert_eq!(error.code(), code, "{message}");
    assert!(matches!(error, CreateError::Rejected { .. }));
    assert_eq!(*registry, before, "{message}");
    assert!(fake.calls.is_empty(), "{message}");
}

#[test]
fn every_problem_is_named() {
    let demo = cell_bytes(QEMU_DEMO);
    let mut fresh: Reg = qemu();
    let mut with_demo: Reg = qemu();
    with_demo
        .create(view(&demo).cell(), 1 << 3, &mut Fake::new(&with_demo))
        .unwrap();
    let ram = "[\"read\", \"write\"]";
    let io = "[\"read\", \"write\", \"io\"]";

    let linux = cell("linux", "[1]", "[]", &[]);
    rejected(
        &mut fresh,
        &linux,
        2,
        "cell \"linux\": a cell with this name exists",
        Code::CellExists,
    );
    rejected(
        &mut with_demo,
        &demo,
        1 << 3,
        "cell \"demo\": a cell with this name exists",
        Code::CellExists,
    );

    let mut small: Registry<2> = qemu();
    small
        .create(view(&demo).cell(), 1 << 3, &mut Fake::new(&small))
        .unwrap();
    rejected(
        &mut small,
        &cell("other", "[1]", "[]", &[]),
        2,
        "cell \"other\": no free cell slot (2 cells at most, the root cell included)",
        Code::OutOfMemory,
    );

    rejected(
        &mut fresh,
        &cell_bytes(&QEMU_DEMO.replace("name = \"demo\"", "name = \"sid\"\nstream-ids = [5]")),
        1 << 3,
        "cell \"sid\": stream IDs cannot be assigned to cells",
        Code::BadConfig,
    );

    rejected(
        &mut fresh,
        &demo,
        0b0111,
        "cell \"demo\": CPU 3 is online in the root cell",
        Code::CpuBusy,
    );
    rejected(
        &mut fresh,
        &cell("x", "[7]", "[]", &[]),
        u64::MAX,
        "cell \"x\": CPU 7 does not exist",
        Code::BadConfig,
    );
    rejected(
        &mut fresh,
        &cell("x", "[100]", "[]", &[]),
        u64::MAX,
        "cell \"x\": CPU 100 does not exist",
        Code::BadConfig,
    );
    rejected(
        &mut with_demo,
        &cell("x", "[2, 3]", "[]", &[]),
        u64::MAX,
        "cell \"x\": CPU 3 belongs to cell \"demo\"",
        Code::NotOwned,
    );
    rejected(
        &mut fresh,
        &cell("x", "\"0-3\"", "[]", &[]),
        u64::MAX,
        "cell \"x\": the root cell would keep no CPU",
        Code::BadConfig,
    );
    rejected(
        &mut with_demo,
        &cell("x", "[0, 1, 2]", "[]", &[]),
        u64::MAX,
        "cell \"x\": the root cell would keep no CPU",
        Code::BadConfig,
    );

    // The example of the brief: the root cell's RAM ends below the demo's.
    let system = SYSTEM.replace("size = 0x3f60_0000", "size = 0x3e60_0000");
    let mut short: Reg = registry(&system_bytes(&system));
    rejected(
        &mut short,
        &demo,
        1 << 3,
        "cell \"demo\": memory region 0 [0x7f000000, 0x7ffff000): not owned by the root cell",
        Code::NotOwned,
    );
    rejected(
        &mut fresh,
        &cell("x", "[1]", "[]", &[(0x4020_0000, 0x10_0000, ram)]),
        2,
        "cell \"x\": memory region 0 [0x40200000, 0x40300000): not owned by the root cell",
        Code::NotOwned,
    );
    rejected(
        &mut fresh,
        &cell(
            "x",
            "[1]",
            "[]",
            &[(0x4000_0000, 0x1000, ram), (0x7fff_f000, 0x2000, ram)],
        ),
        2,
        "cell \"x\": memory region 1 [0x7ffff000, 0x80001000): not owned by the root cell",
        Code::NotOwned,
    );
    rejected(
        &mut fresh,
        &cell("x", "[1]", "[]", &[(0x3eff_f000, 0x2000, io)]),
        2,
        "cell \"x\": memory region 0 [0x3efff000, 0x3f001000): spans more than one memory \
         region of the root cell",
        Code::BadConfig,
    );
    rejected(
        &mut with_demo,
        &cell("x", "[1]", "[]", &[(0x7f80_0000, 0x1000, ram)]),
        2,
        "cell \"x\": memory region 0 [0x7f800000, 0x7f801000): belongs to cell \"demo\" (its \
         memory region 0)",
        Code::NotOwned,
    );
    rejected(
        &mut with_demo,
        &cell("x", "[1]", "[]", &[(0x904_0000, 0x1000, io)]),
        2,
        "cell \"x\": memory region 0 [0x9040000, 0x9041000): belongs to cell \"demo\" (its \
         memory region 2)",
        Code::NotOwned,
    );

    rejected(
        &mut fresh,
        &cell("x", "[1]", "[300]", &[]),
        2,
        "cell \"x\": irq range 0 (300): line 300 not owned by the root cell",
        Code::NotOwned,
    );
    rejected(
        &mut with_demo,
        &cell("x", "[1]", "[33, \"38-41\"]", &[]),
        2,
        "cell \"x\": irq range 1 (38-41): line 40 belongs to cell \"demo\"",
        Code::NotOwned,
    );
    rejected(
        &mut fresh,
        &cell("x", "[1]", "[\"4096-4100\"]", &[]),
        2,
        "cell \"x\": irq range 0 (4096-4100): line 4096 is beyond the 1024 lines cells can own",
        Code::BadConfig,
    );

    let many: Vec<(u64, u64, &str)> = (0..MAX_REGIONS as u64 + 1)
        .map(|i| (0x5000_0000 + 0x2000 * i, 0x1000, ram))
        .collect();
    rejected(
        &mut fresh,
        &cell("x", "[1]", "[]", &many),
        2,
        "cell \"x\": 65 memory regions, at most 64",
        Code::BadConfig,
    );
    // 64 holes in the root cell's RAM: 8 + 64 pieces.
    rejected(
        &mut fresh,
        &cell("x", "[1]", "[]", &many[..MAX_REGIONS]),
        2,
        "cell \"x\": the root cell's memory would split into more than 64 regions",
        Code::OutOfMemory,
    );
}

#[test]
fn a_gap_between_root_regions_is_not_owned() {
    let mut registry: Reg = qemu();
    let bytes = cell(
        "x",
        "[1]",
        "[]",
        &[(0x900_0000, 0x2000, "[\"read\", \"io\"]")],
    );
    let error = registry
        .create(view(&bytes).cell(), 2, &mut Fake::new(&registry))
        .unwrap_err();
    // 0x900_1000 is nobody's.
    assert_eq!(error.code(), Code::NotOwned);
}

/// Every step of a create made to fail, one at a time.
fn fail_every_step(config: &str, offline: u64) {
    let bytes = cell_bytes(config);
    let mut registry: Reg = qemu();
    let before = registry.clone();
    let mut probe = Fake::new(&registry);
    registry
        .create(view(&bytes).cell(), offline, &mut probe)
        .unwrap();
    let steps = probe.count;
    assert!(steps >= 8);
    registry = before.clone();

    for n in 0..steps {
        let mut fake = Fake::new(&registry);
        let initial = fake.machine.clone();
        fake.fail_at(n);
        let error = registry
            .create(view(&bytes).cell(), offline, &mut fake)
            .unwrap_err();
        let CreateError::Partition { failed, undo, .. } = error else {
            panic!("{error}")
        };
        assert_eq!(failed.error, Injected { call: n });
        assert_eq!(undo, None);
        assert_eq!(error.code(), Code::OutOfMemory);
        assert_eq!(registry, before, "step {n}");
        assert_eq!(fake.machine, initial, "step {n}");
        // The calls after the failed one undo the ones before it, in reverse order.
        let (done, rest) = fake.calls.split_at(n);
        assert!(probe.calls[..=n] == fake.calls[..=n]);
        let undone: Vec<Call> = done.iter().rev().map(|c| c.inverse()).collect();
        assert_eq!(rest.len(), undone.len() + 1);
        for (got, want) in rest[1..].iter().zip(&undone) {
            assert!(got.same(*want), "step {n}: {got:?} != {want:?}");
        }
    }
}

#[test]
fn a_failure_at_any_step_of_create_is_undone() {
    fail_every_step(QEMU_DEMO, 1 << 3);
    fail_every_step(BIG, 0b110);
}

#[test]
fn create_failures_name_the_step() {
    let demo = cell_bytes(QEMU_DEMO);
    let mut registry: Reg = qemu();
    let mut fake = Fake::new(&registry);
    fake.fail_at(2);
    let error = registry
        .create(view(&demo).cell(), 1 << 3, &mut fake)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cell \"demo\": mapping memory region 0 into the cell failed: injected failure at call \
         2; every earlier step was undone"
    );

    // The failure, then the first undo step (mapping the RAM back) fails too; the
    // remaining undo step still runs.
    let mut fake = Fake::new(&registry);
    fake.strict = false;
    fake.fail_at(2).fail_at(3);
    let error = registry
        .create(view(&demo).cell(), 1 << 3, &mut fake)
        .unwrap_err();
    let CreateError::Partition { failed, undo, .. } = error else {
        panic!("{error}")
    };
    assert_eq!(failed.step, Step::MapIntoCell { region: 0 });
    assert_eq!(
        undo,
        Some(Failure {
            step: Step::MapIntoRoot { region: 0 },
            error: Injected { call: 3 }
        })
    );
    assert_eq!(fake.calls.last(), Some(&Call::DestroyTables(1)));
    assert_eq!(
        error.to_string(),
        "cell \"demo\": mapping memory region 0 into the cell failed: injected failure at call \
         2; undoing the earlier steps failed too: mapping memory region 0 back into the root \
         cell failed: injected failure at call 3"
    );
    assert_eq!(registry.iter().count(), 1);
}

#[test]
fn destroy_goes_on_after_a_failure() {
    let big = cell_bytes(BIG);
    let mut registry: Reg = qemu();
    let before = registry.clone();
    let mut probe = Fake::new(&registry);
    let id = registry
        .create(view(&big).cell(), 0b110, &mut probe)
        .unwrap();
    let created = registry.clone();
    let start = probe.count;
    registry.destroy(id, &mut probe).unwrap();
    let steps = probe.count - start;
    let destroy_calls = probe.calls[probe.calls.len() - steps - 1..].to_vec();

    for n in 0..steps {
        let mut registry = created.clone();
        let mut fake = Fake::new(&registry);
        fake.strict = false;
        fake.fail_at(n);
        let error = registry.destroy(id, &mut fake).unwrap_err();
        let DestroyError::Partition {
            failed, failures, ..
        } = error
        else {
            panic!("{error}")
        };
        assert_eq!(failures, 1);
        assert_eq!(failed.error, Injected { call: n });
        // Every step was still taken, and the books are as before the create.
        assert_eq!(fake.calls, destroy_calls, "step {n}");
        assert_eq!(registry, before, "step {n}");
        // What the failed step would have done is not done (destroying the tables drops a
        // mapping the cell kept).
        if !matches!(failed.step, Step::UnmapFromCell { .. }) {
            assert_ne!(fake.machine, Machine::of(&before), "step {n}");
        }
    }

    let mut registry = created.clone();
    let mut fake = Fake::new(&registry);
    fake.strict = false;
    fake.fail_at(0).fail_at(1);
    let error = registry.destroy(id, &mut fake).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cell \"big\": destroyed, but returning CPU 2 to the root cell failed: injected failure \
         at call 0 (and 1 more steps failed)"
    );
    assert_eq!(error.code(), Code::OutOfMemory);
}

#[test]
fn destroy_refuses_the_root_cell_and_unknown_ids() {
    let mut registry: Reg = qemu();
    let mut fake = Fake::new(&registry);
    let error = registry.destroy(CellId::ROOT, &mut fake).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cell \"linux\": the root cell cannot be destroyed"
    );
    assert_eq!(error.code(), Code::Denied);
    for id in [1, 3, 4, 1000] {
        let error = registry.destroy(CellId(id), &mut fake).unwrap_err();
        assert_eq!(error, DestroyError::NoSuchCell(CellId(id)));
        assert_eq!(error.to_string(), format!("no cell with id {id}"));
        assert_eq!(error.code(), Code::NoSuchCell);
    }
    let demo = cell_bytes(QEMU_DEMO);
    let id = registry
        .create(view(&demo).cell(), 1 << 3, &mut fake)
        .unwrap();
    registry.destroy(id, &mut fake).unwrap();
    assert_eq!(
        registry.destroy(id, &mut fake),
        Err(DestroyError::NoSuchCell(id))
    );
    assert!(fake
        .calls
        .iter()
        .all(|c| !matches!(c, Call::DestroyTables(0))));
}

#[test]
fn twenty_cycles_leave_everything_identical() {
    let demo = cell_bytes(QEMU_DEMO);
    let big = cell_bytes(BIG);
    let mut registry: Reg = qemu();
    let before = registry.clone();
    let mut fake = Fake::new(&registry);
    let initial = fake.machine.clone();
    for round in 0..20 {
        let a = registry
            .create(view(&demo).cell(), 0b1110, &mut fake)
            .unwrap();
        let b = registry
            .create(view(&big).cell(), 0b1110, &mut fake)
            .unwrap();
        assert_eq!((a, b), (CellId(1), CellId(2)));
        assert_eq!(fake.machine, Machine::of(&registry));
        registry.set_state(a, CellState::Loaded).unwrap();
        registry.set_state(a, CellState::Running).unwrap();
        // Alternate the order of destruction.
        let (first, second) = if round % 2 == 0 { (a, b) } else { (b, a) };
        registry.destroy(first, &mut fake).unwrap();
        assert_eq!(fake.machine, Machine::of(&registry));
        registry.destroy(second, &mut fake).unwrap();
        assert_eq!(registry, before, "round {round}");
        assert_eq!(fake.machine, initial, "round {round}");
    }
}

#[test]
fn ids_are_the_lowest_free_ones() {
    let mut registry: Reg = qemu();
    let mut fake = Fake::new(&registry);
    let a = cell("a", "[1]", "[]", &[]);
    let b = cell("b", "[2]", "[]", &[]);
    let c = cell("c", "[3]", "[]", &[]);
    let offline = 0b1110;
    assert_eq!(
        registry.create(view(&a).cell(), offline, &mut fake),
        Ok(CellId(1))
    );
    assert_eq!(
        registry.create(view(&b).cell(), offline, &mut fake),
        Ok(CellId(2))
    );
    registry.destroy(CellId(1), &mut fake).unwrap();
    assert_eq!(
        registry.create(view(&c).cell(), offline, &mut fake),
        Ok(CellId(1))
    );
    let names: Vec<&str> = registry.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["linux", "c", "b"]);
}

#[test]
fn state_transitions() {
    use CellState::*;
    // (from, to, allowed)
    let allowed = [
        (Created, Loaded),
        (Loaded, Loaded),
        (Loaded, Running),
        (Running, ShutDown),
        (Running, Failed),
        (Running, Reset),
        (Reset, Loaded),
    ];
    let demo = cell_bytes(QEMU_DEMO);
    // Reaches a state through allowed transitions.
    let path = |state: CellState| -> &'static [CellState] {
        match state {
            Created => &[],
            Loaded => &[Loaded],
            Running => &[Loaded, Running],
            ShutDown => &[Loaded, Running, ShutDown],
            Failed => &[Loaded, Running, Failed],
            Reset => &[Loaded, Running, Reset],
        }
    };
    for from in CellState::ALL {
        for to in CellState::ALL {
            let mut registry: Reg = qemu();
            let id = registry
                .create(view(&demo).cell(), 1 << 3, &mut Fake::new(&registry))
                .unwrap();
            for &step in path(from) {
                registry.set_state(id, step).unwrap();
            }
            assert_eq!(registry.cell(id).unwrap().state, from);
            let result = registry.set_state(id, to);
            if allowed.contains(&(from, to)) {
                assert_eq!(result, Ok(()), "{from:?} -> {to:?}");
                assert_eq!(registry.cell(id).unwrap().state, to);
            } else {
                let error = result.unwrap_err();
                assert_eq!(
                    error,
                    StateError::WrongState {
                        cell: registry.cell(id).unwrap().name,
                        from,
                        to
                    }
                );
                assert_eq!(error.code(), Code::WrongState);
                assert_eq!(registry.cell(id).unwrap().state, from);
            }
            // Destroy works from every state.
            registry
                .destroy(id, &mut Fake::new(&registry))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    let mut registry: Reg = qemu();
    let id = registry
        .create(view(&demo).cell(), 1 << 3, &mut Fake::new(&registry))
        .unwrap();
    let error = registry.set_state(id, Running).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cell \"demo\" is created: it cannot become running"
    );
    let error = registry.set_state(CellId::ROOT, ShutDown).unwrap_err();
    assert_eq!(error.code(), Code::Denied);
    assert_eq!(
        error.to_string(),
        "cell \"linux\": the root cell's state does not change"
    );
    let error = registry.set_state(CellId(2), Loaded).unwrap_err();
    assert_eq!(error, StateError::NoSuchCell(CellId(2)));
    assert_eq!(error.code(), Code::NoSuchCell);
}

#[test]
fn images_go_into_one_loadable_region() {
    let mut registry: Reg = qemu();
    let demo = cell_bytes(QEMU_DEMO);
    let id = registry
        .create(view(&demo).cell(), 1 << 3, &mut Fake::new(&registry))
        .unwrap();
    assert_eq!(registry.loadable(id, 0, 0x1000), Ok(0x7f00_0000));
    assert_eq!(registry.loadable(id, 0x20_0000, 0xdf_f000), Ok(0x7f20_0000));
    assert_eq!(registry.loadable(id, 0xff_efff, 1), Ok(0x7fff_efff));
    assert_eq!(registry.loadable(id, 0x10, 0), Ok(0x7f00_0010));

    let error = registry.loadable(id, 0xff_e000, 0x2000).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cell \"demo\": 0x2000 bytes at guest address 0xffe000 do not fit: 0x1000 bytes fit in \
         memory region 0 [0x0, 0xfff000)"
    );
    assert_eq!(error.code(), Code::ImageTooLarge);
    assert!(matches!(
        registry.loadable(id, 0x10, u64::MAX),
        Err(LoadError::TooLarge {
            fits: 0xff_eff0,
            ..
        })
    ));

    for address in [0x100_0000, 0x904_0000, 0x8000_0000, u64::MAX] {
        let error = registry.loadable(id, address, 1).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(
            error.to_string(),
            format!("cell \"demo\": guest address {address:#x} is not in a loadable memory region")
        );
    }

    registry.set_state(id, CellState::Loaded).unwrap();
    assert_eq!(registry.loadable(id, 0, 0x1000), Ok(0x7f00_0000));
    registry.set_state(id, CellState::Running).unwrap();
    let error = registry.loadable(id, 0, 0x1000).unwrap_err();
    assert_eq!(error.code(), Code::WrongState);
    assert_eq!(
        error.to_string(),
        "cell \"demo\" is running: images are loaded before the start only"
    );
    assert_eq!(
        registry
            .loadable(CellId::ROOT, 0x4000_0000, 1)
            .unwrap_err()
            .code(),
        Code::Denied
    );
    assert_eq!(
        registry.loadable(CellId(3), 0, 1),
        Err(LoadError::NoSuchCell(CellId(3)))
    );
}

#[test]
fn records_describe_every_cell() {
    let mut registry: Reg = qemu();
    let mut fake = Fake::new(&registry);
    let demo = cell_bytes(QEMU_DEMO);
    let big = cell_bytes(BIG);
    registry
        .create(view(&demo).cell(), 0b1110, &mut fake)
        .unwrap();
    let id = registry
        .create(view(&big).cell(), 0b1110, &mut fake)
        .unwrap();
    registry.set_state(id, CellState::Loaded).unwrap();
    let records: Vec<_> = registry.iter().map(|c| c.record()).collect();
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.id.get(),
                r.name(),
                r.state.get(),
                r.cpus.get(),
                r.memory.get(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                0,
                "linux",
                CellState::Running as u32,
                0b0001,
                0x20_0000 + 0x3f60_0000 - 0x100_0000 - 0x80_0000 + 0x1000
            ),
            (1, "demo", CellState::Created as u32, 0b1000, 0x100_0000),
            (2, "big", CellState::Loaded as u32, 0b0110, 0x90_0000),
        ]
    );
    assert_eq!(registry.cell(id).unwrap().reset_address, 0x1000);
    assert_eq!(registry.comm_region(CellId::ROOT), None);
    assert_eq!(registry.record(CellId(3)).map(|r| r.id.get()), None);
}

#[test]
fn per_cpu_lines_are_not_moved() {
    // x86-like registry: every line is shared; Arm: lines below 32 are per-CPU.
    let root = [Region::new(0x1000_0000, 0x1000_0000, 0x100_0000, RAM)];
    let lines = [IrqRange {
        first: 0,
        count: 64,
    }];
    let arm: Reg = Registry::new("root", 0b11, &root, &lines, 32).unwrap();
    assert_eq!(arm.root().irqs.to_string(), "32-63");
    let x86: Reg = Registry::new("root", 0b11, &root, &lines, 0).unwrap();
    assert_eq!(x86.root().irqs.to_string(), "0-63");
    assert_eq!(IrqSet::LINES, 1024);
}

#[test]
fn the_root_cell_description_is_checked() {
    let ram = Region::new(0x4000_0000, 0x4000_0000, 0x1000_0000, RAM);
    let new = |name: &str, cpus, regions: &[Region], irqs: &[IrqRange]| {
        Reg::new(name, cpus, regions, irqs, 32).map(|_| ())
    };
    assert_eq!(new("root", 1, &[ram], &[]), Ok(()));
    assert_eq!(new("", 1, &[ram], &[]), Err(RootError::BadName));
    assert_eq!(new("a b", 1, &[ram], &[]), Err(RootError::BadName));
    assert_eq!(new("root", 0, &[ram], &[]), Err(RootError::NoCpu));
    let overlapping = Region::new(0x4fff_f000, 0, 0x2000, RAM);
    assert_eq!(
        new("root", 1, &[ram, overlapping], &[]),
        Err(RootError::MemoryOverlap {
            region: 1,
            other: 0
        })
    );
    let empty = Region::new(0, 0, 0, RAM);
    assert_eq!(
        new("root", 1, &[ram, empty], &[]),
        Err(RootError::BadRegion { region: 1 })
    );
    let wraps = Region::new(u64::MAX - 0xfff, 0, 0x2000, RAM);
    assert_eq!(
        new("root", 1, &[wraps], &[]),
        Err(RootError::BadRegion { region: 0 })
    );
    let comm = Region::new(0, 0, 0x1000, MemoryFlags::READ | MemoryFlags::COMM_REGION);
    assert_eq!(
        new("root", 1, &[comm], &[]),
        Err(RootError::BadRegion { region: 0 })
    );
    let many = [ram; MAX_REGIONS + 1];
    assert_eq!(
        new("root", 1, &many, &[]),
        Err(RootError::TooManyRegions { count: 65 })
    );
    let error = new(
        "root",
        1,
        &[ram],
        &[IrqRange {
            first: 1000,
            count: u32::MAX,
        }],
    )
    .unwrap_err();
    assert_eq!(error, RootError::IrqBeyondLimit { line: 1024 });
    assert_eq!(
        error.to_string(),
        "root cell: interrupt line 1024 is beyond the 1024 lines supported"
    );
}

/// An x86 system: the root cell has the legacy ports and COM1 to COM4, not the PCI
/// configuration ports (which the hypervisor keeps).
const X86_SYSTEM: &str = r#"
architecture = "x86_64"

[hypervisor]
start = 0x100_0000
size = 0x80_0000

[interrupt-controller]
type = "apic"

[[interrupt-controller.ioapic]]
address = 0xfec0_0000

[root-cell]
name = "linux"
cpus = "0-3"
irqs = ["0-23"]
ports = ["0-0xcf7", "0xd00-0xffff"]

[[root-cell.memory]]
phys = 0x180_0000
size = 0x6e80_0000
flags = ["read", "write", "execute", "dma"]

[[root-cell.memory]]
phys = 0x7000_0000
size = 0x200_0000
flags = ["read", "write", "execute", "dma", "loadable"]
"#;

/// An x86 cell with ports `ports` (TOML) and 16 MiB of the loadable RAM; on CPU 3 also
/// COM2's interrupt and the first 16 MiB, on another CPU the second.
fn x86_cell(name: &str, cpu: u32, ports: &str) -> Vec<u8> {
    x86_cell_with(name, cpu, &format!("ports = {ports}"))
}

/// [`x86_cell`] with the top-level TOML line `extra` instead of the ports.
fn x86_cell_with(name: &str, cpu: u32, extra: &str) -> Vec<u8> {
    let (irqs, phys) = if cpu == 3 {
        ("[3]", 0x7000_0000)
    } else {
        ("[]", 0x7100_0000)
    };
    cell_bytes(&format!(
        r#"architecture = "x86_64"
name = "{name}"
cpus = [{cpu}]
irqs = {irqs}
{extra}

[[memory]]
phys = {phys:#x}
virt = 0
size = 0x100_0000
flags = ["read", "write", "execute", "loadable"]
"#
    ))
}

#[test]
fn io_ports_move_to_a_cell_and_back() {
    let mut registry: Reg = registry(&system_bytes(X86_SYSTEM));
    let before = registry.clone();
    let mut fake = Fake::new(&registry);
    let initial = fake.machine.clone();
    let com2 = x86_cell("com2", 3, r#"["0x2f8-0x2ff", 0x80]"#);
    let id = registry
        .create(view(&com2).cell(), 1 << 3, &mut fake)
        .unwrap();
    let cell = registry.cell(id).unwrap();
    assert_eq!(
        cell.ports.as_slice(),
        &[
            PortRange {
                base: 0x2f8,
                size: 8
            },
            PortRange {
                base: 0x80,
                size: 1
            }
        ]
    );
    assert!(fake.calls.contains(&Call::MovePorts(0x2f8, 8, 0, 1)));
    assert!(fake.calls.contains(&Call::MovePorts(0x80, 1, 0, 1)));
    assert_eq!(fake.machine, Machine::of(&registry));
    assert_eq!(fake.machine.ports.get(&0x2ff), Some(&1));
    assert_eq!(fake.machine.ports.get(&0x300), None);

    // Another cell cannot have them, nor ports the root cell never had.
    let twin = x86_cell("twin", 2, r#"["0x2fc-0x303"]"#);
    rejected(
        &mut registry,
        &twin,
        1 << 2,
        "cell \"twin\": port range 0 (0x2fc-0x303): port 0x2fc belongs to cell \"com2\"",
        Code::NotOwned,
    );
    let pci = x86_cell("pci", 2, r#"["0xcf0-0xcff"]"#);
    rejected(
        &mut registry,
        &pci,
        1 << 2,
        "cell \"pci\": port range 0 (0xcf0-0xcff): port 0xcf8 not owned by the root cell",
        Code::NotOwned,
    );
    // Ports the root cell has in two ranges that touch are its.
    let mut split: Reg = registry_with_ports(r#"["0-0x2fb", "0x2fc-0xffff"]"#);
    let mut split_fake = Fake::new(&split);
    split
        .create(view(&com2).cell(), 1 << 3, &mut split_fake)
        .unwrap();

    fake.calls.clear();
    registry.destroy(id, &mut fake).unwrap();
    assert_eq!(registry, before);
    assert_eq!(fake.machine, initial);
    assert!(fake.calls.contains(&Call::MovePorts(0x2f8, 8, 1, 0)));
}

/// [`X86_SYSTEM`] with PCI functions `functions` (TOML list) for the root cell.
fn x86_system_with_pci(functions: &str) -> Vec<u8> {
    system_bytes(
        &X86_SYSTEM
            .replace(
                r#"irqs = ["0-23"]"#,
                &format!("irqs = [\"0-23\"]\npci-devices = {functions}"),
            )
            .replace(
                "[root-cell]",
                "[pci-host]\necam-base = 0xb000_0000\n\n[root-cell]",
            ),
    )
}

/// [`x86_cell`] with PCI functions `functions` (TOML list).
fn x86_cell_with_pci(name: &str, cpu: u32, functions: &str) -> Vec<u8> {
    x86_cell_with(name, cpu, &format!("pci-devices = {functions}"))
}

#[test]
fn pci_functions_move_to_a_cell_and_back() {
    let mut registry: Reg = registry(&x86_system_with_pci(r#"["00:05.0", "00:06.0"]"#));
    let before = registry.clone();
    let mut fake = Fake::new(&registry);
    let initial = fake.machine.clone();
    let edu = x86_cell_with_pci("edu", 3, r#"["00:05.0", "0000:00:06.0"]"#);
    let id = registry
        .create(view(&edu).cell(), 1 << 3, &mut fake)
        .unwrap();
    let functions: Vec<String> = registry
        .cell(id)
        .unwrap()
        .pci
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(functions, ["0000:00:05.0", "0000:00:06.0"]);
    assert_eq!(fake.machine, Machine::of(&registry));
    assert_eq!(fake.machine.pci.len(), 2);
    // Both moved after the tables and before the CPU.
    let position = |call: Call| fake.calls.iter().position(|c| *c == call).unwrap();
    let edu_bdf = (5 << 3) as u16;
    assert!(position(Call::MovePci(edu_bdf, 0, 1)) < position(Call::MoveCpu(3, 0, 1)));
    assert!(position(Call::CreateTables(1)) < position(Call::MovePci(edu_bdf, 0, 1)));

    // Another cell cannot have them.
    let twin = x86_cell_with_pci("twin", 2, r#"["00:06.0"]"#);
    rejected(
        &mut registry,
        &twin,
        1 << 2,
        "cell \"twin\": PCI device 0 (0000:00:06.0): belongs to cell \"edu\"",
        Code::NotOwned,
    );

    fake.calls.clear();
    registry.destroy(id, &mut fake).unwrap();
    assert_eq!(registry, before);
    assert_eq!(fake.machine, initial);
    assert!(fake.calls.contains(&Call::MovePci(edu_bdf, 1, 0)));
}

#[test]
fn a_failed_pci_move_is_rolled_back() {
    let mut registry: Reg = registry(&x86_system_with_pci(r#"["00:05.0", "00:06.0"]"#));
    // Calls: create tables, unmap, map, move 00:05.0, move 00:06.0 (fails), then the undo.
    let edu = x86_cell_with_pci("edu", 2, r#"["00:05.0", "00:06.0"]"#);
    let step = "moving PCI device 1 to the cell";
    let fake = rolled_back(&mut registry, &edu, 1 << 2, 4, step);
    assert!(fake.calls.contains(&Call::MovePci(5 << 3, 1, 0)));
}

/// Creates the cell `config` on CPUs `offline` with the `fail_at`-th call failing: the
/// error names `step`, and registry and machine are as before. Returns the fake.
fn rolled_back(
    registry: &mut Reg,
    config: &[u8],
    offline: u64,
    fail_at: usize,
    step: &str,
) -> Fake {
    let before = registry.clone();
    let mut fake = Fake::new(registry);
    let initial = fake.machine.clone();
    fake.fail_at(fail_at);
    let error = registry
        .create(view(config).cell(), offline, &mut fake)
        .unwrap_err();
    assert!(error.to_string().contains(step), "{error}");
    assert_eq!(*registry, before);
    assert_eq!(fake.machine, initial);
    fake
}

/// [`X86_SYSTEM`] with the root cell's ports `ports`.
fn registry_with_ports(ports: &str) -> Reg {
    registry(&system_bytes(&X86_SYSTEM.replace(
        r#"ports = ["0-0xcf7", "0xd00-0xffff"]"#,
        &format!("ports = {ports}"),
    )))
}

#[test]
fn a_failed_port_move_is_rolled_back() {
    let mut registry: Reg = registry(&system_bytes(X86_SYSTEM));
    let com2 = x86_cell("com2", 3, r#"["0x2f8-0x2ff"]"#);
    // Calls: create tables, unmap, map, move line 3, move the ports (fails).
    let step = "moving I/O port range 0 to the cell";
    rolled_back(&mut registry, &com2, 1 << 3, 4, step);
}
