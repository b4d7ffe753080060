//! Import of Jailhouse configurations. The inputs are built here, field by field, from the
//! layout documented in Jailhouse's `include/jailhouse/cell-config.h` (revisions 13 and 14).

mod common;

use cellvisor_config::jailhouse::{import, ImportedConfig};
use cellvisor_config::text::{cell_from_toml, system_from_toml};
use cellvisor_config::{
    Architecture, Bdf, CellFlags, ConsoleAccess, ConsoleKind, CpuSet, Frame, GicVersion,
    InterruptController, IoApic, IommuKind, IrqRange, MemoryFlags, PciDeviceKind, PortRange,
    StreamId,
};
use common::*;

const MEM_R: u64 = 0x1;
const MEM_W: u64 = 0x2;
const MEM_X: u64 = 0x4;
const MEM_DMA: u64 = 0x8;
const MEM_IO: u64 = 0x10;
const MEM_COMM: u64 = 0x20;
const MEM_LOADABLE: u64 = 0x40;
const MEM_IO_32: u64 = 4 << 16;

/// A little-endian byte writer.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// `struct jailhouse_console` (32 bytes).
#[derive(Clone, Copy, Default)]
struct JhConsole {
    address: u64,
    size: u32,
    kind: u16,
    flags: u16,
    divider: u32,
}

impl JhConsole {
    fn write(&self, b: &mut Bytes) {
        b.u64(self.address)
            .u32(self.size)
            .u16(self.kind)
            .u16(self.flags)
            .u32(self.divider)
            .u32(0) // gate_nr
            .u64(0); // clock_reg
    }
}

/// `struct jailhouse_cell_desc` and the arrays after it.
#[derive(Clone, Default)]
struct JhCell {
    name: &'static str,
    flags: u32,
    cpu_set: Vec<u8>,
    memory: Vec<[u64; 4]>,
    cache_regions: usize,
    irqchips: Vec<(u64, u32, u32, [u32; 4])>,
    pio: Vec<(u16, u16)>,
    pci_devices: Vec<(u8, u8, u16, u16)>,
    pci_caps: usize,
    stream_ids: Vec<u32>,
    vpci_irq_base: u32,
    cpu_reset_address: u64,
    console: JhConsole,
}

impl JhCell {
    fn write(&self, b: &mut Bytes, revision: u16, arch: u8) {
        match revision {
            13 => b.raw(b"JHCELL"),
            _ => b.raw(b"JHCLL").u8(arch),
        };
        b.u16(revision);
        let mut name = [0u8; 32];
        name[..self.name.len()].copy_from_slice(self.name.as_bytes());
        b.raw(&name)
            .u32(0) // id
            .u32(self.flags)
            .u32(self.cpu_set.len() as u32)
            .u32(self.memory.len() as u32)
            .u32(self.cache_regions as u32)
            .u32(self.irqchips.len() as u32)
            .u32(self.pio.len() as u32)
            .u32(self.pci_devices.len() as u32)
            .u32(self.pci_caps as u32)
            .u32(self.stream_ids.len() as u32)
            .u32(self.vpci_irq_base)
            .u64(self.cpu_reset_address)
            .u64(0); // msg_reply_timeout
        self.console.write(b);
        b.raw(&self.cpu_set);
        for m in &self.memory {
            b.u64(m[0]).u64(m[1]).u64(m[2]).u64(m[3]);
        }
        for _ in 0..self.cache_regions {
            b.u32(0).u32(2).u8(1).u8(0).u16(0);
        }
        for &(address, id, pin_base, bitmap) in &self.irqchips {
            b.u64(address).u32(id).u32(pin_base);
            for word in bitmap {
                b.u32(word);
            }
        }
        for &(base, length) in &self.pio {
            b.u16(base).u16(length);
        }
        for &(kind, iommu, domain, bdf) in &self.pci_devices {
            b.u8(kind).u8(iommu).u16(domain).u16(bdf);
            b.zeros(24 + 2 + 2 + 1 + 1 + 2 + 2 + 8 + 4 + 1 + 1 + 2);
        }
        for _ in 0..self.pci_caps {
            b.u16(0x10).u16(0x40).u16(8).u16(0);
        }
        for &id in &self.stream_ids {
            b.u32(id);
        }
    }

