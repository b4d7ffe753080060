//! The typed values of a configuration, shared by the zero-copy views and the owned
//! configurations.

use core::fmt;

use crate::layout;

/// Size of a page: memory regions are mapped in units of 4 KiB.
pub const PAGE_SIZE: u64 = 0x1000;

/// Physical and guest-physical addresses have at most this many bits (Arm LPA and x86-64 both
/// top out at 52; Arm ARM D8.2, SDM 4.1.4).
pub const ADDRESS_BITS: u32 = 52;

/// Limits of the format. Counts above them are rejected before anything is read.
pub mod limits {
    /// Highest CPU count: CPUs are numbered 0 to 511.
    pub const MAX_CPUS: u32 = 512;
    /// Words of the CPU bitmap.
    pub const MAX_CPU_SET_WORDS: u32 = MAX_CPUS / 64;
    /// Memory regions per cell.
    pub const MAX_MEMORY_REGIONS: u32 = 1024;
    /// Interrupt line ranges per cell.
    pub const MAX_IRQ_RANGES: u32 = 1024;
    /// I/O port ranges per cell.
    pub const MAX_PORT_RANGES: u32 = 256;
    /// PCI devices per cell.
    pub const MAX_PCI_DEVICES: u32 = 1024;
    /// Stream IDs per cell.
    pub const MAX_STREAM_IDS: u32 = 1024;
    /// IOMMU units per system.
    pub const MAX_IOMMU_UNITS: u32 = 8;
    /// IOAPICs per system.
    pub const MAX_IOAPICS: u32 = 8;
    /// Bytes of a cell name.
    pub const MAX_NAME_LEN: usize = 31;
    /// Global system interrupts (x86 interrupt lines) are below this.
    pub const MAX_GSI: u32 = 1024;
    /// Pins (redirection entries) of one IOAPIC.
    pub const MAX_IOAPIC_PINS: u32 = 240;
}

/// The architecture a configuration is for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Architecture {
    /// 64-bit Arm (EL2, stage-2 translation, GIC, SMMU).
    Aarch64,
    /// x86-64 (VMX or SVM, EPT or NPT, APIC, VT-d or AMD-Vi).
    X86_64,
}

impl Architecture {
    /// The value in [`layout::Header::architecture`].
    pub const fn to_raw(self) -> u8 {
        match self {
            Architecture::Aarch64 => layout::ARCH_AARCH64,
            Architecture::X86_64 => layout::ARCH_X86_64,
        }
    }

    /// The architecture with the raw value, if any.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            layout::ARCH_AARCH64 => Some(Architecture::Aarch64),
            layout::ARCH_X86_64 => Some(Architecture::X86_64),
            _ => None,
        }
    }

    /// The name used in TOML and messages: `aarch64` or `x86_64`.
    pub const fn name(self) -> &'static str {
        match self {
            Architecture::Aarch64 => "aarch64",
            Architecture::X86_64 => "x86_64",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// System or cell.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ConfigKind {
    /// The system configuration: hypervisor, hardware, root cell.
    System,
    /// A cell (other than the root cell).
    Cell,
}

impl ConfigKind {
    /// The value in [`layout::Header::kind`].
    pub const fn to_raw(self) -> u8 {
        match self {
            ConfigKind::System => layout::KIND_SYSTEM,
            ConfigKind::Cell => layout::KIND_CELL,
        }
    }

    /// The kind with the raw value, if any.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            layout::KIND_SYSTEM => Some(ConfigKind::System),
            layout::KIND_CELL => Some(ConfigKind::Cell),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigKind::System => "system",
            ConfigKind::Cell => "cell",
        })
    }
}

bitflags::bitflags! {
    /// Access and role of a memory region. Values equal Jailhouse's `JAILHOUSE_MEM_*` so that
    /// imported flags read the same.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    pub struct MemoryFlags: u64 {
        /// The cell may read.
        const READ = 1 << 0;
        /// The cell may write.
        const WRITE = 1 << 1;
        /// The cell may execute.
        const EXECUTE = 1 << 2;
        /// Devices of the cell may access it by DMA (mapped in the IOMMU too).
        const DMA = 1 << 3;
        /// Device registers: mapped as device memory, not cacheable.
        const IO = 1 << 4;
        /// The page the hypervisor and the cell talk through; its physical start is 0 and
        /// the hypervisor provides the page.
        const COMM_REGION = 1 << 5;
        /// The root cell may load an image into it while the cell is stopped.
        const LOADABLE = 1 << 6;
        /// Stays mapped in the root cell while the cell exists (shared memory).
        const ROOTSHARED = 1 << 7;
    }
}

