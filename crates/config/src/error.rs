//! Errors: which configuration ([`Scope`]), which element of it ([`Element`]) and what is
//! wrong ([`Problem`]). They print as one line, e.g.
//! `memory region 3: size 0x1001 is not page aligned` or
//! `cell "demo": CPU set: CPU 5 is not owned by the root cell`.

use core::fmt;

use crate::types::{
    AddressRange, Architecture, CellName, ConfigKind, CpuSet, IrqRange, PciAddress, PortRange,
    StreamId, ADDRESS_BITS,
};
use crate::{layout, limits};

/// Which configuration an error is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scope {
    /// The configuration being read, as a whole (a cell configuration, or the system-wide parts
    /// of a system configuration). Printed as nothing: the file name says it.
    Config,
    /// The root cell of the system configuration.
    RootCell,
    /// A cell, by name (cross-checks of several cells).
    Cell(CellName),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Config => Ok(()),
            Scope::RootCell => f.write_str("root cell: "),
            Scope::Cell(name) => write!(f, "cell \"{name}\": "),
        }
    }
}

/// The owner of a resource, in "also owned by" messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Owner {
    /// The root cell.
    RootCell,
    /// Another cell.
    Cell(CellName),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::RootCell => f.write_str("the root cell"),
            Owner::Cell(name) => write!(f, "cell \"{name}\""),
        }
    }
}

/// A list whose count is checked against a limit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum List {
    /// Words of the CPU bitmap.
    CpuSetWords,
    /// Memory regions.
    MemoryRegions,
    /// Interrupt line ranges.
    IrqRanges,
    /// I/O port ranges.
    PortRanges,
    /// PCI devices.
    PciDevices,
    /// Stream IDs.
    StreamIds,
    /// IOMMU units.
    IommuUnits,
    /// IOAPICs.
    IoApics,
}

impl List {
    /// The limit of the list.
    pub const fn limit(self) -> u32 {
        match self {
            List::CpuSetWords => limits::MAX_CPU_SET_WORDS,
            List::MemoryRegions => limits::MAX_MEMORY_REGIONS,
            List::IrqRanges => limits::MAX_IRQ_RANGES,
            List::PortRanges => limits::MAX_PORT_RANGES,
            List::PciDevices => limits::MAX_PCI_DEVICES,
            List::StreamIds => limits::MAX_STREAM_IDS,
            List::IommuUnits => limits::MAX_IOMMU_UNITS,
            List::IoApics => limits::MAX_IOAPICS,
        }
    }

    /// Size of one entry in bytes.
    pub const fn entry_size(self) -> usize {
        use core::mem::size_of;
        match self {
            List::CpuSetWords => 8,
            List::MemoryRegions => size_of::<layout::MemoryRegionEntry>(),
            List::IrqRanges => size_of::<layout::IrqRangeEntry>(),
            List::PortRanges => size_of::<layout::PortRangeEntry>(),
            List::PciDevices => size_of::<layout::PciDeviceEntry>(),
            List::StreamIds => size_of::<layout::StreamIdEntry>(),
            List::IommuUnits => size_of::<layout::IommuUnitEntry>(),
            List::IoApics => size_of::<layout::IoApicEntry>(),
        }
    }
}

impl fmt::Display for List {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            List::CpuSetWords => "CPU set words",
            List::MemoryRegions => "memory regions",
            List::IrqRanges => "interrupt ranges",
            List::PortRanges => "port ranges",
            List::PciDevices => "PCI devices",
            List::StreamIds => "stream IDs",
            List::IommuUnits => "IOMMU units",
            List::IoApics => "IOAPICs",
        })
    }
}

/// A register frame of the interrupt controller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameKind {
    /// GICD.
    GicDistributor,
    /// GICC.
    GicCpuInterface,
    /// GICH.
    GicHypervisorInterface,
    /// GICV.
    GicVirtualCpuInterface,
    /// GICR.
    GicRedistributors,
    /// x86 local APIC.
    LocalApic,
}

