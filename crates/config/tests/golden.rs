//! Golden tests: every validation rule with its exact message.

mod common;

use cellvisor_config::{
    check_new_cell, layout, Architecture, Bdf, CellConfig, CellConfigView, CellFlags,
    ConsoleAccess, Frame, Gic, GicVersion, InterruptController, IoApic, IommuKind, IommuUnit,
    MemoryFlags, PciDevice, PciDeviceKind, PciHost, PortRange, StreamId, SystemConfigView,
};
use common::*;

#[test]
fn baselines_are_valid() {
    for system in [arm_system(), arm_system_gicv2(), x86_system()] {
        assert_eq!(system_problems(&system), Vec::<String>::new());
    }
    for cell in [arm_cell(), x86_cell()] {
        assert_eq!(cell_problems(&cell), Vec::<String>::new());
    }
    assert_eq!(
        cross_problems(&arm_system(), &[arm_cell()]),
        Vec::<String>::new()
    );
    assert_eq!(
        cross_problems(&x86_system(), &[x86_cell()]),
        Vec::<String>::new()
    );
}

fn cell_error(bytes: &[u8]) -> String {
    CellConfigView::parse(bytes).unwrap_err().to_string()
}

// --- Header and structure --------------------------------------------------------------------

#[test]
fn header() {
    let good = arm_cell().to_bytes().unwrap();
    assert_eq!(
        cell_error(&good[..10]),
        "header: truncated: 16 bytes needed, 10 present"
    );
    assert_eq!(
        cell_error(&good[..good.len() - 8]),
        "header: truncated: 232 bytes needed, 224 present"
    );
    let mut long = good.clone();
    long.extend_from_slice(&[0; 3]);
    assert_eq!(
        cell_error(&long),
        "header: 3 bytes after the end of the configuration (232 bytes)"
    );

    let mut bytes = good.clone();
    bytes[..4].copy_from_slice(b"JHCL");
    assert_eq!(
        cell_error(&bytes),
        "header: bad magic \"JHCL\", expected \"CVCF\" (not a cellvisor configuration)"
    );
    let mut bytes = good.clone();
    bytes[4] = 2;
    assert_eq!(
        cell_error(&bytes),
        "header: format revision 2 is not supported (this build reads revision 1)"
    );
    let mut bytes = good.clone();
    bytes[6] = 7;
    assert_eq!(cell_error(&bytes), "header: unknown configuration kind 7");
    assert_eq!(
        SystemConfigView::parse(&good).unwrap_err().to_string(),
        "header: a cell configuration where a system configuration was expected"
    );
    let system = arm_system().to_bytes().unwrap();
    assert_eq!(
        cell_error(&system),
        "header: a system configuration where a cell configuration was expected"
    );
    let mut bytes = good.clone();
    bytes[7] = 9;
    assert_eq!(cell_error(&bytes), "header: unknown architecture 9");

    let mut bytes = good.clone();
    bytes[100] ^= 0x40;
    let stored = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let computed = layout::checksum(&bytes);
    assert_eq!(
        cell_error(&bytes),
        format!(
            "header: checksum {stored:#010x} does not match the contents (CRC-32 {computed:#010x})"
        )
    );
}

#[test]
fn counts_and_layout() {
    let good = arm_cell().to_bytes().unwrap();
    // memory_region_count is at descriptor offset 40.
    let count_at = CELL_DESC + 40;
    let mut bytes = good.clone();
    bytes[count_at..count_at + 4].copy_from_slice(&2000u32.to_le_bytes());
    fix_checksum(&mut bytes);
    assert_eq!(
        cell_error(&bytes),
        "memory regions: 2000 exceed the limit of 1024"
    );

    let mut bytes = good.clone();
    bytes[count_at..count_at + 4].copy_from_slice(&4u32.to_le_bytes());
    fix_checksum(&mut bytes);
    assert_eq!(
        cell_error(&bytes),
        "descriptor: the counts describe 264 bytes, but 232 are present"
    );

    // cpu_set_words at 36, stream IDs at 56; IOMMU units of a system at 16 + 44.
    for (offset, value, message) in [
        (
            CELL_DESC + 36,
            9u32,
            "CPU set words: 9 exceed the limit of 8",
        ),
        (
            CELL_DESC + 44,
            1025,
            "interrupt ranges: 1025 exceed the limit of 1024",
        ),
        (
            CELL_DESC + 48,
            257,
            "port ranges: 257 exceed the limit of 256",
        ),
        (
            CELL_DESC + 52,
            u32::MAX,
            "PCI devices: 4294967295 exceed the limit of 1024",
        ),
        (
            CELL_DESC + 56,
            1025,
            "stream IDs: 1025 exceed the limit of 1024",
        ),
    ] {
        let mut bytes = good.clone();
        bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        fix_checksum(&mut bytes);
        assert_eq!(cell_error(&bytes), message);
    }
    let system = arm_system().to_bytes().unwrap();
    for (offset, message) in [
        (16 + 44, "IOMMU units: 9 exceed the limit of 8"),
        (16 + 48, "IOAPICs: 9 exceed the limit of 8"),
    ] {
        let mut bytes = system.clone();
        bytes[offset..offset + 4].copy_from_slice(&9u32.to_le_bytes());
        fix_checksum(&mut bytes);
        assert_eq!(
            SystemConfigView::parse(&bytes).unwrap_err().to_string(),
            message
        );
    }

    let mut bytes = good.clone();
    bytes[CELL_DESC + 60] = 1;
    fix_checksum(&mut bytes);
    assert_eq!(cell_error(&bytes), "descriptor: reserved field is not zero");
}

