//! The host-testable half of the management interface: what the hypervisor does with the
//! command words, arguments and data-window bytes the root cell supplies, as far as it is
//! not hardware. A sequence of commands (raw command words through `Command::from_raw`)
//! drives a `Registry` the way `cellvisor-core`'s management does:
//!
//! - `cell create`: the data window holds a cell configuration (generated from the
//!   fuzzer's choices, arbitrary bytes behind a repaired header, or a generated one with
//!   bytes flipped and the checksum repaired); `ARG0` is its length (the window's 16 KiB
//!   bound applies); it goes through `CellConfigView::parse` and `Registry::create`, with
//!   fuzzer-chosen offline CPUs and a `Partition` fake that can fail at any step;
//! - `cell load`: `Registry::loadable` with fuzzer-chosen id, address and length, then the
//!   state change to loaded; `cell start`, `cell shutdown`: the state changes;
//! - `cell destroy`, `cell list` (the `CellRecord`s, decoded again as the CLI does);
//! - any other word: unknown, and `Error::from_status` on a fuzzer-chosen status.
//!
//! Checked after every command: no panic; a failed command leaves the registry unchanged
//! and its error has a management error code; every CPU, interrupt line and lent physical
//! byte is owned exactly once; each partition call is legal for the machine as it is (the
//! fake keeps the machine's state: a CPU or line moves only from its owner, memory is never
//! in the root cell and a cell at once, tables exist before mappings); the machine matches
//! the registry; an image goes only inside a loadable region of the cell. At the end every
//! cell is destroyed and the registry and the machine are as at boot.
//!
//! Not covered here (not host-testable yet): the copy into cell memory, CPU start and stop,
//! the shutdown vote, the data window's writing of records and messages.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Result, Unstructured};
use cellvisor_abi::{CellRecord, CellState, Command, Error as Code};
use cellvisor_cell::{CellId, CreateError, DestroyError, Partition, Region, Registry};
use cellvisor_config::{
    layout, Architecture, Bdf, Cell, CellConfig, CellConfigView, CpuSet, IrqRange, MemoryFlags,
    MemoryRegion, PciAddress, StreamId,
};
use libfuzzer_sys::fuzz_target;
use zerocopy::{FromBytes, IntoBytes};

const PAGE: u64 = 0x1000;
/// The data window the hypervisor offers (`cell create` copies at most this much).
const WINDOW: usize = 16 * 1024;
const CPUS: u64 = 0b1111;
const RAM: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::EXECUTE);
const IO: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::IO);
const ROOT_IRQS: IrqRange = IrqRange {
    first: 32,
    count: 64,
};

type Reg = Registry<4>;

/// The root cell's memory at boot: identity-mapped RAM, two adjacent RAM regions mapped
/// elsewhere, device registers.
fn root_memory() -> [Region; 4] {
    [
        Region::new(0x4000_0000, 0x4000_0000, 0x100 * PAGE, RAM),
        Region::new(0x8000_0000, 0x1000_0000, 0x100 * PAGE, RAM),
        Region::new(0x8010_0000, 0x1010_0000, 0x80 * PAGE, RAM),
        Region::new(0x900_0000, 0x900_0000, 8 * PAGE, IO),
    ]
}

fn boot() -> Reg {
    Registry::new("root", CPUS, &root_memory(), &[ROOT_IRQS], 32).unwrap()
}

type RegionKey = (u64, u64, u64, u64);

fn key(region: &Region) -> RegionKey {
    (region.phys, region.virt, region.size, region.flags.bits())
}

/// The machine as the partition calls left it.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
struct MachineState {
    cpu_owner: BTreeMap<u32, u32>,
    irq_owner: BTreeMap<u32, u32>,
    /// Physical ranges (start, size) taken out of the root cell's stage 2.
    root_unmapped: BTreeSet<(u64, u64)>,
    cell_maps: BTreeSet<(u32, RegionKey)>,
    tables: BTreeSet<u32>,
    /// Owners of the PCI functions cells have (segment, bus/device/function).
    pci_owner: BTreeMap<(u16, u16), u32>,
}