impl FrameKind {
    /// The GIC frames in [`layout::InterruptControllerEntry::frames`] order.
    pub const GIC: [FrameKind; 5] = [
        FrameKind::GicDistributor,
        FrameKind::GicCpuInterface,
        FrameKind::GicHypervisorInterface,
        FrameKind::GicVirtualCpuInterface,
        FrameKind::GicRedistributors,
    ];
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameKind::GicDistributor => "GIC distributor",
            FrameKind::GicCpuInterface => "GIC CPU interface",
            FrameKind::GicHypervisorInterface => "GIC hypervisor interface",
            FrameKind::GicVirtualCpuInterface => "GIC virtual CPU interface",
            FrameKind::GicRedistributors => "GIC redistributors",
            FrameKind::LocalApic => "local APIC",
        })
    }
}

/// Hardware only the hypervisor may touch: cells reach it through traps, never through a
/// direct mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sensitive {
    /// An interrupt controller frame.
    Frame(FrameKind),
    /// An IOAPIC, by index.
    IoApic(u32),
    /// An IOMMU unit, by index.
    IommuUnit(u32),
    /// The PCI configuration space window.
    PciEcam,
    /// The hypervisor's memory.
    HypervisorMemory,
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sensitive::Frame(frame) => write!(f, "the {frame}"),
            Sensitive::IoApic(i) => write!(f, "IOAPIC {i}"),
            Sensitive::IommuUnit(i) => write!(f, "IOMMU unit {i}"),
            Sensitive::PciEcam => f.write_str("the PCI configuration space (ECAM)"),
            Sensitive::HypervisorMemory => f.write_str("hypervisor memory"),
        }
    }
}

/// The part of a configuration an error is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Element {
    /// The header.
    Header,
    /// The system or cell descriptor as a whole.
    Descriptor,
    /// The count of a list.
    Count(List),
    /// The architecture.
    Architecture,
    /// The hypervisor memory.
    HypervisorMemory,
    /// The hypervisor's console.
    DebugConsole,
    /// The interrupt controller (type, maintenance interrupt).
    InterruptController,
    /// A register frame of the interrupt controller.
    Frame(FrameKind),
    /// An IOAPIC, by index.
    IoApic(u32),
    /// An IOMMU unit, by index.
    IommuUnit(u32),
    /// The PCI host bridge.
    PciHost,
    /// The cell name.
    Name,
    /// The cell flags.
    Flags,
    /// The CPU set.
    Cpus,
    /// A memory region, by index.
    MemoryRegion(u32),
    /// A range of interrupt lines, by index.
    IrqRange(u32),
    /// A range of I/O ports, by index.
    PortRange(u32),
    /// A PCI device, by index.
    PciDevice(u32),
    /// A stream ID, by index.
    StreamId(u32),
    /// The cell's console.
    Console,
    /// The CPU reset address.
    CpuResetAddress,
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Header => f.write_str("header"),
            Element::Descriptor => f.write_str("descriptor"),
            Element::Count(list) => write!(f, "{list}"),
            Element::Architecture => f.write_str("architecture"),
            Element::HypervisorMemory => f.write_str("hypervisor memory"),
            Element::DebugConsole => f.write_str("debug console"),
            Element::InterruptController => f.write_str("interrupt controller"),
            Element::Frame(frame) => write!(f, "{frame}"),
            Element::IoApic(i) => write!(f, "IOAPIC {i}"),
            Element::IommuUnit(i) => write!(f, "IOMMU unit {i}"),
            Element::PciHost => f.write_str("PCI host"),
            Element::Name => f.write_str("name"),
            Element::Flags => f.write_str("flags"),
            Element::Cpus => f.write_str("CPU set"),
            Element::MemoryRegion(i) => write!(f, "memory region {i}"),
            Element::IrqRange(i) => write!(f, "interrupt range {i}"),
            Element::PortRange(i) => write!(f, "port range {i}"),
            Element::PciDevice(i) => write!(f, "PCI device {i}"),
            Element::StreamId(i) => write!(f, "stream ID {i}"),
            Element::Console => f.write_str("console"),
            Element::CpuResetAddress => f.write_str("CPU reset address"),
        }
    }
}

