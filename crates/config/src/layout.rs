//! The binary format, revision 1: fixed little-endian structures read in place with
//! [`zerocopy`].
//!
//! Every structure is `#[repr(C)]`, made only of byte arrays and little-endian integers
//! (alignment 1), so a configuration can be read from any address without copying. Fields are
//! nevertheless placed at their natural alignment, and every structure is a multiple of 8 bytes,
//! so C code can describe the same layout with plain structs. `docs/config-format.md` lists
//! every field with its offset.
//!
//! A configuration is a [`Header`] followed by a body:
//!
//! - system: [`SystemDescriptor`], then `iommu_unit_count` × [`IommuUnitEntry`],
//!   `ioapic_count` × [`IoApicEntry`], then the root cell (a [`CellDescriptor`] and its arrays);
//! - cell: [`CellDescriptor`], then its arrays.
//!
//! The arrays of a cell follow its descriptor in this order: `cpu_set_words` × `U64` (the CPU
//! bitmap, bit *n* of word *w* is CPU 64·*w* + *n*), [`MemoryRegionEntry`], [`IrqRangeEntry`],
//! [`PortRangeEntry`], [`PciDeviceEntry`], [`StreamIdEntry`].

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The first four bytes of every configuration: `"CVCF"`.
pub const MAGIC: [u8; 4] = *b"CVCF";

/// The format revision this crate reads and writes. Any other revision is rejected.
pub const REVISION: u16 = 1;

/// [`Header::kind`] of a system configuration.
pub const KIND_SYSTEM: u8 = 1;
/// [`Header::kind`] of a cell configuration.
pub const KIND_CELL: u8 = 2;

/// [`Header::architecture`] for 64-bit Arm.
pub const ARCH_AARCH64: u8 = 1;
/// [`Header::architecture`] for x86-64.
pub const ARCH_X86_64: u8 = 2;

/// Byte offset of [`Header::checksum`].
pub const CHECKSUM_OFFSET: usize = 12;

/// [`InterruptControllerEntry::kind`]: Arm GICv2.
pub const IRQCHIP_GICV2: u32 = 1;
/// [`InterruptControllerEntry::kind`]: Arm GICv3.
pub const IRQCHIP_GICV3: u32 = 2;
/// [`InterruptControllerEntry::kind`]: x86 local APIC and IOAPICs.
pub const IRQCHIP_APIC: u32 = 3;

/// Index in [`InterruptControllerEntry::frames`]: GIC distributor (GICD) or x86 local APIC.
pub const FRAME_DISTRIBUTOR: usize = 0;
/// Index in [`InterruptControllerEntry::frames`]: GIC CPU interface (GICC).
pub const FRAME_CPU_INTERFACE: usize = 1;
/// Index in [`InterruptControllerEntry::frames`]: GIC virtual interface control (GICH).
pub const FRAME_HYPERVISOR_INTERFACE: usize = 2;
/// Index in [`InterruptControllerEntry::frames`]: GIC virtual CPU interface (GICV).
pub const FRAME_VIRTUAL_CPU_INTERFACE: usize = 3;
/// Index in [`InterruptControllerEntry::frames`]: GICv3 redistributors (GICR).
pub const FRAME_REDISTRIBUTORS: usize = 4;

/// [`PciDeviceEntry::iommu`] of a device that is behind no IOMMU unit.
pub const NO_IOMMU: u8 = 0xff;

/// [`ConsoleEntry::flags`]: the registers are I/O ports (x86), not memory-mapped.
pub const CONSOLE_PORT_IO: u16 = 1 << 0;
/// [`ConsoleEntry::flags`]: registers are 4 bytes apart and accessed with 32-bit accesses
/// (otherwise 1 byte apart, 8-bit accesses).
pub const CONSOLE_REGISTERS_32BIT: u16 = 1 << 1;

/// The common header, 16 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`REVISION`].
    pub revision: U16,
    /// [`KIND_SYSTEM`] or [`KIND_CELL`].
    pub kind: u8,
    /// [`ARCH_AARCH64`] or [`ARCH_X86_64`].
    pub architecture: u8,
    /// Size of the whole configuration in bytes, header included.
    pub total_size: U32,
    /// CRC-32 (ISO-HDLC: polynomial 0x04C11DB7 reflected, initial value and final XOR
    /// 0xFFFFFFFF, as zlib and Ethernet) of all `total_size` bytes with this field read as zero.
    pub checksum: U32,
}

/// A physical register frame or memory range: base and size, 16 bytes. Both zero: absent.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct FrameEntry {
    /// Physical base address.
    pub base: U64,
    /// Size in bytes.
    pub size: U64,
}

