//! Why an operation of the registry failed: every error names the cell and the item, prints
//! as a sentence and maps to a [`cellvisor_abi::Error`] code.

use core::fmt;

use cellvisor_abi::{CellState, Error as Code};
use cellvisor_config::{AddressRange, CellName, IrqRange, PciAddress, PortRange};

use crate::id::CellId;
use crate::partition::Failure;
use crate::region::MAX_REGIONS;
use crate::IrqSet;

/// Why a cell configuration cannot be created; found before anything was changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Problem {
    /// The name is empty, too long or has characters names cannot have.
    BadName,
    /// A cell (maybe the root cell) has this name.
    NameTaken,
    /// Every cell slot is in use.
    NoFreeSlot {
        /// Cells the registry holds, the root cell included.
        capacity: usize,
    },
    /// The configuration asks for resources the registry does not hand out.
    Unsupported {
        /// What: `PCI devices`, `stream IDs`, `I/O ports`.
        what: &'static str,
    },
    /// The cell has no CPU.
    NoCpu,
    /// The CPU does not exist.
    CpuMissing {
        /// The CPU.
        cpu: u32,
    },
    /// The CPU belongs to another cell.
    CpuTaken {
        /// The CPU.
        cpu: u32,
        /// Its cell.
        by: CellName,
    },
    /// The CPU is still online in the root cell.
    CpuOnline {
        /// The CPU.
        cpu: u32,
    },
    /// The cell would take the root cell's last CPUs.
    RootKeepsNoCpu,
    /// The cell has more memory regions than a cell can hold.
    TooManyRegions {
        /// Regions in the configuration.
        count: usize,
    },
    /// Two regions of the cell share physical memory.
    MemoryOverlap {
        /// Index of the region.
        region: usize,
        /// Its physical range.
        range: AddressRange,
        /// Index of the earlier region it overlaps.
        other: usize,
    },
    /// Another cell has (part of) the region's physical memory, and not both share it with
    /// the root cell.
    MemoryTaken {
        /// Index of the region.
        region: usize,
        /// Its physical range.
        range: AddressRange,
        /// The other cell.
        by: CellName,
        /// Index of the other cell's region.
        their_region: usize,
    },
    /// Part of the region's physical memory is not the root cell's.
    MemoryNotOwned {
        /// Index of the region.
        region: usize,
        /// Its physical range.
        range: AddressRange,
    },
    /// The region's physical memory is the root cell's but spans more than one of its
    /// regions (which may differ in flags or guest-physical offset).
    MemorySpansRootRegions {
        /// Index of the region.
        region: usize,
        /// Its physical range.
        range: AddressRange,
    },
    /// Taking the cell's regions out would split the root cell's memory into more pieces
    /// than a cell can hold.
    RootMemoryFragmented,
    /// An interrupt line is beyond what the registry tracks ([`IrqSet::LINES`]).
    IrqBeyondLimit {
        /// Index of the range.
        index: usize,
        /// The range.
        range: IrqRange,
        /// The first line beyond.
        line: u32,
    },
    /// An interrupt line belongs to another cell.
    IrqTaken {
        /// Index of the range.
        index: usize,
        /// The range.
        range: IrqRange,
        /// The line.
        line: u32,
        /// Its cell.
        by: CellName,
    },
    /// An interrupt line is not the root cell's.
    IrqNotOwned {
        /// Index of the range.
        index: usize,
        /// The range.
        range: IrqRange,
        /// The line.
        line: u32,
    },
    /// More I/O port ranges than a cell may have ([`MAX_PORT_RANGES`](crate::MAX_PORT_RANGES)).
    TooManyPortRanges {
        /// How many the configuration has.
        count: usize,
    },
    /// An I/O port belongs to another cell.
    PortTaken {
        /// Index of the range.
        index: usize,
        /// The range.
        range: PortRange,
        /// The first port of the range the other cell has.
        port: u32,
        /// Its cell.
        by: CellName,
    },
    /// An I/O port is not among the root cell's.
    PortNotOwned {
        /// Index of the range.
        index: usize,
        /// The range.
        range: PortRange,
        /// The first port the root cell does not have.
        port: u32,
    },
    /// More PCI functions than a cell may have
    /// ([`MAX_PCI_FUNCTIONS`](crate::MAX_PCI_FUNCTIONS)).
    TooManyPciFunctions {
        /// How many the configuration has.
        count: usize,
    },
    /// A PCI function outside segment 0 (the only one the hypervisor emulates).
    PciSegment {
        /// Index of the device in the configuration.
        index: usize,
        /// The function.
        device: PciAddress,
    },
    /// A PCI function belongs to another cell.
    PciTaken {
        /// Index of the device in the configuration.
        index: usize,
        /// The function.
        device: PciAddress,
        /// Its cell.
        by: CellName,
    },
}