/// A field of an element, for alignment messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Field {
    /// Physical start of a memory region or of hypervisor memory.
    PhysStart,
    /// Guest-physical start of a memory region.
    VirtStart,
    /// Size.
    Size,
    /// Base address of a register frame.
    Base,
    /// Address of an IOAPIC.
    Address,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::PhysStart => "physical start",
            Field::VirtStart => "guest-physical start",
            Field::Size => "size",
            Field::Base => "base",
            Field::Address => "address",
        })
    }
}

/// Physical or guest-physical.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Space {
    /// Host-physical addresses.
    Physical,
    /// What the cell sees.
    GuestPhysical,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Physical => "physical",
            Space::GuestPhysical => "guest-physical",
        })
    }
}

/// What is wrong.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Problem {
    // --- Structure -------------------------------------------------------------------------
    /// Fewer bytes than the header or the descriptors need.
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// More bytes than the header's total size.
    TrailingBytes {
        /// The header's total size.
        total: u32,
        /// Bytes beyond it.
        extra: u64,
    },
    /// Not a cellvisor configuration.
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A format revision this build does not read.
    UnsupportedRevision {
        /// The revision in the header.
        found: u16,
    },
    /// Neither system nor cell.
    UnknownKind {
        /// The kind in the header.
        found: u8,
    },
    /// A system configuration where a cell configuration was expected, or the reverse.
    WrongKind {
        /// What the caller asked for.
        expected: ConfigKind,
        /// What the header says.
        found: ConfigKind,
    },
    /// An unknown architecture value.
    UnknownArchitecture {
        /// The value in the header.
        found: u8,
    },
    /// The CRC-32 does not match.
    ChecksumMismatch {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the contents.
        computed: u32,
    },
    /// A count above its limit.
    TooMany {
        /// The count.
        count: u32,
        /// The limit.
        limit: u32,
    },
    /// The counts of the descriptors do not add up to the total size.
    LayoutMismatch {
        /// Bytes the counts describe.
        described: u64,
        /// Bytes present.
        present: u64,
    },
    /// A reserved field or padding is not zero.
    ReservedNotZero,

    // --- Values -----------------------------------------------------------------------------
    /// The name is empty.
    NameEmpty,
    /// The name fills all 32 bytes: no NUL terminator.
    NameNotTerminated,
    /// The name is longer than 31 bytes.
    NameTooLong {
        /// Its length.
        len: usize,
    },
    /// A byte other than letters, digits, `-`, `_`, `.`.
    NameCharacter {
        /// The byte.
        byte: u8,
        /// Its position.
        position: usize,
    },
    /// Non-zero bytes after the NUL terminator.
    NamePadding,
    /// Flag bits without a meaning.
    UnknownFlags {
        /// The unknown bits.
        bits: u64,
    },
    /// A flag that does not exist on the architecture.
    FlagNotOnArchitecture {
        /// The flag.
        flag: &'static str,
        /// The architecture.
        architecture: Architecture,
    },
    /// A flag the root cell may not have.
    FlagNotForRootCell {
        /// The flag.
        flag: &'static str,
    },
    /// Something the root cell may not have.
    NotForRootCell {
        /// What it is, e.g. "a communication region".
        what: &'static str,
    },
    /// An empty CPU set.
    NoCpu,
    /// The CPU bitmap ends in a zero word (the encoding is not minimal).
    CpuSetNotMinimal,
    /// A size (or count) of zero.
    ZeroSize,
    /// An address or size that is not a multiple of 4 KiB.
    NotPageAligned {
        /// Which field.
        field: Field,
        /// Its value.
        value: u64,
    },
    /// A range beyond the 52-bit address space.
    BeyondAddressSpace {
        /// Physical or guest-physical.
        space: Space,
        /// The range.
        range: AddressRange,
    },
    /// A memory region without read, write or execute permission.
    NoAccess,
    /// A communication region with a flag it cannot have.
    CommRegionFlag {
        /// The flag.
        flag: &'static str,
    },
    /// A communication region with a physical start.
    CommRegionPhys {
        /// The physical start.
        phys: u64,
    },
    /// A communication region of more or less than one page.
    CommRegionSize {
        /// The size.
        size: u64,
    },
    /// Two communication regions.
    SecondCommRegion {
        /// Index of the first.
        first: u32,
    },
    /// Two memory regions of a cell overlap.
    MemoryOverlap {
        /// Physical or guest-physical.
        space: Space,
        /// This region's range.
        range: AddressRange,
        /// Index of the other region.
        other: u32,
        /// Its range.
        other_range: AddressRange,
    },
    /// A range touching hardware that only the hypervisor may map.
    MapsSensitive {
        /// The range of the memory region.
        range: AddressRange,
        /// What it touches.
        what: Sensitive,
        /// Where that is.
        frame: AddressRange,
    },
    /// Register frames of the system overlap each other.
    RegisterOverlap {
        /// This element's range.
        range: AddressRange,
        /// The other.
        other: Sensitive,
        /// Its range.
        other_range: AddressRange,
    },
    /// Physical memory of a cell outside the root cell's memory.
    MemoryNotInRootCell {
        /// The range.
        range: AddressRange,
        /// The first address the root cell does not own.
        address: u64,
    },
    /// Physical memory of a cell also owned by another cell.
    MemoryTaken {
        /// The range.
        range: AddressRange,
        /// The other owner.
        by: Owner,
        /// Its memory region.
        region: u32,
    },
    /// An interrupt range with a count of zero.
    ZeroCount,
    /// An interrupt range past line 2^32 - 1.
    IrqWraps {
        /// The range.
        range: IrqRange,
    },
    /// An Arm interrupt line that is not an SPI.
    NotSpi {
        /// The line.
        line: u32,
    },
    /// An x86 interrupt line beyond the last GSI.
    GsiBeyondLimit {
        /// The line.
        line: u32,
    },
    /// Two interrupt ranges of a cell overlap.
    IrqOverlap {
        /// This range.
        range: IrqRange,
        /// Index of the other.
        other: u32,
        /// The other range.
        other_range: IrqRange,
    },
    /// A line the root cell does not own.
    IrqNotInRootCell {
        /// The line.
        line: u32,
    },
    /// A line owned by another cell too.
    IrqTaken {
        /// The line.
        line: u32,
        /// The other owner.
        by: Owner,
    },
    /// An x86 line no IOAPIC serves.
    IrqNotWired {
        /// The line.
        line: u32,
    },
    /// An extended SPI on GICv2.
    ExtendedSpiNeedsGicv3 {
        /// The line.
        line: u32,
    },
    /// I/O port ranges on an architecture without I/O ports.
    PortsNotOnArchitecture,
    /// Ports past 0xFFFF.
    BeyondPortSpace {
        /// First port.
        base: u64,
        /// Number of ports.
        size: u64,
    },
    /// Two port ranges of a cell overlap.
    PortOverlap {
        /// This range.
        range: PortRange,
        /// Index of the other.
        other: u32,
        /// The other range.
        other_range: PortRange,
    },
    /// Ports the root cell does not own.
    PortNotInRootCell {
        /// The range.
        range: PortRange,
    },
    /// Ports another cell owns too.
    PortTaken {
        /// The range.
        range: PortRange,
        /// The other owner.
        by: Owner,
    },
    /// An unknown PCI device type.
    UnknownPciKind {
        /// The value.
        found: u8,
    },
    /// A PCI device listed twice in a cell.
    PciDuplicate {
        /// The device.
        address: PciAddress,
        /// Index of the first listing.
        other: u32,
    },
    /// PCI devices without a PCI host bridge.
    PciNoHost {
        /// The device.
        address: PciAddress,
    },
    /// A PCI device beyond the last bus.
    PciBusBeyondEnd {
        /// The device.
        address: PciAddress,
        /// The host bridge's last bus.
        end_bus: u8,
    },
    /// A PCI device in another segment than the host bridge's.
    PciDomainMismatch {
        /// The device.
        address: PciAddress,
        /// The host bridge's segment.
        domain: u16,
    },
    /// A PCI device behind an IOMMU unit that does not exist.
    NoSuchIommu {
        /// The index.
        index: u8,
        /// The number of units.
        count: u32,
    },
    /// A PCI device the root cell does not own.
    PciNotInRootCell {
        /// The device.
        address: PciAddress,
    },
    /// A PCI device another cell owns too.
    PciTaken {
        /// The device.
        address: PciAddress,
        /// The other owner.
        by: Owner,
    },
    /// Stream IDs on an architecture without SMMU.
    StreamIdsNotOnArchitecture,
    /// A stream ID with bits set under its mask.
    StreamIdBitsUnderMask {
        /// The stream ID.
        id: StreamId,
    },
    /// Two stream IDs of a cell match a common ID.
    StreamIdOverlap {
        /// This one.
        id: StreamId,
        /// Index of the other.
        other: u32,
        /// The other.
        other_id: StreamId,
    },
    /// Stream IDs without an SMMU.
    NoSmmu {
        /// The stream ID.
        id: StreamId,
    },
    /// A stream ID mask without an SMMUv2.
    StreamMaskNeedsSmmuV2 {
        /// The stream ID.
        id: StreamId,
    },
    /// A stream ID above 16 bits with only SMMUv2 units.
    StreamIdTooWide {
        /// The stream ID.
        id: StreamId,
    },
    /// A stream ID the root cell does not own.
    StreamIdNotInRootCell {
        /// The stream ID.
        id: StreamId,
    },
    /// A stream ID another cell owns too.
    StreamIdTaken {
        /// The stream ID.
        id: StreamId,
        /// The other owner.
        by: Owner,
    },
    /// An unknown UART type.
    UnknownConsoleKind {
        /// The value.
        found: u16,
    },
    /// No UART type, but other console fields set.
    ConsoleFieldsWithoutKind,
    /// Port I/O with 32-bit registers.
    PortConsoleWithWideRegisters,
    /// Port I/O on an architecture without ports.
    PortConsoleNotOnArchitecture,
    /// A memory-mapped console outside the cell's memory regions.
    ConsoleNotMapped {
        /// The UART's address.
        address: u64,
    },
    /// A port console outside the cell's port ranges.
    ConsolePortsNotGranted {
        /// The UART's first port.
        address: u64,
    },
    /// An address beyond the 52-bit address space.
    AddressBeyondLimit {
        /// The address.
        address: u64,
    },
    /// The architecture of a cell differs from the system's.
    ArchitectureMismatch {
        /// The cell's.
        cell: Architecture,
        /// The system's.
        system: Architecture,
    },
    /// A cell named like the root cell.
    NameOfRootCell,
    /// Two cells with the same name.
    DuplicateName,
    /// A CPU the root cell does not own.
    CpuNotInRootCell {
        /// The CPU.
        cpu: u32,
    },
    /// A CPU another cell owns too.
    CpuTaken {
        /// The CPU.
        cpu: u32,
        /// The other owner.
        by: Owner,
    },
    /// The other cells take every CPU of the root cell.
    RootCellWithoutCpu {
        /// The CPUs the cells take.
        taken: CpuSet,
    },
    /// A physical range overlapping the hypervisor's memory.
    OverlapsHypervisor {
        /// The range.
        range: AddressRange,
        /// The hypervisor memory.
        hypervisor: AddressRange,
    },
    /// An unknown interrupt controller type.
    UnknownInterruptController {
        /// The value.
        found: u32,
    },
    /// Hardware that does not exist on the architecture.
    NotOnArchitecture {
        /// What it is.
        what: &'static str,
        /// The architecture.
        architecture: Architecture,
    },
    /// A required register frame is missing.
    Missing {
        /// Who needs it.
        needed_by: &'static str,
    },
    /// A field that must be zero here.
    NotUsed {
        /// The field.
        field: &'static str,
        /// Why it is not used.
        by: &'static str,
    },
    /// The maintenance interrupt is not a PPI.
    MaintenanceNotPpi {
        /// The INTID.
        irq: u32,
    },
    /// An IOAPIC pin count of 0 or above 240.
    IoApicPins {
        /// The count.
        pins: u32,
    },
    /// Interrupt lines of two IOAPICs overlap.
    GsiOverlap {
        /// This IOAPIC's lines.
        range: IrqRange,
        /// The other IOAPIC.
        other: u32,
        /// Its lines.
        other_range: IrqRange,
    },
    /// An IOAPIC's lines beyond the last GSI.
    GsisBeyondLimit {
        /// Its lines.
        range: IrqRange,
    },
    /// An unknown IOMMU type.
    UnknownIommuKind {
        /// The value.
        found: u16,
    },
    /// The ECAM base is not aligned to 1 MiB.
    EcamNotAligned {
        /// The base.
        base: u64,
    },
}

