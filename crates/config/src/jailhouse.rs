//! Import of Jailhouse binary configurations (`.cell` files of configuration revisions 13
//! and 14, system or cell, arm64 or x86) into cellvisor configurations (feature `std`).
//!
//! The reader follows the layout documented in Jailhouse's public header
//! `include/jailhouse/cell-config.h` (all structures packed, little-endian):
//!
//! - revision 14: the signature is 5 bytes (`JHSYS`, `JHCLL`) followed by an architecture byte
//!   (0 x86, 1 arm, 2 arm64); revision 13: a 6-byte signature (`JHSYST`, `JHCELL`) and no
//!   architecture. Everything else is laid out alike.
//! - a cell: a 132-byte descriptor, then the CPU bitmap (`cpu_set_size` bytes), memory
//!   regions (32 bytes), cache regions (12), irqchips (32), PIO regions (4), PCI devices (56),
//!   PCI capabilities (8) and stream IDs (4);
//! - a system: a 356-byte descriptor (hypervisor memory, debug console, PCI, 8 IOMMU units of
//!   28 bytes, 44 bytes of arm or x86 platform data) followed by the root cell.
//!
//! What cellvisor does not have (cache partitioning, virtual PCI devices such as ivshmem, PCI
//! capability emulation, sub-page MMIO, console clock gates, x86 timer calibration) is left out
//! and listed in [`Imported::notes`].

use std::borrow::ToOwned;
use std::fmt;
use std::format;
use std::ops::ControlFlow;
use std::string::String;
use std::vec::Vec;

use crate::error::Error;
use crate::limits;
use crate::owned::{Cell, CellConfig, SystemConfig};
use crate::text;
use crate::types::{
    Architecture, Bdf, CellFlags, CellName, Console, ConsoleAccess, ConsoleKind, CpuSet, Frame,
    Gic, GicVersion, HypervisorMemory, InterruptController, IoApic, IommuKind, IommuUnit, IrqRange,
    MemoryFlags, MemoryRegion, PciDevice, PciDeviceKind, PciHost, PortRange, StreamId, PAGE_SIZE,
};
use crate::view::{CellConfigView, SystemConfigView};

/// Size of a Jailhouse cell descriptor.
pub const CELL_DESC_SIZE: usize = 132;
/// Size of a Jailhouse system descriptor, root cell descriptor excluded.
pub const SYSTEM_DESC_SIZE: usize = 356;
/// Offset of the IOMMU units in a system descriptor.
const IOMMU_OFFSET: usize = 88;
/// Size of one IOMMU unit.
const IOMMU_SIZE: usize = 28;
/// Offset of the architecture-specific platform data in a system descriptor.
const PLATFORM_OFFSET: usize = 312;

const MEMORY_SIZE: usize = 32;
const CACHE_SIZE: usize = 12;
const IRQCHIP_SIZE: usize = 32;
const PIO_SIZE: usize = 4;
const PCI_DEVICE_SIZE: usize = 56;
const PCI_CAP_SIZE: usize = 8;
const STREAM_ID_SIZE: usize = 4;

/// Why a file could not be imported.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ImportError(pub String);

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImportError {}

fn fail<T>(message: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError(message.into()))
}

/// The imported configuration.
// One value per imported file on the host: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ImportedConfig {
    /// From a Jailhouse system configuration (root cell included).
    System(SystemConfig),
    /// From a Jailhouse cell configuration.
    Cell(CellConfig),
}

/// An imported configuration and what the import changed or left out.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Imported {
    /// The Jailhouse configuration revision read (13 or 14).
    pub revision: u16,
    /// The configuration.
    pub config: ImportedConfig,
    /// What was left out, changed or guessed, one sentence each.
    pub notes: Vec<String>,
}

