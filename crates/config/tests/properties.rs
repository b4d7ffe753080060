//! Property tests: every valid configuration survives TOML → binary → TOML unchanged, and
//! mutated binaries are rejected with the specific error, never with a panic.

mod common;

use std::collections::BTreeSet;

use cellvisor_config::host::decompile;
use cellvisor_config::text::{cell_from_toml, cell_to_toml, system_from_toml, system_to_toml};
use cellvisor_config::{
    layout, Architecture, Bdf, Cell, CellConfig, CellConfigView, CellFlags, ConfigKind, Console,
    ConsoleAccess, ConsoleKind, CpuSet, Element, Frame, Gic, GicVersion, HypervisorMemory,
    InterruptController, IoApic, IommuKind, IommuUnit, IrqRange, List, MemoryFlags, MemoryRegion,
    PciDevice, PciDeviceKind, PciHost, PortRange, Problem, StreamId, SystemConfig,
    SystemConfigView,
};
use proptest::prelude::*;
use proptest::sample::select;

const PAGE: u64 = 0x1000;

fn flags_strategy(root: bool) -> impl Strategy<Value = MemoryFlags> {
    let extra = if root { 0x1f } else { 0xdf };
    (1u64..8, any::<u64>()).prop_map(move |(access, more)| {
        // READ/WRITE/EXECUTE (at least one), then DMA, IO, LOADABLE, ROOTSHARED as allowed.
        MemoryFlags::from_bits_truncate(access | (more & extra & !0x27))
    })
}

/// Memory regions that are disjoint in both address spaces, from `phys_base` and `virt_base`.
fn regions_strategy(
    phys_base: u64,
    virt_base: u64,
    max: usize,
    root: bool,
) -> impl Strategy<Value = Vec<MemoryRegion>> {
    prop::collection::vec(
        (
            0u64..64,
            1u64..0x400,
            0u64..64,
            flags_strategy(root),
            any::<bool>(),
        ),
        0..max,
    )
    .prop_map(move |specs| {
        let (mut phys, mut virt) = (phys_base, virt_base);
        let mut regions = Vec::new();
        for (phys_gap, pages, virt_gap, flags, identity) in specs {
            phys += phys_gap * PAGE;
            virt += virt_gap * PAGE;
            let start = phys.max(virt);
            let (p, v) = if identity {
                (start, start)
            } else {
                (phys, virt)
            };
            regions.push(MemoryRegion {
                phys_start: p,
                virt_start: v,
                size: pages * PAGE,
                flags,
            });
            phys = p + pages * PAGE;
            virt = v + pages * PAGE;
            if identity {
                phys = phys.max(virt);
                virt = phys;
            }
        }
        regions
    })
}

/// Disjoint ranges `[first, first + count)` inside `[low, high]`.
fn ranges_strategy(low: u64, high: u64, max: usize) -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..40, 1u64..20), 0..max).prop_map(move |specs| {
        let mut at = low;
        let mut out = Vec::new();
        for (gap, count) in specs {
            let first = at + gap;
            if first + count - 1 > high {
                break;
            }
            out.push((first, count));
            at = first + count;
        }
        out
    })
}

fn console_strategy(architecture: Architecture) -> impl Strategy<Value = Console> {
    let accesses = match architecture {
        Architecture::Aarch64 => vec![ConsoleAccess::Mmio8, ConsoleAccess::Mmio32],
        Architecture::X86_64 => vec![
            ConsoleAccess::Port,
            ConsoleAccess::Mmio8,
            ConsoleAccess::Mmio32,
        ],
    };
    (
        select(ConsoleKind::ALL.to_vec()),
        select(accesses),
        0u64..0x1_0000_0000,
        1u32..0x100,
        any::<u16>(),
    )
        .prop_map(|(kind, access, address, size, divider)| {
            let address = if access == ConsoleAccess::Port {
                address % 0xff00
            } else {
                address
            };
            Console {
                kind,
                access,
                address,
                size,
                divider: divider.into(),
            }
        })
}