// --- Cell values --------------------------------------------------------------------------------

fn with_cell(change: impl FnOnce(&mut CellConfig)) -> Vec<String> {
    let mut cell = arm_cell();
    change(&mut cell);
    cell_problems(&cell)
}

fn with_x86_cell(change: impl FnOnce(&mut CellConfig)) -> Vec<String> {
    let mut cell = x86_cell();
    change(&mut cell);
    cell_problems(&cell)
}

#[test]
fn name() {
    assert_eq!(
        with_cell(|c| c.cell.name.clear()),
        ["name: must not be empty"]
    );
    assert_eq!(
        with_cell(|c| c.cell.name = "x".repeat(32)),
        ["name: 32 bytes long, at most 31 allowed"]
    );
    assert_eq!(
        with_cell(|c| c.cell.name = "demo cell".into()),
        ["name: character ' ' at position 4 is not allowed (letters, digits, '-', '_' and '.' are)"]
    );
    assert_eq!(
        with_cell(|c| c.cell.name = "dé".into()),
        ["name: byte 0xc3 at position 1 is not allowed (letters, digits, '-', '_' and '.' are)"]
    );
    let good = arm_cell().to_bytes().unwrap();
    let mut bytes = good.clone();
    bytes[CELL_DESC..CELL_DESC + 32].fill(b'a');
    fix_checksum(&mut bytes);
    assert_eq!(
        cell_error(&bytes),
        "name: not NUL-terminated within 32 bytes"
    );
    let mut bytes = good;
    bytes[CELL_DESC + 20] = b'x';
    fix_checksum(&mut bytes);
    assert_eq!(
        cell_error(&bytes),
        "name: bytes after the terminating NUL are not zero"
    );
}

#[test]
fn flags() {
    assert_eq!(
        with_cell(|c| c.cell.flags = CellFlags::from_bits_retain(0x110)),
        ["flags: unknown flags 0x110"]
    );
    assert_eq!(
        with_x86_cell(|c| c.cell.flags = CellFlags::AARCH32),
        ["flags: aarch32 is not valid on x86_64"]
    );
    let mut system = arm_system();
    system.root_cell.flags = CellFlags::AARCH32 | CellFlags::PASSIVE_COMM_REGION;
    assert_eq!(
        system_problems(&system),
        [
            "root cell: flags: aarch32 is not valid for the root cell",
            "root cell: flags: passive-comm-region is not valid for the root cell",
        ]
    );
}

#[test]
fn cpus() {
    assert_eq!(
        with_cell(|c| c.cell.cpus = Default::default()),
        ["CPU set: empty (a cell needs at least one CPU)"]
    );
    let mut bytes = arm_cell().encode().unwrap();
    // One more, zero, bitmap word: insert it after the descriptor and count it.
    bytes.splice(CELL_DESC + 96 + 8..CELL_DESC + 96 + 8, [0u8; 8]);
    bytes[CELL_DESC + 36] = 2;
    let len = bytes.len() as u32;
    bytes[8..12].copy_from_slice(&len.to_le_bytes());
    fix_checksum(&mut bytes);
    assert_eq!(
        cell_error(&bytes),
        "CPU set: the last word of the bitmap is zero (must be left out)"
    );
}

#[test]
fn memory_regions() {
    let ram = RAM | MemoryFlags::LOADABLE;
    let set = |phys, virt, size, flags| {
        with_cell(move |c| c.cell.memory_regions[0] = region(phys, virt, size, flags))
    };
    assert_eq!(
        set(0x7f00_0000, 0, 0x1001, ram),
        ["memory region 0: size 0x1001 is not page aligned"]
    );
    assert_eq!(
        set(0x7f00_0800, 0x10, 0x1000, ram),
        [
            "memory region 0: physical start 0x7f000800 is not page aligned",
            "memory region 0: guest-physical start 0x10 is not page aligned",
        ]
    );
    assert_eq!(
        set(0x7f00_0000, 0, 0, ram),
        ["memory region 0: size is zero"]
    );
    assert_eq!(
        set(0xf_ffff_ffff_f000, 0, 0x2000, ram),
        ["memory region 0: physical range [0xffffffffff000, 0x10000000001000) exceeds the 52-bit address space"]
    );
    assert_eq!(
        set(0x7f00_0000, u64::MAX - 0xfff, 0x2000, ram),
        ["memory region 0: guest-physical range [0xfffffffffffff000, 0x10000000000001000) exceeds the 52-bit address space"]
    );
    assert_eq!(
        set(0x7f00_0000, 0, 0x1000, MemoryFlags::from_bits_retain(0x301)),
        ["memory region 0: unknown flags 0x300"]
    );
    assert_eq!(
        set(0x7f00_0000, 0, 0x1000, MemoryFlags::DMA),
        ["memory region 0: grants no access (needs read, write or execute)"]
    );
    assert_eq!(
        with_cell(|c| {
            c.cell.memory_regions[1].virt_start = 0x10_0000;
        }),
        [
            "memory region 1: guest-physical range [0x100000, 0x101000) overlaps memory region 0 [0x0, 0x1000000)",
            "console: UART at 0x9040000 is not in any memory region of the cell",
        ]
    );
    assert_eq!(
        with_cell(|c| {
            c.cell.memory_regions[1].phys_start = 0x7f00_1000;
        }),
        ["memory region 1: physical range [0x7f001000, 0x7f002000) overlaps memory region 0 [0x7f000000, 0x80000000)"]
    );
}