impl Problem {
    /// The code the management interface reports.
    pub const fn code(&self) -> Code {
        match self {
            Problem::NameTaken => Code::CellExists,
            Problem::NoFreeSlot { .. } | Problem::RootMemoryFragmented => Code::OutOfMemory,
            Problem::CpuOnline { .. } => Code::CpuBusy,
            Problem::CpuTaken { .. }
            | Problem::MemoryTaken { .. }
            | Problem::MemoryNotOwned { .. }
            | Problem::IrqTaken { .. }
            | Problem::IrqNotOwned { .. }
            | Problem::PortTaken { .. }
            | Problem::PortNotOwned { .. }
            | Problem::PciTaken { .. } => Code::NotOwned,
            Problem::BadName
            | Problem::Unsupported { .. }
            | Problem::NoCpu
            | Problem::CpuMissing { .. }
            | Problem::RootKeepsNoCpu
            | Problem::TooManyRegions { .. }
            | Problem::MemoryOverlap { .. }
            | Problem::MemorySpansRootRegions { .. }
            | Problem::IrqBeyondLimit { .. }
            | Problem::TooManyPortRanges { .. }
            | Problem::TooManyPciFunctions { .. }
            | Problem::PciSegment { .. } => Code::BadConfig,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Problem::BadName => {
                f.write_str("the name is not valid (1 to 31 letters, digits, '-', '_' or '.')")
            }
            Problem::NameTaken => f.write_str("a cell with this name exists"),
            Problem::NoFreeSlot { capacity } => write!(
                f,
                "no free cell slot ({capacity} cells at most, the root cell included)"
            ),
            Problem::Unsupported { what } => write!(f, "{what} cannot be assigned to cells"),
            Problem::NoCpu => f.write_str("no CPU"),
            Problem::CpuMissing { cpu } => write!(f, "CPU {cpu} does not exist"),
            Problem::CpuTaken { cpu, by } => write!(f, "CPU {cpu} belongs to cell \"{by}\""),
            Problem::CpuOnline { cpu } => write!(f, "CPU {cpu} is online in the root cell"),
            Problem::RootKeepsNoCpu => f.write_str("the root cell would keep no CPU"),
            Problem::TooManyRegions { count } => {
                write!(f, "{count} memory regions, at most {MAX_REGIONS}")
            }
            Problem::MemoryOverlap {
                region,
                range,
                other,
            } => write!(
                f,
                "memory region {region} {range}: overlaps memory region {other}"
            ),
            Problem::MemoryTaken {
                region,
                range,
                by,
                their_region,
            } => write!(
                f,
                "memory region {region} {range}: belongs to cell \"{by}\" (its memory region \
                 {their_region})"
            ),
            Problem::MemoryNotOwned { region, range } => write!(
                f,
                "memory region {region} {range}: not owned by the root cell"
            ),
            Problem::MemorySpansRootRegions { region, range } => write!(
                f,
                "memory region {region} {range}: spans more than one memory region of the \
                 root cell"
            ),
            Problem::RootMemoryFragmented => write!(
                f,
                "the root cell's memory would split into more than {MAX_REGIONS} regions"
            ),
            Problem::IrqBeyondLimit { index, range, line } => write!(
                f,
                "irq range {index} ({range}): line {line} is beyond the {} lines cells can own",
                IrqSet::LINES
            ),
            Problem::IrqTaken {
                index,
                range,
                line,
                by,
            } => write!(
                f,
                "irq range {index} ({range}): line {line} belongs to cell \"{by}\""
            ),
            Problem::IrqNotOwned { index, range, line } => write!(
                f,
                "irq range {index} ({range}): line {line} not owned by the root cell"
            ),
            Problem::TooManyPortRanges { count } => write!(
                f,
                "{count} I/O port ranges; a cell has at most {}",
                crate::MAX_PORT_RANGES
            ),
            Problem::PortTaken {
                index,
                range,
                port,
                by,
            } => write!(
                f,
                "port range {index} ({range}): port {port:#x} belongs to cell \"{by}\""
            ),
            Problem::PortNotOwned { index, range, port } => write!(
                f,
                "port range {index} ({range}): port {port:#x} not owned by the root cell"
            ),
            Problem::TooManyPciFunctions { count } => write!(
                f,
                "{count} PCI devices, at most {}",
                crate::MAX_PCI_FUNCTIONS
            ),
            Problem::PciSegment { index, device } => write!(
                f,
                "PCI device {index} ({device}): only segment 0 is emulated"
            ),
            Problem::PciTaken { index, device, by } => {
                write!(f, "PCI device {index} ({device}): belongs to cell \"{by}\"")
            }
        }
    }
}

