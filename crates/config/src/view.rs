//! Zero-copy views of binary configurations: reading the structure and validating each
//! configuration on its own.

use core::mem::size_of;
use core::ops::ControlFlow;

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use crate::cover::first_uncovered;
use crate::error::{Element, Error, Field, FrameKind, List, Problem, Scope, Sensitive, Space};
use crate::layout::{self, CellDescriptor, Header, SystemDescriptor};
use crate::limits;
use crate::types::{
    AddressRange, Architecture, Bdf, CellFlags, CellName, ConfigKind, Console, ConsoleAccess,
    CpuSet, Frame, Gic, GicVersion, HypervisorMemory, InterruptController, IoApic, IommuKind,
    IommuUnit, IrqRange, MemoryFlags, MemoryRegion, PciDevice, PciDeviceKind, PciHost, PortRange,
    StreamId, ADDRESS_BITS, PAGE_SIZE,
};

/// Where problems go: return `ControlFlow::Break(())` to stop at this one.
pub type Report<'r> = &'r mut dyn FnMut(Error) -> ControlFlow<()>;

/// Runs a reporting parser, stopping at the first problem, which becomes the error.
fn first_problem<T>(parse: impl FnOnce(Report<'_>) -> Option<T>) -> Result<T, Error> {
    let mut first = None;
    match parse(&mut |e| {
        first = Some(e);
        ControlFlow::Break(())
    }) {
        Some(view) => Ok(view),
        None => Err(first.unwrap_or(Error::new(Element::Header, Problem::ReservedNotZero))),
    }
}

/// Reads a fixed structure or an array at a moving offset.
struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn truncated(&self, needed: usize) -> Error {
        Error::new(
            Element::Header,
            Problem::Truncated {
                needed: self.offset as u64 + needed as u64,
                available: self.bytes.len() as u64,
            },
        )
    }

    fn take<T: FromBytes + KnownLayout + Immutable + Unaligned>(&mut self) -> Result<&'a T, Error> {
        let rest = &self.bytes[self.offset..];
        let (value, _) = T::ref_from_prefix(rest).map_err(|_| self.truncated(size_of::<T>()))?;
        self.offset += size_of::<T>();
        Ok(value)
    }

    fn take_slice<T: FromBytes + Immutable + Unaligned>(
        &mut self,
        count: u32,
    ) -> Result<&'a [T], Error> {
        let rest = &self.bytes[self.offset..];
        let needed = count as usize * size_of::<T>();
        let (slice, _) = <[T]>::ref_from_prefix_with_elems(rest, count as usize)
            .map_err(|_| self.truncated(needed))?;
        self.offset += needed;
        Ok(slice)
    }
}

/// Checks the header of a configuration; returns its architecture.
///
/// In order: length of the header, magic, revision, kind, architecture, total size against
/// `bytes.len()`, checksum.
pub fn read_header(bytes: &[u8], expected: ConfigKind) -> Result<Architecture, Error> {
    let err = |problem| Error::new(Element::Header, problem);
    let Ok((header, _)) = Header::ref_from_prefix(bytes) else {
        return Err(err(Problem::Truncated {
            needed: size_of::<Header>() as u64,
            available: bytes.len() as u64,
        }));
    };
    if header.magic != layout::MAGIC {
        return Err(err(Problem::BadMagic {
            found: header.magic,
        }));
    }
    if header.revision.get() != layout::REVISION {
        return Err(err(Problem::UnsupportedRevision {
            found: header.revision.get(),
        }));
    }
    let Some(kind) = ConfigKind::from_raw(header.kind) else {
        return Err(err(Problem::UnknownKind { found: header.kind }));
    };
    if kind != expected {
        return Err(err(Problem::WrongKind {
            expected,
            found: kind,
        }));
    }
    let Some(architecture) = Architecture::from_raw(header.architecture) else {
        return Err(err(Problem::UnknownArchitecture {
            found: header.architecture,
        }));
    };
    let total = header.total_size.get();
    let len = bytes.len() as u64;
    if u64::from(total) > len {
        return Err(err(Problem::Truncated {
            needed: total.into(),
            available: len,
        }));
    }
    if u64::from(total) < len {
        return Err(err(Problem::TrailingBytes {
            total,
            extra: len - u64::from(total),
        }));
    }
    let computed = layout::checksum(bytes);
    if computed != header.checksum.get() {
        return Err(err(Problem::ChecksumMismatch {
            stored: header.checksum.get(),
            computed,
        }));
    }
    Ok(architecture)
}

/// The kind of configuration in `bytes`, from its header, if the magic is right.
pub fn peek_kind(bytes: &[u8]) -> Option<ConfigKind> {
    let (header, _) = Header::ref_from_prefix(bytes).ok()?;
    if header.magic != layout::MAGIC {
        return None;
    }
    ConfigKind::from_raw(header.kind)
}

fn check_count(list: List, count: u32) -> Result<u32, Error> {
    if count > list.limit() {
        Err(Error::new(
            Element::Count(list),
            Problem::TooMany {
                count,
                limit: list.limit(),
            },
        ))
    } else {
        Ok(count)
    }
}

/// The part of a cell both cell configurations and the root cell have: a descriptor and its
/// arrays, in place.
#[derive(Clone, Copy, Debug)]
pub struct CellView<'a> {
    desc: &'a CellDescriptor,
    cpu_words: &'a [U64],
    memory: &'a [layout::MemoryRegionEntry],
    irqs: &'a [layout::IrqRangeEntry],
    ports: &'a [layout::PortRangeEntry],
    pci: &'a [layout::PciDeviceEntry],
    stream_ids: &'a [layout::StreamIdEntry],
}