impl MemoryFlags {
    /// Flag names as written in TOML, in bit order.
    pub const NAMES: [(&'static str, MemoryFlags); 8] = [
        ("read", MemoryFlags::READ),
        ("write", MemoryFlags::WRITE),
        ("execute", MemoryFlags::EXECUTE),
        ("dma", MemoryFlags::DMA),
        ("io", MemoryFlags::IO),
        ("comm-region", MemoryFlags::COMM_REGION),
        ("loadable", MemoryFlags::LOADABLE),
        ("root-shared", MemoryFlags::ROOTSHARED),
    ];

    /// The TOML name of a single flag.
    pub fn flag_name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }
}

bitflags::bitflags! {
    /// Properties of a cell.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    pub struct CellFlags: u32 {
        /// The cell does not answer the hypervisor's messages (shutdown requests) through its
        /// communication region; it may be stopped at any time.
        const PASSIVE_COMM_REGION = 1 << 0;
        /// The cell's CPUs start in AArch32 state (aarch64 only; not for the root cell).
        const AARCH32 = 1 << 1;
        /// The cell may print through the hypervisor's console with a hypercall.
        const VIRTUAL_CONSOLE_PERMITTED = 1 << 2;
        /// The cell's software should print through the hypervisor's console (implies
        /// permitted).
        const VIRTUAL_CONSOLE_ACTIVE = 1 << 3;
    }
}

impl CellFlags {
    /// Flag names as written in messages.
    pub fn flag_name(self) -> &'static str {
        match self {
            CellFlags::PASSIVE_COMM_REGION => "passive-comm-region",
            CellFlags::AARCH32 => "aarch32",
            CellFlags::VIRTUAL_CONSOLE_PERMITTED => "virtual-console permitted",
            CellFlags::VIRTUAL_CONSOLE_ACTIVE => "virtual-console active",
            _ => "?",
        }
    }
}

/// A cell name: 1 to 31 bytes of ASCII letters, digits, `-`, `_` and `.`.
///
/// A fixed-size copy, so errors can name cells without allocating.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CellName {
    bytes: [u8; limits::MAX_NAME_LEN],
    len: u8,
}

impl CellName {
    /// Stands for a name that is not valid, in messages about other problems of the cell.
    pub const INVALID: CellName = {
        let text = b"invalid-name";
        let mut bytes = [0; limits::MAX_NAME_LEN];
        let mut i = 0;
        while i < text.len() {
            bytes[i] = text[i];
            i += 1;
        }
        CellName {
            bytes,
            len: text.len() as u8,
        }
    };