#[test]
fn communication_region() {
    let set = |phys, size, flags| {
        with_cell(move |c| c.cell.memory_regions[2] = region(phys, 0x8000_0000, size, flags))
    };
    assert_eq!(
        set(0x1000, 0x1000, COMM),
        ["memory region 2: communication region at physical 0x1000: must be 0 (the hypervisor provides the page)"]
    );
    assert_eq!(
        set(0, 0x2000, COMM),
        ["memory region 2: communication region of 0x2000 bytes: must be one page (0x1000)"]
    );
    assert_eq!(
        set(
            0,
            0x1000,
            COMM | MemoryFlags::EXECUTE | MemoryFlags::ROOTSHARED
        ),
        [
            "memory region 2: a communication region cannot also be execute",
            "memory region 2: a communication region cannot also be root-shared",
        ]
    );
    assert_eq!(
        with_cell(|c| c
            .cell
            .memory_regions
            .push(region(0, 0x8000_1000, 0x1000, COMM))),
        ["memory region 3: second communication region (memory region 2 is one already)"]
    );
    let mut system = arm_system();
    system.root_cell.memory_regions.extend([
        region(0, 0x9000_0000, 0x1000, COMM),
        region(
            0x7000_0000,
            0x7000_0000,
            0x1000,
            RAM | MemoryFlags::LOADABLE,
        ),
        region(
            0x7000_1000,
            0x7000_1000,
            0x1000,
            RAM | MemoryFlags::ROOTSHARED,
        ),
    ]);
    assert_eq!(
        system_problems(&system),
        [
            "root cell: memory region 4: the root cell cannot have a communication region",
            "root cell: memory region 5: guest-physical range [0x70000000, 0x70001000) overlaps memory region 1 [0x40a00000, 0x80000000)",
            "root cell: memory region 5: physical range [0x70000000, 0x70001000) overlaps memory region 1 [0x40a00000, 0x80000000)",
            "root cell: memory region 6: the root cell cannot have root-shared memory",
            "root cell: memory region 6: guest-physical range [0x70001000, 0x70002000) overlaps memory region 1 [0x40a00000, 0x80000000)",
            "root cell: memory region 6: physical range [0x70001000, 0x70002000) overlaps memory region 1 [0x40a00000, 0x80000000)",
        ]
    );
}

#[test]
fn interrupt_ranges() {
    assert_eq!(
        with_cell(|c| c.cell.irqs = vec![irqs(40, 0)]),
        ["interrupt range 0: count is zero"]
    );
    assert_eq!(
        with_cell(|c| c.cell.irqs = vec![irqs(u32::MAX, 2)]),
        ["interrupt range 0: lines 4294967295 + 2 go beyond line 4294967295"]
    );
    assert_eq!(
        with_cell(|c| c.cell.irqs = vec![irqs(16, 20), irqs(1010, 20), irqs(4096, 1024), irqs(5110, 20)]),
        [
            "interrupt range 0: line 16 is not a shared peripheral interrupt (32-1019, or 4096-5119 on GICv3)",
            "interrupt range 1: line 1020 is not a shared peripheral interrupt (32-1019, or 4096-5119 on GICv3)",
            "interrupt range 3: line 5120 is not a shared peripheral interrupt (32-1019, or 4096-5119 on GICv3)",
            "interrupt range 3: lines 5110-5129 overlap interrupt range 2 (4096-5119)",
        ]
    );
    assert_eq!(
        with_cell(|c| c.cell.irqs = vec![irqs(40, 8), irqs(47, 1)]),
        ["interrupt range 1: lines 47 overlap interrupt range 0 (40-47)"]
    );
    assert_eq!(
        with_x86_cell(|c| c.cell.irqs = vec![irqs(1000, 30)]),
        ["interrupt range 0: line 1024 is beyond the last global system interrupt (1023)"]
    );
}

#[test]
fn port_ranges() {
    let port = |base, size| PortRange { base, size };
    assert_eq!(
        with_cell(|c| c.cell.ports = vec![port(0x3f8, 8)]),
        ["port range 0: I/O ports exist only on x86_64"]
    );
    assert_eq!(
        with_x86_cell(|c| c.cell.ports = vec![
            port(0x2f8, 0),
            port(0xfff8, 16),
            port(0x2f8, 8),
            port(0x2fc, 2)
        ]),
        [
            "port range 0: size is zero",
            "port range 1: ports 0xfff8-0x10007 exceed the 16-bit port space",
            "port range 3: ports 0x2fc-0x2fd overlap port range 2 (0x2f8-0x2ff)",
        ]
    );
}