/// A cell that validates on its own. `root`: the root cell of a system (no communication
/// region, loadable or root-shared memory, no aarch32); `phys_base`: where its memory starts.
fn cell_strategy(
    architecture: Architecture,
    root: bool,
    phys_base: u64,
) -> impl Strategy<Value = Cell> {
    let arm = architecture == Architecture::Aarch64;
    let (irq_low, irq_high) = if arm { (32, 1019) } else { (0, 1023) };
    (
        "[a-z][a-z0-9_.-]{0,30}",
        any::<u8>(),
        prop::collection::btree_set(0u32..512, 1..6),
        regions_strategy(phys_base, 0, 8, root),
        ranges_strategy(irq_low, irq_high, 6),
        ranges_strategy(0, 0xffff, if arm { 1 } else { 5 }),
        prop::collection::btree_set((any::<u16>(), any::<u16>()), 0..4),
        prop::collection::btree_set(0u32..0x1_0000, 0..if arm { 4 } else { 1 }),
        (
            prop::option::of(console_strategy(architecture)),
            any::<bool>(),
            0u64..1 << 52,
            any::<bool>(),
        ),
    )
        .prop_map(
            move |(name, flag_bits, cpus, regions, irqs, ports, pci, streams, rest)| {
                let (console, mapped_console, reset, comm) = rest;
                let mut flags = CellFlags::from_bits_truncate(u32::from(flag_bits) & 0xf);
                if root || !arm {
                    flags.remove(CellFlags::AARCH32);
                }
                if root {
                    flags.remove(CellFlags::PASSIVE_COMM_REGION);
                }
                let mut memory_regions = regions;
                if comm && !root {
                    let end = memory_regions
                        .iter()
                        .map(|r| r.virt_start + r.size)
                        .max()
                        .unwrap_or(0);
                    memory_regions.push(MemoryRegion {
                        phys_start: 0,
                        virt_start: end + PAGE,
                        size: PAGE,
                        flags: MemoryFlags::READ | MemoryFlags::WRITE | MemoryFlags::COMM_REGION,
                    });
                }
                let mut console = console;
                if let Some(c) = console.as_mut() {
                    let target = memory_regions
                        .iter()
                        .find(|r| !r.flags.contains(MemoryFlags::COMM_REGION));
                    match target {
                        Some(r) if mapped_console && c.access != ConsoleAccess::Port => {
                            c.address = r.virt_start;
                            c.size = c.size.min(r.size as u32);
                        }
                        _ => flags |= CellFlags::VIRTUAL_CONSOLE_ACTIVE,
                    }
                }
                let pci_devices = pci
                    .into_iter()
                    .map(|(domain, bdf)| PciDevice {
                        domain: if root { 0 } else { domain },
                        bdf: Bdf(bdf),
                        kind: if bdf % 3 == 0 {
                            PciDeviceKind::Bridge
                        } else {
                            PciDeviceKind::Device
                        },
                        iommu: (bdf % 2 == 0).then_some((domain % 4) as u8),
                    })
                    .collect::<Vec<_>>();
                // The set above is of (domain, bdf) pairs: unique already; keep the check.
                let mut seen = BTreeSet::new();
                let pci_devices = pci_devices
                    .into_iter()
                    .filter(|d| seen.insert((d.domain, d.bdf.0)))
                    .collect();
                Cell {
                    name,
                    flags,
                    cpus: CpuSet::from_cpus(cpus),
                    memory_regions,
                    irqs: irqs
                        .into_iter()
                        .map(|(first, count)| IrqRange {
                            first: first as u32,
                            count: count as u32,
                        })
                        .collect(),
                    ports: if arm {
                        Vec::new()
                    } else {
                        ports
                            .into_iter()
                            .map(|(base, size)| PortRange {
                                base: base as u32,
                                size: size as u32,
                            })
                            .collect()
                    },
                    pci_devices,
                    stream_ids: streams
                        .into_iter()
                        .map(|id| StreamId { id, mask: 0 })
                        .collect(),
                    console,
                    cpu_reset_address: reset,
                }
            },
        )
}

fn cell_config_strategy() -> impl Strategy<Value = CellConfig> {
    prop_oneof![
        cell_strategy(Architecture::Aarch64, false, 0x8000_0000).prop_map(|cell| CellConfig {
            architecture: Architecture::Aarch64,
            cell
        }),
        cell_strategy(Architecture::X86_64, false, 0x1_0000_0000).prop_map(|cell| CellConfig {
            architecture: Architecture::X86_64,
            cell
        }),
    ]
}

fn frame(base: u64, size: u64) -> Frame {
    Frame { base, size }
}