    /// The name, if it is valid.
    pub fn new(name: &str) -> Option<Self> {
        if name.is_empty() || name.len() > limits::MAX_NAME_LEN {
            return None;
        }
        if !name.bytes().all(Self::allowed) {
            return None;
        }
        let mut bytes = [0; limits::MAX_NAME_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(CellName {
            bytes,
            len: name.len() as u8,
        })
    }

    /// Whether a byte may appear in a name.
    pub const fn allowed(byte: u8) -> bool {
        byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl fmt::Display for CellName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CellName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// A set of CPUs (logical CPU numbers 0 to 511: the position of the CPU in the board's CPU
/// list), as a bitmap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuSet {
    words: [u64; limits::MAX_CPU_SET_WORDS as usize],
}

impl CpuSet {
    /// The empty set.
    pub const fn new() -> Self {
        CpuSet {
            words: [0; limits::MAX_CPU_SET_WORDS as usize],
        }
    }

    /// The set of the given bitmap words (bit *n* of word *w* is CPU 64·*w* + *n*); words
    /// beyond [`limits::MAX_CPU_SET_WORDS`] are ignored.
    pub fn from_words(words: impl IntoIterator<Item = u64>) -> Self {
        let mut set = CpuSet::new();
        for (slot, word) in set.words.iter_mut().zip(words) {
            *slot = word;
        }
        set
    }

    /// The set of the given CPUs; numbers from [`limits::MAX_CPUS`] on are ignored.
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Self {
        let mut set = CpuSet::new();
        for cpu in cpus {
            set.insert(cpu);
        }
        set
    }

    /// The bitmap words.
    pub const fn words(&self) -> &[u64; limits::MAX_CPU_SET_WORDS as usize] {
        &self.words
    }

    /// The number of words up to the last non-zero one (what the binary format stores).
    pub fn used_words(&self) -> usize {
        self.words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |i| i + 1)
    }

    /// Adds a CPU; returns false (and changes nothing) if it is beyond [`limits::MAX_CPUS`].
    pub fn insert(&mut self, cpu: u32) -> bool {
        if cpu >= limits::MAX_CPUS {
            return false;
        }
        self.words[(cpu / 64) as usize] |= 1 << (cpu % 64);
        true
    }

    /// Removes a CPU.
    pub fn remove(&mut self, cpu: u32) {
        if cpu < limits::MAX_CPUS {
            self.words[(cpu / 64) as usize] &= !(1 << (cpu % 64));
        }
    }

    /// Whether the CPU is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        cpu < limits::MAX_CPUS && self.words[(cpu / 64) as usize] & (1 << (cpu % 64)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Number of CPUs.
    pub fn len(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// The highest CPU, if any.
    pub fn last(&self) -> Option<u32> {
        let word = self.words.iter().rposition(|&w| w != 0)?;
        Some(word as u32 * 64 + 63 - self.words[word].leading_zeros())
    }

    /// The CPUs in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        let mut set = *self;
        for (a, b) in set.words.iter_mut().zip(other.words) {
            *a &= b;
        }
        set
    }

    /// The CPUs in either set.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        let mut set = *self;
        for (a, b) in set.words.iter_mut().zip(other.words) {
            *a |= b;
        }
        set
    }

    /// The CPUs of `self` not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        let mut set = *self;
        for (a, b) in set.words.iter_mut().zip(other.words) {
            *a &= !b;
        }
        set
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..limits::MAX_CPUS).filter(|&cpu| self.contains(cpu))
    }

    /// Maximal runs of consecutive CPUs as `(first, last)`, in ascending order.
    pub fn runs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut next = 0;
        core::iter::from_fn(move || {
            let first = (next..limits::MAX_CPUS).find(|&c| self.contains(c))?;
            let mut last = first;
            while last + 1 < limits::MAX_CPUS && self.contains(last + 1) {
                last += 1;
            }
            next = last + 1;
            Some((first, last))
        })
    }
}

/// `0-3,6`: the runs of the set.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, (first, last)) in self.runs().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

/// A half-open address range, for messages: `[0x1000, 0x3000)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AddressRange {
    /// First address.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

impl AddressRange {
    /// The range.
    pub const fn new(start: u64, size: u64) -> Self {
        AddressRange { start, size }
    }

    /// One past the last address (may exceed `u64`).
    pub const fn end(&self) -> u128 {
        self.start as u128 + self.size as u128
    }

    /// Whether the two ranges share an address (empty ranges share none).
    pub const fn overlaps(&self, other: &AddressRange) -> bool {
        self.size != 0
            && other.size != 0
            && (self.start as u128) < other.end()
            && (other.start as u128) < self.end()
    }

    /// Whether `other` lies inside `self`.
    pub const fn contains_range(&self, other: &AddressRange) -> bool {
        other.start >= self.start && other.end() <= self.end()
    }

    /// Whether the address lies inside.
    pub const fn contains(&self, address: u64) -> bool {
        address >= self.start && (address as u128) < self.end()
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end())
    }
}

/// A memory region of a cell.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MemoryRegion {
    /// Physical start (host side).
    pub phys_start: u64,
    /// Guest-physical start (what the cell sees).
    pub virt_start: u64,
    /// Size in bytes, a multiple of [`PAGE_SIZE`].
    pub size: u64,
    /// Access and role.
    pub flags: MemoryFlags,
}