impl MachineState {
    /// What the machine must look like for the registry's books.
    fn of(registry: &Reg) -> Self {
        let mut state = Self::default();
        for cell in registry.iter() {
            for cpu in cell.cpu_list() {
                state.cpu_owner.insert(cpu, cell.id.0);
            }
            for irq in cell.irqs.iter() {
                state.irq_owner.insert(irq, cell.id.0);
            }
            if cell.is_root() {
                continue;
            }
            state.tables.insert(cell.id.0);
            for device in cell.pci.iter() {
                state.pci_owner.insert((device.domain, device.bdf.0), cell.id.0);
            }
            for region in cell.regions.iter() {
                state.cell_maps.insert((cell.id.0, key(region)));
                if region.is_lent() {
                    state.root_unmapped.insert((region.phys, region.size));
                }
            }
        }
        state
    }
}

/// A `Partition` that checks each call against the machine's state, applies it, and fails
/// the `fail_at`-th fallible call (changing nothing).
struct Fake {
    state: MachineState,
    calls: usize,
    fail_at: Option<usize>,
}

#[derive(Debug)]
struct Injected;

impl core::fmt::Display for Injected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("injected failure")
    }
}

impl Fake {
    fn fail(&mut self) -> bool {
        self.calls += 1;
        self.fail_at == Some(self.calls)
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    let end = |(start, size): (u64, u64)| u128::from(start) + u128::from(size);
    u128::from(a.0) < end(b) && u128::from(b.0) < end(a)
}

impl Partition for Fake {
    type Error = Injected;

    fn unmap_from_root(&mut self, root_virt: u64, phys: u64, size: u64) -> Result2 {
        if self.fail() {
            return Err(Injected);
        }
        let boot = root_memory();
        let inside = boot.iter().any(|r| {
            r.phys_range()
                .contains_range(&Region::new(phys, 0, size, RAM).phys_range())
                && root_virt - r.virt == phys - r.phys
        });
        assert!(
            inside,
            "unmap of {phys:#x}+{size:#x} at {root_virt:#x}: no root region"
        );
        assert!(
            !self
                .state
                .root_unmapped
                .iter()
                .any(|&r| overlaps(r, (phys, size))),
            "{phys:#x}+{size:#x} unmapped from the root cell twice"
        );
        self.state.root_unmapped.insert((phys, size));
        Ok(())
    }

    fn map_into_root(&mut self, _: u64, phys: u64, size: u64, _: MemoryFlags) -> Result2 {
        if self.fail() {
            return Err(Injected);
        }
        assert!(
            self.state.root_unmapped.remove(&(phys, size)),
            "{phys:#x}+{size:#x} mapped back into the root cell, but it was not taken out"
        );
        Ok(())
    }

    fn map_into_cell(&mut self, cell: CellId, region: &Region) -> Result2 {
        if self.fail() {
            return Err(Injected);
        }
        assert!(
            self.state.tables.contains(&cell.0),
            "mapping into cell {cell} without tables"
        );
        if region.is_lent() {
            assert!(
                self.state
                    .root_unmapped
                    .contains(&(region.phys, region.size)),
                "{region} mapped into cell {cell} while the root cell still has it"
            );
        }
        assert!(
            self.state.cell_maps.insert((cell.0, key(region))),
            "{region} mapped into cell {cell} twice"
        );
        Ok(())
    }

    fn unmap_from_cell(&mut self, cell: CellId, region: &Region) -> Result2 {
        if self.fail() {
            return Err(Injected);
        }
        assert!(
            self.state.cell_maps.remove(&(cell.0, key(region))),
            "{region} unmapped from cell {cell}, which does not have it"
        );
        Ok(())
    }