    fn file(&self, revision: u16, arch: u8) -> Vec<u8> {
        let mut b = Bytes::default();
        self.write(&mut b, revision, arch);
        b.0
    }
}

/// `struct jailhouse_iommu` (28 bytes).
fn iommu(b: &mut Bytes, kind: u32, base: u64, size: u32, amd: (u16, u8, u8, u32)) {
    b.u32(kind)
        .u64(base)
        .u32(size)
        .u16(amd.0)
        .u8(amd.1)
        .u8(amd.2)
        .u32(amd.3)
        .zeros(4);
}

/// `struct jailhouse_system` for arm64: GICv3 at QEMU virt's addresses, an SMMU-500.
fn arm_system_file(revision: u16, root: &JhCell) -> Vec<u8> {
    let mut b = Bytes::default();
    match revision {
        13 => b.raw(b"JHSYST"),
        _ => b.raw(b"JHSYS").u8(2),
    };
    b.u16(revision).u32(0);
    // hypervisor_memory
    b.u64(0x7fc0_0000).u64(0).u64(0x60_0000).u64(0);
    JhConsole {
        address: 0x900_0000,
        size: 0x1000,
        kind: 3,
        flags: 3,
        divider: 0,
    }
    .write(&mut b);
    // PCI: a virtual host bridge (for ivshmem).
    b.u64(0x8_0000_0000).u8(0).u8(1).u16(1);
    iommu(&mut b, 5, 0x905_0000, 0x2_0000, (0, 0, 0, 0));
    for _ in 1..8 {
        iommu(&mut b, 0, 0, 0, (0, 0, 0, 0));
    }
    // arm: maintenance_irq, gic_version, padding, gicd, gicc, gich, gicv, gicr
    b.u8(25)
        .u8(3)
        .zeros(2)
        .u64(0x800_0000)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0x80a_0000);
    assert_eq!(b.0.len(), 356);
    root.write(&mut b, revision, 2);
    b.0
}

fn arm_root() -> JhCell {
    JhCell {
        name: "QEMU-ARM64",
        flags: 0,
        cpu_set: vec![0b1111, 0, 0, 0, 0, 0, 0, 0],
        memory: vec![
            [
                0x4000_0000,
                0x4000_0000,
                0x3fc0_0000,
                MEM_R | MEM_W | MEM_X | MEM_DMA,
            ],
            [0x900_0000, 0x900_0000, 0x1000, MEM_R | MEM_W | MEM_IO],
            [
                0x904_0000,
                0x904_0000,
                0x1000,
                MEM_R | MEM_W | MEM_IO | MEM_IO_32,
            ],
            [0, 0, 0, 0], // an ivshmem placeholder
        ],
        irqchips: vec![
            (0x800_0000, 0, 32, [u32::MAX; 4]),
            (0x800_0000, 0, 160, [u32::MAX; 4]),
        ],
        pci_devices: vec![(3, 0, 1, 0x0008)],
        pci_caps: 1,
        stream_ids: vec![0x0003_0010],
        console: JhConsole {
            address: 0x900_0000,
            size: 0x1000,
            kind: 3,
            flags: 3,
            divider: 0,
        },
        ..JhCell::default()
    }
}