impl MemoryRegion {
    /// The physical range.
    pub const fn phys(&self) -> AddressRange {
        AddressRange::new(self.phys_start, self.size)
    }

    /// The guest-physical range.
    pub const fn virt(&self) -> AddressRange {
        AddressRange::new(self.virt_start, self.size)
    }

    pub(crate) fn from_entry(e: &layout::MemoryRegionEntry) -> Self {
        MemoryRegion {
            phys_start: e.phys_start.get(),
            virt_start: e.virt_start.get(),
            size: e.size.get(),
            flags: MemoryFlags::from_bits_retain(e.flags.get()),
        }
    }

    /// The entry of the binary format.
    pub fn to_entry(self) -> layout::MemoryRegionEntry {
        layout::MemoryRegionEntry {
            phys_start: self.phys_start.into(),
            virt_start: self.virt_start.into(),
            size: self.size.into(),
            flags: self.flags.bits().into(),
        }
    }
}

/// A range of interrupt lines: GIC INTIDs (SPIs) on Arm, global system interrupts on x86.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IrqRange {
    /// First line.
    pub first: u32,
    /// Number of lines (at least 1).
    pub count: u32,
}

impl IrqRange {
    /// One line.
    pub const fn single(line: u32) -> Self {
        IrqRange {
            first: line,
            count: 1,
        }
    }

    /// The last line (saturating).
    pub const fn last(&self) -> u32 {
        self.first.saturating_add(self.count.saturating_sub(1))
    }

    /// Whether the line is in the range.
    pub const fn contains(&self, line: u32) -> bool {
        line >= self.first && (line as u64) < self.first as u64 + self.count as u64
    }

    /// Whether the ranges share a line.
    pub const fn overlaps(&self, other: &IrqRange) -> bool {
        self.count != 0
            && other.count != 0
            && (self.first as u64) < other.first as u64 + other.count as u64
            && (other.first as u64) < self.first as u64 + self.count as u64
    }
}

/// `40` or `40-47`.
impl fmt::Display for IrqRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "{}", self.first)
        } else {
            write!(
                f,
                "{}-{}",
                self.first,
                self.first as u64 + self.count as u64 - 1
            )
        }
    }
}

/// A range of x86 I/O ports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PortRange {
    /// First port.
    pub base: u32,
    /// Number of ports (at least 1; `base + size` at most 0x10000).
    pub size: u32,
}

impl PortRange {
    /// Whether the ranges share a port.
    pub const fn overlaps(&self, other: &PortRange) -> bool {
        AddressRange::new(self.base as u64, self.size as u64)
            .overlaps(&AddressRange::new(other.base as u64, other.size as u64))
    }

    /// Whether `other` lies inside `self`.
    pub const fn contains_range(&self, other: &PortRange) -> bool {
        other.base >= self.base
            && other.base as u64 + other.size as u64 <= self.base as u64 + self.size as u64
    }
}

/// `0x3f8-0x3ff`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.size == 1 {
            write!(f, "{:#x}", self.base)
        } else {
            write!(
                f,
                "{:#x}-{:#x}",
                self.base,
                self.base as u64 + self.size as u64 - 1
            )
        }
    }
}

/// A PCI bus/device/function number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf(pub u16);

impl Bdf {
    /// The number of bus, device (0-31) and function (0-7); `None` if out of range.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > 31 || function > 7 {
            return None;
        }
        Some(Bdf((bus as u16) << 8
            | (device as u16) << 3
            | function as u16))
    }

    /// Bus.
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Device.
    pub const fn device(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }

    /// Function.
    pub const fn function(self) -> u8 {
        (self.0 & 7) as u8
    }

    /// Parses `bb:dd.f` (hexadecimal bus and device, as `lspci` prints them).
    pub fn parse(text: &str) -> Option<Self> {
        let (bus, rest) = text.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        if bus.is_empty() || bus.len() > 2 || device.is_empty() || device.len() > 2 {
            return None;
        }
        if function.len() != 1 {
            return None;
        }
        let bus = u8::from_str_radix(bus, 16).ok()?;
        let device = u8::from_str_radix(device, 16).ok()?;
        let function = function.parse::<u8>().ok()?;
        Bdf::new(bus, device, function)
    }
}

