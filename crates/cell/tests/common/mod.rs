//! A fake [`Partition`] that keeps the machine's state as sets (root-cell mappings, cell
//! mappings, interrupt and CPU owners), checks every call against it, records every call and
//! fails on request; and helpers that compile TOML configurations.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cellvisor_cell::{CellId, Partition, Region, Registry};
use cellvisor_config::text::{cell_from_toml, system_from_toml};
use cellvisor_config::{CellConfigView, MemoryFlags, PciAddress, SystemConfigView};

/// The QEMU `virt` system the board crate uses.
pub const QEMU_SYSTEM: &str =
    include_str!("../../../../platforms/qemu-arm64/config/system-gicv3.toml");
/// The QEMU demo cell.
pub const QEMU_DEMO: &str = include_str!("../../../../platforms/qemu-arm64/config/demo.toml");

/// A cell configuration's binary form.
pub fn cell_bytes(toml: &str) -> Vec<u8> {
    let bytes = cell_from_toml(toml).unwrap().encode().unwrap();
    CellConfigView::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    bytes
}

/// A system configuration's binary form.
pub fn system_bytes(toml: &str) -> Vec<u8> {
    let bytes = system_from_toml(toml).unwrap().encode().unwrap();
    SystemConfigView::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    bytes
}

/// The registry of a system.
pub fn registry<const CELLS: usize>(system: &[u8]) -> Registry<CELLS> {
    Registry::from_system(&SystemConfigView::parse(system).unwrap()).unwrap()
}

/// One call to the fake.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Call {
    UnmapFromRoot(u64, u64, u64),
    MapIntoRoot(u64, u64, u64, MemoryFlags),
    MapIntoCell(u32, Region),
    UnmapFromCell(u32, Region),
    MoveIrq(u32, u32, u32),
    MoveCpu(u32, u32, u32),
    /// Ports `[base, base + count)` from one cell to another.
    MovePorts(u32, u32, u32, u32),
    /// A PCI function (bus, device, function as in `Bdf`) from one cell to another.
    MovePci(u16, u32, u32),
    CreateTables(u32),
    DestroyTables(u32),
}

impl Call {
    /// The call that undoes this one.
    pub fn inverse(self) -> Call {
        match self {
            Call::UnmapFromRoot(v, p, s) => Call::MapIntoRoot(v, p, s, MemoryFlags::empty()),
            Call::MapIntoRoot(v, p, s, _) => Call::UnmapFromRoot(v, p, s),
            Call::MapIntoCell(c, r) => Call::UnmapFromCell(c, r),
            Call::UnmapFromCell(c, r) => Call::MapIntoCell(c, r),
            Call::MoveIrq(i, f, t) => Call::MoveIrq(i, t, f),
            Call::MoveCpu(i, f, t) => Call::MoveCpu(i, t, f),
            Call::MovePorts(b, n, f, t) => Call::MovePorts(b, n, t, f),
            Call::MovePci(d, f, t) => Call::MovePci(d, t, f),
            Call::CreateTables(c) => Call::DestroyTables(c),
            Call::DestroyTables(c) => Call::CreateTables(c),
        }
    }

    /// Equality that ignores the flags of `MapIntoRoot` (which `inverse` cannot know).
    pub fn same(self, other: Call) -> bool {
        match (self, other) {
            (Call::MapIntoRoot(a, b, c, _), Call::MapIntoRoot(x, y, z, _)) => {
                (a, b, c) == (x, y, z)
            }
            _ => self == other,
        }
    }
}

/// A mapping of the root cell: physical start, size, guest-physical start, flags.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Extent {
    pub phys: u64,
    pub size: u64,
    pub virt: u64,
    pub flags: u64,
}

/// The machine as the fake sees it.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Machine {
    /// Root-cell mappings, merged where contiguous (canonical form).
    pub root: Vec<Extent>,
    /// Cell tables and their mappings.
    pub cells: BTreeMap<u32, BTreeSet<RegionKey>>,
    /// Owner of each interrupt line.
    pub irqs: BTreeMap<u32, u32>,
    /// Owner of each CPU.
    pub cpus: BTreeMap<u32, u32>,
    /// Owner of each I/O port a cell other than the root cell has (the others are the root
    /// cell's).
    pub ports: BTreeMap<u32, u32>,
    /// Owner of each PCI function a cell other than the root cell has.
    pub pci: BTreeMap<u16, u32>,
}

/// A region as an ordered key.
pub type RegionKey = (u64, u64, u64, u64);

pub fn key(r: &Region) -> RegionKey {
    (r.phys, r.virt, r.size, r.flags.bits())
}