    fn move_ports(&mut self, base: u32, count: u32, from: CellId, to: CellId) -> Result2 {
        // The fuzzed system is an Arm one: its root cell and cells have no I/O ports.
        panic!("ports {base:#x}+{count} moved from {from} to {to} on a system without ports")
    }

    fn move_pci(&mut self, device: PciAddress, from: CellId, to: CellId) -> Result2 {
        if self.fail() {
            return Err(Injected);
        }
        let key = (device.domain, device.bdf.0);
        let owner = self.state.pci_owner.get(&key).copied().unwrap_or(0);
        assert_eq!(owner, from.0, "PCI {device} moved from {from}, not its owner");
        if to.0 == 0 {
            self.state.pci_owner.remove(&key);
        } else {
            self.state.pci_owner.insert(key, to.0);
        }
        Ok(())
    }

    fn move_irq(&mut self, irq: u32, from: CellId, to: CellId) -> Result2 {
        if self.fail() {
            return Err(Injected);
        }
        let owner = self.state.irq_owner.get_mut(&irq);
        assert!(
            owner.as_deref() == Some(&from.0),
            "line {irq} moved from {from}, not its owner"
        );
        if let Some(owner) = owner {
            *owner = to.0;
        }
        Ok(())
    }

    fn move_cpu(&mut self, cpu: u32, from: CellId, to: CellId) -> Result2 {
        if self.fail() {
            return Err(Injected);
        }
        let owner = self.state.cpu_owner.get_mut(&cpu);
        assert!(
            owner.as_deref() == Some(&from.0),
            "CPU {cpu} moved from {from}, not its owner"
        );
        if let Some(owner) = owner {
            *owner = to.0;
        }
        Ok(())
    }

    fn create_tables(&mut self, cell: CellId) -> Result2 {
        if self.fail() {
            return Err(Injected);
        }
        assert!(
            !cell.is_root() && self.state.tables.insert(cell.0),
            "tables of {cell} twice"
        );
        Ok(())
    }