#[test]
fn arm64_system_revision_14() {
    let imported = import(&arm_system_file(14, &arm_root()), None, None).unwrap();
    assert_eq!(imported.revision, 14);
    let ImportedConfig::System(system) = &imported.config else {
        panic!("not a system")
    };
    assert_eq!(system.architecture, Architecture::Aarch64);
    assert_eq!(system.hypervisor_memory.start, 0x7fc0_0000);
    assert_eq!(system.hypervisor_memory.size, 0x60_0000);
    assert_eq!(system.debug_console, Some(pl011(0x900_0000)));
    let InterruptController::Gic(gic) = system.interrupt_controller else {
        panic!("no GIC")
    };
    assert_eq!(gic.version, GicVersion::V3);
    assert_eq!(gic.maintenance_irq, 25);
    assert_eq!(
        gic.distributor,
        Frame {
            base: 0x800_0000,
            size: 0x1_0000
        }
    );
    assert_eq!(
        gic.redistributors,
        Some(Frame {
            base: 0x80a_0000,
            size: 0x8_0000
        })
    );
    assert_eq!(gic.cpu_interface, None);
    assert_eq!(system.iommu_units.len(), 1);
    assert_eq!(system.iommu_units[0].kind, IommuKind::SmmuV2);
    assert_eq!(system.pci, None);

    let root = &system.root_cell;
    assert_eq!(root.name, "QEMU-ARM64");
    assert_eq!(root.cpus, CpuSet::from_cpus(0..4));
    assert_eq!(root.memory_regions.len(), 3);
    assert_eq!(root.memory_regions[2].flags, IO);
    assert_eq!(
        root.irqs,
        [IrqRange {
            first: 32,
            count: 256
        }]
    );
    assert_eq!(root.pci_devices, []);
    // The SMMU-500 layout: ID in the low half, mask in the high half.
    assert_eq!(
        root.stream_ids,
        [StreamId {
            id: 0x10,
            mask: 0x3
        }]
    );
    assert_eq!(
        imported.notes,
        [
            "the virtual PCI host bridge is left out (cellvisor has no virtual PCI devices)",
            "root cell: memory region 3 is empty (a placeholder) and left out",
            "root cell: memory flags 0x40000 (no-hugepages, sub-page access widths) are left out",
            "root cell: PCI device 0 (0001:00:01.0) is an ivshmem device and left out (no virtual PCI devices); its shared memory regions stay",
            "the GIC register frame sizes are the GICv3 defaults: check them against the SoC manual",
        ]
    );
    assert_eq!(imported.problems(), []);
    // The TOML reads back to the same configuration.
    assert_eq!(&system_from_toml(&imported.to_toml()).unwrap(), system);
    assert!(imported.to_toml().starts_with(
        "# Imported from a Jailhouse configuration (revision 14).\n# note: the virtual PCI host bridge"
    ));
}

#[test]
fn arm64_system_revision_13_and_14_agree() {
    let mut root = arm_root();
    root.stream_ids = vec![0x0003_0000];
    let a = import(&arm_system_file(13, &root), None, None).unwrap();
    let b = import(&arm_system_file(14, &root), None, None).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.revision, 13);
    assert_eq!(
        a.notes[0],
        "revision 13 does not record the architecture: aarch64 guessed from the platform data"
    );
    assert_eq!(a.notes[1..], b.notes[..]);
    assert_eq!(a.problems(), []);
}

fn arm_inmate() -> JhCell {
    JhCell {
        name: "inmate-demo",
        flags: 0x4000_0000 | 0x1,
        cpu_set: vec![0b1000],
        memory: vec![
            [
                0x904_0000,
                0x904_0000,
                0x1000,
                MEM_R | MEM_W | MEM_IO | MEM_IO_32,
            ],
            [
                0x7fa0_0000,
                0,
                0x1_0000,
                MEM_R | MEM_W | MEM_X | MEM_LOADABLE,
            ],
            [0, 0x8000_0000, 0x1000, MEM_R | MEM_W | MEM_COMM],
        ],
        irqchips: vec![(0x800_0000, 0, 32, [1 << 8, 0, 0, 0])],
        stream_ids: vec![0x11],
        console: JhConsole {
            address: 0x904_0000,
            size: 0x1000,
            kind: 3,
            flags: 3,
            divider: 0,
        },
        ..JhCell::default()
    }
}