/// Sorts and merges extents that touch, with equal flags and guest offset.
pub fn canonical(mut extents: Vec<Extent>) -> Vec<Extent> {
    extents.sort();
    let mut out: Vec<Extent> = Vec::new();
    for e in extents {
        if let Some(last) = out.last_mut() {
            if last.phys + last.size == e.phys
                && last.flags == e.flags
                && last.virt.wrapping_add(last.size) == e.virt
            {
                last.size += e.size;
                continue;
            }
        }
        out.push(e);
    }
    out
}

impl Machine {
    /// The machine a registry describes.
    pub fn of<const CELLS: usize>(registry: &Registry<CELLS>) -> Machine {
        let root = registry.root();
        let extents = root
            .regions
            .iter()
            .map(|r| Extent {
                phys: r.phys,
                size: r.size,
                virt: r.virt,
                flags: r.flags.bits(),
            })
            .collect();
        let mut machine = Machine {
            root: canonical(extents),
            ..Machine::default()
        };
        for cell in registry.iter() {
            if !cell.is_root() {
                machine
                    .cells
                    .insert(cell.id.0, cell.regions.iter().map(key).collect());
            }
            for irq in cell.irqs.iter() {
                machine.irqs.insert(irq, cell.id.0);
            }
            for cpu in cell.cpu_list() {
                machine.cpus.insert(cpu, cell.id.0);
            }
            if !cell.is_root() {
                for range in &cell.ports {
                    for port in range.base..range.base + range.size {
                        machine.ports.insert(port, cell.id.0);
                    }
                }
                for device in &cell.pci {
                    machine.pci.insert(device.bdf.0, cell.id.0);
                }
            }
        }
        machine
    }
}

/// Why the fake failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Injected {
    pub call: usize,
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected failure at call {}", self.call)
    }
}

/// The fake partition.
#[derive(Clone, Debug)]
pub struct Fake {
    pub machine: Machine,
    /// Every call, in order (failed ones included).
    pub calls: Vec<Call>,
    /// Fallible calls so far.
    pub count: usize,
    /// Fallible calls (by number, from 0) that fail.
    pub fail: BTreeSet<usize>,
    /// Whether to insist on a clean state when tables are destroyed (off when failures are
    /// meant to leave things behind).
    pub strict: bool,
}

impl Fake {
    pub fn new<const CELLS: usize>(registry: &Registry<CELLS>) -> Fake {
        Fake {
            machine: Machine::of(registry),
            calls: Vec::new(),
            count: 0,
            fail: BTreeSet::new(),
            strict: true,
        }
    }

    /// Fails call `n` (counted from now).
    pub fn fail_at(&mut self, n: usize) -> &mut Self {
        self.fail.insert(self.count + n);
        self
    }

    fn call(&mut self, call: Call) -> Result<(), Injected> {
        self.calls.push(call);
        let n = self.count;
        self.count += 1;
        if self.fail.contains(&n) {
            Err(Injected { call: n })
        } else {
            Ok(())
        }
    }

    /// Panics unless `[phys, phys + size)` is free of the root cell's mappings and of other
    /// cells' (unless both share it with the root cell).
    fn assert_isolated(&self, cell: u32, region: &Region) {
        let overlaps = |p: u64, s: u64| p < region.phys + region.size && region.phys < p + s;
        for e in &self.machine.root {
            assert!(
                !overlaps(e.phys, e.size),
                "{region:?} of cell {cell} is still mapped in the root cell"
            );
        }
        let shared = MemoryFlags::ROOTSHARED.bits() | MemoryFlags::COMM_REGION.bits();
        for (&other, regions) in &self.machine.cells {
            for &(p, _, s, f) in regions {
                if f & MemoryFlags::COMM_REGION.bits() != 0 {
                    continue;
                }
                assert!(
                    other == cell || !overlaps(p, s) || f & shared != 0,
                    "{region:?} of cell {cell} overlaps cell {other}"
                );
            }
        }
    }
}

impl Partition for Fake {
    type Error = Injected;

    fn unmap_from_root(&mut self, root_virt: u64, phys: u64, size: u64) -> Result<(), Injected> {
        self.call(Call::UnmapFromRoot(root_virt, phys, size))?;
        let root = &mut self.machine.root;
        let i = root
            .iter()
            .position(|e| e.phys <= phys && phys + size <= e.phys + e.size)
            .unwrap_or_else(|| panic!("unmap [{phys:#x}, +{size:#x}) not mapped in the root"));
        let e = root.remove(i);
        assert_eq!(e.virt + (phys - e.phys), root_virt, "wrong root_virt");
        if e.phys < phys {
            root.push(Extent {
                size: phys - e.phys,
                ..e
            });
        }
        if phys + size < e.phys + e.size {
            root.push(Extent {
                phys: phys + size,
                virt: e.virt + (phys + size - e.phys),
                size: e.phys + e.size - (phys + size),
                flags: e.flags,
            });
        }
        self.machine.root = canonical(std::mem::take(root));
        Ok(())
    }