impl Imported {
    /// The configuration as TOML, with the notes as comments at the top.
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "# Imported from a Jailhouse configuration (revision {}).\n",
            self.revision
        );
        for note in &self.notes {
            out.push_str("# note: ");
            out.push_str(note);
            out.push('\n');
        }
        let body = match &self.config {
            ImportedConfig::System(c) => text::system_to_toml(c),
            ImportedConfig::Cell(c) => text::cell_to_toml(c),
        };
        // Drop the generic first comment line of the writer.
        out.push_str(
            body.split_once('\n')
                .map_or(body.as_str(), |(_, rest)| rest),
        );
        out
    }

    /// The problems validation finds in the imported configuration (a cell is validated on its
    /// own, not against a system).
    pub fn problems(&self) -> Vec<Error> {
        let mut problems = Vec::new();
        let mut report = |e| {
            problems.push(e);
            ControlFlow::Continue(())
        };
        match &self.config {
            ImportedConfig::System(c) => match c.encode() {
                Ok(bytes) => {
                    let _ = SystemConfigView::parse_reporting(&bytes, &mut report);
                }
                Err(e) => problems.push(e),
            },
            ImportedConfig::Cell(c) => match c.encode() {
                Ok(bytes) => {
                    let _ = CellConfigView::parse_reporting(&bytes, &mut report);
                }
                Err(e) => problems.push(e),
            },
        }
        problems
    }
}