#[test]
fn arm64_cell_revision_13_without_architecture() {
    let imported = import(&arm_inmate().file(13, 0), None, None).unwrap();
    let ImportedConfig::Cell(cell) = &imported.config else {
        panic!("not a cell")
    };
    assert_eq!(cell.architecture, Architecture::Aarch64);
    let c = &cell.cell;
    assert_eq!(c.name, "inmate-demo");
    assert_eq!(
        c.flags,
        CellFlags::PASSIVE_COMM_REGION | CellFlags::VIRTUAL_CONSOLE_PERMITTED
    );
    assert_eq!(c.cpus, CpuSet::from_cpus([3]));
    assert_eq!(c.irqs, [IrqRange::single(40)]);
    assert_eq!(c.memory_regions[2].flags, COMM);
    assert_eq!(c.stream_ids, [StreamId { id: 0x11, mask: 0 }]);
    let console = c.console.unwrap();
    assert_eq!(
        (console.kind, console.access),
        (ConsoleKind::Pl011, ConsoleAccess::Mmio32)
    );
    assert_eq!(
        imported.notes,
        [
            "cell: memory flags 0x40000 (no-hugepages, sub-page access widths) are left out",
            "revision 13 does not record the architecture: aarch64 guessed from the contents",
        ]
    );
    assert_eq!(imported.problems(), []);
    assert_eq!(&cell_from_toml(&imported.to_toml()).unwrap(), cell);
}

#[test]
fn arm64_cell_with_the_system_for_stream_ids() {
    // With an SMMUv2-only system, stream IDs split into ID and mask.
    let mut system = arm_system();
    system.iommu_units[0].kind = IommuKind::SmmuV2;
    let mut inmate = arm_inmate();
    inmate.stream_ids = vec![0x0001_0010];
    let imported = import(&inmate.file(14, 2), None, Some(&system)).unwrap();
    let ImportedConfig::Cell(cell) = imported.config else {
        panic!("not a cell")
    };
    assert_eq!(
        cell.cell.stream_ids,
        [StreamId {
            id: 0x10,
            mask: 0x1
        }]
    );
}

fn x86_system_file(revision: u16, root: &JhCell) -> Vec<u8> {
    let mut b = Bytes::default();
    match revision {
        13 => b.raw(b"JHSYST"),
        _ => b.raw(b"JHSYS").u8(0),
    };
    b.u16(revision).u32(0);
    b.u64(0x3a00_0000).u64(0).u64(0x60_0000).u64(0);
    JhConsole {
        address: 0x3f8,
        size: 8,
        kind: 2,
        flags: 0,
        divider: 1,
    }
    .write(&mut b);
    b.u64(0xe000_0000).u8(0xff).u8(0).u16(0);
    iommu(&mut b, 2, 0xfed9_0000, 0x1000, (0, 0, 0, 0));
    iommu(
        &mut b,
        1,
        0xfeb8_0000,
        0x8_0000,
        (0x0002, 0x40, 0x54, 0x8000_0000),
    );
    for _ in 2..8 {
        iommu(&mut b, 0, 0, 0, (0, 0, 0, 0));
    }
    // x86: pm_timer_address, apic_mode, padding, vtd_interrupt_limit, tsc_khz, apic_khz
    b.u16(0x608).u8(0).u8(0).u32(256).u32(0).u32(0).zeros(28);
    assert_eq!(b.0.len(), 356);
    root.write(&mut b, revision, 0);
    b.0
}