    fn map_into_root(
        &mut self,
        root_virt: u64,
        phys: u64,
        size: u64,
        flags: MemoryFlags,
    ) -> Result<(), Injected> {
        self.call(Call::MapIntoRoot(root_virt, phys, size, flags))?;
        for e in &self.machine.root {
            assert!(
                phys + size <= e.phys || e.phys + e.size <= phys,
                "map [{phys:#x}, +{size:#x}) into the root twice"
            );
        }
        self.machine.root.push(Extent {
            phys,
            size,
            virt: root_virt,
            flags: flags.bits(),
        });
        self.machine.root = canonical(std::mem::take(&mut self.machine.root));
        Ok(())
    }

    fn map_into_cell(&mut self, cell: CellId, region: &Region) -> Result<(), Injected> {
        self.call(Call::MapIntoCell(cell.0, *region))?;
        if region.is_lent() {
            self.assert_isolated(cell.0, region);
        }
        let regions = self
            .machine
            .cells
            .get_mut(&cell.0)
            .expect("map into a cell without tables");
        for &(_, v, s, _) in regions.iter() {
            assert!(
                region.virt + region.size <= v || v + s <= region.virt,
                "guest-physical overlap in cell {}",
                cell.0
            );
        }
        regions.insert(key(region));
        Ok(())
    }

    fn unmap_from_cell(&mut self, cell: CellId, region: &Region) -> Result<(), Injected> {
        self.call(Call::UnmapFromCell(cell.0, *region))?;
        let regions = self.machine.cells.get_mut(&cell.0).expect("no tables");
        assert!(regions.remove(&key(region)), "unmap a region not mapped");
        Ok(())
    }

    fn move_irq(&mut self, irq: u32, from: CellId, to: CellId) -> Result<(), Injected> {
        self.call(Call::MoveIrq(irq, from.0, to.0))?;
        let owner = self.machine.irqs.get_mut(&irq).expect("unknown line");
        assert_eq!(
            *owner, from.0,
            "line {irq} moved from a cell that does not own it"
        );
        assert!(
            to.0 == 0 || self.machine.cells.contains_key(&to.0),
            "line {irq} moved to a cell without tables"
        );
        *owner = to.0;
        Ok(())
    }

    fn move_ports(
        &mut self,
        base: u32,
        count: u32,
        from: CellId,
        to: CellId,
    ) -> Result<(), Injected> {
        self.call(Call::MovePorts(base, count, from.0, to.0))?;
        for port in base..base + count {
            let owner = self.machine.ports.get(&port).copied().unwrap_or(0);
            assert_eq!(
                owner, from.0,
                "port {port:#x} moved from a cell that does not own it"
            );
            if to.0 == 0 {
                self.machine.ports.remove(&port);
            } else {
                self.machine.ports.insert(port, to.0);
            }
        }
        Ok(())
    }

    fn move_pci(&mut self, device: PciAddress, from: CellId, to: CellId) -> Result<(), Injected> {
        self.call(Call::MovePci(device.bdf.0, from.0, to.0))?;
        let owner = self.machine.pci.get(&device.bdf.0).copied().unwrap_or(0);
        assert_eq!(
            owner, from.0,
            "PCI {device} moved from a cell that does not own it"
        );
        if to.0 == 0 {
            self.machine.pci.remove(&device.bdf.0);
        } else {
            self.machine.pci.insert(device.bdf.0, to.0);
        }
        Ok(())
    }

    fn move_cpu(&mut self, cpu: u32, from: CellId, to: CellId) -> Result<(), Injected> {
        self.call(Call::MoveCpu(cpu, from.0, to.0))?;
        let owner = self.machine.cpus.get_mut(&cpu).expect("unknown CPU");
        assert_eq!(
            *owner, from.0,
            "CPU {cpu} moved from a cell that does not own it"
        );
        *owner = to.0;
        Ok(())
    }

    fn create_tables(&mut self, cell: CellId) -> Result<(), Injected> {
        self.call(Call::CreateTables(cell.0))?;
        assert!(
            self.machine.cells.insert(cell.0, BTreeSet::new()).is_none(),
            "tables of cell {} created twice",
            cell.0
        );
        Ok(())
    }

    fn destroy_tables(&mut self, cell: CellId) {
        self.calls.push(Call::DestroyTables(cell.0));
        let regions = self.machine.cells.remove(&cell.0).expect("no tables");
        if !self.strict {
            return;
        }
        assert!(regions.is_empty(), "tables destroyed with mappings left");
        assert!(
            !self.machine.irqs.values().any(|&o| o == cell.0)
                && !self.machine.cpus.values().any(|&o| o == cell.0),
            "tables destroyed while the cell owns lines or CPUs"
        );
    }
}
