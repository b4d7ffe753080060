//! What the hypervisor does to the machine when the cell registry moves resources, and the
//! steps it is asked to take.

use core::fmt;

use cellvisor_config::{MemoryFlags, PciAddress};

use crate::id::CellId;
use crate::region::Region;

/// What the hypervisor does to the machine: stage-2 tables, interrupt routing, CPUs.
///
/// The [`Registry`](crate::Registry) decides, the `Partition` carries out. The registry checks
/// everything before the first call, then calls these methods one at a time and, if one
/// fails, calls the inverse of every earlier step of the same operation in reverse order.
///
/// Order of a `create` (`destroy` is the exact reverse, every step inverted):
///
/// 1. [`create_tables`](Partition::create_tables);
/// 2. for each memory region of the cell, in configuration order:
///    [`unmap_from_root`](Partition::unmap_from_root) unless the region is shared with the
///    root cell or is the communication region, then
///    [`map_into_cell`](Partition::map_into_cell) — memory is never in both at once;
/// 3. [`move_irq`](Partition::move_irq) for each interrupt line, in ascending order;
/// 4. [`move_ports`](Partition::move_ports) for each I/O port range, in configuration order;
/// 5. [`move_pci`](Partition::move_pci) for each PCI function, in configuration order;
/// 6. [`move_cpu`](Partition::move_cpu) for each CPU, in ascending order.
///
/// Implementations should change nothing when they return an error, so that the undo steps
/// find the machine as the registry believes it is.
pub trait Partition {
    /// Why a step failed (typically: no page-table frame left).
    type Error;

    /// Removes `[phys, phys + size)` from the root cell's stage-2 tables, where it is mapped
    /// at guest-physical `root_virt`.
    ///
    /// The range lies inside one of the root cell's regions as configured at boot.
    fn unmap_from_root(&mut self, root_virt: u64, phys: u64, size: u64) -> Result<(), Self::Error>;

    /// Maps `[phys, phys + size)` back into the root cell at `root_virt`, with the flags of
    /// the root cell's region it belongs to.
    fn map_into_root(
        &mut self,
        root_virt: u64,
        phys: u64,
        size: u64,
        flags: MemoryFlags,
    ) -> Result<(), Self::Error>;

    /// Maps a region into the cell's stage-2 tables. For the communication region
    /// ([`Region::is_comm_region`], `phys` 0) the implementation provides the page.
    fn map_into_cell(&mut self, cell: CellId, region: &Region) -> Result<(), Self::Error>;

    /// Removes a region from the cell's stage-2 tables (and frees the page behind a
    /// communication region).
    fn unmap_from_cell(&mut self, cell: CellId, region: &Region) -> Result<(), Self::Error>;

    /// Routes a shared interrupt line (an SPI on Arm) from one cell to another.
    fn move_irq(&mut self, irq: u32, from: CellId, to: CellId) -> Result<(), Self::Error>;

    /// Hands the I/O ports `[base, base + count)` from one cell to another (x86; a cell
    /// configuration on Arm has none, so this is never called there).
    fn move_ports(
        &mut self,
        base: u32,
        count: u32,
        from: CellId,
        to: CellId,
    ) -> Result<(), Self::Error>;

    /// Hands a PCI function from one cell to another: configuration space accesses of the
    /// new owner reach it, the old owner's find no function there. Its BARs stay where they
    /// are (a cell maps them as memory regions of its configuration).
    fn move_pci(&mut self, device: PciAddress, from: CellId, to: CellId)
        -> Result<(), Self::Error>;

    /// Hands a CPU from one cell to another. A CPU that goes to a new cell waits there for
    /// the cell's start; a CPU that returns to the root cell stays offline there until the
    /// root cell brings it online (PSCI `CPU_ON`, INIT/SIPI).
    fn move_cpu(&mut self, cpu: u32, from: CellId, to: CellId) -> Result<(), Self::Error>;

    /// Creates the cell's (empty) stage-2 tables.
    fn create_tables(&mut self, cell: CellId) -> Result<(), Self::Error>;

    /// Frees the cell's stage-2 tables; by now every region is unmapped from them.
    fn destroy_tables(&mut self, cell: CellId);
}