/// Why [`Registry::create`](crate::Registry::create) failed. Either way the registry is as it
/// was before the call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CreateError<E> {
    /// The configuration does not fit; the [`Partition`](crate::Partition) was not called.
    Rejected {
        /// The cell's name ([`CellName::INVALID`] if it is not valid).
        cell: CellName,
        /// What is wrong.
        problem: Problem,
    },
    /// A step failed; every earlier step was undone in reverse order.
    Partition {
        /// The cell's name.
        cell: CellName,
        /// The step that failed.
        failed: Failure<E>,
        /// The first undo step that failed too, if any: then the machine is not quite as
        /// before (the remaining undo steps were still taken).
        undo: Option<Failure<E>>,
    },
}

impl<E> CreateError<E> {
    /// The code the management interface reports. A failed step is reported as
    /// [`Code::OutOfMemory`]: running out of page-table frames is how a correct
    /// [`Partition`](crate::Partition) fails.
    pub const fn code(&self) -> Code {
        match self {
            CreateError::Rejected { problem, .. } => problem.code(),
            CreateError::Partition { .. } => Code::OutOfMemory,
        }
    }

    /// The cell's name.
    pub const fn cell(&self) -> CellName {
        match self {
            CreateError::Rejected { cell, .. } | CreateError::Partition { cell, .. } => *cell,
        }
    }
}

/// `cell "demo": memory region 0 [0x7f000000, 0x80000000): not owned by the root cell`.
impl<E: fmt::Display> fmt::Display for CreateError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::Rejected { cell, problem } => write!(f, "cell \"{cell}\": {problem}"),
            CreateError::Partition { cell, failed, undo } => {
                write!(f, "cell \"{cell}\": {failed}")?;
                match undo {
                    None => f.write_str("; every earlier step was undone"),
                    Some(undo) => write!(f, "; undoing the earlier steps failed too: {undo}"),
                }
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for CreateError<E> {}

/// Why [`Registry::destroy`](crate::Registry::destroy) failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DestroyError<E> {
    /// No cell has this id.
    NoSuchCell(CellId),
    /// The root cell cannot be destroyed.
    Denied {
        /// The root cell's name.
        cell: CellName,
    },
    /// The cell is destroyed and its resources are the root cell's again in the registry,
    /// but steps failed; the machine may still hold some of them where the cell had them.
    Partition {
        /// The cell's name.
        cell: CellName,
        /// The first step that failed.
        failed: Failure<E>,
        /// How many steps failed.
        failures: usize,
    },
}

impl<E> DestroyError<E> {
    /// The code the management interface reports ([`Code::OutOfMemory`] for failed steps,
    /// as for [`CreateError::code`]).
    pub const fn code(&self) -> Code {
        match self {
            DestroyError::NoSuchCell(_) => Code::NoSuchCell,
            DestroyError::Denied { .. } => Code::Denied,
            DestroyError::Partition { .. } => Code::OutOfMemory,
        }
    }
}

impl<E: fmt::Display> fmt::Display for DestroyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestroyError::NoSuchCell(id) => write!(f, "no cell with id {id}"),
            DestroyError::Denied { cell } => {
                write!(f, "cell \"{cell}\": the root cell cannot be destroyed")
            }
            DestroyError::Partition {
                cell,
                failed,
                failures,
            } => {
                write!(f, "cell \"{cell}\": destroyed, but {failed}")?;
                if *failures > 1 {
                    write!(f, " (and {} more steps failed)", failures - 1)?;
                }
                Ok(())
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for DestroyError<E> {}

/// Why [`Registry::set_state`](crate::Registry::set_state) refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StateError {
    /// No cell has this id.
    NoSuchCell(CellId),
    /// The root cell's state does not change.
    Denied {
        /// The root cell's name.
        cell: CellName,
    },
    /// The transition is not allowed.
    WrongState {
        /// The cell's name.
        cell: CellName,
        /// Its state.
        from: CellState,
        /// The state asked for.
        to: CellState,
    },
}

impl StateError {
    /// The code the management interface reports.
    pub const fn code(&self) -> Code {
        match self {
            StateError::NoSuchCell(_) => Code::NoSuchCell,
            StateError::Denied { .. } => Code::Denied,
            StateError::WrongState { .. } => Code::WrongState,
        }
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::NoSuchCell(id) => write!(f, "no cell with id {id}"),
            StateError::Denied { cell } => {
                write!(f, "cell \"{cell}\": the root cell's state does not change")
            }
            StateError::WrongState { cell, from, to } => write!(
                f,
                "cell \"{cell}\" is {}: it cannot become {}",
                from.name(),
                to.name()
            ),
        }
    }
}

