//! Baseline configurations and helpers shared by the tests.

#![allow(dead_code)]

use std::ops::ControlFlow;

use cellvisor_config::{
    check_cells, layout, Architecture, Bdf, Cell, CellConfig, CellConfigView, Console,
    ConsoleAccess, ConsoleKind, CpuSet, Frame, Gic, GicVersion, HypervisorMemory,
    InterruptController, IoApic, IommuKind, IommuUnit, IrqRange, MemoryFlags, MemoryRegion,
    PciDevice, PciDeviceKind, PciHost, PortRange, StreamId, SystemConfig, SystemConfigView,
};

pub const RAM: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::EXECUTE)
    .union(MemoryFlags::DMA);
pub const IO: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::IO);
pub const COMM: MemoryFlags = MemoryFlags::READ
    .union(MemoryFlags::WRITE)
    .union(MemoryFlags::COMM_REGION);

pub fn region(phys: u64, virt: u64, size: u64, flags: MemoryFlags) -> MemoryRegion {
    MemoryRegion {
        phys_start: phys,
        virt_start: virt,
        size,
        flags,
    }
}

pub fn irqs(first: u32, count: u32) -> IrqRange {
    IrqRange { first, count }
}

pub fn pl011(address: u64) -> Console {
    Console {
        kind: ConsoleKind::Pl011,
        access: ConsoleAccess::Mmio32,
        address,
        size: 0x1000,
        divider: 0,
    }
}

/// QEMU virt with a GICv3 and an SMMUv3: RAM 0x4000_0000-0x8000_0000 around the hypervisor
/// at 0x4020_0000 (8 MiB), UART1 at 0x0904_0000, CPUs 0-3, SPIs 32-287, stream IDs 0x10, 0x11.
pub fn arm_system() -> SystemConfig {
    let mut root = Cell::new("linux");
    root.cpus = CpuSet::from_cpus(0..4);
    root.memory_regions = vec![
        region(0x4000_0000, 0x4000_0000, 0x20_0000, RAM),
        region(0x40a0_0000, 0x40a0_0000, 0x3f60_0000, RAM),
        region(0x900_0000, 0x900_0000, 0x1000, IO),
        region(0x904_0000, 0x904_0000, 0x1000, IO),
    ];
    root.irqs = vec![irqs(32, 256)];
    root.stream_ids = vec![
        StreamId { id: 0x10, mask: 0 },
        StreamId { id: 0x11, mask: 0 },
    ];
    root.console = Some(pl011(0x900_0000));
    SystemConfig {
        architecture: Architecture::Aarch64,
        hypervisor_memory: HypervisorMemory {
            start: 0x4020_0000,
            size: 0x80_0000,
        },
        debug_console: Some(pl011(0x900_0000)),
        interrupt_controller: InterruptController::Gic(Gic {
            version: GicVersion::V3,
            maintenance_irq: 25,
            distributor: Frame {
                base: 0x800_0000,
                size: 0x1_0000,
            },
            cpu_interface: None,
            hypervisor_interface: None,
            virtual_cpu_interface: None,
            redistributors: Some(Frame {
                base: 0x80a_0000,
                size: 0x8_0000,
            }),
        }),
        ioapics: Vec::new(),
        iommu_units: vec![IommuUnit {
            kind: IommuKind::SmmuV3,
            base: 0x905_0000,
            size: 0x2_0000,
            amd_bdf: Bdf(0),
            amd_base_cap: 0,
            amd_msi_cap: 0,
            amd_features: 0,
        }],
        pci: None,
        root_cell: root,
    }
}

/// The same machine with a GICv2 and no SMMU.
pub fn arm_system_gicv2() -> SystemConfig {
    let mut system = arm_system();
    system.interrupt_controller = InterruptController::Gic(Gic {
        version: GicVersion::V2,
        maintenance_irq: 25,
        distributor: Frame {
            base: 0x800_0000,
            size: 0x1000,
        },
        cpu_interface: Some(Frame {
            base: 0x801_0000,
            size: 0x2000,
        }),
        hypervisor_interface: Some(Frame {
            base: 0x803_0000,
            size: 0x1000,
        }),
        virtual_cpu_interface: Some(Frame {
            base: 0x804_0000,
            size: 0x2000,
        }),
        redistributors: None,
    });
    system.iommu_units.clear();
    system.root_cell.stream_ids.clear();
    system
}

/// The demo cell for [`arm_system`]: CPU 3, 16 MiB of RAM at guest-physical 0, UART1,
/// INTID 40, a communication region, stream ID 0x10.
pub fn arm_cell() -> CellConfig {
    let mut cell = Cell::new("demo");
    cell.cpus = CpuSet::from_cpus([3]);
    cell.memory_regions = vec![
        region(0x7f00_0000, 0, 0x100_0000, RAM | MemoryFlags::LOADABLE),
        region(0x904_0000, 0x904_0000, 0x1000, IO),
        region(0, 0x8000_0000, 0x1000, COMM),
    ];
    cell.irqs = vec![irqs(40, 1)];
    cell.stream_ids = vec![StreamId { id: 0x10, mask: 0 }];
    cell.console = Some(pl011(0x904_0000));
    CellConfig {
        architecture: Architecture::Aarch64,
        cell,
    }
}

pub fn com(port: u64) -> Console {
    Console {
        kind: ConsoleKind::Uart8250,
        access: ConsoleAccess::Port,
        address: port,
        size: 8,
        divider: 1,
    }
}

