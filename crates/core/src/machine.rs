//! The machine side of cell bookkeeping: the one implementation of
//! [`cellvisor_cell::Partition`]. Second-stage tables come from the core's frame pool in the
//! architecture's format; interrupt lines move through [`InterruptChip`]; CPUs change owner
//! in the per-CPU state. Also the root cell's tables at boot and the communication regions.

use crate::arch::Arch;
use crate::{Hypervisor, Tables, MAX_CELLS, MAX_CPUS, TABLE_FRAMES};
use cellvisor_abi::comm::{CommRegion, Platform};
use cellvisor_abi::CellState;
use cellvisor_cell::{CellId, Region};
use cellvisor_config::{MemoryFlags, SystemConfigView};
use cellvisor_paging::{
    Access, Attributes, Cacheability, FrameAllocator, FramePool, GuestPhysAddr, MapMode, Mapping,
    MemoryType, NotLive, PageTable, PhysAddr, Stale, TableMemory, TlbInvalidate, PAGE_SIZE,
};
use core::sync::atomic::Ordering;
use zerocopy::IntoBytes;

/// The second-stage attributes of a configuration region's flags.
pub fn attributes(flags: MemoryFlags) -> Attributes {
    let mut access = Access::empty();
    for (flag, bit) in [
        (MemoryFlags::READ, Access::READ),
        (MemoryFlags::WRITE, Access::WRITE),
        (MemoryFlags::EXECUTE, Access::EXECUTE),
    ] {
        if flags.contains(flag) {
            access |= bit;
        }
    }
    let kind = if flags.contains(MemoryFlags::IO) {
        MemoryType::Device
    } else {
        MemoryType::Normal(Cacheability::WriteBack)
    };
    Attributes::new(access, kind)
}

/// Why the machine refused a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineError {
    /// Second-stage tables.
    Paging(cellvisor_paging::Error),
    /// No free cell slot or table frames.
    NoMemory,
    /// The interrupt controller refused to move a line.
    Irq(&'static str),
    /// I/O ports could not move.
    Ports(&'static str),
    /// A PCI function could not move.
    Pci(&'static str),
}

impl core::fmt::Display for MachineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Paging(e) => write!(f, "second-stage tables: {e}"),
            Self::NoMemory => f.write_str("out of hypervisor memory"),
            Self::Irq(e) => write!(f, "interrupt controller: {e}"),
            Self::Ports(e) => write!(f, "I/O ports: {e}"),
            Self::Pci(e) => write!(f, "PCI: {e}"),
        }
    }
}

impl core::error::Error for MachineError {}

/// The root cell's tables as [`Hypervisor::install_root`] built them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootTables {
    /// The root of the tree.
    pub root: PhysAddr,
    /// Table frames the tree uses.
    pub frames: usize,
}

/// TLB maintenance for the live tree of the root cell.
struct LiveRoot<'a, A: Arch>(&'a A);

impl<A: Arch> TlbInvalidate<GuestPhysAddr> for LiveRoot<'_, A> {
    fn invalidate(&mut self, _start: GuestPhysAddr, _size: u64, _stale: Stale) {
        self.0.flush_root();
    }
}

/// [`cellvisor_cell::Partition`] over a [`Hypervisor`].
pub(crate) struct Machine<'a, A: Arch>(pub(crate) &'a Hypervisor<A>);