impl<'a> CellView<'a> {
    fn read(cursor: &mut Cursor<'a>) -> Result<Self, Error> {
        let desc: &CellDescriptor = cursor.take()?;
        let cpu_words = check_count(List::CpuSetWords, desc.cpu_set_words.get())?;
        let memory = check_count(List::MemoryRegions, desc.memory_region_count.get())?;
        let irqs = check_count(List::IrqRanges, desc.irq_range_count.get())?;
        let ports = check_count(List::PortRanges, desc.port_range_count.get())?;
        let pci = check_count(List::PciDevices, desc.pci_device_count.get())?;
        let stream_ids = check_count(List::StreamIds, desc.stream_id_count.get())?;
        let described = cursor.offset as u64
            + [
                (List::CpuSetWords, cpu_words),
                (List::MemoryRegions, memory),
                (List::IrqRanges, irqs),
                (List::PortRanges, ports),
                (List::PciDevices, pci),
                (List::StreamIds, stream_ids),
            ]
            .iter()
            .map(|&(list, count)| u64::from(count) * list.entry_size() as u64)
            .sum::<u64>();
        if described != cursor.bytes.len() as u64 {
            return Err(Error::new(
                Element::Descriptor,
                Problem::LayoutMismatch {
                    described,
                    present: cursor.bytes.len() as u64,
                },
            ));
        }
        Ok(CellView {
            desc,
            cpu_words: cursor.take_slice(cpu_words)?,
            memory: cursor.take_slice(memory)?,
            irqs: cursor.take_slice(irqs)?,
            ports: cursor.take_slice(ports)?,
            pci: cursor.take_slice(pci)?,
            stream_ids: cursor.take_slice(stream_ids)?,
        })
    }