/// `00:1f.2`.
impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bdf({self})")
    }
}

/// What a PCI device is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PciDeviceKind {
    /// An endpoint function.
    Device,
    /// A PCI-to-PCI bridge.
    Bridge,
}

impl PciDeviceKind {
    /// The value in [`layout::PciDeviceEntry::kind`].
    pub const fn to_raw(self) -> u8 {
        match self {
            PciDeviceKind::Device => 1,
            PciDeviceKind::Bridge => 2,
        }
    }

    /// The kind with the raw value, if any.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(PciDeviceKind::Device),
            2 => Some(PciDeviceKind::Bridge),
            _ => None,
        }
    }

    /// The name used in TOML.
    pub const fn name(self) -> &'static str {
        match self {
            PciDeviceKind::Device => "device",
            PciDeviceKind::Bridge => "bridge",
        }
    }
}

/// A PCI device (function) assigned to a cell.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PciDevice {
    /// PCI segment (domain).
    pub domain: u16,
    /// Bus, device, function.
    pub bdf: Bdf,
    /// Endpoint or bridge.
    pub kind: PciDeviceKind,
    /// Index of the system's IOMMU unit in front of the device, if any.
    pub iommu: Option<u8>,
}

/// `0000:00:1f.2` for PCI messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PciAddress {
    /// Segment.
    pub domain: u16,
    /// Bus, device, function.
    pub bdf: Bdf,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{}", self.domain, self.bdf)
    }
}

impl PciDevice {
    /// Segment and BDF.
    pub const fn address(&self) -> PciAddress {
        PciAddress {
            domain: self.domain,
            bdf: self.bdf,
        }
    }
}

/// An Arm SMMU stream ID, with the bits to ignore when matching (SMMUv2 stream match
/// registers, Arm IHI 0062 §2.4; zero on SMMUv3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct StreamId {
    /// The stream ID.
    pub id: u32,
    /// Bits of `id` that do not matter.
    pub mask: u32,
}

impl StreamId {
    /// Whether some stream ID matches both.
    pub const fn overlaps(&self, other: &StreamId) -> bool {
        (self.id ^ other.id) & !(self.mask | other.mask) == 0
    }

    /// Whether every stream ID matching `other` matches `self`.
    pub const fn covers(&self, other: &StreamId) -> bool {
        other.mask & !self.mask == 0 && (self.id ^ other.id) & !self.mask == 0
    }
}

/// `0x10` or `0x10/0x3` (id/mask).
impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mask == 0 {
            write!(f, "{:#x}", self.id)
        } else {
            write!(f, "{:#x}/{:#x}", self.id, self.mask)
        }
    }
}

/// UART types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ConsoleKind {
    /// Arm PrimeCell PL011 (also SBSA UART).
    Pl011,
    /// 8250/16550 compatible (x86 COM ports, DesignWare APB UART).
    Uart8250,
    /// Cadence UART (Xilinx Zynq and ZynqMP `xuartps`).
    Cadence,
    /// Marvell Armada 37xx UART.
    Mvebu,
    /// Renesas HSCIF.
    Hscif,
    /// Renesas SCIFA.
    Scifa,
    /// NXP i.MX UART.
    Imx,
    /// NXP i.MX LPUART.
    ImxLpuart,
    /// Renesas SCIF.
    Scif,
}

impl ConsoleKind {
    /// All kinds, in raw-value order.
    pub const ALL: [ConsoleKind; 9] = [
        ConsoleKind::Pl011,
        ConsoleKind::Uart8250,
        ConsoleKind::Cadence,
        ConsoleKind::Mvebu,
        ConsoleKind::Hscif,
        ConsoleKind::Scifa,
        ConsoleKind::Imx,
        ConsoleKind::ImxLpuart,
        ConsoleKind::Scif,
    ];