#[test]
fn pci_devices() {
    let device = x86_cell().cell.pci_devices[0];
    assert_eq!(
        with_x86_cell(|c| c.cell.pci_devices.push(PciDevice {
            kind: PciDeviceKind::Bridge,
            ..device
        })),
        ["PCI device 1: 0000:00:1f.2 is listed twice (PCI device 0)"]
    );
    let good = x86_cell().to_bytes().unwrap();
    let at = good.len() - 8; // the one PCI device is the last entry
    let mut bytes = good.clone();
    bytes[at + 4] = 9;
    bytes[at + 6] = 1;
    fix_checksum(&mut bytes);
    let mut problems = Vec::new();
    let _ = CellConfigView::parse_reporting(&bytes, &mut |e| {
        problems.push(e.to_string());
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(
        problems,
        [
            "PCI device 0: reserved field is not zero",
            "PCI device 0: unknown device type 9",
        ]
    );
}

#[test]
fn stream_ids() {
    let id = |id, mask| StreamId { id, mask };
    assert_eq!(
        with_x86_cell(|c| c.cell.stream_ids = vec![id(1, 0)]),
        ["stream ID 0: stream IDs exist only on aarch64"]
    );
    assert_eq!(
        with_cell(|c| c.cell.stream_ids = vec![id(0x13, 0x3), id(0x20, 0xf), id(0x2c, 0)]),
        [
            "stream ID 0: 0x13 has bits set under its mask 0x3",
            "stream ID 2: 0x2c overlaps stream ID 1 (0x20/0xf)",
        ]
    );
}

#[test]
fn console() {
    assert_eq!(
        with_cell(|c| c.cell.console.as_mut().unwrap().access = ConsoleAccess::Port),
        [
            "console: port I/O exists only on x86_64",
            "console: ports 0x9040000-0x9040fff exceed the 16-bit port space",
        ]
    );
    assert_eq!(
        with_cell(|c| c.cell.console.as_mut().unwrap().size = 0),
        ["console: size is zero"]
    );
    assert_eq!(
        with_x86_cell(|c| c.cell.console.as_mut().unwrap().address = 0xfffc),
        ["console: ports 0xfffc-0x10003 exceed the 16-bit port space"]
    );
    assert_eq!(
        with_cell(|c| c.cell.console.as_mut().unwrap().address = 0xf_ffff_ffff_f800),
        ["console: guest-physical range [0xffffffffff800, 0x10000000000800) exceeds the 52-bit address space"]
    );
    assert_eq!(
        with_cell(|c| c.cell.console.as_mut().unwrap().address = 0x905_0000),
        ["console: UART at 0x9050000 is not in any memory region of the cell"]
    );
    assert_eq!(
        with_x86_cell(|c| c.cell.console.as_mut().unwrap().address = 0x3f8),
        ["console: UART at port 0x3f8 is not in any port range of the cell"]
    );
    // The hypervisor's console need not be mapped by a cell that only uses it by hypercall.
    assert_eq!(
        with_cell(|c| {
            c.cell.console.as_mut().unwrap().address = 0x900_0000;
            c.cell.flags = CellFlags::VIRTUAL_CONSOLE_ACTIVE;
        }),
        Vec::<String>::new()
    );

    // Raw console fields (descriptor offset 72): type 0 with an address, unknown type,
    // unknown flags, port I/O with 32-bit registers, reserved.
    let good = x86_cell().to_bytes().unwrap();
    let console = CELL_DESC + 72;
    for (offset, value, message) in [
        (12usize, 0u16, "console: fields set without a UART type"),
        (12, 42, "console: unknown UART type 42"),
        (14, 0x11, "console: unknown flags 0x10"),
        (
            14,
            0x3,
            "console: port I/O with 32-bit registers (port I/O is 8-bit)",
        ),
        (20, 1, "console: reserved field is not zero"),
    ] {
        let mut bytes = good.clone();
        bytes[console + offset..console + offset + 2].copy_from_slice(&value.to_le_bytes());
        fix_checksum(&mut bytes);
        assert_eq!(cell_error(&bytes), message);
    }
}

#[test]
fn cpu_reset_address() {
    assert_eq!(
        with_cell(|c| c.cell.cpu_reset_address = 1 << 52),
        ["CPU reset address: 0x10000000000000 is beyond the 52-bit address space"]
    );
}

// --- System values ------------------------------------------------------------------------------

fn with_system(change: impl FnOnce(&mut cellvisor_config::SystemConfig)) -> Vec<String> {
    let mut system = arm_system();
    change(&mut system);
    system_problems(&system)
}

fn with_x86_system(change: impl FnOnce(&mut cellvisor_config::SystemConfig)) -> Vec<String> {
    let mut system = x86_system();
    change(&mut system);
    system_problems(&system)
}

fn gic(system: &mut cellvisor_config::SystemConfig) -> &mut Gic {
    match &mut system.interrupt_controller {
        InterruptController::Gic(gic) => gic,
        InterruptController::Apic { .. } => unreachable!(),
    }
}

#[test]
fn hypervisor_memory() {
    assert_eq!(
        with_system(|s| s.hypervisor_memory.size = 0),
        ["hypervisor memory: size is zero"]
    );
    assert_eq!(
        with_system(|s| s.hypervisor_memory.start = 0x4020_0800),
        [
            "hypervisor memory: physical start 0x40200800 is not page aligned",
            "root cell: memory region 1: physical range [0x40a00000, 0x80000000) overlaps hypervisor memory [0x40200800, 0x40a00800)",
        ]
    );
    assert_eq!(
        with_system(|s| s.hypervisor_memory.start = 0xf_ffff_ffc0_0000),
        ["hypervisor memory: physical range [0xfffffffc00000, 0x10000000400000) exceeds the 52-bit address space"]
    );
    assert_eq!(
        with_system(|s| s.debug_console.as_mut().unwrap().size = 0),
        ["debug console: size is zero"]
    );
}

#[test]
fn interrupt_controller() {
    assert_eq!(
        with_system(|s| gic(s).maintenance_irq = 40),
        ["interrupt controller: maintenance interrupt 40 is not a private peripheral interrupt (16-31)"]
    );
    assert_eq!(
        with_system(|s| gic(s).redistributors = None),
        ["GIC redistributors: missing (GICv3 needs it)"]
    );
    let mut v2 = arm_system_gicv2();
    gic(&mut v2).cpu_interface = None;
    gic(&mut v2).redistributors = Some(Frame {
        base: 0x80a_0000,
        size: 0x2_0000,
    });
    assert_eq!(
        system_problems(&v2),
        [
            "GIC CPU interface: missing (GICv2 needs it)",
            "GIC redistributors: base and size is not used by GICv2: must be 0",
        ]
    );
    assert_eq!(
        with_system(|s| gic(s).distributor = Frame {
            base: 0x800_0800,
            size: 0x1_0800
        }),
        [
            "GIC distributor: base 0x8000800 is not page aligned",
            "GIC distributor: size 0x10800 is not page aligned",
        ]
    );
    assert_eq!(
        with_system(|s| gic(s).redistributors = Some(Frame {
            base: 0x800_0000,
            size: 0x2_0000
        })),
        ["GIC redistributors: registers [0x8000000, 0x8020000) overlap the GIC distributor [0x8000000, 0x8010000)"]
    );
    assert_eq!(
        with_x86_system(|s| s.interrupt_controller = arm_system().interrupt_controller),
        [
            "interrupt controller: GICv3 does not exist on x86_64",
            "root cell: memory region 1: physical range [0x100000, 0x3a000000) maps the GIC distributor [0x8000000, 0x8010000) directly (only the hypervisor may access it)",
            "root cell: memory region 1: physical range [0x100000, 0x3a000000) maps the GIC redistributors [0x80a0000, 0x8120000) directly (only the hypervisor may access it)",
        ]
    );
    assert_eq!(
        with_system(|s| s.interrupt_controller = x86_system().interrupt_controller),
        ["interrupt controller: the APIC does not exist on aarch64"]
    );

    // Raw fields (system descriptor offset 72): unknown type, APIC maintenance interrupt,
    // APIC with a second frame.
    let good = x86_system().to_bytes().unwrap();
    let chip = 16 + 72;
    for (offset, value, message) in [
        (0usize, 7u32, "interrupt controller: unknown type 7"),
        (
            4,
            25,
            "interrupt controller: maintenance interrupt is not used by the APIC: must be 0",
        ),
        (
            24,
            0x1000,
            "GIC CPU interface: base and size is not used by the APIC: must be 0",
        ),
    ] {
        let mut bytes = good.clone();
        bytes[chip + offset..chip + offset + 4].copy_from_slice(&value.to_le_bytes());
        fix_checksum(&mut bytes);
        assert_eq!(
            SystemConfigView::parse(&bytes).unwrap_err().to_string(),
            message
        );
    }
}

#[test]
fn ioapics() {
    let ioapic = x86_system().ioapics[0];
    assert_eq!(
        with_system(|s| s.ioapics.push(ioapic)),
        ["IOAPIC 0: IOAPICs does not exist on aarch64"]
    );
    assert_eq!(
        with_x86_system(|s| s.ioapics.push(IoApic {
            address: 0xfec0_1000,
            id: 1,
            gsi_base: 20,
            pins: 241,
        })),
        ["IOAPIC 1: 241 pins (1 to 240 allowed)"]
    );
    assert_eq!(
        with_x86_system(|s| s.ioapics.push(IoApic {
            address: 0xfec0_0800,
            id: 1,
            gsi_base: 20,
            pins: 24,
        })),
        [
            "IOAPIC 1: address 0xfec00800 is not page aligned",
            "IOAPIC 1: interrupt lines 20-43 overlap those of IOAPIC 0 (0-23)",
            "IOAPIC 1: registers [0xfec00800, 0xfec01800) overlap IOAPIC 0 [0xfec00000, 0xfec01000)",
        ]
    );
    assert_eq!(
        with_x86_system(|s| s.ioapics.push(IoApic {
            address: 0xfec0_1000,
            id: 1,
            gsi_base: 1000,
            pins: 40,
        })),
        ["IOAPIC 1: interrupt lines 1000-1039 go beyond the last global system interrupt (1023)"]
    );
}

#[test]
fn iommu_units() {
    let vtd = x86_system().iommu_units[0];
    assert_eq!(
        with_system(|s| s.iommu_units.push(IommuUnit {
            base: 0x908_0000,
            ..vtd
        })),
        ["IOMMU unit 1: vt-d does not exist on aarch64"]
    );
    assert_eq!(
        with_x86_system(|s| {
            s.iommu_units[0].amd_features = 1;
            s.iommu_units[0].size = 0;
        }),
        [
            "IOMMU unit 0: size is zero",
            "IOMMU unit 0: AMD-Vi fields is not used by vt-d: must be 0",
        ]
    );
    assert_eq!(
        with_x86_system(|s| s.iommu_units.push(IommuUnit {
            kind: IommuKind::AmdVi,
            amd_bdf: Bdf::new(0, 0, 2).unwrap(),
            ..vtd
        })),
        ["IOMMU unit 1: registers [0xfed90000, 0xfed91000) overlap IOMMU unit 0 [0xfed90000, 0xfed91000)"]
    );
    let mut bytes = x86_system().to_bytes().unwrap();
    let unit = 16 + 160; // the first IOMMU unit follows the system descriptor
    bytes[unit + 16] = 9;
    fix_checksum(&mut bytes);
    assert_eq!(
        SystemConfigView::parse(&bytes).unwrap_err().to_string(),
        "IOMMU unit 0: unknown type 9"
    );
}

#[test]
fn pci_host() {
    assert_eq!(
        with_x86_system(|s| s.pci.as_mut().unwrap().ecam_base = 0xe008_0000),
        ["PCI host: ECAM base 0xe0080000 is not aligned to 1 MiB"]
    );
    assert_eq!(
        with_x86_system(|s| s.pci.as_mut().unwrap().ecam_base = 0xf_ffff_f800_0000),
        ["PCI host: physical range [0xffffff8000000, 0x10000008000000) exceeds the 52-bit address space"]
    );
    let mut bytes = arm_system().to_bytes().unwrap();
    bytes[16 + 56 + 10] = 3; // end bus without an ECAM base
    fix_checksum(&mut bytes);
    assert_eq!(
        SystemConfigView::parse(&bytes).unwrap_err().to_string(),
        "PCI host: end bus and domain is not used by a system without PCI (ECAM base 0): must be 0"
    );
}

#[test]
fn root_cell_against_hardware() {
    assert_eq!(
        with_system(|s| s.root_cell.memory_regions.push(region(0x800_0000, 0x800_0000, 0x1000, IO))),
        ["root cell: memory region 4: physical range [0x8000000, 0x8001000) maps the GIC distributor [0x8000000, 0x8010000) directly (only the hypervisor may access it)"]
    );
    assert_eq!(
        with_system(|s| s.root_cell.memory_regions.push(region(0x905_0000, 0x905_0000, 0x1000, IO))),
        ["root cell: memory region 4: physical range [0x9050000, 0x9051000) maps IOMMU unit 0 [0x9050000, 0x9070000) directly (only the hypervisor may access it)"]
    );
    assert_eq!(
        with_x86_system(|s| s.root_cell.memory_regions.push(region(0xe000_0000, 0xe000_0000, 0x1000, IO))),
        ["root cell: memory region 4: physical range [0xe0000000, 0xe0001000) maps the PCI configuration space (ECAM) [0xe0000000, 0xf0000000) directly (only the hypervisor may access it)"]
    );
    assert_eq!(
        with_x86_system(|s| s.root_cell.memory_regions.push(region(0xfec0_0000, 0xfec0_0000, 0x1000, IO))),
        ["root cell: memory region 4: physical range [0xfec00000, 0xfec01000) maps IOAPIC 0 [0xfec00000, 0xfec01000) directly (only the hypervisor may access it)"]
    );
    assert_eq!(
        with_x86_system(|s| s.root_cell.memory_regions.push(region(0xfee0_0000, 0xfee0_0000, 0x1000, IO))),
        ["root cell: memory region 4: physical range [0xfee00000, 0xfee01000) maps the local APIC [0xfee00000, 0xfee01000) directly (only the hypervisor may access it)"]
    );
    let mut v2 = arm_system_gicv2();
    v2.root_cell.irqs.push(irqs(4096, 2));
    assert_eq!(
        system_problems(&v2),
        ["root cell: interrupt range 1: line 4096 is an extended SPI, which needs GICv3"]
    );
    assert_eq!(
        with_x86_system(|s| s.root_cell.irqs = vec![irqs(0, 30)]),
        ["root cell: interrupt range 0: line 24 is not connected to any IOAPIC"]
    );
    let device = |domain, bus, iommu| PciDevice {
        domain,
        bdf: Bdf::new(bus, 3, 0).unwrap(),
        kind: PciDeviceKind::Device,
        iommu,
    };
    assert_eq!(
        with_x86_system(|s| {
            s.pci.as_mut().unwrap().end_bus = 0x3f;
            s.root_cell.pci_devices.push(device(1, 0x40, Some(1)));
        }),
        [
            "root cell: PCI device 2: 0001:40:03.0 is not in the host bridge's domain 0000",
            "root cell: PCI device 2: 0001:40:03.0 is beyond the last bus of the host bridge (3f)",
            "root cell: PCI device 2: IOMMU unit 1 does not exist (the system has 1)",
        ]
    );
    assert_eq!(
        with_x86_system(|s| s.pci = Some(PciHost {
            ecam_base: 0,
            end_bus: 0,
            domain: 0
        })
        .filter(|_| false)),
        [
            "root cell: PCI device 0: 0000:00:02.0: the system has no PCI host bridge",
            "root cell: PCI device 1: 0000:00:1f.2: the system has no PCI host bridge",
        ]
    );
    let id = |id, mask| StreamId { id, mask };
    let mut v2 = arm_system_gicv2();
    v2.root_cell.stream_ids = vec![id(1, 0)];
    assert_eq!(
        system_problems(&v2),
        ["root cell: stream ID 0: 0x1: the system has no SMMU"]
    );
    assert_eq!(
        with_system(|s| s.root_cell.stream_ids = vec![id(0, 0xff)]),
        ["root cell: stream ID 0: 0x0/0xff: a mask needs an SMMUv2 (stream matching), the system has none"]
    );
    assert_eq!(
        with_system(|s| {
            s.iommu_units[0].kind = IommuKind::SmmuV2;
            s.root_cell.stream_ids = vec![id(0x1_0000, 0)];
        }),
        ["root cell: stream ID 0: 0x10000 is wider than the 16 bits of SMMUv2 stream matching, and the system has no SMMUv3"]
    );
}

// --- Cross-checks ---------------------------------------------------------------------------

fn cross(change: impl FnOnce(&mut CellConfig)) -> Vec<String> {
    let mut cell = arm_cell();
    change(&mut cell);
    cross_problems(&arm_system(), &[cell])
}

#[test]
fn cells_against_the_system() {
    assert_eq!(
        cross_problems(&arm_system(), &[x86_cell()]),
        ["cell \"rtos\": architecture: x86_64 does not match the system's aarch64"]
    );
    assert_eq!(
        cross(|c| c.cell.name = "linux".into()),
        ["cell \"linux\": name: the root cell has the same name"]
    );
    let mut other = arm_cell();
    other.cell.cpus = [2].into_iter().collect::<Vec<_>>().iter().copied().fold(
        Default::default(),
        |mut set: cellvisor_config::CpuSet, c| {
            set.insert(c);
            set
        },
    );
    other.cell.memory_regions.truncate(0);
    other.cell.irqs.clear();
    other.cell.stream_ids.clear();
    other.cell.console = None;
    assert_eq!(
        cross_problems(&arm_system(), &[arm_cell(), other.clone()]),
        ["cell \"demo\": name: another cell has the same name"]
    );
    assert_eq!(
        cross(|c| c.cell.cpus.insert(7).then_some(()).unwrap()),
        ["cell \"demo\": CPU set: CPU 7 is not owned by the root cell"]
    );
    assert_eq!(
        cross(|c| c.cell.memory_regions[0].phys_start = 0x8000_0000),
        ["cell \"demo\": memory region 0: physical range [0x80000000, 0x81000000) is not owned by the root cell (no root-cell memory region covers 0x80000000)"]
    );
    assert_eq!(
        cross(|c| c.cell.memory_regions[0].phys_start = 0x4010_0000),
        [
            "cell \"demo\": memory region 0: physical range [0x40100000, 0x41100000) overlaps hypervisor memory [0x40200000, 0x40a00000)",
            "cell \"demo\": memory region 0: physical range [0x40100000, 0x41100000) is not owned by the root cell (no root-cell memory region covers 0x40200000)",
        ]
    );
    assert_eq!(
        cross(|c| {
            c.cell.memory_regions[1] = region(0x80a_0000, 0x80a_0000, 0x1000, IO);
            c.cell.console = None;
        }),
        [
            "cell \"demo\": memory region 1: physical range [0x80a0000, 0x80a1000) maps the GIC redistributors [0x80a0000, 0x8120000) directly (only the hypervisor may access it)",
            "cell \"demo\": memory region 1: physical range [0x80a0000, 0x80a1000) is not owned by the root cell (no root-cell memory region covers 0x80a0000)",
        ]
    );
    assert_eq!(
        cross(|c| c.cell.irqs = vec![irqs(300, 1)]),
        ["cell \"demo\": interrupt range 0: line 300 is not owned by the root cell"]
    );
    assert_eq!(
        cross(|c| c.cell.stream_ids = vec![StreamId { id: 0x100, mask: 0 }]),
        ["cell \"demo\": stream ID 0: 0x100 is not owned by the root cell"]
    );
}

#[test]
fn cells_against_each_other() {
    let mut second = arm_cell();
    second.cell.name = "second".into();
    assert_eq!(
        cross_problems(&arm_system(), &[arm_cell(), second.clone()]),
        [
            "cell \"second\": CPU set: CPU 3 is also owned by cell \"demo\"",
            "cell \"second\": memory region 0: physical range [0x7f000000, 0x80000000) is also owned by cell \"demo\" (memory region 0)",
            "cell \"second\": memory region 1: physical range [0x9040000, 0x9041000) is also owned by cell \"demo\" (memory region 0)"
                .replace("(memory region 0)", "(memory region 1)")
                .as_str(),
            "cell \"second\": interrupt range 0: line 40 is also owned by cell \"demo\"",
            "cell \"second\": stream ID 0: 0x10 is also owned by cell \"demo\"",
        ]
    );
    // Memory both cells share with the root cell may be shared.
    let shared = region(
        0x7e00_0000,
        0x7e00_0000,
        0x1000,
        IO | MemoryFlags::ROOTSHARED,
    );
    let mut a = arm_cell();
    a.cell.memory_regions.push(shared);
    let mut b = second.clone();
    b.cell.cpus = cellvisor_config::CpuSet::from_cpus([2]);
    b.cell.memory_regions = vec![region(0x7d00_0000, 0, 0x10_0000, RAM), shared];
    b.cell.irqs.clear();
    b.cell.stream_ids.clear();
    b.cell.console = None;
    assert_eq!(
        cross_problems(&arm_system(), &[a.clone(), b.clone()]),
        Vec::<String>::new()
    );
    b.cell.memory_regions[1].flags = IO;
    assert_eq!(
        cross_problems(&arm_system(), &[a, b]),
        ["cell \"second\": memory region 1: physical range [0x7e000000, 0x7e001000) is also owned by cell \"demo\" (memory region 3)"]
    );

    let mut x86 = x86_cell();
    x86.cell.name = "other".into();
    x86.cell.cpus = cellvisor_config::CpuSet::from_cpus([2]);
    x86.cell.memory_regions[0].phys_start = 0x3f00_0000;
    assert_eq!(
        cross_problems(&x86_system(), &[x86_cell(), x86]),
        [
            "cell \"other\": interrupt range 0: line 3 is also owned by cell \"rtos\"",
            "cell \"other\": port range 0: ports 0x2f8-0x2ff are also owned by cell \"rtos\"",
            "cell \"other\": PCI device 0: 0000:00:1f.2 is also owned by cell \"rtos\"",
        ]
    );
    let mut x86 = x86_cell();
    x86.cell.pci_devices[0].bdf = Bdf::new(0, 5, 0).unwrap();
    let mut root = x86_system();
    root.root_cell.ports = vec![
        PortRange {
            base: 0,
            size: 0x100,
        },
        PortRange {
            base: 0x3f8,
            size: 8,
        },
    ];
    assert_eq!(
        cross_problems(&root, &[x86]),
        [
            "cell \"rtos\": port range 0: ports 0x2f8-0x2ff are not owned by the root cell",
            "cell \"rtos\": PCI device 0: 0000:00:05.0 is not owned by the root cell",
        ]
    );
}

#[test]
fn root_cell_keeps_a_cpu() {
    let mut all = arm_cell();
    all.cell.cpus = cellvisor_config::CpuSet::from_cpus(0..4);
    assert_eq!(
        cross_problems(&arm_system(), &[all.clone()]),
        ["root cell: CPU set: no CPU left: the other cells take CPUs 0-3"]
    );
    // The hypervisor's check on cell creation stops at the first problem.
    let system = arm_system().to_bytes().unwrap();
    let system = SystemConfigView::parse(&system).unwrap();
    let bytes = all.to_bytes().unwrap();
    let cell = CellConfigView::parse(&bytes).unwrap();
    assert_eq!(
        check_new_cell(&system, &[], &cell).unwrap_err().to_string(),
        "root cell: CPU set: no CPU left: the other cells take CPUs 0-3"
    );
    let bytes = arm_cell().to_bytes().unwrap();
    let demo = CellConfigView::parse(&bytes).unwrap();
    assert_eq!(check_new_cell(&system, &[], &demo), Ok(()));
    assert_eq!(
        check_new_cell(&system, &[demo], &demo)
            .unwrap_err()
            .to_string(),
        "cell \"demo\": name: another cell has the same name"
    );
}

#[test]
fn architectures_are_named() {
    assert_eq!(Architecture::X86_64.to_string(), "x86_64");
    let _ = (CellFlags::empty(), GicVersion::V2);
}

/// The checksum is the standard CRC-32 (ISO-HDLC, zlib's): its check value over "123456789"
/// (input shorter than a header is checksummed as it is).
#[test]
fn checksum_is_crc32_iso_hdlc() {
    assert_eq!(layout::checksum(b"123456789"), 0xCBF4_3926);
    assert_eq!(layout::checksum(b""), 0);
}

/// `seal` writes the header the encoder writes, so that altered bytes pass the header checks;
/// shorter input than a header is left alone.
#[test]
fn seal_writes_the_encoders_header() {
    let good = arm_cell().encode().unwrap();
    let mut bytes = good.clone();
    bytes[..16].fill(0xa5);
    assert!(layout::seal(
        &mut bytes,
        layout::KIND_CELL,
        layout::ARCH_AARCH64
    ));
    assert_eq!(bytes, good);

    // A changed body: sealed again, the stored size and checksum follow the bytes.
    bytes.extend_from_slice(&[0; 8]);
    assert!(CellConfigView::parse(&bytes).is_err());
    assert!(layout::seal(
        &mut bytes,
        layout::KIND_CELL,
        layout::ARCH_AARCH64
    ));
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
        bytes.len()
    );
    assert_eq!(
        u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
        layout::checksum(&bytes)
    );

    let mut short = [7u8; 15];
    assert!(!layout::seal(
        &mut short,
        layout::KIND_CELL,
        layout::ARCH_AARCH64
    ));
    assert!(!layout::store_checksum(&mut short));
    assert_eq!(short, [7; 15]);
}