    /// The raw descriptor.
    pub fn descriptor(&self) -> &'a CellDescriptor {
        self.desc
    }

    /// The name.
    pub fn name(&self) -> &'a str {
        let len = self.desc.name.iter().position(|&b| b == 0).unwrap_or(0);
        core::str::from_utf8(&self.desc.name[..len]).unwrap_or("")
    }

    /// The name as a [`CellName`].
    pub fn cell_name(&self) -> CellName {
        CellName::new(self.name()).unwrap_or(CellName::INVALID)
    }

    /// The flags.
    pub fn flags(&self) -> CellFlags {
        CellFlags::from_bits_retain(self.desc.flags.get())
    }

    /// The CPUs.
    pub fn cpus(&self) -> CpuSet {
        CpuSet::from_words(self.cpu_words.iter().map(|w| w.get()))
    }

    /// The memory regions.
    pub fn memory_regions(&self) -> impl ExactSizeIterator<Item = MemoryRegion> + Clone + 'a {
        self.memory.iter().map(MemoryRegion::from_entry)
    }

    /// The raw memory regions.
    pub fn memory_region_entries(&self) -> &'a [layout::MemoryRegionEntry] {
        self.memory
    }

    /// The interrupt line ranges.
    pub fn irq_ranges(&self) -> impl ExactSizeIterator<Item = IrqRange> + Clone + 'a {
        self.irqs.iter().map(|e| IrqRange {
            first: e.first.get(),
            count: e.count.get(),
        })
    }

    /// The I/O port ranges.
    pub fn port_ranges(&self) -> impl ExactSizeIterator<Item = PortRange> + Clone + 'a {
        self.ports.iter().map(|e| PortRange {
            base: e.base.get(),
            size: e.size.get(),
        })
    }

    /// The PCI devices.
    pub fn pci_devices(&self) -> impl ExactSizeIterator<Item = PciDevice> + Clone + 'a {
        self.pci.iter().map(|e| PciDevice {
            domain: e.domain.get(),
            bdf: Bdf(e.bdf.get()),
            kind: PciDeviceKind::from_raw(e.kind).unwrap_or(PciDeviceKind::Device),
            iommu: (e.iommu != layout::NO_IOMMU).then_some(e.iommu),
        })
    }

    /// The stream IDs.
    pub fn stream_ids(&self) -> impl ExactSizeIterator<Item = StreamId> + Clone + 'a {
        self.stream_ids.iter().map(|e| StreamId {
            id: e.id.get(),
            mask: e.mask.get(),
        })
    }

    /// The console.
    pub fn console(&self) -> Option<Console> {
        Console::from_entry(&self.desc.console)
    }

    /// The CPU reset address.
    pub fn cpu_reset_address(&self) -> u64 {
        self.desc.cpu_reset_address.get()
    }

    /// Validates everything that does not depend on other configurations.
    pub(crate) fn validate(
        &self,
        architecture: Architecture,
        scope: Scope,
        root: bool,
        report: Report<'_>,
    ) -> ControlFlow<()> {
        let mut report = |element, problem| report(Error::new(element, problem).in_scope(scope));
        if self.desc.reserved.get() != 0 {
            report(Element::Descriptor, Problem::ReservedNotZero)?;
        }
        if let Some(problem) = name_problem(&self.desc.name) {
            report(Element::Name, problem)?;
        }

        let flags = self.desc.flags.get();
        let unknown = flags & !CellFlags::all().bits();
        if unknown != 0 {
            report(
                Element::Flags,
                Problem::UnknownFlags {
                    bits: unknown.into(),
                },
            )?;
        }
        let flags = CellFlags::from_bits_truncate(flags);
        if flags.contains(CellFlags::AARCH32) && architecture != Architecture::Aarch64 {
            report(
                Element::Flags,
                Problem::FlagNotOnArchitecture {
                    flag: CellFlags::AARCH32.flag_name(),
                    architecture,
                },
            )?;
        }
        if root {
            for flag in [CellFlags::AARCH32, CellFlags::PASSIVE_COMM_REGION] {
                if flags.contains(flag) {
                    report(
                        Element::Flags,
                        Problem::FlagNotForRootCell {
                            flag: flag.flag_name(),
                        },
                    )?;
                }
            }
        }

        if self.cpus().is_empty() {
            report(Element::Cpus, Problem::NoCpu)?;
        }
        if self.cpu_words.last().is_some_and(|w| w.get() == 0) {
            report(Element::Cpus, Problem::CpuSetNotMinimal)?;
        }

        self.validate_memory(root, &mut report)?;
        self.validate_irqs(architecture, &mut report)?;
        self.validate_ports(architecture, &mut report)?;
        self.validate_pci(&mut report)?;
        self.validate_stream_ids(architecture, &mut report)?;

        validate_console(
            &self.desc.console,
            architecture,
            Space::GuestPhysical,
            &mut |p| report(Element::Console, p),
        )?;
        if let Some(console) = self.console() {
            if !flags.contains(CellFlags::VIRTUAL_CONSOLE_ACTIVE)
                && console_problem(&self.desc.console, architecture).is_none()
            {
                self.check_console_reachable(&console, &mut report)?;
            }
        }

        let reset = self.desc.cpu_reset_address.get();
        if reset >> ADDRESS_BITS != 0 {
            report(
                Element::CpuResetAddress,
                Problem::AddressBeyondLimit { address: reset },
            )?;
        }
        ControlFlow::Continue(())
    }

    fn validate_memory(
        &self,
        root: bool,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut comm_region = None;
        for (i, entry) in self.memory.iter().enumerate() {
            let element = Element::MemoryRegion(i as u32);
            let region = MemoryRegion::from_entry(entry);
            let unknown = region.flags.bits() & !MemoryFlags::all().bits();
            if unknown != 0 {
                report(element, Problem::UnknownFlags { bits: unknown })?;
            }
            let flags = MemoryFlags::from_bits_truncate(region.flags.bits());
            let comm = flags.contains(MemoryFlags::COMM_REGION);
            if region.size == 0 {
                report(element, Problem::ZeroSize)?;
            }
            if !comm || region.phys_start != 0 {
                if comm {
                    report(
                        element,
                        Problem::CommRegionPhys {
                            phys: region.phys_start,
                        },
                    )?;
                } else if !region.phys_start.is_multiple_of(PAGE_SIZE) {
                    report(
                        element,
                        Problem::NotPageAligned {
                            field: Field::PhysStart,
                            value: region.phys_start,
                        },
                    )?;
                }
            }
            if !region.virt_start.is_multiple_of(PAGE_SIZE) {
                report(
                    element,
                    Problem::NotPageAligned {
                        field: Field::VirtStart,
                        value: region.virt_start,
                    },
                )?;
            }
            if !region.size.is_multiple_of(PAGE_SIZE) {
                report(
                    element,
                    Problem::NotPageAligned {
                        field: Field::Size,
                        value: region.size,
                    },
                )?;
            }
            if !comm && beyond_address_space(&region.phys()) {
                report(
                    element,
                    Problem::BeyondAddressSpace {
                        space: Space::Physical,
                        range: region.phys(),
                    },
                )?;
            }
            if beyond_address_space(&region.virt()) {
                report(
                    element,
                    Problem::BeyondAddressSpace {
                        space: Space::GuestPhysical,
                        range: region.virt(),
                    },
                )?;
            }
            if !flags.intersects(MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::EXECUTE) {
                report(element, Problem::NoAccess)?;
            }
            if comm {
                for flag in [
                    MemoryFlags::EXECUTE,
                    MemoryFlags::DMA,
                    MemoryFlags::IO,
                    MemoryFlags::LOADABLE,
                    MemoryFlags::ROOTSHARED,
                ] {
                    if flags.contains(flag) {
                        report(
                            element,
                            Problem::CommRegionFlag {
                                flag: flag.flag_name(),
                            },
                        )?;
                    }
                }
                if region.size != PAGE_SIZE {
                    report(element, Problem::CommRegionSize { size: region.size })?;
                }
                if root {
                    report(
                        element,
                        Problem::NotForRootCell {
                            what: "a communication region",
                        },
                    )?;
                } else if let Some(first) = comm_region {
                    report(element, Problem::SecondCommRegion { first })?;
                } else {
                    comm_region = Some(i as u32);
                }
            }
            // `loadable` in the root cell marks RAM the cells borrow: the root cell's kernel
            // does not get it as RAM (see docs/config-format.md).
            if root && flags.contains(MemoryFlags::ROOTSHARED) {
                report(
                    element,
                    Problem::NotForRootCell {
                        what: "root-shared memory",
                    },
                )?;
            }

            // Overlaps with earlier regions: one message per region and address space.
            let earlier = self.memory[..i].iter().map(MemoryRegion::from_entry);
            if let Some((j, other)) = earlier
                .clone()
                .enumerate()
                .find(|(_, o)| o.virt().overlaps(&region.virt()))
            {
                report(
                    element,
                    Problem::MemoryOverlap {
                        space: Space::GuestPhysical,
                        range: region.virt(),
                        other: j as u32,
                        other_range: other.virt(),
                    },
                )?;
            }
            if !comm {
                if let Some((j, other)) = earlier.enumerate().find(|(_, o)| {
                    !o.flags.contains(MemoryFlags::COMM_REGION) && o.phys().overlaps(&region.phys())
                }) {
                    report(
                        element,
                        Problem::MemoryOverlap {
                            space: Space::Physical,
                            range: region.phys(),
                            other: j as u32,
                            other_range: other.phys(),
                        },
                    )?;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn validate_irqs(
        &self,
        architecture: Architecture,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let ranges = self.irq_ranges();
        for (i, range) in ranges.clone().enumerate() {
            let element = Element::IrqRange(i as u32);
            if range.count == 0 {
                report(element, Problem::ZeroCount)?;
                continue;
            }
            if range.first.checked_add(range.count - 1).is_none() {
                report(element, Problem::IrqWraps { range })?;
                continue;
            }
            match architecture {
                Architecture::Aarch64 => {
                    if let Some(line) = first_non_spi(range) {
                        report(element, Problem::NotSpi { line })?;
                    }
                }
                Architecture::X86_64 => {
                    if range.last() >= limits::MAX_GSI {
                        report(
                            element,
                            Problem::GsiBeyondLimit {
                                line: range.first.max(limits::MAX_GSI),
                            },
                        )?;
                    }
                }
            }
            if let Some((j, other)) = ranges
                .clone()
                .take(i)
                .enumerate()
                .find(|(_, o)| o.overlaps(&range))
            {
                report(
                    element,
                    Problem::IrqOverlap {
                        range,
                        other: j as u32,
                        other_range: other,
                    },
                )?;
            }
        }
        ControlFlow::Continue(())
    }

    fn validate_ports(
        &self,
        architecture: Architecture,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if architecture != Architecture::X86_64 && !self.ports.is_empty() {
            return report(Element::PortRange(0), Problem::PortsNotOnArchitecture);
        }
        let ranges = self.port_ranges();
        for (i, range) in ranges.clone().enumerate() {
            let element = Element::PortRange(i as u32);
            if range.size == 0 {
                report(element, Problem::ZeroSize)?;
                continue;
            }
            if u64::from(range.base) + u64::from(range.size) > 0x1_0000 {
                report(
                    element,
                    Problem::BeyondPortSpace {
                        base: range.base.into(),
                        size: range.size.into(),
                    },
                )?;
                continue;
            }
            if let Some((j, other)) = ranges
                .clone()
                .take(i)
                .enumerate()
                .find(|(_, o)| o.overlaps(&range))
            {
                report(
                    element,
                    Problem::PortOverlap {
                        range,
                        other: j as u32,
                        other_range: other,
                    },
                )?;
            }
        }
        ControlFlow::Continue(())
    }

    fn validate_pci(
        &self,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        for (i, entry) in self.pci.iter().enumerate() {
            let element = Element::PciDevice(i as u32);
            if entry.reserved.get() != 0 {
                report(element, Problem::ReservedNotZero)?;
            }
            if PciDeviceKind::from_raw(entry.kind).is_none() {
                report(element, Problem::UnknownPciKind { found: entry.kind })?;
            }
            let same = |e: &layout::PciDeviceEntry| e.domain == entry.domain && e.bdf == entry.bdf;
            if let Some(j) = self.pci[..i].iter().position(same) {
                report(
                    element,
                    Problem::PciDuplicate {
                        address: crate::types::PciAddress {
                            domain: entry.domain.get(),
                            bdf: Bdf(entry.bdf.get()),
                        },
                        other: j as u32,
                    },
                )?;
            }
        }
        ControlFlow::Continue(())
    }

    fn validate_stream_ids(
        &self,
        architecture: Architecture,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if architecture != Architecture::Aarch64 && !self.stream_ids.is_empty() {
            return report(Element::StreamId(0), Problem::StreamIdsNotOnArchitecture);
        }
        let ids = self.stream_ids();
        for (i, id) in ids.clone().enumerate() {
            let element = Element::StreamId(i as u32);
            if id.id & id.mask != 0 {
                report(element, Problem::StreamIdBitsUnderMask { id })?;
            }
            if let Some((j, other)) = ids
                .clone()
                .take(i)
                .enumerate()
                .find(|(_, o)| o.overlaps(&id))
            {
                report(
                    element,
                    Problem::StreamIdOverlap {
                        id,
                        other: j as u32,
                        other_id: other,
                    },
                )?;
            }
        }
        ControlFlow::Continue(())
    }

    fn check_console_reachable(
        &self,
        console: &Console,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if console.access == ConsoleAccess::Port {
            let start = console.address;
            let end = start + u64::from(console.size);
            let ranges = self
                .port_ranges()
                .map(|r| (u64::from(r.base), u64::from(r.base) + u64::from(r.size)));
            if first_uncovered(start, end, ranges).is_some() {
                report(
                    Element::Console,
                    Problem::ConsolePortsNotGranted { address: start },
                )?;
            }
        } else {
            let range = console.range();
            let ranges = self
                .memory_regions()
                .map(|r| (r.virt_start, r.virt().end().min(u64::MAX.into()) as u64));
            if first_uncovered(range.start, range.end() as u64, ranges).is_some() {
                report(
                    Element::Console,
                    Problem::ConsoleNotMapped {
                        address: console.address,
                    },
                )?;
            }
        }
        ControlFlow::Continue(())
    }
}

fn beyond_address_space(range: &AddressRange) -> bool {
    range.end() > 1u128 << ADDRESS_BITS
}

/// The first line of the range that is not an SPI (GICv3 extended SPIs included).
fn first_non_spi(range: IrqRange) -> Option<u32> {
    let last = range.last();
    let spi = |line: u32| (32..=1019).contains(&line) || (4096..=5119).contains(&line);
    if !spi(range.first) {
        return Some(range.first);
    }
    // The range starts in one SPI block: it must end there too.
    let block_end = if range.first <= 1019 { 1019 } else { 5119 };
    (last > block_end).then_some(block_end + 1)
}

fn name_problem(name: &[u8; 32]) -> Option<Problem> {
    let Some(len) = name.iter().position(|&b| b == 0) else {
        return Some(Problem::NameNotTerminated);
    };
    if len == 0 {
        return Some(Problem::NameEmpty);
    }
    if let Some(position) = name[..len].iter().position(|&b| !CellName::allowed(b)) {
        return Some(Problem::NameCharacter {
            byte: name[position],
            position,
        });
    }
    if name[len..].iter().any(|&b| b != 0) {
        return Some(Problem::NamePadding);
    }
    None
}

/// The first structural problem of a console entry, if any (used to skip further checks).
fn console_problem(entry: &layout::ConsoleEntry, architecture: Architecture) -> Option<Problem> {
    let mut first = None;
    let _ = validate_console(entry, architecture, Space::Physical, &mut |p| {
        first = Some(p);
        ControlFlow::Break(())
    });
    first
}

fn validate_console(
    entry: &layout::ConsoleEntry,
    architecture: Architecture,
    space: Space,
    report: &mut dyn FnMut(Problem) -> ControlFlow<()>,
) -> ControlFlow<()> {
    if entry.reserved.get() != 0 {
        report(Problem::ReservedNotZero)?;
    }
    let kind = entry.kind.get();
    if kind == 0 {
        if entry.address.get() != 0
            || entry.size.get() != 0
            || entry.flags.get() != 0
            || entry.divider.get() != 0
        {
            report(Problem::ConsoleFieldsWithoutKind)?;
        }
        return ControlFlow::Continue(());
    }
    if crate::types::ConsoleKind::from_raw(kind).is_none() {
        report(Problem::UnknownConsoleKind { found: kind })?;
    }
    let flags = entry.flags.get();
    let known = layout::CONSOLE_PORT_IO | layout::CONSOLE_REGISTERS_32BIT;
    if flags & !known != 0 {
        report(Problem::UnknownFlags {
            bits: (flags & !known).into(),
        })?;
    }
    let port = flags & layout::CONSOLE_PORT_IO != 0;
    if port && flags & layout::CONSOLE_REGISTERS_32BIT != 0 {
        report(Problem::PortConsoleWithWideRegisters)?;
    }
    if port && architecture != Architecture::X86_64 {
        report(Problem::PortConsoleNotOnArchitecture)?;
    }
    let size = u64::from(entry.size.get());
    if size == 0 {
        report(Problem::ZeroSize)?;
    }
    let address = entry.address.get();
    if port {
        if address as u128 + size as u128 > 0x1_0000 {
            report(Problem::BeyondPortSpace {
                base: address,
                size,
            })?;
        }
    } else {
        let range = AddressRange::new(address, size);
        if beyond_address_space(&range) {
            report(Problem::BeyondAddressSpace { space, range })?;
        }
    }
    ControlFlow::Continue(())
}

/// Checks a physical range: size, alignment, address space.
fn validate_frame(
    frame: &Frame,
    base_field: Field,
    report: &mut dyn FnMut(Problem) -> ControlFlow<()>,
) -> ControlFlow<()> {
    if frame.size == 0 {
        report(Problem::ZeroSize)?;
    }
    if !frame.base.is_multiple_of(PAGE_SIZE) {
        report(Problem::NotPageAligned {
            field: base_field,
            value: frame.base,
        })?;
    }
    if !frame.size.is_multiple_of(PAGE_SIZE) {
        report(Problem::NotPageAligned {
            field: Field::Size,
            value: frame.size,
        })?;
    }
    if beyond_address_space(&frame.range()) {
        report(Problem::BeyondAddressSpace {
            space: Space::Physical,
            range: frame.range(),
        })?;
    }
    ControlFlow::Continue(())
}

/// A validated cell configuration, read in place.
#[derive(Clone, Copy, Debug)]
pub struct CellConfigView<'a> {
    architecture: Architecture,
    cell: CellView<'a>,
}

impl<'a> CellConfigView<'a> {
    /// Reads and validates a cell configuration; the first problem is the error.
    ///
    /// `bytes` must be exactly the configuration ([`layout::Header::total_size`] bytes).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        first_problem(|report| Self::parse_reporting(bytes, report))
    }

    /// Reads and validates a cell configuration, reporting every problem; returns the view
    /// only if there was none.
    ///
    /// Problems with the structure (header, counts, sizes) end the check; problems with the
    /// values of elements are all reported unless `report` breaks.
    pub fn parse_reporting(bytes: &'a [u8], report: Report<'_>) -> Option<Self> {
        let view = match Self::read(bytes) {
            Ok(view) => view,
            Err(error) => {
                let _ = report(error);
                return None;
            }
        };
        let mut clean = true;
        let _ = view
            .cell
            .validate(view.architecture, Scope::Config, false, &mut |e| {
                clean = false;
                report(e)
            });
        clean.then_some(view)
    }

    fn read(bytes: &'a [u8]) -> Result<Self, Error> {
        let architecture = read_header(bytes, ConfigKind::Cell)?;
        let mut cursor = Cursor {
            bytes,
            offset: size_of::<Header>(),
        };
        let cell = CellView::read(&mut cursor)?;
        Ok(CellConfigView { architecture, cell })
    }

    /// The architecture.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// The cell.
    pub fn cell(&self) -> &CellView<'a> {
        &self.cell
    }
}