    fn destroy_tables(&mut self, cell: CellId) {
        assert!(
            !self.state.cell_maps.iter().any(|&(c, _)| c == cell.0),
            "tables of cell {cell} freed with regions still mapped"
        );
        assert!(
            self.state.tables.remove(&cell.0),
            "tables of {cell} freed twice"
        );
    }
}

type Result2 = core::result::Result<(), Injected>;

/// The books: each CPU and line owned once, lent memory owned once, nothing lost.
fn check_books(registry: &Reg) {
    let mut cpus = 0u64;
    for cell in registry.iter() {
        assert_eq!(cpus & cell.cpus, 0, "a CPU is owned twice");
        assert_ne!(cell.cpus, 0, "cell {} has no CPU", cell.name);
        cpus |= cell.cpus;
    }
    assert_eq!(cpus, CPUS, "a CPU was lost");
    let lines: usize = registry.iter().map(|c| c.irqs.len() as usize).sum();
    assert_eq!(
        lines, ROOT_IRQS.count as usize,
        "a line was lost or doubled"
    );
    let cells: Vec<_> = registry.iter().collect();
    for (i, a) in cells.iter().enumerate() {
        for b in &cells[i + 1..] {
            for ra in a.regions.iter().filter(|r| r.has_phys()) {
                for rb in b.regions.iter().filter(|r| r.has_phys()) {
                    let shared = (a.is_root() || ra.is_root_shared()) && rb.is_root_shared();
                    assert!(
                        shared || !ra.phys_range().overlaps(&rb.phys_range()),
                        "{ra} of {} and {rb} of {} overlap",
                        a.name,
                        b.name
                    );
                }
            }
        }
    }
    let boot: u64 = registry.root_memory().iter().map(|r| r.size).sum();
    let root: u64 = registry.root().regions.iter().map(|r| r.size).sum();
    let lent: u64 = cells
        .iter()
        .filter(|c| !c.is_root())
        .flat_map(|c| c.regions.iter())
        .filter(|r| r.is_lent())
        .map(|r| r.size)
        .sum();
    assert_eq!(
        root + lent,
        boot,
        "root memory plus lent memory is not the boot memory"
    );
}

const NAMES: [&str; 6] = ["demo", "rtos", "a", "b", "root", "bad name"];

/// A cell configuration from the fuzzer's choices, mostly near valid for this system.
fn generated(u: &mut Unstructured<'_>) -> Result<CellConfig> {
    let name = NAMES[u.int_in_range(0..=NAMES.len() - 1)?];
    let mut cell = Cell::new(name);
    let cpus: u8 = u.arbitrary()?;
    cell.cpus = CpuSet::from_cpus((0..8).filter(|c| cpus & 1 << c != 0));
    for _ in 0..u.int_in_range(0..=3)? {
        cell.irqs.push(IrqRange {
            first: u.int_in_range(16..=127)?,
            count: u.int_in_range(1..=40)?,
        });
    }
    let roots = root_memory();
    let mut virt = 0u64;
    for _ in 0..u.int_in_range(0..=5)? {
        let root = u.int_in_range(0..=roots.len())?;
        let (base, pages, io) = match roots.get(root) {
            Some(r) => (r.phys, r.size / PAGE, r.is_io()),
            None => (0x2000_0000, 0x100, false),
        };
        let offset = u.int_in_range(0..=pages - 1)?;
        let count = u.int_in_range(1..=pages)?;
        let count = if u.arbitrary()? {
            count.min(pages - offset)
        } else {
            count
        };
        let mut flags = if io { IO } else { RAM };
        let extra: u8 = u.arbitrary()?;
        flags |= MemoryFlags::from_bits_truncate(u64::from(extra)) & !MemoryFlags::IO;
        if extra & 0x20 != 0 {
            // A communication region: no physical memory of its own.
            cell.memory_regions.push(MemoryRegion {
                phys_start: 0,
                virt_start: 0x1_0000_0000,
                size: PAGE,
                flags: MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::COMM_REGION,
            });
            continue;
        }
        cell.memory_regions.push(MemoryRegion {
            phys_start: base + offset * PAGE,
            virt_start: virt,
            size: count * PAGE,
            flags,
        });
        virt += count * PAGE;
    }
    match u.int_in_range(0..=15)? {
        0 => cell.stream_ids.push(StreamId { id: 1, mask: 0 }),
        1 => cell.pci_devices.push(cellvisor_config::PciDevice {
            domain: 0,
            bdf: Bdf::new(0, 1, 0).expect("00:01.0 is a BDF"),
            kind: cellvisor_config::PciDeviceKind::Device,
            iommu: None,
        }),
        _ => {}
    }
    cell.cpu_reset_address = match u.int_in_range(0..=7)? {
        0 => u.arbitrary()?,
        _ => u.int_in_range(0..=0xffff_ffff)?,
    };
    Ok(CellConfig {
        architecture: Architecture::Aarch64,
        cell,
    })
}

/// The data window's contents for `cell create`.
fn window(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0..=2)? {
        0 => generated(u)?.encode().unwrap_or_default(),
        1 => {
            let len = u.int_in_range(16..=1024)?;
            let mut bytes = u.bytes(len)?.to_vec();
            layout::seal(&mut bytes, layout::KIND_CELL, layout::ARCH_AARCH64);
            bytes
        }
        _ => {
            let mut bytes = generated(u)?.encode().unwrap_or_default();
            for _ in 0..u.int_in_range(1..=4)? {
                if bytes.len() > 16 {
                    let at = u.int_in_range(16..=bytes.len() - 1)?;
                    bytes[at] ^= u.arbitrary::<u8>()?;
                }
            }
            if u.arbitrary()? {
                layout::seal(&mut bytes, layout::KIND_CELL, layout::ARCH_AARCH64);
            }
            bytes
        }
    })
}