impl<A: Arch> Hypervisor<A> {
    /// Builds the root cell's second-stage tables in `format` from the system configuration,
    /// with table frames from `[frames, frames + frame_count * 4 KiB)` (hypervisor memory the
    /// architecture's [`Translation::table_memory`](crate::arch::Translation::table_memory) reaches). Maps the root cell's regions,
    /// the interrupt controller's cell window and the management data window
    /// (`data_window`: address and size, identity mapped, non-cacheable); gives the root
    /// cell CPUs `cpus`. Once only; later calls change nothing and fail.
    pub fn install_root(
        &self,
        config: &SystemConfigView<'_>,
        format: A::Format,
        frames: PhysAddr,
        frame_count: usize,
        cpus: u64,
        data_window: Option<(u64, u64)>,
    ) -> Result<RootTables, MachineError> {
        if self.tables.is_completed() {
            return Err(MachineError::NoMemory);
        }
        let mut pool = FramePool::<TABLE_FRAMES>::with_frames(frames, frame_count);
        let mut memory = TableMemory {
            frames: &mut pool,
            memory: self.arch.table_memory(),
        };
        let mut tree = PageTable::new(format, &mut memory).map_err(MachineError::Paging)?;
        let mut map = |ipa: u64, pa: u64, size: u64, attributes| {
            tree.map(
                &mut memory,
                &mut NotLive,
                Mapping {
                    input: GuestPhysAddr::new(ipa),
                    output: PhysAddr::new(pa),
                    size,
                    attributes,
                },
                MapMode::New,
            )
            .map_err(MachineError::Paging)
        };
        let root = config.root_cell();
        for region in root.memory_regions() {
            map(
                region.virt_start,
                region.phys_start,
                region.size,
                attributes(region.flags),
            )?;
        }
        if let Some(window) = self.arch.cell_window() {
            map(
                window.input.as_u64(),
                window.output.as_u64(),
                window.size,
                window.attributes,
            )?;
        }
        if let Some((base, size)) = data_window {
            map(
                base,
                base,
                size,
                Attributes::new(Access::RW, MemoryType::Normal(Cacheability::NonCacheable)),
            )?;
        }
        let stats = tree.stats(&memory.memory);
        let result = RootTables {
            root: tree.root(),
            frames: stats.frames,
        };
        let mut trees = [const { None }; MAX_CELLS];
        trees[0] = Some(tree);
        let mut installed = false;
        self.tables.call_once(|| {
            installed = true;
            cellvisor_sync::Mutex::new(Tables {
                frames: pool,
                format,
                trees,
                frame_count,
            })
        });
        if !installed {
            return Err(MachineError::NoMemory);
        }
        let runtime = &self.cells[0];
        runtime
            .tables
            .store(result.root.as_u64(), Ordering::Release);
        runtime.cpus.store(cpus, Ordering::Release);
        runtime
            .state
            .store(CellState::Running as u32, Ordering::Release);
        let mut name = runtime.name.lock();
        name.clear();
        for c in root.name().chars() {
            let _ = name.push(c);
        }
        Ok(result)
    }

    fn with_tables<T>(
        &self,
        f: impl FnOnce(&mut Tables<A::Format>) -> Result<T, MachineError>,
    ) -> Result<T, MachineError> {
        let mut tables = self.tables.get().ok_or(MachineError::NoMemory)?.lock();
        f(&mut tables)
    }

    fn tree_op(
        &self,
        cell: CellId,
        f: impl FnOnce(
            &mut PageTable<A::Format>,
            &mut TableMemory<&mut FramePool<TABLE_FRAMES>, A::Tables>,
        ) -> Result<(), cellvisor_paging::Error>,
    ) -> Result<(), MachineError> {
        let memory = self.arch.table_memory();
        self.with_tables(|tables| {
            let mut memory = TableMemory {
                frames: &mut tables.frames,
                memory,
            };
            let tree = tables
                .trees
                .get_mut(cell.0 as usize)
                .and_then(Option::as_mut)
                .ok_or(MachineError::NoMemory)?;
            f(tree, &mut memory).map_err(MachineError::Paging)
        })
    }

