//! The TOML source format (feature `std`): reading into owned configurations with defaults
//! that keep simple cells short, and writing them back in a canonical form.
//!
//! `docs/config-format.md` describes the schema. Reading never validates: the binary
//! encoder's validation does that, and [`crate::host`] maps its errors back to TOML
//! positions.

use std::borrow::ToOwned;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::limits;
use crate::owned::{Cell, CellConfig, SystemConfig};
use crate::types::{
    Architecture, Bdf, CellFlags, Console, ConsoleAccess, ConsoleKind, CpuSet, Frame, Gic,
    GicVersion, HypervisorMemory, InterruptController, IoApic, IommuKind, IommuUnit, IrqRange,
    MemoryFlags, MemoryRegion, PciDevice, PciDeviceKind, PciHost, PortRange, StreamId,
};

/// A step of a path to a TOML value: a key or an array index.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PathSegment {
    /// A table key.
    Key(&'static str),
    /// An array index.
    Index(usize),
}

/// An error reading TOML: a message and where it is, as a byte span of the text or as a
/// path to the value (which [`crate::host`] turns into a line and column).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TextError {
    /// What is wrong.
    pub message: String,
    /// Byte span in the text, when the TOML parser knows it.
    pub span: Option<Range<usize>>,
    /// Path to the value, when the span is not known.
    pub path: Vec<PathSegment>,
}

impl TextError {
    fn at(path: Vec<PathSegment>, message: impl Into<String>) -> Self {
        TextError {
            message: message.into(),
            span: None,
            path,
        }
    }

    fn from_toml(error: &toml::de::Error) -> Self {
        TextError {
            message: error.message().trim_end().to_owned(),
            span: error.span(),
            path: Vec::new(),
        }
    }
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TextError {}

// --- Values with a custom syntax -------------------------------------------------------------

/// Parses `12`, `0x3f8`, `0b101`, `0o17` (with `_` separators, as TOML integers).
fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim().replace('_', "");
    let (digits, radix) = if let Some(hex) = text.strip_prefix("0x") {
        (hex, 16)
    } else if let Some(bin) = text.strip_prefix("0b") {
        (bin, 2)
    } else if let Some(oct) = text.strip_prefix("0o") {
        (oct, 8)
    } else {
        (text.as_str(), 10)
    };
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// `first-last` or a single number.
fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("invalid range `{text}`, expected `first-last` or a number");
    match text.split_once('-') {
        Some((first, last)) => {
            let first = parse_number(first).ok_or_else(bad)?;
            let last = parse_number(last).ok_or_else(bad)?;
            if last < first {
                return Err(format!(
                    "invalid range `{text}`: the last is below the first"
                ));
            }
            Ok((first, last))
        }
        None => parse_number(text).map(|n| (n, n)).ok_or_else(bad),
    }
}

/// An inclusive range from an integer or a `"first-last"` string.
#[derive(Clone, Copy, Debug)]
struct RangeEntry(u64, u64);