/// Reads little-endian fields at offsets, with bounds checks.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn slice(&self, offset: usize, len: usize) -> Result<&[u8], ImportError> {
        offset
            .checked_add(len)
            .and_then(|end| self.bytes.get(offset..end))
            .ok_or_else(|| {
                ImportError(format!(
                    "truncated: {} bytes needed, {} present",
                    offset.saturating_add(len),
                    self.bytes.len()
                ))
            })
    }

    fn u8(&self, offset: usize) -> Result<u8, ImportError> {
        Ok(self.slice(offset, 1)?[0])
    }

    fn u16(&self, offset: usize) -> Result<u16, ImportError> {
        let b = self.slice(offset, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&self, offset: usize) -> Result<u32, ImportError> {
        let b = self.slice(offset, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&self, offset: usize) -> Result<u64, ImportError> {
        let b = self.slice(offset, 8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// The header of a Jailhouse file.
struct Signature {
    system: bool,
    revision: u16,
    /// Revision 14 only.
    architecture: Option<u8>,
}

fn read_signature(r: &Reader<'_>) -> Result<Signature, ImportError> {
    let head = r.slice(0, 8).map_err(|_| {
        ImportError("too short for a Jailhouse configuration (8-byte header)".to_owned())
    })?;
    let revision = u16::from_le_bytes([head[6], head[7]]);
    let (system, architecture) = match (&head[..5], &head[..6]) {
        (_, b"JHSYST") => (true, None),
        (_, b"JHCELL") => (false, None),
        (b"JHSYS", _) => (true, Some(head[5])),
        (b"JHCLL", _) => (false, Some(head[5])),
        _ => return fail("not a Jailhouse configuration (no JHSYS/JHCLL signature)"),
    };
    match (revision, architecture) {
        (13, None) | (14, Some(_)) => {}
        (13 | 14, _) => {
            return fail(format!(
                "revision {revision} with a signature of the other revision"
            ))
        }
        _ => {
            return fail(format!(
                "Jailhouse configuration revision {revision} is not supported (13 and 14 are)"
            ))
        }
    }
    Ok(Signature {
        system,
        revision,
        architecture,
    })
}

fn architecture_of(raw: u8) -> Result<Architecture, ImportError> {
    match raw {
        0 => Ok(Architecture::X86_64),
        2 => Ok(Architecture::Aarch64),
        1 => fail("32-bit Arm configurations are not supported"),
        other => fail(format!("unknown Jailhouse architecture {other}")),
    }
}

/// Imports a Jailhouse configuration.
///
/// `architecture` is needed for revision-13 cell files whose contents do not tell (revision
/// 14 records it; revision-13 system files are recognised by their platform data). `system`
/// is the cellvisor system a cell is meant for: it maps x86 IOAPIC pins to interrupt lines,
/// keeps only IOMMU indices that exist, and splits SMMUv2 stream IDs into ID and mask.
pub fn import(
    bytes: &[u8],
    architecture: Option<Architecture>,
    system: Option<&SystemConfig>,
) -> Result<Imported, ImportError> {
    let r = Reader { bytes };
    let signature = read_signature(&r)?;
    let mut notes = Vec::new();
    let recorded = signature.architecture.map(architecture_of).transpose()?;
    if let (Some(recorded), Some(given)) = (recorded, architecture) {
        if recorded != given {
            return fail(format!("the file is for {recorded}, not {given} as asked"));
        }
    }
    let config = if signature.system {
        let arch = match recorded.or(architecture) {
            Some(arch) => arch,
            None => {
                // Revision 13: a GIC version and distributor mean Arm.
                let gic_version = r.u8(PLATFORM_OFFSET + 1)?;
                let gicd = r.u64(PLATFORM_OFFSET + 4)?;
                let arch = if matches!(gic_version, 2 | 3) && gicd != 0 {
                    Architecture::Aarch64
                } else {
                    Architecture::X86_64
                };
                notes.push(format!(
                    "revision 13 does not record the architecture: {arch} guessed from the platform data"
                ));
                arch
            }
        };
        ImportedConfig::System(import_system(&r, arch, &mut notes)?)
    } else {
        let arch = match recorded.or(architecture).or(system.map(|s| s.architecture)) {
            Some(arch) => arch,
            None => guess_cell_architecture(&r)?,
        };
        let context = system.map(|s| Context {
            ioapics: s.ioapics.clone(),
            iommu_units: s.iommu_units.clone(),
        });
        let (cell, _) = import_cell(&r, 0, arch, false, context.as_ref(), &mut notes)?;
        if signature.architecture.is_none() && architecture.is_none() && system.is_none() {
            notes.push(format!(
                "revision 13 does not record the architecture: {arch} guessed from the contents"
            ));
        }
        ImportedConfig::Cell(CellConfig {
            architecture: arch,
            cell,
        })
    };
    Ok(Imported {
        revision: signature.revision,
        config,
        notes,
    })
}

fn guess_cell_architecture(r: &Reader<'_>) -> Result<Architecture, ImportError> {
    let counts = CellCounts::read(r, 0)?;
    if counts.pio > 0 {
        return Ok(Architecture::X86_64);
    }
    let mut offset = CELL_DESC_SIZE + counts.cpu_set as usize;
    offset += counts.memory as usize * MEMORY_SIZE + counts.cache as usize * CACHE_SIZE;
    for i in 0..counts.irqchips as usize {
        if r.u64(offset + i * IRQCHIP_SIZE)? == 0xfec0_0000 {
            return Ok(Architecture::X86_64);
        }
    }
    match r.u16(100 + 12)? {
        3..=10 => Ok(Architecture::Aarch64),
        _ => fail(
            "a revision-13 cell file does not record its architecture and its contents do not tell: give it (--arch)",
        ),
    }
}

/// What a cell import needs to know about the system.
struct Context {
    ioapics: Vec<IoApic>,
    iommu_units: Vec<IommuUnit>,
}

struct CellCounts {
    cpu_set: u32,
    memory: u32,
    cache: u32,
    irqchips: u32,
    pio: u32,
    pci_devices: u32,
    pci_caps: u32,
    stream_ids: u32,
}

impl CellCounts {
    fn read(r: &Reader<'_>, base: usize) -> Result<Self, ImportError> {
        Ok(CellCounts {
            cpu_set: r.u32(base + 48)?,
            memory: r.u32(base + 52)?,
            cache: r.u32(base + 56)?,
            irqchips: r.u32(base + 60)?,
            pio: r.u32(base + 64)?,
            pci_devices: r.u32(base + 68)?,
            pci_caps: r.u32(base + 72)?,
            stream_ids: r.u32(base + 76)?,
        })
    }

    fn size(&self) -> u64 {
        CELL_DESC_SIZE as u64
            + u64::from(self.cpu_set)
            + u64::from(self.memory) * MEMORY_SIZE as u64
            + u64::from(self.cache) * CACHE_SIZE as u64
            + u64::from(self.irqchips) * IRQCHIP_SIZE as u64
            + u64::from(self.pio) * PIO_SIZE as u64
            + u64::from(self.pci_devices) * PCI_DEVICE_SIZE as u64
            + u64::from(self.pci_caps) * PCI_CAP_SIZE as u64
            + u64::from(self.stream_ids) * STREAM_ID_SIZE as u64
    }
}

fn import_console(
    r: &Reader<'_>,
    offset: usize,
    what: &str,
    notes: &mut Vec<String>,
) -> Result<Option<Console>, ImportError> {
    let address = r.u64(offset)?;
    let size = r.u32(offset + 8)?;
    let kind = r.u16(offset + 12)?;
    let flags = r.u16(offset + 14)?;
    let divider = r.u32(offset + 16)?;
    let gate = r.u32(offset + 20)?;
    let clock_reg = r.u64(offset + 24)?;
    let kind = match kind {
        0 => return Ok(None),
        2 => ConsoleKind::Uart8250,
        3 => ConsoleKind::Pl011,
        4 => ConsoleKind::Cadence,
        5 => ConsoleKind::Mvebu,
        6 => ConsoleKind::Hscif,
        7 => ConsoleKind::Scifa,
        8 => ConsoleKind::Imx,
        9 => ConsoleKind::ImxLpuart,
        10 => ConsoleKind::Scif,
        1 => {
            notes.push(format!(
                "{what}: the EFI framebuffer console is left out (cellvisor consoles are UARTs)"
            ));
            return Ok(None);
        }
        other => {
            notes.push(format!("{what}: unknown console type {other} left out"));
            return Ok(None);
        }
    };
    // Bit 0 set: MMIO; bit 1 set: 4-byte register distance.
    let access = match (flags & 1 != 0, flags & 2 != 0) {
        (false, _) => ConsoleAccess::Port,
        (true, false) => ConsoleAccess::Mmio8,
        (true, true) => ConsoleAccess::Mmio32,
    };
    if gate != 0 || clock_reg != 0 || flags & !3 != 0 {
        notes.push(format!(
            "{what}: clock gate, clock register and quirk flags are left out"
        ));
    }
    Ok(Some(Console {
        kind,
        access,
        address,
        size,
        divider,
    }))
}

fn sanitize_name(raw: &[u8], notes: &mut Vec<String>) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let original = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut name: String = original
        .chars()
        .map(|c| {
            if c.is_ascii() && CellName::allowed(c as u8) {
                c
            } else {
                '-'
            }
        })
        .take(limits::MAX_NAME_LEN)
        .collect();
    if name.is_empty() {
        name = "imported".to_owned();
    }
    if name != original {
        notes.push(format!(
            "the cell name {original:?} became {name:?} (letters, digits, '-', '_' and '.' only)"
        ));
    }
    name
}

/// Adds the set bits of a bitmap as interrupt ranges, merging neighbours.
fn bitmap_ranges(base: u32, bitmap: &[u32; 4]) -> Vec<IrqRange> {
    let mut ranges: Vec<IrqRange> = Vec::new();
    for bit in 0..128u32 {
        if bitmap[(bit / 32) as usize] & (1 << (bit % 32)) == 0 {
            continue;
        }
        let line = base.saturating_add(bit);
        match ranges.last_mut() {
            Some(last) if u64::from(last.first) + u64::from(last.count) == u64::from(line) => {
                last.count += 1
            }
            _ => ranges.push(IrqRange::single(line)),
        }
    }
    ranges
}

fn merge_ranges(ranges: &mut Vec<IrqRange>) {
    ranges.sort_by_key(|r| r.first);
    let mut merged: Vec<IrqRange> = Vec::with_capacity(ranges.len());
    for range in ranges.drain(..) {
        match merged.last_mut() {
            Some(last)
                if u64::from(last.first) + u64::from(last.count) >= u64::from(range.first) =>
            {
                let end = (u64::from(last.first) + u64::from(last.count))
                    .max(u64::from(range.first) + u64::from(range.count));
                last.count = (end - u64::from(last.first)) as u32;
            }
            _ => merged.push(range),
        }
    }
    *ranges = merged;
}

/// An IOAPIC of an x86 system, from the root cell's irqchips.
struct FoundIoApic {
    address: u64,
    id: u32,
    pins: u32,
}

/// One IOAPIC seen as a root-cell irqchip of an x86 system.
struct SeenIoApic {
    address: u64,
    id: u32,
    highest_pin: u32,
}

/// Imports a cell descriptor and its arrays at `base`; for an x86 root cell, also returns
/// the IOAPICs its irqchips name (address, ID, pins), in order.
fn import_cell(
    r: &Reader<'_>,
    base: usize,
    arch: Architecture,
    root: bool,
    context: Option<&Context>,
    notes: &mut Vec<String>,
) -> Result<(Cell, Vec<FoundIoApic>), ImportError> {
    let counts = CellCounts::read(r, base)?;
    let size = counts.size();
    if base as u64 + size != r.bytes.len() as u64 {
        return fail(format!(
            "the counts describe {} bytes, the file has {}",
            base as u64 + size,
            r.bytes.len()
        ));
    }
    let what = if root { "root cell" } else { "cell" };
    let name = sanitize_name(r.slice(base + 8, 32)?, notes);
    let raw_flags = r.u32(base + 44)?;
    let mut flags = CellFlags::empty();
    for (bit, flag) in [
        (0x1, CellFlags::PASSIVE_COMM_REGION),
        (0x4, CellFlags::AARCH32),
        (0x4000_0000, CellFlags::VIRTUAL_CONSOLE_PERMITTED),
        (0x8000_0000, CellFlags::VIRTUAL_CONSOLE_ACTIVE),
    ] {
        if raw_flags & bit != 0 {
            flags |= flag;
        }
    }
    if raw_flags & 0x2 != 0 {
        notes.push(format!("{what}: the test-device flag is left out"));
    }
    if raw_flags & !0xc000_0007 != 0 {
        notes.push(format!(
            "{what}: unknown flags {:#x} left out",
            raw_flags & !0xc000_0007
        ));
    }
    if r.u32(base + 80)? != 0 {
        notes.push(format!(
            "{what}: the virtual PCI interrupt base is left out (no virtual PCI devices)"
        ));
    }
    let cpu_reset_address = r.u64(base + 84)?;
    let console = import_console(r, base + 100, &format!("{what} console"), notes)?;

    let mut offset = base + CELL_DESC_SIZE;
    let mut cpus = CpuSet::new();
    for (i, &byte) in r.slice(offset, counts.cpu_set as usize)?.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                let cpu = i as u64 * 8 + bit;
                if cpu >= u64::from(limits::MAX_CPUS) {
                    return fail(format!(
                        "{what}: CPU {cpu} is beyond cellvisor's last CPU ({})",
                        limits::MAX_CPUS - 1
                    ));
                }
                cpus.insert(cpu as u32);
            }
        }
    }
    offset += counts.cpu_set as usize;

    let mut memory_regions = Vec::new();
    let known = MemoryFlags::all().bits();
    let mut dropped_flags = 0u64;
    for i in 0..counts.memory as usize {
        let at = offset + i * MEMORY_SIZE;
        let phys = r.u64(at)?;
        let virt = r.u64(at + 8)?;
        let size = r.u64(at + 16)?;
        let raw = r.u64(at + 24)?;
        if size == 0 {
            notes.push(format!(
                "{what}: memory region {i} is empty (a placeholder) and left out"
            ));
            continue;
        }
        dropped_flags |= raw & !known;
        let mut region = MemoryRegion {
            phys_start: phys,
            virt_start: virt,
            size,
            flags: MemoryFlags::from_bits_truncate(raw),
        };
        let comm = region.flags.contains(MemoryFlags::COMM_REGION);
        let off = virt % PAGE_SIZE;
        if off != 0 || !size.is_multiple_of(PAGE_SIZE) || (!comm && !phys.is_multiple_of(PAGE_SIZE))
        {
            let end = virt
                .checked_add(size)
                .and_then(|e| e.checked_next_multiple_of(PAGE_SIZE));
            match end {
                Some(end) if comm || phys % PAGE_SIZE == off => {
                    let start = virt - off;
                    region.virt_start = start;
                    region.phys_start = if comm { phys } else { phys - off };
                    region.size = end - start;
                    notes.push(format!(
                        "{what}: memory region {i} ({size:#x} bytes at {virt:#x}) is a sub-page region; it became the whole pages [{start:#x}, {end:#x}): check that the cell may access all of them"
                    ));
                }
                _ => {
                    notes.push(format!(
                        "{what}: memory region {i} ({size:#x} bytes at {virt:#x}) is a sub-page region that cannot be widened to whole pages; left out"
                    ));
                    continue;
                }
            }
        }
        memory_regions.push(region);
    }
    if dropped_flags != 0 {
        notes.push(format!(
            "{what}: memory flags {dropped_flags:#x} (no-hugepages, sub-page access widths) are left out"
        ));
    }
    offset += counts.memory as usize * MEMORY_SIZE;

    if counts.cache > 0 {
        notes.push(format!(
            "{what}: {} cache region(s) left out (cellvisor does not partition caches)",
            counts.cache
        ));
    }
    offset += counts.cache as usize * CACHE_SIZE;

    let mut irqs = Vec::new();
    let mut seen_ioapics: Vec<SeenIoApic> = Vec::new();
    for i in 0..counts.irqchips as usize {
        let at = offset + i * IRQCHIP_SIZE;
        let address = r.u64(at)?;
        let id = r.u32(at + 8)?;
        let pin_base = r.u32(at + 12)?;
        let bitmap = [
            r.u32(at + 16)?,
            r.u32(at + 20)?,
            r.u32(at + 24)?,
            r.u32(at + 28)?,
        ];
        let pins = bitmap_ranges(pin_base, &bitmap);
        match arch {
            Architecture::Aarch64 => irqs.extend(pins),
            Architecture::X86_64 => {
                let highest = pins.last().map_or(0, |r| r.last());
                let gsi_base = if root {
                    // The system's IOAPICs are the root cell's irqchips, in order.
                    let index = match seen_ioapics.iter().position(|s| s.address == address) {
                        Some(index) => index,
                        None => {
                            seen_ioapics.push(SeenIoApic {
                                address,
                                id,
                                highest_pin: 0,
                            });
                            seen_ioapics.len() - 1
                        }
                    };
                    let seen = &mut seen_ioapics[index];
                    seen.highest_pin = seen.highest_pin.max(highest);
                    None
                } else {
                    match context {
                        Some(c) => match c.ioapics.iter().find(|io| io.address == address) {
                            Some(io) => Some(io.gsi_base),
                            None => {
                                return fail(format!(
                                    "{what}: irqchip {i} at {address:#x} is no IOAPIC of the system"
                                ))
                            }
                        },
                        None if address == 0xfec0_0000 => {
                            notes.push(format!(
                                "{what}: irqchip {i}: the IOAPIC at 0xfec00000 is taken to serve global system interrupts from 0 (pass the system to be sure)"
                            ));
                            Some(0)
                        }
                        None => {
                            return fail(format!(
                                "{what}: irqchip {i}: IOAPIC at {address:#x}: pass the system configuration (--system) to find its interrupt lines"
                            ))
                        }
                    }
                };
                let gsi_base = gsi_base.unwrap_or_else(|| {
                    seen_ioapics
                        .iter()
                        .take_while(|s| s.address != address)
                        .map(|s| ioapic_pins(s.highest_pin))
                        .sum()
                });
                irqs.extend(pins.into_iter().map(|p| IrqRange {
                    first: p.first.saturating_add(gsi_base),
                    count: p.count,
                }));
            }
        }
    }
    merge_ranges(&mut irqs);
    offset += counts.irqchips as usize * IRQCHIP_SIZE;

    let mut ports = Vec::new();
    for i in 0..counts.pio as usize {
        let at = offset + i * PIO_SIZE;
        let port_base = r.u16(at)?;
        let length = r.u16(at + 2)?;
        if length == 0 {
            notes.push(format!("{what}: empty PIO region {i} left out"));
            continue;
        }
        ports.push(PortRange {
            base: port_base.into(),
            size: length.into(),
        });
    }
    offset += counts.pio as usize * PIO_SIZE;

    let mut pci_devices = Vec::new();
    let mut pci_extras = false;
    for i in 0..counts.pci_devices as usize {
        let at = offset + i * PCI_DEVICE_SIZE;
        let kind = r.u8(at)?;
        let iommu = r.u8(at + 1)?;
        let domain = r.u16(at + 2)?;
        let bdf = Bdf(r.u16(at + 4)?);
        let kind = match kind {
            1 => PciDeviceKind::Device,
            2 => PciDeviceKind::Bridge,
            3 => {
                notes.push(format!(
                    "{what}: PCI device {i} ({domain:04x}:{bdf}) is an ivshmem device and left out (no virtual PCI devices); its shared memory regions stay"
                ));
                continue;
            }
            other => {
                notes.push(format!(
                    "{what}: PCI device {i} has unknown type {other} and is left out"
                ));
                continue;
            }
        };
        pci_extras = true;
        let iommu = match (arch, context) {
            (Architecture::X86_64, Some(c)) if usize::from(iommu) < c.iommu_units.len() => {
                Some(iommu)
            }
            (Architecture::X86_64, None) => {
                notes.push(format!(
                    "{what}: PCI device {i} ({domain:04x}:{bdf}): its IOMMU unit is left out (pass the system configuration to keep it)"
                ));
                None
            }
            _ => None,
        };
        pci_devices.push(PciDevice {
            domain,
            bdf,
            kind,
            iommu,
        });
    }
    if pci_extras {
        notes.push(format!(
            "{what}: PCI BAR masks, capabilities and MSI settings are left out (cellvisor passes PCI devices through)"
        ));
    }
    offset +=
        counts.pci_devices as usize * PCI_DEVICE_SIZE + counts.pci_caps as usize * PCI_CAP_SIZE;

    let split_streams = context.is_some_and(|c| {
        c.iommu_units.iter().any(|u| u.kind == IommuKind::SmmuV2)
            && !c.iommu_units.iter().any(|u| u.kind == IommuKind::SmmuV3)
    });
    let mut stream_ids = Vec::new();
    for i in 0..counts.stream_ids as usize {
        let raw = r.u32(offset + i * STREAM_ID_SIZE)?;
        stream_ids.push(if split_streams {
            // MMU-500 layout: ID in bits 15:0, mask in bits 31:16.
            StreamId {
                id: raw & 0xffff,
                mask: raw >> 16,
            }
        } else {
            StreamId { id: raw, mask: 0 }
        });
    }

    let mut cell = Cell {
        name,
        flags,
        cpus,
        memory_regions,
        irqs,
        ports,
        pci_devices,
        stream_ids,
        console,
        cpu_reset_address,
    };
    if root {
        cell.flags
            .remove(CellFlags::AARCH32 | CellFlags::PASSIVE_COMM_REGION);
    }
    let seen = seen_ioapics
        .iter()
        .map(|io| FoundIoApic {
            address: io.address,
            id: io.id,
            pins: ioapic_pins(io.highest_pin),
        })
        .collect();
    Ok((cell, seen))
}