fn cell_id(u: &mut Unstructured<'_>) -> Result<CellId> {
    Ok(CellId(match u.int_in_range(0..=7)? {
        7 => u.arbitrary()?,
        small => small,
    }))
}

fn code_round_trips(code: Code) {
    assert_eq!(Code::from_status(code.status()), Some(Ok(code)));
}

fn create(u: &mut Unstructured<'_>, registry: &mut Reg, fake: &mut Fake) -> Result<()> {
    let mut bytes = window(u)?;
    // ARG0: the length; the hypervisor refuses 0 and more than the window, and reads what
    // the window holds (zeros after what the root cell wrote).
    let len = if u.arbitrary()? {
        bytes.len()
    } else {
        usize::from(u.arbitrary::<u16>()?)
    };
    if len == 0 || len > WINDOW {
        return Ok(());
    }
    bytes.resize(len, 0);
    let Ok(config) = CellConfigView::parse(&bytes) else {
        return Ok(());
    };
    let offline = u64::from(u.arbitrary::<u8>()?);
    fake.calls = 0;
    fake.fail_at = if u.arbitrary()? {
        Some(u.int_in_range(1..=40)?)
    } else {
        None
    };
    let before = registry.clone();
    let result = registry.create(config.cell(), offline, fake);
    fake.fail_at = None;
    match result {
        Ok(id) => {
            let cell = registry
                .cell(id)
                .expect("a created cell is in the registry");
            assert_eq!(
                cell.cpus & !offline,
                0,
                "an online CPU went to the new cell"
            );
            assert_eq!(cell.state, CellState::Created);
            assert_eq!(cell.name.as_str(), config.cell().name());
            assert!(before.cell(id).is_none(), "id {id} was taken");
        }
        Err(error) => {
            assert_eq!(
                registry, &before,
                "a failed create changed the books: {error}"
            );
            if let CreateError::Partition { undo, .. } = &error {
                assert!(undo.is_none(), "an undo step failed: {error}");
            }
            code_round_trips(error.code());
            let _ = error.to_string();
        }
    }
    Ok(())
}

fn load(u: &mut Unstructured<'_>, registry: &mut Reg) -> Result<()> {
    let id = cell_id(u)?;
    let regions: Vec<Region> = registry
        .cell(id)
        .map(|c| c.regions.to_vec())
        .unwrap_or_default();
    let address = match regions.get(u.int_in_range(0..=7)?) {
        Some(r) => r
            .virt
            .wrapping_add(u.int_in_range(0..=r.size.saturating_add(PAGE))?),
        None => u.arbitrary()?,
    };
    let len = match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        _ => u.int_in_range(0..=0x10_0000)?,
    };
    let before = registry.clone();
    match registry.loadable(id, address, len) {
        Ok(phys) => {
            let fits = regions.iter().any(|r| {
                r.flags.contains(MemoryFlags::LOADABLE)
                    && r.has_phys()
                    && r.virt <= address
                    && u128::from(address) + u128::from(len)
                        <= u128::from(r.virt) + u128::from(r.size)
                    && phys == r.phys + (address - r.virt)
            });
            assert!(
                fits,
                "{len} bytes at {address:#x} of cell {id} go to {phys:#x}, not a loadable region"
            );
            registry
                .set_state(id, CellState::Loaded)
                .expect("a loadable cell can be loaded");
        }
        Err(error) => {
            assert_eq!(registry, &before);
            code_round_trips(error.code());
            let _ = error.to_string();
        }
    }
    Ok(())
}

fn change_state(registry: &mut Reg, id: CellId, state: CellState) {
    let before = registry.clone();
    match registry.set_state(id, state) {
        Ok(()) => assert_eq!(registry.cell(id).map(|c| c.state), Some(state)),
        Err(error) => {
            assert_eq!(registry, &before);
            code_round_trips(error.code());
            let _ = error.to_string();
        }
    }
}