/// A PC: one IOAPIC (24 pins), one VT-d unit, ECAM at 0xe000_0000, RAM below 3 GiB with the
/// hypervisor at 0x3a00_0000, all ports, devices 00:02.0 and 00:1f.2.
pub fn x86_system() -> SystemConfig {
    let mut root = Cell::new("root");
    root.cpus = CpuSet::from_cpus(0..4);
    root.memory_regions = vec![
        region(0, 0, 0xa_0000, RAM),
        region(0x10_0000, 0x10_0000, 0x3a00_0000 - 0x10_0000, RAM),
        region(0x3b00_0000, 0x3b00_0000, 0x8500_0000, RAM),
        region(0xfe00_0000, 0xfe00_0000, 0x10_0000, IO),
    ];
    root.irqs = vec![irqs(0, 24)];
    root.ports = vec![PortRange {
        base: 0,
        size: 0x1_0000,
    }];
    root.pci_devices = vec![
        PciDevice {
            domain: 0,
            bdf: Bdf::new(0, 2, 0).unwrap(),
            kind: PciDeviceKind::Device,
            iommu: Some(0),
        },
        PciDevice {
            domain: 0,
            bdf: Bdf::new(0, 0x1f, 2).unwrap(),
            kind: PciDeviceKind::Device,
            iommu: Some(0),
        },
    ];
    root.console = Some(com(0x3f8));
    SystemConfig {
        architecture: Architecture::X86_64,
        hypervisor_memory: HypervisorMemory {
            start: 0x3a00_0000,
            size: 0x100_0000,
        },
        debug_console: Some(com(0x3f8)),
        interrupt_controller: InterruptController::Apic {
            local_apic: Frame {
                base: 0xfee0_0000,
                size: 0x1000,
            },
        },
        ioapics: vec![IoApic {
            address: 0xfec0_0000,
            id: 0xf0f8,
            gsi_base: 0,
            pins: 24,
        }],
        iommu_units: vec![IommuUnit {
            kind: IommuKind::VtD,
            base: 0xfed9_0000,
            size: 0x1000,
            amd_bdf: Bdf(0),
            amd_base_cap: 0,
            amd_msi_cap: 0,
            amd_features: 0,
        }],
        pci: Some(PciHost {
            ecam_base: 0xe000_0000,
            end_bus: 0xff,
            domain: 0,
        }),
        root_cell: root,
    }
}

/// An x86 cell: CPU 3, 64 MiB of RAM, COM2, GSI 3, the SATA controller 00:1f.2.
pub fn x86_cell() -> CellConfig {
    let mut cell = Cell::new("rtos");
    cell.cpus = CpuSet::from_cpus([3]);
    cell.memory_regions = vec![
        region(0x3b00_0000, 0, 0x400_0000, RAM | MemoryFlags::LOADABLE),
        region(0, 0x8000_0000, 0x1000, COMM),
    ];
    cell.irqs = vec![irqs(3, 1)];
    cell.ports = vec![PortRange {
        base: 0x2f8,
        size: 8,
    }];
    cell.pci_devices = vec![PciDevice {
        domain: 0,
        bdf: Bdf::new(0, 0x1f, 2).unwrap(),
        kind: PciDeviceKind::Device,
        iommu: Some(0),
    }];
    cell.console = Some(com(0x2f8));
    CellConfig {
        architecture: Architecture::X86_64,
        cell,
    }
}

/// Every problem of a system configuration, as messages.
pub fn system_problems(config: &SystemConfig) -> Vec<String> {
    let bytes = match config.encode() {
        Ok(bytes) => bytes,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    let _ = SystemConfigView::parse_reporting(&bytes, &mut |e| {
        problems.push(e.to_string());
        ControlFlow::Continue(())
    });
    problems
}

/// Every problem of a cell configuration, as messages.
pub fn cell_problems(config: &CellConfig) -> Vec<String> {
    let bytes = match config.encode() {
        Ok(bytes) => bytes,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    let _ = CellConfigView::parse_reporting(&bytes, &mut |e| {
        problems.push(e.to_string());
        ControlFlow::Continue(())
    });
    problems
}

/// Every cross-check problem of valid configurations, as messages.
pub fn cross_problems(system: &SystemConfig, cells: &[CellConfig]) -> Vec<String> {
    let system_bytes = system.to_bytes().expect("system is valid");
    let cell_bytes: Vec<Vec<u8>> = cells
        .iter()
        .map(|c| c.to_bytes().expect("cell is valid"))
        .collect();
    let system = SystemConfigView::parse(&system_bytes).unwrap();
    let views: Vec<CellConfigView<'_>> = cell_bytes
        .iter()
        .map(|b| CellConfigView::parse(b).unwrap())
        .collect();
    let mut problems = Vec::new();
    let _ = check_cells(&system, &views, &mut |e| {
        problems.push(e.to_string());
        ControlFlow::Continue(())
    });
    problems
}

/// Recomputes the checksum after a change of the bytes.
pub fn fix_checksum(bytes: &mut [u8]) {
    assert!(
        layout::store_checksum(bytes),
        "a configuration has a header"
    );
}

/// Offset of the cell descriptor in a cell configuration.
pub const CELL_DESC: usize = 16;
/// Offset of the root cell descriptor in a system configuration without IOMMU units and
/// IOAPICs.
pub const SYSTEM_DESC: usize = 16;