    /// The value in [`layout::ConsoleEntry::kind`] (0 is "no console").
    pub const fn to_raw(self) -> u16 {
        match self {
            ConsoleKind::Pl011 => 1,
            ConsoleKind::Uart8250 => 2,
            ConsoleKind::Cadence => 3,
            ConsoleKind::Mvebu => 4,
            ConsoleKind::Hscif => 5,
            ConsoleKind::Scifa => 6,
            ConsoleKind::Imx => 7,
            ConsoleKind::ImxLpuart => 8,
            ConsoleKind::Scif => 9,
        }
    }

    /// The kind with the raw value, if any.
    pub fn from_raw(raw: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.to_raw() == raw)
    }

    /// The name used in TOML.
    pub const fn name(self) -> &'static str {
        match self {
            ConsoleKind::Pl011 => "pl011",
            ConsoleKind::Uart8250 => "8250",
            ConsoleKind::Cadence => "cadence",
            ConsoleKind::Mvebu => "mvebu",
            ConsoleKind::Hscif => "hscif",
            ConsoleKind::Scifa => "scifa",
            ConsoleKind::Imx => "imx",
            ConsoleKind::ImxLpuart => "imx-lpuart",
            ConsoleKind::Scif => "scif",
        }
    }

    /// The kind with the TOML name, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }
}

/// How a console's registers are reached.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ConsoleAccess {
    /// x86 I/O ports, 8-bit accesses.
    Port,
    /// Memory-mapped, registers 1 byte apart, 8-bit accesses.
    Mmio8,
    /// Memory-mapped, registers 4 bytes apart, 32-bit accesses.
    Mmio32,
}

impl ConsoleAccess {
    /// The name used in TOML.
    pub const fn name(self) -> &'static str {
        match self {
            ConsoleAccess::Port => "port",
            ConsoleAccess::Mmio8 => "mmio8",
            ConsoleAccess::Mmio32 => "mmio32",
        }
    }

    /// The bits in [`layout::ConsoleEntry::flags`].
    pub const fn to_flags(self) -> u16 {
        match self {
            ConsoleAccess::Port => layout::CONSOLE_PORT_IO,
            ConsoleAccess::Mmio8 => 0,
            ConsoleAccess::Mmio32 => layout::CONSOLE_REGISTERS_32BIT,
        }
    }
}

/// A serial console.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Console {
    /// UART type.
    pub kind: ConsoleKind,
    /// Port or memory-mapped, register width.
    pub access: ConsoleAccess,
    /// Physical address of the registers or first port.
    pub address: u64,
    /// Size of the register block in bytes (or ports).
    pub size: u32,
    /// Baud-rate divider to program, 0 to keep the firmware's setting.
    pub divider: u32,
}

impl Console {
    /// The registers as an address range (memory-mapped consoles).
    pub const fn range(&self) -> AddressRange {
        AddressRange::new(self.address, self.size as u64)
    }

    pub(crate) fn from_entry(e: &layout::ConsoleEntry) -> Option<Self> {
        let kind = ConsoleKind::from_raw(e.kind.get())?;
        let flags = e.flags.get();
        let access = if flags & layout::CONSOLE_PORT_IO != 0 {
            ConsoleAccess::Port
        } else if flags & layout::CONSOLE_REGISTERS_32BIT != 0 {
            ConsoleAccess::Mmio32
        } else {
            ConsoleAccess::Mmio8
        };
        Some(Console {
            kind,
            access,
            address: e.address.get(),
            size: e.size.get(),
            divider: e.divider.get(),
        })
    }

    /// The entry of the binary format.
    pub fn to_entry(console: Option<&Console>) -> layout::ConsoleEntry {
        match console {
            None => layout::ConsoleEntry {
                address: 0.into(),
                size: 0.into(),
                kind: 0.into(),
                flags: 0.into(),
                divider: 0.into(),
                reserved: 0.into(),
            },
            Some(c) => layout::ConsoleEntry {
                address: c.address.into(),
                size: c.size.into(),
                kind: c.kind.to_raw().into(),
                flags: c.access.to_flags().into(),
                divider: c.divider.into(),
                reserved: 0.into(),
            },
        }
    }
}

/// The hypervisor's own memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct HypervisorMemory {
    /// Physical start.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