/// A serial console, 24 bytes. All zero: no console.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct ConsoleEntry {
    /// Physical address of the registers, or the first I/O port.
    pub address: U64,
    /// Size of the register block in bytes (or ports).
    pub size: U32,
    /// UART type: 0 none, then the values of [`crate::ConsoleKind`].
    pub kind: U16,
    /// [`CONSOLE_PORT_IO`], [`CONSOLE_REGISTERS_32BIT`].
    pub flags: U16,
    /// Baud-rate divider to program, 0 to keep what the firmware set up.
    pub divider: U32,
    /// Must be zero.
    pub reserved: U32,
}

/// The interrupt controller, 88 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct InterruptControllerEntry {
    /// [`IRQCHIP_GICV2`], [`IRQCHIP_GICV3`] or [`IRQCHIP_APIC`].
    pub kind: U32,
    /// GIC: the INTID of the virtual interface maintenance interrupt (a PPI). APIC: zero.
    pub maintenance_irq: U32,
    /// Register frames, indexed by `FRAME_*`. The x86 APIC uses only
    /// [`FRAME_DISTRIBUTOR`] (the local APIC); unused frames are zero.
    pub frames: [FrameEntry; 5],
}

/// The PCI host bridge (ECAM), 16 bytes. All zero: no PCI.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct PciHostEntry {
    /// Physical base of the ECAM (memory-mapped configuration space) window for bus 0.
    pub ecam_base: U64,
    /// PCI segment (domain) number.
    pub domain: U16,
    /// Last bus number; the window is `(end_bus + 1)` MiB.
    pub end_bus: u8,
    /// Must be zero.
    pub reserved: [u8; 5],
}

/// System descriptor, 160 bytes, right after the header of a system configuration.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct SystemDescriptor {
    /// Physical memory reserved for the hypervisor (image, heap, page tables, per-CPU data).
    pub hypervisor_memory: FrameEntry,
    /// The hypervisor's own console.
    pub debug_console: ConsoleEntry,
    /// Must be zero.
    pub reserved: U32,
    /// Number of [`IommuUnitEntry`] after the descriptor.
    pub iommu_unit_count: U32,
    /// Number of [`IoApicEntry`] after the IOMMU units.
    pub ioapic_count: U32,
    /// Must be zero.
    pub reserved2: U32,
    /// PCI host bridge.
    pub pci: PciHostEntry,
    /// Interrupt controller.
    pub interrupt_controller: InterruptControllerEntry,
}

/// An IOMMU unit, 32 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct IommuUnitEntry {
    /// Physical base of the registers.
    pub base: U64,
    /// Size of the register block.
    pub size: U64,
    /// The values of [`crate::IommuKind`].
    pub kind: U16,
    /// AMD-Vi: bus/device/function of the IOMMU's own PCI function. Otherwise zero.
    pub amd_bdf: U16,
    /// AMD-Vi: offset of the IOMMU capability block in its configuration space.
    pub amd_base_cap: u8,
    /// AMD-Vi: offset of its MSI capability.
    pub amd_msi_cap: u8,
    /// Must be zero.
    pub reserved: U16,
    /// AMD-Vi: IOMMU feature bits (IVHD "IOMMU Feature Reporting").
    pub amd_features: U32,
    /// Must be zero.
    pub reserved2: U32,
}

/// An x86 IOAPIC, 24 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct IoApicEntry {
    /// Physical base of its register window (4 KiB page).
    pub address: U64,
    /// Source ID used for interrupt remapping (the IOAPIC's bus/device/function).
    pub id: U32,
    /// Global system interrupt of pin 0.
    pub gsi_base: U32,
    /// Number of redirection entries (pins).
    pub pins: U32,
    /// Must be zero.
    pub reserved: U32,
}

/// Cell descriptor, 96 bytes: the root cell inside a system configuration, or the body of a
/// cell configuration.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct CellDescriptor {
    /// Name: 1 to 31 bytes of `[A-Za-z0-9._-]`, then NUL bytes up to the end.
    pub name: [u8; 32],
    /// [`crate::CellFlags`].
    pub flags: U32,
    /// Number of 64-bit words of the CPU bitmap.
    pub cpu_set_words: U32,
    /// Number of [`MemoryRegionEntry`].
    pub memory_region_count: U32,
    /// Number of [`IrqRangeEntry`].
    pub irq_range_count: U32,
    /// Number of [`PortRangeEntry`].
    pub port_range_count: U32,
    /// Number of [`PciDeviceEntry`].
    pub pci_device_count: U32,
    /// Number of [`StreamIdEntry`].
    pub stream_id_count: U32,
    /// Must be zero.
    pub reserved: U32,
    /// Address at which the cell's CPUs start (guest-physical).
    pub cpu_reset_address: U64,
    /// The console the cell's software should use.
    pub console: ConsoleEntry,
}