    /// Backs cell `cell`'s communication region at `virt` with a zeroed frame of the pool.
    fn map_comm_region(&self, cell: CellId, virt: u64) -> Result<(), MachineError> {
        let frame = self.with_tables(|tables| {
            tables
                .frames
                .allocate_frames(1)
                .ok_or(MachineError::NoMemory)
        })?;
        self.arch.fill(frame, 0, PAGE_SIZE);
        let mapped = self.tree_op(cell, |tree, memory| {
            tree.map(
                memory,
                &mut NotLive,
                Mapping {
                    input: GuestPhysAddr::new(virt),
                    output: frame,
                    size: PAGE_SIZE,
                    attributes: Attributes::RAM_RW,
                },
                MapMode::New,
            )
        });
        match mapped {
            Ok(()) => {
                self.cell(cell)
                    .comm
                    .store(frame.as_u64(), Ordering::Release);
                Ok(())
            }
            Err(error) => {
                let _ = self.with_tables(|tables| {
                    tables.frames.deallocate_frames(frame, 1);
                    Ok(())
                });
                Err(error)
            }
        }
    }

    /// Writes a fresh communication region for `cell` (before it starts).
    pub(crate) fn init_comm_region(&self, cell: CellId, platform: Platform) {
        let comm = self.cell(cell).comm.load(Ordering::Acquire);
        if comm == 0 {
            return;
        }
        let mut region = CommRegion::new(platform);
        region.cell_state = (CellState::Running as u32).into();
        let comm = PhysAddr::new(comm);
        self.arch.write(comm, region.as_bytes());
        self.arch.clean(comm, PAGE_SIZE);
    }

    /// Reads a 32-bit field of `cell`'s communication region (`None`: it has none).
    pub fn comm_read(&self, cell: CellId, offset: usize) -> Option<u32> {
        let comm = self.cell(cell).comm.load(Ordering::Acquire);
        (comm != 0 && offset + 4 <= PAGE_SIZE as usize)
            .then(|| self.arch.read_u32(PhysAddr::new(comm + offset as u64)))
    }

    /// Writes a 32-bit field of `cell`'s communication region.
    pub fn comm_write(&self, cell: CellId, offset: usize, value: u32) {
        let comm = self.cell(cell).comm.load(Ordering::Acquire);
        if comm != 0 && offset + 4 <= PAGE_SIZE as usize {
            self.arch
                .write_u32(PhysAddr::new(comm + offset as u64), value);
        }
    }
}