impl HypervisorMemory {
    /// As a range.
    pub const fn range(&self) -> AddressRange {
        AddressRange::new(self.start, self.size)
    }
}

/// A physical register frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Frame {
    /// Physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Frame {
    /// As a range.
    pub const fn range(&self) -> AddressRange {
        AddressRange::new(self.base, self.size)
    }

    pub(crate) fn from_entry(e: &layout::FrameEntry) -> Option<Self> {
        if e.base.get() == 0 && e.size.get() == 0 {
            None
        } else {
            Some(Frame {
                base: e.base.get(),
                size: e.size.get(),
            })
        }
    }

    /// The entry of the binary format.
    pub fn to_entry(frame: Option<Frame>) -> layout::FrameEntry {
        let frame = frame.unwrap_or(Frame { base: 0, size: 0 });
        layout::FrameEntry {
            base: frame.base.into(),
            size: frame.size.into(),
        }
    }
}

/// GIC architecture version.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum GicVersion {
    /// GICv2 (memory-mapped CPU interface), e.g. GIC-400.
    V2,
    /// GICv3 or GICv4 (system-register CPU interface, redistributors), e.g. GIC-500/600.
    V3,
}

/// An Arm Generic Interrupt Controller (Arm IHI 0048 for GICv2, IHI 0069 for GICv3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Gic {
    /// Version.
    pub version: GicVersion,
    /// INTID of the virtual interface maintenance interrupt (a PPI, usually 25).
    pub maintenance_irq: u32,
    /// Distributor (GICD).
    pub distributor: Frame,
    /// CPU interface (GICC): required on GICv2, optional legacy interface on GICv3.
    pub cpu_interface: Option<Frame>,
    /// Virtual interface control (GICH): required on GICv2.
    pub hypervisor_interface: Option<Frame>,
    /// Virtual CPU interface (GICV): required on GICv2.
    pub virtual_cpu_interface: Option<Frame>,
    /// Redistributors (GICR) of all CPUs: required on GICv3, absent on GICv2.
    pub redistributors: Option<Frame>,
}

impl Gic {
    /// Default frame sizes for a version: distributor, CPU interface, hypervisor interface,
    /// virtual CPU interface, and redistributor size per CPU (GICv2: IHI 0048B §4.1, 5.1;
    /// GICv3: IHI 0069 §12.1: a 64 KiB distributor and two 64 KiB frames per redistributor).
    pub const fn default_sizes(version: GicVersion) -> [u64; 5] {
        match version {
            GicVersion::V2 => [0x1000, 0x2000, 0x1000, 0x2000, 0],
            GicVersion::V3 => [0x1_0000, 0x2000, 0x1000, 0x2000, 0x2_0000],
        }
    }
}

/// The interrupt controller of the machine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum InterruptController {
    /// Arm GIC.
    Gic(Gic),
    /// x86 local APICs and IOAPICs (the IOAPICs are listed separately).
    Apic {
        /// The xAPIC register page (normally 0xFEE0_0000, 4 KiB; SDM 10.4.1).
        local_apic: Frame,
    },
}

/// An x86 IOAPIC.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IoApic {
    /// Physical base of the register window.
    pub address: u64,
    /// Source ID for interrupt remapping.
    pub id: u32,
    /// Global system interrupt of pin 0.
    pub gsi_base: u32,
    /// Number of pins.
    pub pins: u32,
}

impl IoApic {
    /// The register page.
    pub const fn range(&self) -> AddressRange {
        AddressRange::new(self.address, PAGE_SIZE)
    }

    /// The global system interrupts it serves.
    pub const fn gsis(&self) -> IrqRange {
        IrqRange {
            first: self.gsi_base,
            count: self.pins,
        }
    }

    pub(crate) fn from_entry(e: &layout::IoApicEntry) -> Self {
        IoApic {
            address: e.address.get(),
            id: e.id.get(),
            gsi_base: e.gsi_base.get(),
            pins: e.pins.get(),
        }
    }

    /// The entry of the binary format.
    pub fn to_entry(self) -> layout::IoApicEntry {
        layout::IoApicEntry {
            address: self.address.into(),
            id: self.id.into(),
            gsi_base: self.gsi_base.into(),
            pins: self.pins.into(),
            reserved: 0.into(),
        }
    }
}