impl<'de> Deserialize<'de> for RangeEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RangeEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a \"first-last\" string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RangeEntry, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("negative number"))?;
                Ok(RangeEntry(v, v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RangeEntry, E> {
                Ok(RangeEntry(v, v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RangeEntry, E> {
                parse_range(v)
                    .map(|(a, b)| RangeEntry(a, b))
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A CPU set: `"0-3,5"`, a number, or an array of numbers and `"first-last"` strings.
#[derive(Clone, Copy, Debug)]
struct CpuList(CpuSet);

impl CpuList {
    fn add<E: de::Error>(&mut self, first: u64, last: u64) -> Result<(), E> {
        if last >= u64::from(limits::MAX_CPUS) {
            return Err(E::custom(format!(
                "CPU {last} is beyond the last CPU ({})",
                limits::MAX_CPUS - 1
            )));
        }
        for cpu in first..=last {
            self.0.insert(cpu as u32);
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for CpuList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CpuList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU number, a \"0-3,5\" string or an array of them")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CpuList, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("negative CPU number"))?;
                self.visit_u64(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CpuList, E> {
                let mut list = CpuList(CpuSet::new());
                list.add(v, v)?;
                Ok(list)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CpuList, E> {
                let mut list = CpuList(CpuSet::new());
                for part in v.split(',') {
                    let (first, last) = parse_range(part).map_err(E::custom)?;
                    list.add(first, last)?;
                }
                Ok(list)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuList, A::Error> {
                let mut list = CpuList(CpuSet::new());
                while let Some(RangeEntry(first, last)) = seq.next_element()? {
                    list.add(first, last)?;
                }
                Ok(list)
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes a string that must be one of `names`.
fn named<'de, D: Deserializer<'de>, T>(
    d: D,
    names: &'static [&'static str],
    lookup: impl Fn(&str) -> Option<T>,
) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    lookup(&text).ok_or_else(|| de::Error::unknown_variant(&text, names))
}

macro_rules! named_value {
    ($name:ident, $ty:ty, [$($text:literal => $value:expr),+ $(,)?]) => {
        #[derive(Clone, Copy, Debug)]
        struct $name($ty);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($text),+];
                named(d, NAMES, |text| match text {
                    $($text => Some($name($value)),)+
                    _ => None,
                })
            }
        }
    };
}

named_value!(Arch, Architecture, [
    "aarch64" => Architecture::Aarch64,
    "x86_64" => Architecture::X86_64,
]);
named_value!(ConsoleKindName, ConsoleKind, [
    "pl011" => ConsoleKind::Pl011,
    "8250" => ConsoleKind::Uart8250,
    "cadence" => ConsoleKind::Cadence,
    "mvebu" => ConsoleKind::Mvebu,
    "hscif" => ConsoleKind::Hscif,
    "scifa" => ConsoleKind::Scifa,
    "imx" => ConsoleKind::Imx,
    "imx-lpuart" => ConsoleKind::ImxLpuart,
    "scif" => ConsoleKind::Scif,
]);
named_value!(AccessName, ConsoleAccess, [
    "port" => ConsoleAccess::Port,
    "mmio8" => ConsoleAccess::Mmio8,
    "mmio32" => ConsoleAccess::Mmio32,
]);
named_value!(IommuKindName, IommuKind, [
    "smmuv3" => IommuKind::SmmuV3,
    "smmuv2" => IommuKind::SmmuV2,
    "vt-d" => IommuKind::VtD,
    "amd-vi" => IommuKind::AmdVi,
]);
named_value!(PciKindName, PciDeviceKind, [
    "device" => PciDeviceKind::Device,
    "bridge" => PciDeviceKind::Bridge,
]);
named_value!(IrqChipType, Option<GicVersion>, [
    "gicv2" => Some(GicVersion::V2),
    "gicv3" => Some(GicVersion::V3),
    "apic" => None,
]);
named_value!(MemoryFlagName, MemoryFlags, [
    "read" => MemoryFlags::READ,
    "write" => MemoryFlags::WRITE,
    "execute" => MemoryFlags::EXECUTE,
    "dma" => MemoryFlags::DMA,
    "io" => MemoryFlags::IO,
    "comm-region" => MemoryFlags::COMM_REGION,
    "loadable" => MemoryFlags::LOADABLE,
    "root-shared" => MemoryFlags::ROOTSHARED,
]);
named_value!(CellFlagName, CellFlags, [
    "passive-comm-region" => CellFlags::PASSIVE_COMM_REGION,
    "aarch32" => CellFlags::AARCH32,
    "virtual-console-permitted" => CellFlags::VIRTUAL_CONSOLE_PERMITTED,
    "virtual-console-active" => CellFlags::VIRTUAL_CONSOLE_ACTIVE,
]);

const CELL_FLAG_NAMES: [(&str, CellFlags); 4] = [
    ("passive-comm-region", CellFlags::PASSIVE_COMM_REGION),
    ("aarch32", CellFlags::AARCH32),
    (
        "virtual-console-permitted",
        CellFlags::VIRTUAL_CONSOLE_PERMITTED,
    ),
    ("virtual-console-active", CellFlags::VIRTUAL_CONSOLE_ACTIVE),
];

/// `"0000:00:1f.2"` or `"00:1f.2"` (segment 0).
#[derive(Clone, Copy, Debug)]
struct PciAddressText {
    domain: u16,
    bdf: Bdf,
}

fn parse_pci_address(text: &str) -> Option<PciAddressText> {
    let (domain, bdf) = match text.matches(':').count() {
        1 => (0, text),
        2 => {
            let (domain, rest) = text.split_once(':')?;
            if domain.is_empty() || domain.len() > 4 {
                return None;
            }
            (u16::from_str_radix(domain, 16).ok()?, rest)
        }
        _ => return None,
    };
    Some(PciAddressText {
        domain,
        bdf: Bdf::parse(bdf)?,
    })
}

impl<'de> Deserialize<'de> for PciAddressText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_pci_address(&text).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid PCI address `{text}`, expected `segment:bus:device.function` (hexadecimal, e.g. `0000:00:1f.2`) or `bus:device.function`"
            ))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PciTable {
    address: PciAddressText,
    #[serde(default, rename = "type")]
    kind: Option<PciKindName>,
    #[serde(default)]
    iommu: Option<u8>,
}

/// A PCI device: an address string or a table.
struct PciSource(PciDevice);

impl<'de> Deserialize<'de> for PciSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PciSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PCI address string or a table { address, type, iommu }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PciSource, E> {
                let a = PciAddressText::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(PciSource(PciDevice {
                    domain: a.domain,
                    bdf: a.bdf,
                    kind: PciDeviceKind::Device,
                    iommu: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PciSource, A::Error> {
                let t = PciTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(PciSource(PciDevice {
                    domain: t.address.domain,
                    bdf: t.address.bdf,
                    kind: t.kind.map_or(PciDeviceKind::Device, |k| k.0),
                    iommu: t.iommu,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamTable {
    id: u32,
    #[serde(default)]
    mask: u32,
}

/// A stream ID: a number or a table { id, mask }.
struct StreamSource(StreamId);

impl<'de> Deserialize<'de> for StreamSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a stream ID or a table { id, mask }")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StreamSource, E> {
                let id = u32::try_from(v)
                    .map_err(|_| E::custom(format!("stream ID {v} does not fit 32 bits")))?;
                Ok(StreamSource(StreamId { id, mask: 0 }))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StreamSource, E> {
                self.visit_i64(v.try_into().unwrap_or(-1))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StreamSource, A::Error> {
                let t = StreamTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(StreamSource(StreamId {
                    id: t.id,
                    mask: t.mask,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameTable {
    base: u64,
    #[serde(default)]
    size: Option<u64>,
}

/// A register frame: a base address, or a table { base, size }.
#[derive(Clone, Copy)]
struct FrameSource {
    base: u64,
    size: Option<u64>,
}

impl<'de> Deserialize<'de> for FrameSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FrameSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base address or a table { base, size }")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FrameSource, E> {
                let base = u64::try_from(v).map_err(|_| E::custom("negative address"))?;
                Ok(FrameSource { base, size: None })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FrameSource, E> {
                Ok(FrameSource {
                    base: v,
                    size: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FrameSource, A::Error> {
                let t = FrameTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(FrameSource {
                    base: t.base,
                    size: t.size,
                })
            }
        }
        d.deserialize_any(V)
    }
}

// --- Document structure ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MemorySource {
    #[serde(default)]
    phys: Option<u64>,
    #[serde(default)]
    virt: Option<u64>,
    size: u64,
    #[serde(default)]
    flags: Option<Vec<MemoryFlagName>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConsoleSource {
    #[serde(rename = "type")]
    kind: ConsoleKindName,
    address: u64,
    #[serde(default)]
    size: Option<u32>,
    #[serde(default)]
    access: Option<AccessName>,
    #[serde(default)]
    divider: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CellSource {
    #[serde(default)]
    architecture: Option<Arch>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    flags: Vec<CellFlagName>,
    cpus: CpuList,
    #[serde(default)]
    cpu_reset_address: u64,
    #[serde(default)]
    console: Option<ConsoleSource>,
    #[serde(default)]
    irqs: Vec<RangeEntry>,
    #[serde(default)]
    ports: Vec<RangeEntry>,
    #[serde(default)]
    pci_devices: Vec<PciSource>,
    #[serde(default)]
    stream_ids: Vec<StreamSource>,
    #[serde(default)]
    memory: Vec<MemorySource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HypervisorSource {
    start: u64,
    size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct IoApicSource {
    address: u64,
    #[serde(default)]
    id: u32,
    #[serde(default)]
    gsi_base: Option<u32>,
    #[serde(default = "default_pins")]
    pins: u32,
}

fn default_pins() -> u32 {
    24
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct IrqChipSource {
    #[serde(rename = "type")]
    kind: IrqChipType,
    #[serde(default)]
    maintenance_irq: Option<u32>,
    #[serde(default)]
    distributor: Option<FrameSource>,
    #[serde(default)]
    cpu_interface: Option<FrameSource>,
    #[serde(default)]
    hypervisor_interface: Option<FrameSource>,
    #[serde(default)]
    virtual_cpu_interface: Option<FrameSource>,
    #[serde(default)]
    redistributors: Option<FrameSource>,
    #[serde(default)]
    local_apic: Option<FrameSource>,
    #[serde(default)]
    ioapic: Vec<IoApicSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct IommuSource {
    #[serde(rename = "type")]
    kind: IommuKindName,
    base: u64,
    size: u64,
    #[serde(default)]
    amd_bdf: Option<PciAddressText>,
    #[serde(default)]
    amd_base_cap: u8,
    #[serde(default)]
    amd_msi_cap: u8,
    #[serde(default)]
    amd_features: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PciHostSource {
    ecam_base: u64,
    #[serde(default = "default_end_bus")]
    end_bus: u8,
    #[serde(default)]
    domain: u16,
}

fn default_end_bus() -> u8 {
    255
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SystemSource {
    architecture: Arch,
    hypervisor: HypervisorSource,
    #[serde(default)]
    debug_console: Option<ConsoleSource>,
    interrupt_controller: IrqChipSource,
    #[serde(default)]
    iommu: Vec<IommuSource>,
    #[serde(default)]
    pci_host: Option<PciHostSource>,
    root_cell: CellSource,
}

// --- Defaults ----------------------------------------------------------------------------------

/// The name of the root cell when the TOML gives none.
pub const DEFAULT_ROOT_NAME: &str = "root";
/// The flags of a memory region when the TOML gives none.
pub const DEFAULT_MEMORY_FLAGS: MemoryFlags = MemoryFlags::READ.union(MemoryFlags::WRITE);
/// The GIC maintenance interrupt when the TOML gives none (PPI 9, as on most boards).
pub const DEFAULT_MAINTENANCE_IRQ: u32 = 25;
/// The x86 local APIC when the TOML gives none (SDM 10.4.1).
pub const DEFAULT_LOCAL_APIC: Frame = Frame {
    base: 0xfee0_0000,
    size: 0x1000,
};

/// The access of a console of this type when the TOML gives none: I/O ports for an 8250 on
/// x86, 32-bit memory-mapped registers otherwise.
pub fn default_console_access(kind: ConsoleKind, architecture: Architecture) -> ConsoleAccess {
    if kind == ConsoleKind::Uart8250 && architecture == Architecture::X86_64 {
        ConsoleAccess::Port
    } else {
        ConsoleAccess::Mmio32
    }
}

/// The size of a console's registers when the TOML gives none: 8 ports or one page.
pub fn default_console_size(access: ConsoleAccess) -> u32 {
    match access {
        ConsoleAccess::Port => 8,
        _ => 0x1000,
    }
}

/// The size of the GIC redistributor frame when the TOML gives none: one per CPU of the
/// root cell, up to its highest CPU.
pub fn default_redistributors_size(root_cpus: &CpuSet) -> u64 {
    let cpus = root_cpus.last().map_or(1, |last| u64::from(last) + 1);
    cpus * Gic::default_sizes(GicVersion::V3)[4]
}

// --- Reading -------------------------------------------------------------------------------------

use PathSegment::{Index, Key};

fn convert_console(source: ConsoleSource, architecture: Architecture) -> Console {
    let kind = source.kind.0;
    let access = source
        .access
        .map_or_else(|| default_console_access(kind, architecture), |a| a.0);
    Console {
        kind,
        access,
        address: source.address,
        size: source.size.unwrap_or_else(|| default_console_size(access)),
        divider: source.divider,
    }
}

fn convert_cell(
    source: CellSource,
    architecture: Architecture,
    prefix: &[PathSegment],
    root: bool,
) -> Result<Cell, TextError> {
    let path = |rest: &[PathSegment]| [prefix, rest].concat();
    let name = match source.name {
        Some(name) => name,
        None if root => DEFAULT_ROOT_NAME.to_owned(),
        None => return Err(TextError::at(path(&[]), "missing field `name`")),
    };
    let mut memory_regions = Vec::with_capacity(source.memory.len());
    for (i, m) in source.memory.into_iter().enumerate() {
        let flags = m.flags.map_or(DEFAULT_MEMORY_FLAGS, |names| {
            names.iter().fold(MemoryFlags::empty(), |f, n| f | n.0)
        });
        let phys = match m.phys {
            Some(phys) => phys,
            None if flags.contains(MemoryFlags::COMM_REGION) => 0,
            None => {
                return Err(TextError::at(
                    path(&[Key("memory"), Index(i)]),
                    "missing field `phys` (only a communication region may leave it out)",
                ))
            }
        };
        memory_regions.push(MemoryRegion {
            phys_start: phys,
            virt_start: m.virt.unwrap_or(phys),
            size: m.size,
            flags,
        });
    }
    let irqs = source
        .irqs
        .iter()
        .enumerate()
        .map(|(i, &RangeEntry(first, last))| {
            let too_big = || TextError::at(path(&[Key("irqs"), Index(i)]), "does not fit 32 bits");
            Ok(IrqRange {
                first: u32::try_from(first).map_err(|_| too_big())?,
                count: u32::try_from(last - first + 1).map_err(|_| too_big())?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = source
        .ports
        .iter()
        .enumerate()
        .map(|(i, &RangeEntry(first, last))| {
            if last > 0xffff {
                return Err(TextError::at(
                    path(&[Key("ports"), Index(i)]),
                    format!("port {last:#x} is beyond the 16-bit port space"),
                ));
            }
            Ok(PortRange {
                base: first as u32,
                size: (last - first + 1) as u32,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Cell {
        name,
        flags: source.flags.iter().fold(CellFlags::empty(), |f, n| f | n.0),
        cpus: source.cpus.0,
        memory_regions,
        irqs,
        ports,
        pci_devices: source.pci_devices.into_iter().map(|p| p.0).collect(),
        stream_ids: source.stream_ids.into_iter().map(|s| s.0).collect(),
        console: source.console.map(|c| convert_console(c, architecture)),
        cpu_reset_address: source.cpu_reset_address,
    })
}

fn convert_frame(source: Option<FrameSource>, default_size: u64) -> Option<Frame> {
    source.map(|f| Frame {
        base: f.base,
        size: f.size.unwrap_or(default_size),
    })
}

/// Reads a cell configuration from TOML.
pub fn cell_from_toml(text: &str) -> Result<CellConfig, TextError> {
    let source: CellSource = toml::from_str(text).map_err(|e| TextError::from_toml(&e))?;
    let Some(architecture) = source.architecture else {
        return Err(TextError::at(Vec::new(), "missing field `architecture`"));
    };
    let architecture = architecture.0;
    Ok(CellConfig {
        architecture,
        cell: convert_cell(source, architecture, &[], false)?,
    })
}

/// Reads a system configuration from TOML.
pub fn system_from_toml(text: &str) -> Result<SystemConfig, TextError> {
    let source: SystemSource = toml::from_str(text).map_err(|e| TextError::from_toml(&e))?;
    let architecture = source.architecture.0;
    if source.root_cell.architecture.is_some() {
        return Err(TextError::at(
            vec![Key("root-cell"), Key("architecture")],
            "the root cell takes the system's architecture: set it at the top level only",
        ));
    }
    let root_cell = convert_cell(source.root_cell, architecture, &[Key("root-cell")], true)?;

    let chip = source.interrupt_controller;
    let chip_path = |key| vec![Key("interrupt-controller"), Key(key)];
    let (interrupt_controller, ioapics) = match chip.kind.0 {
        Some(version) => {
            if chip.local_apic.is_some() {
                return Err(TextError::at(
                    chip_path("local-apic"),
                    "a GIC has no local APIC",
                ));
            }
            if !chip.ioapic.is_empty() {
                return Err(TextError::at(chip_path("ioapic"), "a GIC has no IOAPIC"));
            }
            let Some(distributor) = chip.distributor else {
                return Err(TextError::at(
                    vec![Key("interrupt-controller")],
                    "missing field `distributor`",
                ));
            };
            let sizes = Gic::default_sizes(version);
            let redistributors_size = default_redistributors_size(&root_cell.cpus);
            let gic = Gic {
                version,
                maintenance_irq: chip.maintenance_irq.unwrap_or(DEFAULT_MAINTENANCE_IRQ),
                distributor: Frame {
                    base: distributor.base,
                    size: distributor.size.unwrap_or(sizes[0]),
                },
                cpu_interface: convert_frame(chip.cpu_interface, sizes[1]),
                hypervisor_interface: convert_frame(chip.hypervisor_interface, sizes[2]),
                virtual_cpu_interface: convert_frame(chip.virtual_cpu_interface, sizes[3]),
                redistributors: convert_frame(chip.redistributors, redistributors_size),
            };
            (InterruptController::Gic(gic), Vec::new())
        }
        None => {
            let gic_keys = [
                ("distributor", chip.distributor.is_some()),
                ("cpu-interface", chip.cpu_interface.is_some()),
                ("hypervisor-interface", chip.hypervisor_interface.is_some()),
                (
                    "virtual-cpu-interface",
                    chip.virtual_cpu_interface.is_some(),
                ),
                ("redistributors", chip.redistributors.is_some()),
                ("maintenance-irq", chip.maintenance_irq.is_some()),
            ];
            if let Some((key, _)) = gic_keys.iter().find(|(_, present)| *present) {
                return Err(TextError::at(
                    chip_path(key),
                    format!("`{key}` belongs to a GIC, not to the APIC"),
                ));
            }
            let local_apic = convert_frame(chip.local_apic, DEFAULT_LOCAL_APIC.size)
                .unwrap_or(DEFAULT_LOCAL_APIC);
            let mut next_gsi = 0u32;
            let ioapics = chip
                .ioapic
                .iter()
                .map(|io| {
                    let gsi_base = io.gsi_base.unwrap_or(next_gsi);
                    next_gsi = gsi_base.saturating_add(io.pins);
                    IoApic {
                        address: io.address,
                        id: io.id,
                        gsi_base,
                        pins: io.pins,
                    }
                })
                .collect();
            (InterruptController::Apic { local_apic }, ioapics)
        }
    };

    Ok(SystemConfig {
        architecture,
        hypervisor_memory: HypervisorMemory {
            start: source.hypervisor.start,
            size: source.hypervisor.size,
        },
        debug_console: source
            .debug_console
            .map(|c| convert_console(c, architecture)),
        interrupt_controller,
        ioapics,
        iommu_units: source
            .iommu
            .into_iter()
            .map(|u| IommuUnit {
                kind: u.kind.0,
                base: u.base,
                size: u.size,
                amd_bdf: u.amd_bdf.map_or(Bdf(0), |a| a.bdf),
                amd_base_cap: u.amd_base_cap,
                amd_msi_cap: u.amd_msi_cap,
                amd_features: u.amd_features,
            })
            .collect(),
        pci: source.pci_host.map(|p| PciHost {
            ecam_base: p.ecam_base,
            end_bus: p.end_bus,
            domain: p.domain,
        }),
        root_cell,
    })
}

/// Whether a TOML text is a system configuration (it has a `root-cell` table) rather than a
/// cell configuration. Text that is not TOML counts as a cell.
pub fn is_system_toml(text: &str) -> bool {
    toml::de::DeTable::parse(text)
        .map(|table| table.get_ref().contains_key("root-cell"))
        .unwrap_or(false)
}

// --- Writing -------------------------------------------------------------------------------------

/// `0x4000_0000`: hexadecimal in groups of four digits.
pub fn hex(value: u64) -> String {
    let digits = format!("{value:x}");
    let mut out = String::from("0x");
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 4 == 0 {
            out.push('_');
        }
        out.push(c);
    }
    out
}

/// ` # 16 MiB` for sizes that are a whole number of KiB, MiB or GiB.
fn size_comment(size: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if size >= 1 << shift && size.is_multiple_of(1 << shift) {
            return format!("  # {} {unit}", size >> shift);
        }
    }
    String::new()
}

fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn console_table(console: &Console, architecture: Architecture) -> String {
    let mut parts = vec![
        format!("type = {}", quote(console.kind.name())),
        format!("address = {}", hex(console.address)),
    ];
    let access = default_console_access(console.kind, architecture);
    if console.access != access {
        parts.push(format!("access = {}", quote(console.access.name())));
    }
    if console.size != default_console_size(console.access) {
        parts.push(format!("size = {}", hex(console.size.into())));
    }
    if console.divider != 0 {
        parts.push(format!("divider = {}", console.divider));
    }
    parts.join(", ")
}

fn frame_value(frame: &Frame, default_size: u64) -> String {
    if frame.size == default_size {
        hex(frame.base)
    } else {
        format!(
            "{{ base = {}, size = {} }}",
            hex(frame.base),
            hex(frame.size)
        )
    }
}

fn write_cell(out: &mut String, cell: &Cell, architecture: Architecture, prefix: &str, root: bool) {
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key} = {value}");
    };
    if !root || cell.name != DEFAULT_ROOT_NAME {
        line("name", quote(&cell.name));
    }
    if !cell.flags.is_empty() {
        let names: Vec<String> = CELL_FLAG_NAMES
            .iter()
            .filter(|(_, f)| cell.flags.contains(*f))
            .map(|(n, _)| quote(n))
            .collect();
        line("flags", format!("[{}]", names.join(", ")));
    }
    line("cpus", quote(&cell.cpus.to_string()));
    if cell.cpu_reset_address != 0 {
        line("cpu-reset-address", hex(cell.cpu_reset_address));
    }
    if let Some(console) = &cell.console {
        line(
            "console",
            format!("{{ {} }}", console_table(console, architecture)),
        );
    }
    if !cell.irqs.is_empty() {
        let entries: Vec<String> = cell
            .irqs
            .iter()
            .map(|r| {
                if r.count == 1 {
                    r.first.to_string()
                } else {
                    quote(&r.to_string())
                }
            })
            .collect();
        line("irqs", format!("[{}]", entries.join(", ")));
    }
    if !cell.ports.is_empty() {
        let entries: Vec<String> = cell
            .ports
            .iter()
            .map(|r| {
                if r.size == 1 {
                    hex(r.base.into())
                } else {
                    quote(&r.to_string())
                }
            })
            .collect();
        line("ports", format!("[{}]", entries.join(", ")));
    }
    if !cell.pci_devices.is_empty() {
        let entries: Vec<String> = cell
            .pci_devices
            .iter()
            .map(|d| {
                let address = quote(&d.address().to_string());
                if d.kind == PciDeviceKind::Device && d.iommu.is_none() {
                    return address;
                }
                let mut parts = vec![format!("address = {address}")];
                if d.kind != PciDeviceKind::Device {
                    parts.push(format!("type = {}", quote(d.kind.name())));
                }
                if let Some(iommu) = d.iommu {
                    parts.push(format!("iommu = {iommu}"));
                }
                format!("{{ {} }}", parts.join(", "))
            })
            .collect();
        line("pci-devices", format!("[{}]", entries.join(", ")));
    }
    if !cell.stream_ids.is_empty() {
        let entries: Vec<String> = cell
            .stream_ids
            .iter()
            .map(|s| {
                if s.mask == 0 {
                    hex(s.id.into())
                } else {
                    format!(
                        "{{ id = {}, mask = {} }}",
                        hex(s.id.into()),
                        hex(s.mask.into())
                    )
                }
            })
            .collect();
        line("stream-ids", format!("[{}]", entries.join(", ")));
    }
    for (i, region) in cell.memory_regions.iter().enumerate() {
        let _ = writeln!(out, "\n[[{prefix}memory]]  # memory region {i}");
        let comm = region.flags.contains(MemoryFlags::COMM_REGION);
        if !(comm && region.phys_start == 0) {
            let _ = writeln!(out, "phys = {}", hex(region.phys_start));
        }
        if region.virt_start != region.phys_start {
            let _ = writeln!(out, "virt = {}", hex(region.virt_start));
        }
        let _ = writeln!(
            out,
            "size = {}{}",
            hex(region.size),
            size_comment(region.size)
        );
        if region.flags != DEFAULT_MEMORY_FLAGS {
            let names: Vec<String> = MemoryFlags::NAMES
                .iter()
                .filter(|(_, f)| region.flags.contains(*f))
                .map(|(n, _)| quote(n))
                .collect();
            let _ = writeln!(out, "flags = [{}]", names.join(", "));
        }
    }
}

/// Writes a cell configuration as TOML, leaving out what equals the defaults. Reading the
/// text back gives the same configuration, for every configuration that validates.
pub fn cell_to_toml(config: &CellConfig) -> String {
    let mut out = String::from("# cellvisor cell configuration\n");
    let _ = writeln!(out, "architecture = {}", quote(config.architecture.name()));
    write_cell(&mut out, &config.cell, config.architecture, "", false);
    out
}

/// Writes a system configuration as TOML, leaving out what equals the defaults. Reading the
/// text back gives the same configuration, for every configuration that validates.
pub fn system_to_toml(config: &SystemConfig) -> String {
    let architecture = config.architecture;
    let mut out = String::from("# cellvisor system configuration\n");
    let _ = writeln!(out, "architecture = {}", quote(architecture.name()));

    let _ = writeln!(out, "\n[hypervisor]");
    let _ = writeln!(out, "start = {}", hex(config.hypervisor_memory.start));
    let _ = writeln!(
        out,
        "size = {}{}",
        hex(config.hypervisor_memory.size),
        size_comment(config.hypervisor_memory.size)
    );

    if let Some(console) = &config.debug_console {
        let _ = writeln!(out, "\n[debug-console]");
        for part in console_table(console, architecture).split(", ") {
            let _ = writeln!(out, "{part}");
        }
    }

    let _ = writeln!(out, "\n[interrupt-controller]");
    match &config.interrupt_controller {
        InterruptController::Gic(gic) => {
            let (name, sizes) = match gic.version {
                GicVersion::V2 => ("gicv2", Gic::default_sizes(GicVersion::V2)),
                GicVersion::V3 => ("gicv3", Gic::default_sizes(GicVersion::V3)),
            };
            let _ = writeln!(out, "type = {}", quote(name));
            if gic.maintenance_irq != DEFAULT_MAINTENANCE_IRQ {
                let _ = writeln!(out, "maintenance-irq = {}", gic.maintenance_irq);
            }
            let redistributors = default_redistributors_size(&config.root_cell.cpus);
            let frames = [
                ("distributor", Some(gic.distributor), sizes[0]),
                ("cpu-interface", gic.cpu_interface, sizes[1]),
                ("hypervisor-interface", gic.hypervisor_interface, sizes[2]),
                ("virtual-cpu-interface", gic.virtual_cpu_interface, sizes[3]),
                ("redistributors", gic.redistributors, redistributors),
            ];
            for (key, frame, default_size) in frames {
                if let Some(frame) = frame {
                    let _ = writeln!(out, "{key} = {}", frame_value(&frame, default_size));
                }
            }
        }
        InterruptController::Apic { local_apic } => {
            let _ = writeln!(out, "type = \"apic\"");
            if *local_apic != DEFAULT_LOCAL_APIC {
                let _ = writeln!(
                    out,
                    "local-apic = {}",
                    frame_value(local_apic, DEFAULT_LOCAL_APIC.size)
                );
            }
            let mut next_gsi = 0u32;
            for ioapic in &config.ioapics {
                let _ = writeln!(out, "\n[[interrupt-controller.ioapic]]");
                let _ = writeln!(out, "address = {}", hex(ioapic.address));
                if ioapic.id != 0 {
                    let _ = writeln!(out, "id = {}", hex(ioapic.id.into()));
                }
                if ioapic.gsi_base != next_gsi {
                    let _ = writeln!(out, "gsi-base = {}", ioapic.gsi_base);
                }
                if ioapic.pins != default_pins() {
                    let _ = writeln!(out, "pins = {}", ioapic.pins);
                }
                next_gsi = ioapic.gsi_base.saturating_add(ioapic.pins);
            }
        }
    }

    for unit in &config.iommu_units {
        let _ = writeln!(out, "\n[[iommu]]");
        let _ = writeln!(out, "type = {}", quote(unit.kind.name()));
        let _ = writeln!(out, "base = {}", hex(unit.base));
        let _ = writeln!(out, "size = {}", hex(unit.size));
        if unit.amd_bdf != Bdf(0) {
            let _ = writeln!(out, "amd-bdf = {}", quote(&unit.amd_bdf.to_string()));
        }
        if unit.amd_base_cap != 0 {
            let _ = writeln!(out, "amd-base-cap = {}", hex(unit.amd_base_cap.into()));
        }
        if unit.amd_msi_cap != 0 {
            let _ = writeln!(out, "amd-msi-cap = {}", hex(unit.amd_msi_cap.into()));
        }
        if unit.amd_features != 0 {
            let _ = writeln!(out, "amd-features = {}", hex(unit.amd_features.into()));
        }
    }

    if let Some(pci) = &config.pci {
        let _ = writeln!(out, "\n[pci-host]");
        let _ = writeln!(out, "ecam-base = {}", hex(pci.ecam_base));
        if pci.end_bus != default_end_bus() {
            let _ = writeln!(out, "end-bus = {}", hex(pci.end_bus.into()));
        }
        if pci.domain != 0 {
            let _ = writeln!(out, "domain = {}", hex(pci.domain.into()));
        }
    }

    let _ = writeln!(out, "\n[root-cell]");
    write_cell(
        &mut out,
        &config.root_cell,
        architecture,
        "root-cell.",
        true,
    );
    out
}