impl<A: Arch> cellvisor_cell::Partition for Machine<'_, A> {
    type Error = MachineError;

    fn unmap_from_root(
        &mut self,
        root_virt: u64,
        _phys: u64,
        size: u64,
    ) -> Result<(), Self::Error> {
        let arch = &self.0.arch;
        self.0.tree_op(CellId(0), |tree, memory| {
            tree.unmap(
                memory,
                &mut LiveRoot(arch),
                GuestPhysAddr::new(root_virt),
                size,
            )
        })
    }

    fn map_into_root(
        &mut self,
        root_virt: u64,
        phys: u64,
        size: u64,
        flags: MemoryFlags,
    ) -> Result<(), Self::Error> {
        let arch = &self.0.arch;
        self.0.tree_op(CellId(0), |tree, memory| {
            tree.map(
                memory,
                &mut LiveRoot(arch),
                Mapping {
                    input: GuestPhysAddr::new(root_virt),
                    output: PhysAddr::new(phys),
                    size,
                    attributes: attributes(flags),
                },
                MapMode::New,
            )
        })
    }

    fn map_into_cell(&mut self, cell: CellId, region: &Region) -> Result<(), Self::Error> {
        if region.flags.contains(MemoryFlags::COMM_REGION) {
            return self.0.map_comm_region(cell, region.virt);
        }
        self.0.tree_op(cell, |tree, memory| {
            tree.map(
                memory,
                &mut NotLive,
                Mapping {
                    input: GuestPhysAddr::new(region.virt),
                    output: PhysAddr::new(region.phys),
                    size: region.size,
                    attributes: attributes(region.flags),
                },
                MapMode::New,
            )
        })
    }

    fn unmap_from_cell(&mut self, cell: CellId, region: &Region) -> Result<(), Self::Error> {
        self.0.tree_op(cell, |tree, memory| {
            tree.unmap(
                memory,
                &mut NotLive,
                GuestPhysAddr::new(region.virt),
                region.size,
            )
        })?;
        if region.flags.contains(MemoryFlags::COMM_REGION) {
            let comm = self.0.cell(cell).comm.swap(0, Ordering::AcqRel);
            if comm != 0 {
                self.0.with_tables(|tables| {
                    tables.frames.deallocate_frames(PhysAddr::new(comm), 1);
                    Ok(())
                })?;
            }
        } else if region.flags.contains(MemoryFlags::LOADABLE)
            && !region
                .flags
                .intersects(MemoryFlags::IO | MemoryFlags::ROOTSHARED)
        {
            // What the cell left in its RAM goes neither to the root cell nor, through it,
            // to the next cell that gets this memory. Cells may read it with their MMU off
            // (non-cacheable): the zeros go to memory.
            let phys = PhysAddr::new(region.phys);
            self.0.arch.fill(phys, 0, region.size);
            self.0.arch.clean(phys, region.size);
        }
        Ok(())
    }

    fn move_irq(&mut self, irq: u32, from: CellId, to: CellId) -> Result<(), Self::Error> {
        self.0
            .arch
            .move_irqs(from, to, &[irq])
            .map_err(MachineError::Irq)
    }

    fn move_ports(
        &mut self,
        base: u32,
        count: u32,
        from: CellId,
        to: CellId,
    ) -> Result<(), Self::Error> {
        self.0
            .arch
            .move_ports(from, to, base, count)
            .map_err(MachineError::Ports)
    }

    fn move_pci(
        &mut self,
        device: cellvisor_config::PciAddress,
        from: CellId,
        to: CellId,
    ) -> Result<(), Self::Error> {
        self.0
            .arch
            .move_pci(from, to, device)
            .map_err(MachineError::Pci)
    }

    fn move_cpu(&mut self, cpu: u32, _from: CellId, to: CellId) -> Result<(), Self::Error> {
        if cpu as usize >= MAX_CPUS {
            return Err(MachineError::NoMemory);
        }
        self.0.set_owner(cpu as usize, to);
        Ok(())
    }

    fn create_tables(&mut self, cell: CellId) -> Result<(), Self::Error> {
        let id = cell.0 as usize;
        let memory = self.0.arch.table_memory();
        let root = self.0.with_tables(|tables| {
            let slot = tables.trees.get(id).ok_or(MachineError::NoMemory)?;
            if slot.is_some() {
                return Err(MachineError::NoMemory);
            }
            let mut memory = TableMemory {
                frames: &mut tables.frames,
                memory,
            };
            let tree = PageTable::new(tables.format, &mut memory).map_err(MachineError::Paging)?;
            let root = tree.root();
            tables.trees[id] = Some(tree);
            Ok(root)
        })?;
        if let Some(window) = self.0.arch.cell_window() {
            let mapped = self.0.tree_op(cell, |tree, memory| {
                tree.map(memory, &mut NotLive, window, MapMode::New)
            });
            if let Err(error) = mapped {
                self.destroy_tables(cell);
                return Err(error);
            }
        }
        self.0.cells[id]
            .tables
            .store(root.as_u64(), Ordering::Release);
        Ok(())
    }

    fn destroy_tables(&mut self, cell: CellId) {
        let id = cell.0 as usize;
        let memory = self.0.arch.table_memory();
        let comm = self
            .0
            .cells
            .get(id)
            .map_or(0, |runtime| runtime.comm.swap(0, Ordering::AcqRel));
        let _ = self.0.with_tables(|tables| {
            if comm != 0 {
                tables.frames.deallocate_frames(PhysAddr::new(comm), 1);
            }
            let mut memory = TableMemory {
                frames: &mut tables.frames,
                memory,
            };
            if let Some(tree) = tables.trees.get_mut(id).and_then(Option::take) {
                tree.destroy(&mut memory);
            }
            Ok(())
        });
        if let Some(runtime) = self.0.cells.get(id) {
            runtime.tables.store(0, Ordering::Release);
        }
        self.0.arch.flush_cell(cell);
    }
}