fn x86_root() -> JhCell {
    JhCell {
        name: "RootCell",
        cpu_set: vec![0b1111],
        memory: vec![
            [0, 0, 0xa_0000, MEM_R | MEM_W | MEM_X | MEM_DMA],
            [
                0x10_0000,
                0x10_0000,
                0x39f0_0000,
                MEM_R | MEM_W | MEM_X | MEM_DMA,
            ],
            [
                0x3b00_0000,
                0x3b00_0000,
                0x8500_0000,
                MEM_R | MEM_W | MEM_X | MEM_DMA,
            ],
            // A sub-page MMIO region Jailhouse would emulate.
            [0xfed0_0010, 0xfed0_0010, 0x20, MEM_R | MEM_IO],
        ],
        cache_regions: 1,
        irqchips: vec![(0xfec0_0000, 0xff00, 0, [0xff_ffff, 0, 0, 0])],
        pio: vec![(0, 0x3f8), (0x3f8, 8), (0x400, 0xfc00)],
        pci_devices: vec![(1, 0, 0, 0x0010), (1, 0, 0, 0x00fa), (2, 0, 0, 0x00e0)],
        console: JhConsole {
            address: 0x3f8,
            size: 8,
            kind: 2,
            flags: 0,
            divider: 1,
        },
        ..JhCell::default()
    }
}

#[test]
fn x86_system_revision_14() {
    let imported = import(&x86_system_file(14, &x86_root()), None, None).unwrap();
    let ImportedConfig::System(system) = &imported.config else {
        panic!("not a system")
    };
    assert_eq!(system.architecture, Architecture::X86_64);
    assert_eq!(system.debug_console, Some(com(0x3f8)));
    assert_eq!(
        system.ioapics,
        [IoApic {
            address: 0xfec0_0000,
            id: 0xff00,
            gsi_base: 0,
            pins: 24
        }]
    );
    assert_eq!(system.iommu_units.len(), 2);
    assert_eq!(system.iommu_units[0].kind, IommuKind::VtD);
    let amd = system.iommu_units[1];
    assert_eq!(amd.kind, IommuKind::AmdVi);
    assert_eq!(
        (
            amd.amd_bdf,
            amd.amd_base_cap,
            amd.amd_msi_cap,
            amd.amd_features
        ),
        (Bdf(2), 0x40, 0x54, 0x8000_0000)
    );
    assert_eq!(system.pci.unwrap().ecam_base, 0xe000_0000);
    let root = &system.root_cell;
    assert_eq!(
        root.irqs,
        [IrqRange {
            first: 0,
            count: 24
        }]
    );
    assert_eq!(
        root.ports,
        [
            PortRange {
                base: 0,
                size: 0x3f8
            },
            PortRange {
                base: 0x3f8,
                size: 8
            },
            PortRange {
                base: 0x400,
                size: 0xfc00
            },
        ]
    );
    assert_eq!(root.pci_devices.len(), 3);
    assert_eq!(root.pci_devices[2].kind, PciDeviceKind::Bridge);
    assert_eq!(root.pci_devices[0].iommu, Some(0));
    assert_eq!(root.memory_regions[3].phys_start, 0xfed0_0000);
    assert_eq!(root.memory_regions[3].size, 0x1000);
    assert_eq!(
        root.memory_regions[3].flags,
        MemoryFlags::READ | MemoryFlags::IO
    );
    assert_eq!(
        imported.notes,
        [
            "root cell: memory region 3 (0x20 bytes at 0xfed00010) is a sub-page region; it became the whole pages [0xfed00000, 0xfed01000): check that the cell may access all of them",
            "root cell: 1 cache region(s) left out (cellvisor does not partition caches)",
            "root cell: PCI BAR masks, capabilities and MSI settings are left out (cellvisor passes PCI devices through)",
            "the x86 PM timer, APIC mode, VT-d interrupt limit and timer frequencies are left out",
            "IOAPICs are the root cell's irqchips, in order, with 24 pins and consecutive interrupt lines each: check them against the ACPI MADT",
        ]
    );
    assert_eq!(imported.problems(), []);
    assert_eq!(&system_from_toml(&imported.to_toml()).unwrap(), system);
}