fn destroy(registry: &mut Reg, fake: &mut Fake, id: CellId) {
    let before = registry.clone();
    fake.fail_at = None;
    match registry.destroy(id, fake) {
        Ok(()) => assert!(registry.cell(id).is_none()),
        Err(DestroyError::Partition { .. }) => unreachable!("the fake fails only on request"),
        Err(error) => {
            assert_eq!(registry, &before);
            code_round_trips(error.code());
            let _ = error.to_string();
        }
    }
}

/// `cell list` as the hypervisor writes it and the CLI reads it back.
fn list(u: &mut Unstructured<'_>, registry: &Reg) -> Result<()> {
    for cell in registry.iter() {
        let record = registry.record(cell.id).expect("every cell has a record");
        let bytes = record.as_bytes();
        let read = CellRecord::read_from_bytes(bytes).expect("a record reads back");
        assert_eq!(read.name(), cell.name.as_str());
        assert_eq!(CellState::from_raw(read.state.get()), Some(cell.state));
        assert_eq!(read.cpus.get(), cell.cpus);
    }
    // A window the CLI reads: any bytes decode without panicking.
    let raw = u.bytes(core::mem::size_of::<CellRecord>())?;
    if let Ok(record) = CellRecord::read_from_bytes(raw) {
        let _ = record.name();
        let _ = CellState::from_raw(record.state.get());
    }
    Ok(())
}

/// Runs commands until the input ends (an `Err` from `u` is that end).
fn commands(u: &mut Unstructured<'_>, registry: &mut Reg, fake: &mut Fake) -> Result<()> {
    for _ in 0..32 {
        if u.is_empty() {
            break;
        }
        let raw: u32 = match u.int_in_range(0..=15)? {
            0 => u.arbitrary()?,
            small => small - 1,
        };
        let command = Command::from_raw(raw);
        if let Some(command) = command {
            assert_eq!(command as u32, raw);
            assert!(!command.name().is_empty());
        }
        match command {
            Some(Command::CellCreate) => create(u, registry, fake)?,
            Some(Command::CellLoad) => load(u, registry)?,
            Some(Command::CellStart) => {
                let id = cell_id(u)?;
                change_state(registry, id, CellState::Running);
            }
            Some(Command::CellShutdown) => {
                let id = cell_id(u)?;
                let state = if u.arbitrary()? {
                    CellState::ShutDown
                } else {
                    CellState::Failed
                };
                change_state(registry, id, state);
            }
            Some(Command::CellDestroy) => {
                let id = cell_id(u)?;
                destroy(registry, fake, id);
            }
            Some(Command::CellList) => list(u, registry)?,
            Some(Command::Info | Command::CellStats | Command::ConsoleRead) => {}
            None => {
                let status: i64 = u.arbitrary()?;
                match Code::from_status(status) {
                    Some(Ok(code)) => assert_eq!(code.status(), status),
                    Some(Err(other)) => assert_eq!(other, status),
                    None => assert!(status >= 0),
                }
            }
        }
        check_books(registry);
        assert_eq!(
            fake.state,
            MachineState::of(registry),
            "the machine does not match the books"
        );
    }
    Ok(())
}

fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut registry = boot();
    let initial = registry.clone();
    let mut fake = Fake {
        state: MachineState::of(&registry),
        calls: 0,
        fail_at: None,
    };
    let boot_machine = fake.state.clone();
    let _ = commands(&mut u, &mut registry, &mut fake);
    fake.fail_at = None;
    let ids: Vec<CellId> = registry.iter().skip(1).map(|c| c.id).collect();
    for id in ids {
        registry
            .destroy(id, &mut fake)
            .expect("destroy without failures");
    }
    assert_eq!(
        registry, initial,
        "with every cell gone the books are not as at boot"
    );
    assert_eq!(registry.root().regions.as_slice(), &root_memory());
    assert_eq!(
        fake.state, boot_machine,
        "with every cell gone the machine is not as at boot"
    );
}

fuzz_target!(|data: &[u8]| run(data));