/// A memory region of a cell, 32 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct MemoryRegionEntry {
    /// Physical start (host side).
    pub phys_start: U64,
    /// Guest-physical start (what the cell sees).
    pub virt_start: U64,
    /// Size in bytes.
    pub size: U64,
    /// [`crate::MemoryFlags`].
    pub flags: U64,
}

/// A range of interrupt lines, 8 bytes: GIC INTIDs on Arm, global system interrupts on x86.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct IrqRangeEntry {
    /// First line.
    pub first: U32,
    /// Number of lines.
    pub count: U32,
}

/// A range of x86 I/O ports, 8 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct PortRangeEntry {
    /// First port.
    pub base: U32,
    /// Number of ports.
    pub size: U32,
}

/// A PCI device, 8 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct PciDeviceEntry {
    /// PCI segment (domain).
    pub domain: U16,
    /// Bus (bits 15:8), device (7:3), function (2:0).
    pub bdf: U16,
    /// The values of [`crate::PciDeviceKind`].
    pub kind: u8,
    /// Index of the IOMMU unit in front of the device, [`NO_IOMMU`] for none.
    pub iommu: u8,
    /// Must be zero.
    pub reserved: U16,
}

/// An IOMMU stream ID (Arm SMMU), 8 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
pub struct StreamIdEntry {
    /// Stream ID.
    pub id: U32,
    /// Bits of `id` to ignore when matching (SMMUv2 stream match registers); 0 on SMMUv3.
    pub mask: U32,
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Header>() == 16);
    assert!(size_of::<FrameEntry>() == 16);
    assert!(size_of::<ConsoleEntry>() == 24);
    assert!(size_of::<InterruptControllerEntry>() == 88);
    assert!(size_of::<PciHostEntry>() == 16);
    assert!(size_of::<SystemDescriptor>() == 160);
    assert!(size_of::<IommuUnitEntry>() == 32);
    assert!(size_of::<IoApicEntry>() == 24);
    assert!(size_of::<CellDescriptor>() == 96);
    assert!(size_of::<MemoryRegionEntry>() == 32);
    assert!(size_of::<IrqRangeEntry>() == 8);
    assert!(size_of::<PortRangeEntry>() == 8);
    assert!(size_of::<PciDeviceEntry>() == 8);
    assert!(size_of::<StreamIdEntry>() == 8);
};

/// Stores [`checksum`] of `bytes` in their header's checksum field, after a change of the
/// bytes. Returns `false`, changing nothing, when `bytes` is shorter than a header.
pub fn store_checksum(bytes: &mut [u8]) -> bool {
    if bytes.len() < size_of::<Header>() {
        return false;
    }
    let checksum = checksum(bytes);
    bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&checksum.to_le_bytes());
    true
}

/// Writes a header for `bytes` themselves into their first 16 bytes: [`MAGIC`],
/// [`REVISION`], `kind`, `architecture`, `total_size` = their length, and the checksum.
///
/// The encoder finishes every configuration with it; tests and fuzzers use it to make
/// altered bytes pass the header checks, so that the checks behind them are reached. A
/// length above `u32::MAX` is stored as `u32::MAX` (such bytes are refused when parsed).
/// Returns `false`, changing nothing, when `bytes` is shorter than a header.
pub fn seal(bytes: &mut [u8], kind: u8, architecture: u8) -> bool {
    if bytes.len() < size_of::<Header>() {
        return false;
    }
    let header = Header {
        magic: MAGIC,
        revision: REVISION.into(),
        kind,
        architecture,
        total_size: (bytes.len().min(u32::MAX as usize) as u32).into(),
        checksum: 0.into(),
    };
    bytes[..size_of::<Header>()].copy_from_slice(header.as_bytes());
    store_checksum(bytes)
}

/// The CRC-32 of a configuration: all bytes with the checksum field read as zero.
///
/// `bytes` must be at least [`size_of::<Header>()`](core::mem::size_of) long; shorter input
/// gives the CRC of what is there.
pub fn checksum(bytes: &[u8]) -> u32 {
    /// CRC-32 (ISO-HDLC: zlib's, Ethernet's), one 256-entry table.
    const CRC32: crc::Crc<u32, crc::Table<1>> =
        crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISO_HDLC);
    let mut digest = CRC32.digest();
    if bytes.len() < CHECKSUM_OFFSET + 4 {
        digest.update(bytes);
    } else {
        digest.update(&bytes[..CHECKSUM_OFFSET]);
        digest.update(&[0; 4]);
        digest.update(&bytes[CHECKSUM_OFFSET + 4..]);
    }
    digest.finalize()
}