#[test]
fn x86_cell_revision_13_with_the_system() {
    let cell = JhCell {
        name: "linux x86 demo",
        cpu_set: vec![0b1000],
        memory: vec![
            [
                0x3b00_0000,
                0,
                0xf_0000,
                MEM_R | MEM_W | MEM_X | MEM_LOADABLE,
            ],
            [0, 0xff000, 0x1000, MEM_R | MEM_W | MEM_COMM],
        ],
        irqchips: vec![(0xfec0_0000, 0xff00, 0, [1 << 3, 0, 0, 0])],
        pio: vec![(0x2f8, 8)],
        pci_devices: vec![(1, 0, 0, 0x00fa)],
        console: JhConsole {
            address: 0x2f8,
            size: 8,
            kind: 2,
            flags: 0,
            divider: 1,
        },
        ..JhCell::default()
    };
    let bytes = cell.file(13, 0);
    let imported = import(&bytes, None, Some(&x86_system())).unwrap();
    let ImportedConfig::Cell(config) = &imported.config else {
        panic!("not a cell")
    };
    assert_eq!(config.architecture, Architecture::X86_64);
    let c = &config.cell;
    assert_eq!(c.name, "linux-x86-demo");
    assert_eq!(c.irqs, [IrqRange::single(3)]);
    assert_eq!(
        c.ports,
        [PortRange {
            base: 0x2f8,
            size: 8
        }]
    );
    assert_eq!(c.pci_devices[0].bdf, Bdf::new(0, 0x1f, 2).unwrap());
    assert_eq!(c.pci_devices[0].iommu, Some(0));
    assert_eq!(
        imported.notes,
        [
            "the cell name \"linux x86 demo\" became \"linux-x86-demo\" (letters, digits, '-', '_' and '.' only)",
            "cell: PCI BAR masks, capabilities and MSI settings are left out (cellvisor passes PCI devices through)",
        ]
    );
    assert_eq!(imported.problems(), []);

    // Without the system, the standard IOAPIC is assumed to serve lines from 0; the PIO
    // regions tell the architecture.
    let alone = import(&bytes, None, None).unwrap();
    let ImportedConfig::Cell(mut expected) = imported.config.clone() else {
        unreachable!()
    };
    expected.cell.pci_devices[0].iommu = None;
    assert_eq!(alone.config, ImportedConfig::Cell(expected));
    assert!(alone
        .notes
        .iter()
        .any(|n| n.contains("its IOMMU unit is left out")));
    assert!(alone
        .notes
        .iter()
        .any(|n| n.contains("taken to serve global system interrupts from 0")));
}

#[test]
fn rejected_files() {
    let err = |bytes: &[u8], arch| import(bytes, arch, None).unwrap_err().to_string();
    assert_eq!(
        err(b"JH", None),
        "too short for a Jailhouse configuration (8-byte header)"
    );
    assert_eq!(
        err(b"CVCF\x01\x00\x02\x01", None),
        "not a Jailhouse configuration (no JHSYS/JHCLL signature)"
    );
    let mut old = arm_inmate().file(14, 2);
    old[6] = 12;
    assert_eq!(
        err(&old, None),
        "Jailhouse configuration revision 12 is not supported (13 and 14 are)"
    );
    assert_eq!(
        err(&arm_inmate().file(14, 1), None),
        "32-bit Arm configurations are not supported"
    );
    assert_eq!(
        err(&arm_inmate().file(14, 2), Some(Architecture::X86_64)),
        "the file is for aarch64, not x86_64 as asked"
    );
    let file = arm_inmate().file(14, 2);
    assert_eq!(
        err(&file[..file.len() - 4], None),
        "the counts describe 265 bytes, the file has 261"
    );
    let mut mute = arm_inmate();
    mute.console = JhConsole::default();
    assert_eq!(
        err(&mute.file(13, 0), None),
        "a revision-13 cell file does not record its architecture and its contents do not tell: give it (--arch)"
    );
    assert!(import(&mute.file(13, 0), Some(Architecture::Aarch64), None).is_ok());
}