fn quote_bytes(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_str("\"")?;
    for &b in bytes {
        if b.is_ascii_graphic() || b == b' ' {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "\\x{b:02x}")?;
        }
    }
    f.write_str("\"")
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Problem::*;
        match *self {
            Truncated { needed, available } => {
                write!(f, "truncated: {needed} bytes needed, {available} present")
            }
            TrailingBytes { total, extra } => write!(
                f,
                "{extra} bytes after the end of the configuration ({total} bytes)"
            ),
            BadMagic { found } => {
                f.write_str("bad magic ")?;
                quote_bytes(f, &found)?;
                f.write_str(", expected ")?;
                quote_bytes(f, &layout::MAGIC)?;
                f.write_str(" (not a cellvisor configuration)")
            }
            UnsupportedRevision { found } => write!(
                f,
                "format revision {found} is not supported (this build reads revision {})",
                layout::REVISION
            ),
            UnknownKind { found } => write!(f, "unknown configuration kind {found}"),
            WrongKind { expected, found } => write!(
                f,
                "a {found} configuration where a {expected} configuration was expected"
            ),
            UnknownArchitecture { found } => write!(f, "unknown architecture {found}"),
            ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum {stored:#010x} does not match the contents (CRC-32 {computed:#010x})"
            ),
            TooMany { count, limit } => write!(f, "{count} exceed the limit of {limit}"),
            LayoutMismatch { described, present } => write!(
                f,
                "the counts describe {described} bytes, but {present} are present"
            ),
            ReservedNotZero => f.write_str("reserved field is not zero"),
            NameEmpty => f.write_str("must not be empty"),
            NameNotTerminated => f.write_str("not NUL-terminated within 32 bytes"),
            NameTooLong { len } => write!(
                f,
                "{len} bytes long, at most {} allowed",
                limits::MAX_NAME_LEN
            ),
            NameCharacter { byte, position } => {
                if byte.is_ascii_graphic() || byte == b' ' {
                    write!(f, "character '{}'", byte as char)?;
                } else {
                    write!(f, "byte {byte:#04x}")?;
                }
                write!(
                    f,
                    " at position {position} is not allowed (letters, digits, '-', '_' and '.' are)"
                )
            }
            NamePadding => f.write_str("bytes after the terminating NUL are not zero"),
            UnknownFlags { bits } => write!(f, "unknown flags {bits:#x}"),
            FlagNotOnArchitecture { flag, architecture } => {
                write!(f, "{flag} is not valid on {architecture}")
            }
            FlagNotForRootCell { flag } => write!(f, "{flag} is not valid for the root cell"),
            NotForRootCell { what } => write!(f, "the root cell cannot have {what}"),
            NoCpu => f.write_str("empty (a cell needs at least one CPU)"),
            CpuSetNotMinimal => f.write_str("the last word of the bitmap is zero (must be left out)"),
            ZeroSize => f.write_str("size is zero"),
            NotPageAligned { field, value } => {
                write!(f, "{field} {value:#x} is not page aligned")
            }
            BeyondAddressSpace { space, range } => write!(
                f,
                "{space} range {range} exceeds the {ADDRESS_BITS}-bit address space"
            ),
            NoAccess => f.write_str("grants no access (needs read, write or execute)"),
            CommRegionFlag { flag } => {
                write!(f, "a communication region cannot also be {flag}")
            }
            CommRegionPhys { phys } => write!(
                f,
                "communication region at physical {phys:#x}: must be 0 (the hypervisor provides the page)"
            ),
            CommRegionSize { size } => write!(
                f,
                "communication region of {size:#x} bytes: must be one page (0x1000)"
            ),
            SecondCommRegion { first } => write!(
                f,
                "second communication region (memory region {first} is one already)"
            ),
            MemoryOverlap {
                space,
                range,
                other,
                other_range,
            } => write!(
                f,
                "{space} range {range} overlaps memory region {other} {other_range}"
            ),
            MapsSensitive { range, what, frame } => write!(
                f,
                "physical range {range} maps {what} {frame} directly (only the hypervisor may access it)"
            ),
            RegisterOverlap {
                range,
                other,
                other_range,
            } => write!(f, "registers {range} overlap {other} {other_range}"),
            MemoryNotInRootCell { range, address } => write!(
                f,
                "physical range {range} is not owned by the root cell (no root-cell memory region covers {address:#x})"
            ),
            MemoryTaken { range, by, region } => write!(
                f,
                "physical range {range} is also owned by {by} (memory region {region})"
            ),
            ZeroCount => f.write_str("count is zero"),
            IrqWraps { range } => write!(
                f,
                "lines {} + {} go beyond line {}",
                range.first,
                range.count,
                u32::MAX
            ),
            NotSpi { line } => write!(
                f,
                "line {line} is not a shared peripheral interrupt (32-1019, or 4096-5119 on GICv3)"
            ),
            GsiBeyondLimit { line } => write!(
                f,
                "line {line} is beyond the last global system interrupt ({})",
                limits::MAX_GSI - 1
            ),
            IrqOverlap {
                range,
                other,
                other_range,
            } => write!(
                f,
                "lines {range} overlap interrupt range {other} ({other_range})"
            ),
            IrqNotInRootCell { line } => write!(f, "line {line} is not owned by the root cell"),
            IrqTaken { line, by } => write!(f, "line {line} is also owned by {by}"),
            IrqNotWired { line } => write!(f, "line {line} is not connected to any IOAPIC"),
            ExtendedSpiNeedsGicv3 { line } => {
                write!(f, "line {line} is an extended SPI, which needs GICv3")
            }
            PortsNotOnArchitecture => f.write_str("I/O ports exist only on x86_64"),
            BeyondPortSpace { base, size } => write!(
                f,
                "ports {base:#x}-{:#x} exceed the 16-bit port space",
                (base as u128 + size as u128).saturating_sub(1)
            ),
            PortOverlap {
                range,
                other,
                other_range,
            } => write!(f, "ports {range} overlap port range {other} ({other_range})"),
            PortNotInRootCell { range } => {
                write!(f, "ports {range} are not owned by the root cell")
            }
            PortTaken { range, by } => write!(f, "ports {range} are also owned by {by}"),
            UnknownPciKind { found } => write!(f, "unknown device type {found}"),
            PciDuplicate { address, other } => {
                write!(f, "{address} is listed twice (PCI device {other})")
            }
            PciNoHost { address } => {
                write!(f, "{address}: the system has no PCI host bridge")
            }
            PciBusBeyondEnd { address, end_bus } => write!(
                f,
                "{address} is beyond the last bus of the host bridge ({end_bus:02x})"
            ),
            PciDomainMismatch { address, domain } => write!(
                f,
                "{address} is not in the host bridge's domain {domain:04x}"
            ),
            NoSuchIommu { index, count } => write!(
                f,
                "IOMMU unit {index} does not exist (the system has {count})"
            ),
            PciNotInRootCell { address } => {
                write!(f, "{address} is not owned by the root cell")
            }
            PciTaken { address, by } => write!(f, "{address} is also owned by {by}"),
            StreamIdsNotOnArchitecture => f.write_str("stream IDs exist only on aarch64"),
            StreamIdBitsUnderMask { id } => write!(
                f,
                "{:#x} has bits set under its mask {:#x}",
                id.id, id.mask
            ),
            StreamIdOverlap { id, other, other_id } => {
                write!(f, "{id} overlaps stream ID {other} ({other_id})")
            }
            NoSmmu { id } => write!(f, "{id}: the system has no SMMU"),
            StreamMaskNeedsSmmuV2 { id } => write!(
                f,
                "{id}: a mask needs an SMMUv2 (stream matching), the system has none"
            ),
            StreamIdTooWide { id } => write!(
                f,
                "{id} is wider than the 16 bits of SMMUv2 stream matching, and the system has no SMMUv3"
            ),
            StreamIdNotInRootCell { id } => write!(f, "{id} is not owned by the root cell"),
            StreamIdTaken { id, by } => write!(f, "{id} is also owned by {by}"),
            UnknownConsoleKind { found } => write!(f, "unknown UART type {found}"),
            ConsoleFieldsWithoutKind => f.write_str("fields set without a UART type"),
            PortConsoleWithWideRegisters => {
                f.write_str("port I/O with 32-bit registers (port I/O is 8-bit)")
            }
            PortConsoleNotOnArchitecture => f.write_str("port I/O exists only on x86_64"),
            ConsoleNotMapped { address } => write!(
                f,
                "UART at {address:#x} is not in any memory region of the cell"
            ),
            ConsolePortsNotGranted { address } => write!(
                f,
                "UART at port {address:#x} is not in any port range of the cell"
            ),
            AddressBeyondLimit { address } => write!(
                f,
                "{address:#x} is beyond the {ADDRESS_BITS}-bit address space"
            ),
            ArchitectureMismatch { cell, system } => {
                write!(f, "{cell} does not match the system's {system}")
            }
            NameOfRootCell => f.write_str("the root cell has the same name"),
            DuplicateName => f.write_str("another cell has the same name"),
            CpuNotInRootCell { cpu } => write!(f, "CPU {cpu} is not owned by the root cell"),
            CpuTaken { cpu, by } => write!(f, "CPU {cpu} is also owned by {by}"),
            RootCellWithoutCpu { taken } => {
                write!(f, "no CPU left: the other cells take CPUs {taken}")
            }
            OverlapsHypervisor { range, hypervisor } => write!(
                f,
                "physical range {range} overlaps hypervisor memory {hypervisor}"
            ),
            UnknownInterruptController { found } => write!(f, "unknown type {found}"),
            NotOnArchitecture { what, architecture } => {
                write!(f, "{what} does not exist on {architecture}")
            }
            Missing { needed_by } => write!(f, "missing ({needed_by} needs it)"),
            NotUsed { field, by } => write!(f, "{field} is not used by {by}: must be 0"),
            MaintenanceNotPpi { irq } => write!(
                f,
                "maintenance interrupt {irq} is not a private peripheral interrupt (16-31)"
            ),
            IoApicPins { pins } => write!(
                f,
                "{pins} pins (1 to {} allowed)",
                limits::MAX_IOAPIC_PINS
            ),
            GsiOverlap {
                range,
                other,
                other_range,
            } => write!(
                f,
                "interrupt lines {range} overlap those of IOAPIC {other} ({other_range})"
            ),
            GsisBeyondLimit { range } => write!(
                f,
                "interrupt lines {range} go beyond the last global system interrupt ({})",
                limits::MAX_GSI - 1
            ),
            UnknownIommuKind { found } => write!(f, "unknown type {found}"),
            EcamNotAligned { base } => {
                write!(f, "ECAM base {base:#x} is not aligned to 1 MiB")
            }
        }
    }
}

/// A configuration error: where and what.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Error {
    /// Which configuration.
    pub scope: Scope,
    /// Which part of it.
    pub element: Element,
    /// What is wrong.
    pub problem: Problem,
}

impl Error {
    /// An error about the configuration being read.
    pub const fn new(element: Element, problem: Problem) -> Self {
        Error {
            scope: Scope::Config,
            element,
            problem,
        }
    }

    /// The same error in another scope.
    pub const fn in_scope(self, scope: Scope) -> Self {
        Error { scope, ..self }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}: {}", self.scope, self.element, self.problem)
    }
}

impl core::error::Error for Error {}