impl core::error::Error for StateError {}

/// Why [`Registry::loadable`](crate::Registry::loadable) refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LoadError {
    /// No cell has this id.
    NoSuchCell(CellId),
    /// Nothing is loaded into the root cell.
    Denied {
        /// The root cell's name.
        cell: CellName,
    },
    /// The cell is running, shut down or failed: images are loaded before the start only
    /// (or after its own reset).
    WrongState {
        /// The cell's name.
        cell: CellName,
        /// Its state.
        state: CellState,
    },
    /// The address is not in a loadable region of the cell.
    NotLoadable {
        /// The cell's name.
        cell: CellName,
        /// The guest-physical address.
        address: u64,
    },
    /// The image starts in a loadable region but does not end there.
    TooLarge {
        /// The cell's name.
        cell: CellName,
        /// The guest-physical address.
        address: u64,
        /// The image's length.
        len: u64,
        /// Bytes that fit from `address` to the end of the region.
        fits: u64,
        /// Index of the region.
        region: usize,
        /// Its guest-physical range.
        range: AddressRange,
    },
}

impl LoadError {
    /// The code the management interface reports.
    pub const fn code(&self) -> Code {
        match self {
            LoadError::NoSuchCell(_) => Code::NoSuchCell,
            LoadError::Denied { .. } => Code::Denied,
            LoadError::WrongState { .. } => Code::WrongState,
            LoadError::NotLoadable { .. } => Code::InvalidArgument,
            LoadError::TooLarge { .. } => Code::ImageTooLarge,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LoadError::NoSuchCell(id) => write!(f, "no cell with id {id}"),
            LoadError::Denied { cell } => {
                write!(f, "cell \"{cell}\": nothing is loaded into the root cell")
            }
            LoadError::WrongState { cell, state } => write!(
                f,
                "cell \"{cell}\" is {}: images are loaded before the start only",
                state.name()
            ),
            LoadError::NotLoadable { cell, address } => write!(
                f,
                "cell \"{cell}\": guest address {address:#x} is not in a loadable memory region"
            ),
            LoadError::TooLarge {
                cell,
                address,
                len,
                fits,
                region,
                range,
            } => write!(
                f,
                "cell \"{cell}\": {len:#x} bytes at guest address {address:#x} do not fit: \
                 {fits:#x} bytes fit in memory region {region} {range}"
            ),
        }
    }
}

impl core::error::Error for LoadError {}

/// Why the root cell's description is not usable
/// ([`Registry::new`](crate::Registry::new)).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RootError {
    /// The name is not a valid cell name.
    BadName,
    /// No CPU.
    NoCpu,
    /// A CPU number beyond 63 (the registry keeps CPUs in a 64-bit mask).
    CpuBeyondLimit {
        /// The CPU.
        cpu: u32,
    },
    /// More than [`MAX_REGIONS`] memory regions.
    TooManyRegions {
        /// Regions given.
        count: usize,
    },
    /// A region is empty, wraps around the address space or is a communication region.
    BadRegion {
        /// Index of the region.
        region: usize,
    },
    /// Two regions share physical memory.
    MemoryOverlap {
        /// Index of the region.
        region: usize,
        /// Index of the earlier region.
        other: usize,
    },
    /// An interrupt line beyond [`IrqSet::LINES`].
    IrqBeyondLimit {
        /// The line.
        line: u32,
    },
    /// More I/O port ranges than [`MAX_PORT_RANGES`](crate::MAX_PORT_RANGES).
    TooManyPortRanges {
        /// Ranges given.
        count: usize,
    },
}

impl fmt::Display for RootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("root cell: ")?;
        match *self {
            RootError::BadName => f.write_str("the name is not valid"),
            RootError::NoCpu => f.write_str("no CPU"),
            RootError::CpuBeyondLimit { cpu } => {
                write!(f, "CPU {cpu}: at most 64 CPUs are supported")
            }
            RootError::TooManyRegions { count } => {
                write!(f, "{count} memory regions, at most {MAX_REGIONS}")
            }
            RootError::BadRegion { region } => write!(
                f,
                "memory region {region}: empty, wrapping around or a communication region"
            ),
            RootError::MemoryOverlap { region, other } => {
                write!(f, "memory region {region}: overlaps memory region {other}")
            }
            RootError::IrqBeyondLimit { line } => write!(
                f,
                "interrupt line {line} is beyond the {} lines supported",
                IrqSet::LINES
            ),
            RootError::TooManyPortRanges { count } => write!(
                f,
                "{count} I/O port ranges, at most {}",
                crate::MAX_PORT_RANGES
            ),
        }
    }
}

impl core::error::Error for RootError {}