fn ioapic_pins(highest_pin: u32) -> u32 {
    if highest_pin < 24 {
        24
    } else {
        (highest_pin + 1).min(limits::MAX_IOAPIC_PINS)
    }
}

fn import_system(
    r: &Reader<'_>,
    arch: Architecture,
    notes: &mut Vec<String>,
) -> Result<SystemConfig, ImportError> {
    if r.u32(8)? & 1 != 0 {
        notes.push("the root cell's access to the virtual debug console is left out".to_owned());
    }
    let hypervisor_memory = HypervisorMemory {
        start: r.u64(12)?,
        size: r.u64(28)?,
    };
    let debug_console = import_console(r, 44, "debug console", notes)?;

    let mmconfig = r.u64(76)?;
    let end_bus = r.u8(84)?;
    let is_virtual = r.u8(85)?;
    let domain = r.u16(86)?;
    let pci = if mmconfig == 0 {
        None
    } else if is_virtual != 0 {
        notes.push(
            "the virtual PCI host bridge is left out (cellvisor has no virtual PCI devices)"
                .to_owned(),
        );
        None
    } else {
        Some(PciHost {
            ecam_base: mmconfig,
            end_bus,
            domain,
        })
    };

    let mut iommu_units = Vec::new();
    for i in 0..8 {
        let at = IOMMU_OFFSET + i * IOMMU_SIZE;
        let kind = match r.u32(at)? {
            0 => continue,
            1 => IommuKind::AmdVi,
            2 => IommuKind::VtD,
            3 => IommuKind::SmmuV3,
            5 => IommuKind::SmmuV2,
            4 => {
                notes.push(format!("IOMMU unit {i} (TI PVU) is left out"));
                continue;
            }
            other => {
                notes.push(format!("IOMMU unit {i} has unknown type {other}, left out"));
                continue;
            }
        };
        let amd = kind == IommuKind::AmdVi;
        iommu_units.push(IommuUnit {
            kind,
            base: r.u64(at + 4)?,
            size: r.u32(at + 12)?.into(),
            amd_bdf: Bdf(if amd { r.u16(at + 16)? } else { 0 }),
            amd_base_cap: if amd { r.u8(at + 18)? } else { 0 },
            amd_msi_cap: if amd { r.u8(at + 19)? } else { 0 },
            amd_features: if amd { r.u32(at + 20)? } else { 0 },
        });
    }

    let p = PLATFORM_OFFSET;
    let context = Context {
        ioapics: Vec::new(),
        iommu_units: iommu_units.clone(),
    };
    // The root cell's import needs the IOMMU units; it finds the IOAPICs itself.
    let (root_cell, seen) = import_cell(r, SYSTEM_DESC_SIZE, arch, true, Some(&context), notes)?;
    let (interrupt_controller, ioapics) = match arch {
        Architecture::Aarch64 => {
            let maintenance_irq = r.u8(p)?.into();
            let version = match r.u8(p + 1)? {
                2 => GicVersion::V2,
                3 => GicVersion::V3,
                other => return fail(format!("unknown GIC version {other}")),
            };
            let sizes = Gic::default_sizes(version);
            let frame = |offset: usize, size: u64| -> Result<Option<Frame>, ImportError> {
                let base = r.u64(p + offset)?;
                Ok((base != 0).then_some(Frame { base, size }))
            };
            let redistributors = text::default_redistributors_size(&root_cell.cpus);
            let gic = Gic {
                version,
                maintenance_irq,
                distributor: frame(4, sizes[0])?.unwrap_or(Frame { base: 0, size: 0 }),
                cpu_interface: frame(12, sizes[1])?,
                hypervisor_interface: frame(20, sizes[2])?,
                virtual_cpu_interface: frame(28, sizes[3])?,
                redistributors: frame(36, redistributors)?,
            };
            notes.push(format!(
                "the GIC register frame sizes are the GICv{} defaults: check them against the SoC manual",
                if version == GicVersion::V2 { 2 } else { 3 }
            ));
            (InterruptController::Gic(gic), Vec::new())
        }
        Architecture::X86_64 => {
            if r.u16(p)? != 0
                || r.u8(p + 2)? != 0
                || r.u32(p + 4)? != 0
                || r.u32(p + 8)? != 0
                || r.u32(p + 12)? != 0
            {
                notes.push(
                    "the x86 PM timer, APIC mode, VT-d interrupt limit and timer frequencies are left out"
                        .to_owned(),
                );
            }
            let mut gsi = 0u32;
            let ioapics: Vec<IoApic> = seen
                .iter()
                .map(|found| {
                    let io = IoApic {
                        address: found.address,
                        id: found.id,
                        gsi_base: gsi,
                        pins: found.pins,
                    };
                    gsi = gsi.saturating_add(found.pins);
                    io
                })
                .collect();
            if !ioapics.is_empty() {
                notes.push(
                    "IOAPICs are the root cell's irqchips, in order, with 24 pins and consecutive interrupt lines each: check them against the ACPI MADT".to_owned(),
                );
            }
            (
                InterruptController::Apic {
                    local_apic: text::DEFAULT_LOCAL_APIC,
                },
                ioapics,
            )
        }
    };
    Ok(SystemConfig {
        architecture: arch,
        hypervisor_memory,
        debug_console,
        interrupt_controller,
        ioapics,
        iommu_units,
        pci,
        root_cell,
    })
}