/// One call the registry makes to a [`Partition`]: what failed, in errors. `region` is the
/// index of the memory region in the cell's configuration.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Step {
    /// [`Partition::create_tables`].
    CreateTables,
    /// [`Partition::unmap_from_root`] of a region the cell takes.
    UnmapFromRoot {
        /// Index of the cell's region.
        region: usize,
    },
    /// [`Partition::map_into_cell`].
    MapIntoCell {
        /// Index of the cell's region.
        region: usize,
    },
    /// [`Partition::move_irq`] from the root cell to the cell.
    MoveIrqToCell {
        /// The line.
        irq: u32,
    },
    /// [`Partition::move_ports`] of a port range of the cell's from the root cell to it.
    MovePortsToCell {
        /// Index of the cell's port range.
        range: usize,
    },
    /// [`Partition::move_ports`] of a port range of the cell's back to the root cell.
    MovePortsToRoot {
        /// Index of the cell's port range.
        range: usize,
    },
    /// [`Partition::move_pci`] of a PCI function of the cell's from the root cell to it.
    MovePciToCell {
        /// Index of the function in the cell's configuration.
        function: usize,
    },
    /// [`Partition::move_pci`] of a PCI function of the cell's back to the root cell.
    MovePciToRoot {
        /// Index of the function in the cell's configuration.
        function: usize,
    },
    /// [`Partition::move_cpu`] from the root cell to the cell.
    MoveCpuToCell {
        /// The CPU.
        cpu: u32,
    },
    /// [`Partition::move_cpu`] from the cell back to the root cell.
    MoveCpuToRoot {
        /// The CPU.
        cpu: u32,
    },
    /// [`Partition::move_irq`] from the cell back to the root cell.
    MoveIrqToRoot {
        /// The line.
        irq: u32,
    },
    /// [`Partition::unmap_from_cell`].
    UnmapFromCell {
        /// Index of the cell's region.
        region: usize,
    },
    /// [`Partition::map_into_root`] of a region the cell gives back.
    MapIntoRoot {
        /// Index of the cell's region.
        region: usize,
    },
    /// [`Partition::destroy_tables`].
    DestroyTables,
}

impl Step {
    /// The step that undoes this one.
    pub const fn inverse(self) -> Step {
        match self {
            Step::CreateTables => Step::DestroyTables,
            Step::DestroyTables => Step::CreateTables,
            Step::UnmapFromRoot { region } => Step::MapIntoRoot { region },
            Step::MapIntoRoot { region } => Step::UnmapFromRoot { region },
            Step::MapIntoCell { region } => Step::UnmapFromCell { region },
            Step::UnmapFromCell { region } => Step::MapIntoCell { region },
            Step::MoveIrqToCell { irq } => Step::MoveIrqToRoot { irq },
            Step::MoveIrqToRoot { irq } => Step::MoveIrqToCell { irq },
            Step::MovePortsToCell { range } => Step::MovePortsToRoot { range },
            Step::MovePortsToRoot { range } => Step::MovePortsToCell { range },
            Step::MovePciToCell { function } => Step::MovePciToRoot { function },
            Step::MovePciToRoot { function } => Step::MovePciToCell { function },
            Step::MoveCpuToCell { cpu } => Step::MoveCpuToRoot { cpu },
            Step::MoveCpuToRoot { cpu } => Step::MoveCpuToCell { cpu },
        }
    }
}

/// `unmapping memory region 0 from the root cell`.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Step::CreateTables => f.write_str("creating the cell's stage-2 tables"),
            Step::DestroyTables => f.write_str("destroying the cell's stage-2 tables"),
            Step::UnmapFromRoot { region } => {
                write!(f, "unmapping memory region {region} from the root cell")
            }
            Step::MapIntoRoot { region } => {
                write!(f, "mapping memory region {region} back into the root cell")
            }
            Step::MapIntoCell { region } => {
                write!(f, "mapping memory region {region} into the cell")
            }
            Step::UnmapFromCell { region } => {
                write!(f, "unmapping memory region {region} from the cell")
            }
            Step::MoveIrqToCell { irq } => write!(f, "moving interrupt line {irq} to the cell"),
            Step::MoveIrqToRoot { irq } => {
                write!(f, "returning interrupt line {irq} to the root cell")
            }
            Step::MovePortsToCell { range } => {
                write!(f, "moving I/O port range {range} to the cell")
            }
            Step::MovePortsToRoot { range } => {
                write!(f, "returning I/O port range {range} to the root cell")
            }
            Step::MovePciToCell { function } => {
                write!(f, "moving PCI device {function} to the cell")
            }
            Step::MovePciToRoot { function } => {
                write!(f, "returning PCI device {function} to the root cell")
            }
            Step::MoveCpuToCell { cpu } => write!(f, "moving CPU {cpu} to the cell"),
            Step::MoveCpuToRoot { cpu } => write!(f, "returning CPU {cpu} to the root cell"),
        }
    }
}

/// A step that failed, and why.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Failure<E> {
    /// The step.
    pub step: Step,
    /// The [`Partition`]'s error.
    pub error: E,
}

/// `mapping memory region 0 into the cell failed: <error>`.
impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, self.error)
    }
}