/// IOMMU types.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum IommuKind {
    /// Arm SMMUv3.
    SmmuV3,
    /// Arm SMMUv2 (MMU-500 and compatible), stream matching with ID and mask.
    SmmuV2,
    /// Intel VT-d remapping hardware unit.
    VtD,
    /// AMD-Vi IOMMU.
    AmdVi,
}

impl IommuKind {
    /// All kinds, in raw-value order.
    pub const ALL: [IommuKind; 4] = [
        IommuKind::SmmuV3,
        IommuKind::SmmuV2,
        IommuKind::VtD,
        IommuKind::AmdVi,
    ];

    /// The value in [`layout::IommuUnitEntry::kind`].
    pub const fn to_raw(self) -> u16 {
        match self {
            IommuKind::SmmuV3 => 1,
            IommuKind::SmmuV2 => 2,
            IommuKind::VtD => 3,
            IommuKind::AmdVi => 4,
        }
    }

    /// The kind with the raw value, if any.
    pub fn from_raw(raw: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.to_raw() == raw)
    }

    /// The name used in TOML.
    pub const fn name(self) -> &'static str {
        match self {
            IommuKind::SmmuV3 => "smmuv3",
            IommuKind::SmmuV2 => "smmuv2",
            IommuKind::VtD => "vt-d",
            IommuKind::AmdVi => "amd-vi",
        }
    }

    /// The kind with the TOML name, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// The architecture that has it.
    pub const fn architecture(self) -> Architecture {
        match self {
            IommuKind::SmmuV3 | IommuKind::SmmuV2 => Architecture::Aarch64,
            IommuKind::VtD | IommuKind::AmdVi => Architecture::X86_64,
        }
    }
}

/// An IOMMU unit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IommuUnit {
    /// Type.
    pub kind: IommuKind,
    /// Physical base of the registers.
    pub base: u64,
    /// Size of the register block.
    pub size: u64,
    /// AMD-Vi: the IOMMU's own PCI function (zero for other kinds).
    pub amd_bdf: Bdf,
    /// AMD-Vi: capability block offset (zero for other kinds).
    pub amd_base_cap: u8,
    /// AMD-Vi: MSI capability offset (zero for other kinds).
    pub amd_msi_cap: u8,
    /// AMD-Vi: feature bits (zero for other kinds).
    pub amd_features: u32,
}

impl IommuUnit {
    /// The register block.
    pub const fn range(&self) -> AddressRange {
        AddressRange::new(self.base, self.size)
    }

    pub(crate) fn from_entry(e: &layout::IommuUnitEntry) -> Option<Self> {
        Some(IommuUnit {
            kind: IommuKind::from_raw(e.kind.get())?,
            base: e.base.get(),
            size: e.size.get(),
            amd_bdf: Bdf(e.amd_bdf.get()),
            amd_base_cap: e.amd_base_cap,
            amd_msi_cap: e.amd_msi_cap,
            amd_features: e.amd_features.get(),
        })
    }

    /// The entry of the binary format.
    pub fn to_entry(self) -> layout::IommuUnitEntry {
        layout::IommuUnitEntry {
            base: self.base.into(),
            size: self.size.into(),
            kind: self.kind.to_raw().into(),
            amd_bdf: self.amd_bdf.0.into(),
            amd_base_cap: self.amd_base_cap,
            amd_msi_cap: self.amd_msi_cap,
            reserved: 0.into(),
            amd_features: self.amd_features.into(),
            reserved2: 0.into(),
        }
    }
}

/// The PCI host bridge: an ECAM window.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PciHost {
    /// Physical base of the ECAM window (bus 0).
    pub ecam_base: u64,
    /// Last bus.
    pub end_bus: u8,
    /// Segment (domain).
    pub domain: u16,
}

impl PciHost {
    /// The ECAM window: 1 MiB per bus (PCIe base spec §7.2.2).
    pub const fn ecam(&self) -> AddressRange {
        AddressRange::new(self.ecam_base, (self.end_bus as u64 + 1) << 20)
    }
}