fn arm_system_strategy() -> impl Strategy<Value = SystemConfig> {
    (
        any::<bool>(),
        16u32..32,
        prop::collection::vec(select(vec![IommuKind::SmmuV3, IommuKind::SmmuV2]), 0..3),
        1u64..0x800,
        prop::option::of(console_strategy(Architecture::Aarch64)),
        cell_strategy(Architecture::Aarch64, true, 0x1_0000_0000),
        any::<bool>(),
    )
        .prop_map(
            |(v3, maintenance_irq, smmus, hv_pages, debug, mut root, sizes)| {
                let size = |default: u64| if sizes { default * 16 } else { default };
                let gic = if v3 {
                    Gic {
                        version: GicVersion::V3,
                        maintenance_irq,
                        distributor: frame(0x800_0000, size(0x1_0000)),
                        cpu_interface: sizes.then(|| frame(0x820_0000, 0x2000)),
                        hypervisor_interface: None,
                        virtual_cpu_interface: None,
                        redistributors: Some(frame(0x840_0000, 0x20_0000)),
                    }
                } else {
                    Gic {
                        version: GicVersion::V2,
                        maintenance_irq,
                        distributor: frame(0x800_0000, size(0x1000)),
                        cpu_interface: Some(frame(0x810_0000, size(0x2000))),
                        hypervisor_interface: Some(frame(0x820_0000, size(0x1000))),
                        virtual_cpu_interface: Some(frame(0x830_0000, size(0x2000))),
                        redistributors: None,
                    }
                };
                if smmus.is_empty() {
                    root.stream_ids.clear();
                }
                if !v3 {
                    root.irqs.retain(|r| r.first < 4096);
                }
                if root.pci_devices.iter().any(|_| true) {
                    root.pci_devices.clear();
                }
                SystemConfig {
                    architecture: Architecture::Aarch64,
                    hypervisor_memory: HypervisorMemory {
                        start: 0x4000_0000,
                        size: hv_pages * PAGE,
                    },
                    debug_console: debug,
                    interrupt_controller: InterruptController::Gic(gic),
                    ioapics: Vec::new(),
                    iommu_units: smmus
                        .iter()
                        .enumerate()
                        .map(|(i, &kind)| IommuUnit {
                            kind,
                            base: 0x900_0000 + i as u64 * 0x10_0000,
                            size: 0x2_0000,
                            amd_bdf: Bdf(0),
                            amd_base_cap: 0,
                            amd_msi_cap: 0,
                            amd_features: 0,
                        })
                        .collect(),
                    pci: None,
                    root_cell: root,
                }
            },
        )
}

fn x86_system_strategy() -> impl Strategy<Value = SystemConfig> {
    (
        prop::collection::vec((1u32..=240, any::<u32>()), 1..4),
        prop::collection::vec(
            (
                select(vec![IommuKind::VtD, IommuKind::AmdVi]),
                any::<(u16, u8, u8, u32)>(),
            ),
            0..3,
        ),
        prop::option::of((0u64..16, any::<u8>(), any::<u16>())),
        prop::option::of(console_strategy(Architecture::X86_64)),
        cell_strategy(Architecture::X86_64, true, 0x1_0000_0000),
        any::<bool>(),
    )
        .prop_map(|(pins, iommus, pci, debug, mut root, default_apic)| {
            let mut gsi = 0;
            let ioapics: Vec<IoApic> = pins
                .iter()
                .enumerate()
                .map(|(i, &(pins, id))| {
                    let io = IoApic {
                        address: 0xfec0_0000 + i as u64 * PAGE,
                        id,
                        gsi_base: gsi,
                        pins,
                    };
                    gsi += pins;
                    io
                })
                .collect();
            root.irqs.retain(|r| r.first + r.count <= gsi);
            let iommu_units: Vec<IommuUnit> = iommus
                .iter()
                .enumerate()
                .map(|(i, &(kind, (bdf, base_cap, msi_cap, features)))| {
                    let amd = kind == IommuKind::AmdVi;
                    IommuUnit {
                        kind,
                        base: 0xfed0_0000 + i as u64 * 0x1_0000,
                        size: 0x1000,
                        amd_bdf: Bdf(if amd { bdf } else { 0 }),
                        amd_base_cap: if amd { base_cap } else { 0 },
                        amd_msi_cap: if amd { msi_cap } else { 0 },
                        amd_features: if amd { features } else { 0 },
                    }
                })
                .collect();
            let pci = pci.map(|(base, end_bus, domain)| PciHost {
                ecam_base: 0x40_0000_0000 + base * 0x1000_0000,
                end_bus,
                domain,
            });
            match pci {
                Some(host) => {
                    for d in &mut root.pci_devices {
                        d.domain = host.domain;
                        d.bdf =
                            Bdf(u16::from(d.bdf.bus().min(host.end_bus)) << 8 | (d.bdf.0 & 0xff));
                        d.iommu = d.iommu.filter(|&i| usize::from(i) < iommu_units.len());
                    }
                    let mut seen = BTreeSet::new();
                    root.pci_devices.retain(|d| seen.insert(d.bdf.0));
                }
                None => root.pci_devices.clear(),
            }
            SystemConfig {
                architecture: Architecture::X86_64,
                hypervisor_memory: HypervisorMemory {
                    start: 0x10_0000,
                    size: 0x100_0000,
                },
                debug_console: debug,
                interrupt_controller: InterruptController::Apic {
                    local_apic: if default_apic {
                        frame(0xfee0_0000, PAGE)
                    } else {
                        frame(0xfee1_0000, 2 * PAGE)
                    },
                },
                ioapics,
                iommu_units,
                pci,
                root_cell: root,
            }
        })
}