/// A validated system configuration, read in place.
#[derive(Clone, Copy, Debug)]
pub struct SystemConfigView<'a> {
    architecture: Architecture,
    desc: &'a SystemDescriptor,
    iommu_units: &'a [layout::IommuUnitEntry],
    ioapics: &'a [layout::IoApicEntry],
    root: CellView<'a>,
}

impl<'a> SystemConfigView<'a> {
    /// Reads and validates a system configuration (the root cell included, and the root cell
    /// against the hardware description); the first problem is the error.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        first_problem(|report| Self::parse_reporting(bytes, report))
    }

    /// Reads and validates a system configuration, reporting every problem; returns the view
    /// only if there was none.
    pub fn parse_reporting(bytes: &'a [u8], report: Report<'_>) -> Option<Self> {
        let view = match Self::read(bytes) {
            Ok(view) => view,
            Err(error) => {
                let _ = report(error);
                return None;
            }
        };
        let mut clean = true;
        let _ = view.validate(&mut |e| {
            clean = false;
            report(e)
        });
        clean.then_some(view)
    }

    fn read(bytes: &'a [u8]) -> Result<Self, Error> {
        let architecture = read_header(bytes, ConfigKind::System)?;
        let mut cursor = Cursor {
            bytes,
            offset: size_of::<Header>(),
        };
        let desc: &SystemDescriptor = cursor.take()?;
        let iommus = check_count(List::IommuUnits, desc.iommu_unit_count.get())?;
        let ioapics = check_count(List::IoApics, desc.ioapic_count.get())?;
        let iommu_units = cursor.take_slice(iommus)?;
        let ioapics = cursor.take_slice(ioapics)?;
        let root = CellView::read(&mut cursor)?;
        Ok(SystemConfigView {
            architecture,
            desc,
            iommu_units,
            ioapics,
            root,
        })
    }

    /// The architecture.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// The raw descriptor.
    pub fn descriptor(&self) -> &'a SystemDescriptor {
        self.desc
    }

    /// The hypervisor's memory.
    pub fn hypervisor_memory(&self) -> HypervisorMemory {
        HypervisorMemory {
            start: self.desc.hypervisor_memory.base.get(),
            size: self.desc.hypervisor_memory.size.get(),
        }
    }

    /// The hypervisor's console.
    pub fn debug_console(&self) -> Option<Console> {
        Console::from_entry(&self.desc.debug_console)
    }

    /// The interrupt controller.
    pub fn interrupt_controller(&self) -> InterruptController {
        let entry = &self.desc.interrupt_controller;
        let frame = |i: usize| Frame::from_entry(&entry.frames[i]);
        let version = match entry.kind.get() {
            layout::IRQCHIP_APIC => {
                return InterruptController::Apic {
                    local_apic: frame(layout::FRAME_DISTRIBUTOR)
                        .unwrap_or(Frame { base: 0, size: 0 }),
                }
            }
            layout::IRQCHIP_GICV3 => GicVersion::V3,
            _ => GicVersion::V2,
        };
        InterruptController::Gic(Gic {
            version,
            maintenance_irq: entry.maintenance_irq.get(),
            distributor: frame(layout::FRAME_DISTRIBUTOR).unwrap_or(Frame { base: 0, size: 0 }),
            cpu_interface: frame(layout::FRAME_CPU_INTERFACE),
            hypervisor_interface: frame(layout::FRAME_HYPERVISOR_INTERFACE),
            virtual_cpu_interface: frame(layout::FRAME_VIRTUAL_CPU_INTERFACE),
            redistributors: frame(layout::FRAME_REDISTRIBUTORS),
        })
    }

    /// The IOMMU units.
    pub fn iommu_units(&self) -> impl ExactSizeIterator<Item = IommuUnit> + Clone + 'a {
        self.iommu_units.iter().map(|e| {
            IommuUnit::from_entry(e).unwrap_or(IommuUnit {
                kind: IommuKind::SmmuV3,
                base: e.base.get(),
                size: e.size.get(),
                amd_bdf: Bdf(0),
                amd_base_cap: 0,
                amd_msi_cap: 0,
                amd_features: 0,
            })
        })
    }

    /// The IOAPICs (x86).
    pub fn ioapics(&self) -> impl ExactSizeIterator<Item = IoApic> + Clone + 'a {
        self.ioapics.iter().map(IoApic::from_entry)
    }

    /// The PCI host bridge, if any.
    pub fn pci_host(&self) -> Option<PciHost> {
        let pci = &self.desc.pci;
        (pci.ecam_base.get() != 0).then(|| PciHost {
            ecam_base: pci.ecam_base.get(),
            end_bus: pci.end_bus,
            domain: pci.domain.get(),
        })
    }

    /// The root cell.
    pub fn root_cell(&self) -> &CellView<'a> {
        &self.root
    }

    /// Hardware only the hypervisor may map, with its physical range.
    pub fn sensitive_ranges(&self) -> impl Iterator<Item = (Sensitive, AddressRange)> + 'a {
        let entry = &self.desc.interrupt_controller;
        let apic = entry.kind.get() == layout::IRQCHIP_APIC;
        let frames = entry.frames.iter().enumerate().filter_map(move |(i, f)| {
            let frame = Frame::from_entry(f)?;
            let kind = if apic {
                FrameKind::LocalApic
            } else {
                FrameKind::GIC[i]
            };
            Some((Sensitive::Frame(kind), frame.range()))
        });
        let ioapics = self
            .ioapics
            .iter()
            .enumerate()
            .map(|(i, e)| (Sensitive::IoApic(i as u32), IoApic::from_entry(e).range()));
        let iommus = self.iommu_units.iter().enumerate().map(|(i, e)| {
            (
                Sensitive::IommuUnit(i as u32),
                AddressRange::new(e.base.get(), e.size.get()),
            )
        });
        let ecam = self.pci_host().map(|p| (Sensitive::PciEcam, p.ecam()));
        frames.chain(ioapics).chain(iommus).chain(ecam)
    }

    fn validate(&self, report: Report<'_>) -> ControlFlow<()> {
        let arch = self.architecture;
        let mut report_at = |element, problem| report(Error::new(element, problem));
        let desc = self.desc;
        if desc.reserved.get() != 0 || desc.reserved2.get() != 0 {
            report_at(Element::Descriptor, Problem::ReservedNotZero)?;
        }

        let hv = Frame {
            base: desc.hypervisor_memory.base.get(),
            size: desc.hypervisor_memory.size.get(),
        };
        validate_frame(&hv, Field::PhysStart, &mut |p| {
            report_at(Element::HypervisorMemory, p)
        })?;
        validate_console(&desc.debug_console, arch, Space::Physical, &mut |p| {
            report_at(Element::DebugConsole, p)
        })?;

        self.validate_interrupt_controller(&mut report_at)?;
        self.validate_ioapics(&mut report_at)?;
        self.validate_iommus(&mut report_at)?;
        self.validate_pci_host(&mut report_at)?;

        // Register frames must not overlap each other.
        let sensitive = || self.sensitive_ranges().filter(|(_, r)| r.size != 0);
        for (i, (what, range)) in sensitive().enumerate() {
            if let Some((other, other_range)) =
                sensitive().take(i).find(|(_, r)| r.overlaps(&range))
            {
                let element = match what {
                    Sensitive::Frame(kind) => Element::Frame(kind),
                    Sensitive::IoApic(i) => Element::IoApic(i),
                    Sensitive::IommuUnit(i) => Element::IommuUnit(i),
                    _ => Element::PciHost,
                };
                report_at(
                    element,
                    Problem::RegisterOverlap {
                        range,
                        other,
                        other_range,
                    },
                )?;
            }
        }

        self.root.validate(arch, Scope::RootCell, true, report)?;
        check_cell_hardware(self, &self.root, Scope::RootCell, report)
    }

    fn validate_interrupt_controller(
        &self,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let arch = self.architecture;
        let entry = &self.desc.interrupt_controller;
        let (name, required, frame_names): (&str, [bool; 5], [FrameKind; 5]) = match entry
            .kind
            .get()
        {
            layout::IRQCHIP_GICV2 => ("GICv2", [true, true, true, true, false], FrameKind::GIC),
            layout::IRQCHIP_GICV3 => ("GICv3", [true, false, false, false, true], FrameKind::GIC),
            layout::IRQCHIP_APIC => (
                "the APIC",
                [true, false, false, false, false],
                [FrameKind::LocalApic; 5],
            ),
            found => {
                return report(
                    Element::InterruptController,
                    Problem::UnknownInterruptController { found },
                )
            }
        };
        let apic = entry.kind.get() == layout::IRQCHIP_APIC;
        let expected_arch = if apic {
            Architecture::X86_64
        } else {
            Architecture::Aarch64
        };
        if arch != expected_arch {
            return report(
                Element::InterruptController,
                Problem::NotOnArchitecture {
                    what: if apic { "the APIC" } else { name },
                    architecture: arch,
                },
            );
        }
        let irq = entry.maintenance_irq.get();
        if apic && irq != 0 {
            report(
                Element::InterruptController,
                Problem::NotUsed {
                    field: "maintenance interrupt",
                    by: name,
                },
            )?;
        } else if !apic && !(16..=31).contains(&irq) {
            report(
                Element::InterruptController,
                Problem::MaintenanceNotPpi { irq },
            )?;
        }
        for (i, frame_entry) in entry.frames.iter().enumerate() {
            let element = Element::Frame(frame_names[i]);
            // The APIC has only the local APIC frame: report the others as GIC frames.
            let element = if apic && i != layout::FRAME_DISTRIBUTOR {
                Element::Frame(FrameKind::GIC[i])
            } else {
                element
            };
            match Frame::from_entry(frame_entry) {
                None if required[i] => report(element, Problem::Missing { needed_by: name })?,
                None => {}
                Some(_) if !required[i] && (apic || entry.kind.get() == layout::IRQCHIP_GICV2) => {
                    report(
                        element,
                        Problem::NotUsed {
                            field: "base and size",
                            by: name,
                        },
                    )?
                }
                Some(frame) => validate_frame(&frame, Field::Base, &mut |p| report(element, p))?,
            }
        }
        ControlFlow::Continue(())
    }

    fn validate_ioapics(
        &self,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if self.ioapics.is_empty() {
            return ControlFlow::Continue(());
        }
        if self.architecture != Architecture::X86_64 {
            return report(
                Element::IoApic(0),
                Problem::NotOnArchitecture {
                    what: "IOAPICs",
                    architecture: self.architecture,
                },
            );
        }
        for (i, entry) in self.ioapics.iter().enumerate() {
            let element = Element::IoApic(i as u32);
            let ioapic = IoApic::from_entry(entry);
            if entry.reserved.get() != 0 {
                report(element, Problem::ReservedNotZero)?;
            }
            if !ioapic.address.is_multiple_of(PAGE_SIZE) {
                report(
                    element,
                    Problem::NotPageAligned {
                        field: Field::Address,
                        value: ioapic.address,
                    },
                )?;
            }
            if beyond_address_space(&ioapic.range()) {
                report(
                    element,
                    Problem::BeyondAddressSpace {
                        space: Space::Physical,
                        range: ioapic.range(),
                    },
                )?;
            }
            if ioapic.pins == 0 || ioapic.pins > limits::MAX_IOAPIC_PINS {
                report(element, Problem::IoApicPins { pins: ioapic.pins })?;
                continue;
            }
            let gsis = ioapic.gsis();
            if u64::from(gsis.first) + u64::from(gsis.count) > u64::from(limits::MAX_GSI) {
                report(element, Problem::GsisBeyondLimit { range: gsis })?;
            }
            if let Some((j, other)) = self.ioapics[..i]
                .iter()
                .map(IoApic::from_entry)
                .enumerate()
                .find(|(_, o)| o.gsis().overlaps(&gsis))
            {
                report(
                    element,
                    Problem::GsiOverlap {
                        range: gsis,
                        other: j as u32,
                        other_range: other.gsis(),
                    },
                )?;
            }
        }
        ControlFlow::Continue(())
    }

    fn validate_iommus(
        &self,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        for (i, entry) in self.iommu_units.iter().enumerate() {
            let element = Element::IommuUnit(i as u32);
            if entry.reserved.get() != 0 || entry.reserved2.get() != 0 {
                report(element, Problem::ReservedNotZero)?;
            }
            let Some(kind) = IommuKind::from_raw(entry.kind.get()) else {
                report(
                    element,
                    Problem::UnknownIommuKind {
                        found: entry.kind.get(),
                    },
                )?;
                continue;
            };
            if kind.architecture() != self.architecture {
                report(
                    element,
                    Problem::NotOnArchitecture {
                        what: kind.name(),
                        architecture: self.architecture,
                    },
                )?;
            }
            let frame = Frame {
                base: entry.base.get(),
                size: entry.size.get(),
            };
            validate_frame(&frame, Field::Base, &mut |p| report(element, p))?;
            if kind != IommuKind::AmdVi
                && (entry.amd_bdf.get() != 0
                    || entry.amd_base_cap != 0
                    || entry.amd_msi_cap != 0
                    || entry.amd_features.get() != 0)
            {
                report(
                    element,
                    Problem::NotUsed {
                        field: "AMD-Vi fields",
                        by: kind.name(),
                    },
                )?;
            }
        }
        ControlFlow::Continue(())
    }

    fn validate_pci_host(
        &self,
        report: &mut impl FnMut(Element, Problem) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let pci = &self.desc.pci;
        if pci.reserved != [0; 5] {
            report(Element::PciHost, Problem::ReservedNotZero)?;
        }
        match self.pci_host() {
            None => {
                if pci.end_bus != 0 || pci.domain.get() != 0 {
                    report(
                        Element::PciHost,
                        Problem::NotUsed {
                            field: "end bus and domain",
                            by: "a system without PCI (ECAM base 0)",
                        },
                    )?;
                }
            }
            Some(host) => {
                if !host.ecam_base.is_multiple_of(1 << 20) {
                    report(
                        Element::PciHost,
                        Problem::EcamNotAligned {
                            base: host.ecam_base,
                        },
                    )?;
                }
                if beyond_address_space(&host.ecam()) {
                    report(
                        Element::PciHost,
                        Problem::BeyondAddressSpace {
                            space: Space::Physical,
                            range: host.ecam(),
                        },
                    )?;
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Checks a cell (the root cell or another) against the hardware the system describes: no
/// mapping of hypervisor memory or of registers only the hypervisor may touch, interrupt
/// lines the interrupt controller has, PCI devices the host bridge reaches, stream IDs the
/// SMMUs can match.
pub(crate) fn check_cell_hardware(
    system: &SystemConfigView<'_>,
    cell: &CellView<'_>,
    scope: Scope,
    report: Report<'_>,
) -> ControlFlow<()> {
    let mut report = |element, problem| report(Error::new(element, problem).in_scope(scope));
    let hypervisor = system.hypervisor_memory().range();
    for (i, region) in cell.memory_regions().enumerate() {
        if region.flags.contains(MemoryFlags::COMM_REGION) || region.size == 0 {
            continue;
        }
        let element = Element::MemoryRegion(i as u32);
        let range = region.phys();
        if range.overlaps(&hypervisor) {
            report(element, Problem::OverlapsHypervisor { range, hypervisor })?;
        }
        for (what, frame) in system.sensitive_ranges() {
            if range.overlaps(&frame) {
                report(element, Problem::MapsSensitive { range, what, frame })?;
            }
        }
    }

    // Interrupt lines are checked against a controller of the right architecture only (the
    // system's own validation reports a wrong one).
    match system.interrupt_controller() {
        InterruptController::Gic(_) | InterruptController::Apic { .. }
            if !controller_fits(system) => {}
        InterruptController::Gic(gic) => {
            if gic.version == GicVersion::V2 {
                for (i, range) in cell.irq_ranges().enumerate() {
                    if range.last() >= 4096 {
                        report(
                            Element::IrqRange(i as u32),
                            Problem::ExtendedSpiNeedsGicv3 {
                                line: range.first.max(4096),
                            },
                        )?;
                    }
                }
            }
        }
        InterruptController::Apic { .. } => {
            let wired = system.ioapics().map(|io| {
                (
                    u64::from(io.gsi_base),
                    u64::from(io.gsi_base) + u64::from(io.pins),
                )
            });
            for (i, range) in cell.irq_ranges().enumerate() {
                let end = u64::from(range.first) + u64::from(range.count);
                if let Some(line) = first_uncovered(range.first.into(), end, wired.clone()) {
                    report(
                        Element::IrqRange(i as u32),
                        Problem::IrqNotWired { line: line as u32 },
                    )?;
                }
            }
        }
    }

    let iommu_count = system.iommu_units().len() as u32;
    for (i, device) in cell.pci_devices().enumerate() {
        let element = Element::PciDevice(i as u32);
        let address = device.address();
        match system.pci_host() {
            None => report(element, Problem::PciNoHost { address })?,
            Some(host) => {
                if device.domain != host.domain {
                    report(
                        element,
                        Problem::PciDomainMismatch {
                            address,
                            domain: host.domain,
                        },
                    )?;
                }
                if device.bdf.bus() > host.end_bus {
                    report(
                        element,
                        Problem::PciBusBeyondEnd {
                            address,
                            end_bus: host.end_bus,
                        },
                    )?;
                }
            }
        }
        if let Some(index) = device.iommu {
            if u32::from(index) >= iommu_count {
                report(
                    element,
                    Problem::NoSuchIommu {
                        index,
                        count: iommu_count,
                    },
                )?;
            }
        }
    }

    let has = |kind| system.iommu_units().any(|u| u.kind == kind);
    let (v2, v3) = (has(IommuKind::SmmuV2), has(IommuKind::SmmuV3));
    for (i, id) in cell.stream_ids().enumerate() {
        let element = Element::StreamId(i as u32);
        if !v2 && !v3 {
            report(element, Problem::NoSmmu { id })?;
            continue;
        }
        if id.mask != 0 && !v2 {
            report(element, Problem::StreamMaskNeedsSmmuV2 { id })?;
        }
        if (id.id | id.mask) > 0xffff && !v3 {
            report(element, Problem::StreamIdTooWide { id })?;
        }
    }
    ControlFlow::Continue(())
}

fn controller_fits(system: &SystemConfigView<'_>) -> bool {
    matches!(
        (system.interrupt_controller(), system.architecture()),
        (InterruptController::Gic(_), Architecture::Aarch64)
            | (InterruptController::Apic { .. }, Architecture::X86_64)
    )
}