fn system_strategy() -> impl Strategy<Value = SystemConfig> {
    prop_oneof![arm_system_strategy(), x86_system_strategy()]
}

/// Sets a little-endian `u32` and repairs the checksum.
fn set_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    common::fix_checksum(bytes);
}

/// The error a byte flip at `index` must cause.
fn flip_expectation(index: usize, kind: ConfigKind, bytes: &[u8]) -> fn(&Problem) -> bool {
    let _ = (kind, bytes);
    match index {
        0..=3 => |p| matches!(p, Problem::BadMagic { .. }),
        4 | 5 => |p| matches!(p, Problem::UnsupportedRevision { .. }),
        6 => |p| matches!(p, Problem::UnknownKind { .. } | Problem::WrongKind { .. }),
        7 => |p| {
            matches!(
                p,
                Problem::UnknownArchitecture { .. } | Problem::ChecksumMismatch { .. }
            )
        },
        8..=11 => |p| matches!(p, Problem::Truncated { .. } | Problem::TrailingBytes { .. }),
        _ => |p| matches!(p, Problem::ChecksumMismatch { .. }),
    }
}

fn parse(bytes: &[u8], kind: ConfigKind) -> Result<(), cellvisor_config::Error> {
    match kind {
        ConfigKind::System => SystemConfigView::parse(bytes).map(|_| ()),
        ConfigKind::Cell => CellConfigView::parse(bytes).map(|_| ()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn cells_round_trip(config in cell_config_strategy()) {
        let bytes = config.to_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&CellConfig::from_bytes(&bytes).unwrap(), &config);
        let text = cell_to_toml(&config);
        prop_assert_eq!(&cell_from_toml(&text).unwrap(), &config, "{}", text);
        let decompiled = decompile(&bytes).unwrap();
        prop_assert_eq!(&decompiled, &text);
        prop_assert_eq!(cell_from_toml(&decompiled).unwrap().to_bytes().unwrap(), bytes);
    }

    #[test]
    fn systems_round_trip(config in system_strategy()) {
        let bytes = config.to_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&SystemConfig::from_bytes(&bytes).unwrap(), &config);
        let text = system_to_toml(&config);
        prop_assert_eq!(&system_from_toml(&text).unwrap(), &config, "{}", text);
        let decompiled = decompile(&bytes).unwrap();
        prop_assert_eq!(&decompiled, &text);
        prop_assert_eq!(system_from_toml(&decompiled).unwrap().to_bytes().unwrap(), bytes);
    }

    #[test]
    fn truncated_binaries_are_rejected(config in cell_config_strategy(), cut in any::<prop::sample::Index>()) {
        let bytes = config.to_bytes().unwrap();
        let len = cut.index(bytes.len());
        let error = CellConfigView::parse(&bytes[..len]).unwrap_err();
        prop_assert_eq!(error.element, Element::Header);
        let needed = if len < 16 { 16 } else { bytes.len() as u64 };
        prop_assert_eq!(error.problem, Problem::Truncated { needed, available: len as u64 });
    }

    #[test]
    fn flipped_bytes_are_rejected(
        config in system_strategy(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let mut bytes = config.to_bytes().unwrap();
        let index = at.index(bytes.len());
        bytes[index] ^= xor;
        let error = SystemConfigView::parse(&bytes).unwrap_err();
        prop_assert_eq!(error.element, Element::Header);
        prop_assert!(flip_expectation(index, ConfigKind::System, &bytes)(&error.problem), "byte {} gave {}", index, error);
    }

    #[test]
    fn wrong_checksums_and_revisions_are_rejected(
        config in cell_config_strategy(),
        checksum in any::<u32>(),
        revision in any::<u16>(),
    ) {
        let good = config.to_bytes().unwrap();
        let computed = layout::checksum(&good);
        prop_assume!(checksum != computed && revision != layout::REVISION);
        let mut bytes = good.clone();
        bytes[12..16].copy_from_slice(&checksum.to_le_bytes());
        prop_assert_eq!(
            CellConfigView::parse(&bytes).unwrap_err().problem,
            Problem::ChecksumMismatch { stored: checksum, computed }
        );
        let mut bytes = good;
        bytes[4..6].copy_from_slice(&revision.to_le_bytes());
        common::fix_checksum(&mut bytes);
        prop_assert_eq!(
            CellConfigView::parse(&bytes).unwrap_err().problem,
            Problem::UnsupportedRevision { found: revision }
        );
    }

    #[test]
    fn oversized_counts_are_rejected(
        config in cell_config_strategy(),
        field in 0usize..6,
        excess in 1u32..,
    ) {
        let lists = [
            List::CpuSetWords,
            List::MemoryRegions,
            List::IrqRanges,
            List::PortRanges,
            List::PciDevices,
            List::StreamIds,
        ];
        let list = lists[field];
        let count = list.limit().saturating_add(excess);
        let mut bytes = config.to_bytes().unwrap();
        set_u32(&mut bytes, common::CELL_DESC + 36 + 4 * field, count);
        let error = CellConfigView::parse(&bytes).unwrap_err();
        prop_assert_eq!(error.element, Element::Count(list));
        prop_assert_eq!(error.problem, Problem::TooMany { count, limit: list.limit() });
    }

    #[test]
    fn counts_that_do_not_add_up_are_rejected(
        config in system_strategy(),
        field in 0usize..6,
        delta in 1u32..4,
    ) {
        let mut bytes = config.to_bytes().unwrap();
        let root = 16 + 160 + 32 * config.iommu_units.len() + 24 * config.ioapics.len();
        let at = root + 36 + 4 * field;
        let count = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let new = if count >= delta && field % 2 == 0 { count - delta } else { count + delta };
        set_u32(&mut bytes, at, new);
        let error = SystemConfigView::parse(&bytes).unwrap_err();
        prop_assert!(
            matches!(error.problem, Problem::LayoutMismatch { .. } | Problem::TooMany { .. }),
            "{}", error
        );
    }

    #[test]
    fn changed_bodies_never_panic(
        config in system_strategy(),
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = config.to_bytes().unwrap();
        for (at, value) in changes {
            let index = 16 + at.index(bytes.len() - 16);
            bytes[index] = value;
        }
        common::fix_checksum(&mut bytes);
        for kind in [ConfigKind::System, ConfigKind::Cell] {
            if parse(&bytes, kind).is_ok() && kind == ConfigKind::System {
                // Whatever still validates encodes to the same bytes.
                prop_assert_eq!(SystemConfig::from_bytes(&bytes).unwrap().encode().unwrap(), bytes.clone());
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..600), repair in any::<bool>()) {
        if repair && bytes.len() >= 16 {
            bytes[..4].copy_from_slice(&layout::MAGIC);
            bytes[4..6].copy_from_slice(&layout::REVISION.to_le_bytes());
            let len = bytes.len() as u32;
            bytes[8..12].copy_from_slice(&len.to_le_bytes());
            common::fix_checksum(&mut bytes);
        }
        let _ = parse(&bytes, ConfigKind::System);
        let _ = parse(&bytes, ConfigKind::Cell);
        let _ = decompile(&bytes);
    }
}
